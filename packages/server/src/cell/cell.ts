import type { NatsConnection } from '@nats-io/transport-node';
import { ErrorCode, fromBase64Url, nativeSuite, type RequestArgs, type ServerHandshakeContext } from '@gravitas/protocol';
import type { NodeConfig } from '../config/index.js';
import type { CellContext, Log } from '../core/context.js';
import { GROUPS_SENDER, NOTICE } from '../core/envelope.js';
import { DeliveryProofs } from '../core/proofs.js';
import { Directory } from '../cluster/directory.js';
import { Gravity } from '../cluster/gravity.js';
import { Hints } from '../cluster/hints.js';
import { Membership } from '../cluster/membership.js';
import { CampaignRunner } from '../engage/runner.js';
import { Profiles } from '../engage/profiles.js';
import { TrackingIntake } from '../engage/intake.js';
import { CellMetrics } from '../infra/metrics.js';
import { openBuckets, untilReady } from '../infra/nats.js';
import { Names } from '../infra/subjects.js';
import { Custody } from '../messaging/custody.js';
import { MailboxDrains } from '../messaging/drain.js';
import { ExpirySweeper } from '../messaging/expiry.js';
import { Groups } from '../messaging/groups/groups.js';
import { Mailbox } from '../messaging/mailbox.js';
import { Routing } from '../messaging/routing.js';
import { PushGateway } from '../reach/push-gateway.js';
import { RelayCoordinator } from '../reach/relay.js';
import { Accounts } from '../session/accounts.js';
import { AccountBudgets } from '../session/budgets.js';
import { accountEvents, DeviceRequests } from '../session/devices.js';
import { HandshakeGuard } from '../session/guard.js';
import { LinkApprovals } from '../session/registration.js';
import { Revocations } from '../session/revocations.js';
import { Session } from '../session/session.js';
import { SpentIds } from '../session/tickets.js';
import { PresenceHub } from '../social/presence.js';
import { Social } from '../social/contacts.js';
import type { CellStatus } from '../supervisor/messages.js';
import { Connections } from '../transport/connections.js';
import { TcpListener } from '../transport/tcp.js';
import { WebListener } from '../transport/web-listener.js';
import { CellBus } from './bus.js';
import { SessionHub } from './hub.js';
import { Requests } from './requests.js';
import { CellSessions } from './sessions.js';

/**
 * One cell: the composition root of everything that serves the sessions it
 * accepted. It builds the features and hands each the narrow ports of the
 * others (core/ports.ts), starts them in order, routes what arrives on its NATS
 * inbox to them (bus.ts), and drains them in order at shutdown. An item reaches
 * a device on this cell by a call and one on another cell by one NATS publish.
 */
export class Cell {
  readonly ctx: CellContext;
  readonly metrics: CellMetrics;
  private readonly bus: CellBus;
  private readonly hub = new SessionHub();
  private readonly connections: Connections;
  private readonly guard: HandshakeGuard;
  private readonly handshake: ServerHandshakeContext;
  readonly proofs: DeliveryProofs;
  private readonly hints: Hints;
  readonly gravity: Gravity;
  private readonly drains: MailboxDrains;
  private readonly routing: Routing;
  readonly custody: Custody;
  readonly relay: RelayCoordinator;
  readonly push: PushGateway;
  readonly profiles: Profiles;
  readonly intake: TrackingIntake;
  readonly runner: CampaignRunner;
  private readonly revocations: Revocations;
  // Built at start, once the KV buckets and streams are there.
  accounts!: Accounts;
  private tickets!: SpentIds;
  private budgets!: AccountBudgets;
  directory!: Directory;
  membership!: Membership;
  private mailbox!: Mailbox;
  social!: Social;
  presence!: PresenceHub;
  groups!: Groups;
  private sessions: CellSessions | undefined;
  private expiry: ExpirySweeper | undefined;
  private tcp: TcpListener | undefined;
  private web: WebListener | undefined;
  address = '';
  /** host:port of this cell's web listener (WebSocket, chunked HTTP); '' when off. */
  webAddress = '';
  /** The largest backlog any connection had right after a write, since the last scrape. */
  private outboundPeak = 0;

  constructor(
    readonly config: NodeConfig,
    readonly cellId: string,
    readonly index: number,
    readonly nc: NatsConnection,
    readonly log: Log,
    /** Port of an earlier generation of this cell, reused so clients find it again. */
    private readonly previousPort?: number,
    /** The same for the web listener. */
    private readonly previousWebPort?: number,
  ) {
    this.metrics = new CellMetrics(cellId);
    const names = new Names(config.prefix, config.mailbox.partitions);
    this.bus = new CellBus(nc, names, log);
    const ctx = (this.ctx = { cellId, index, config, nc, names, metrics: this.metrics, log, bus: this.bus, hub: this.hub });
    this.connections = new Connections(ctx, (t) => new Session(this.sessions!, t));
    this.guard = new HandshakeGuard(config.limits.maxHandshakesInFlight, config.limits.cookieThresholdPerSec);
    const [current, previous] = config.ticketKeys.map((k) => ({ id: k.id, key: fromBase64Url(k.key, 32) }));
    this.handshake = {
      staticKey: nativeSuite.fromSecret(fromBase64Url(config.serverKey, 32)),
      ticketKeys: { current: current!, ...(previous && { previous }) },
      ticketLifetimeMs: config.ticketLifetimeMs,
      suite: nativeSuite,
      now: Date.now,
    };
    this.proofs = new DeliveryProofs(fromBase64Url(config.serverKey, 32));
    const self = { address: () => this.address, webAddress: () => this.webAddress };
    this.hints = new Hints(ctx, () => this.membership, self);
    this.gravity = new Gravity(ctx, { hints: this.hints, self, directory: () => this.directory, drain: (s) => this.drains.drain(s) });
    this.drains = new MailboxDrains(ctx, { mailbox: () => this.mailbox, placement: this.gravity });
    this.routing = new Routing(ctx, { custody: () => this.custody, mailbox: () => this.mailbox, groups: () => this.groups, events: this.gravity });
    const devices = { devices: (user: string) => this.accounts.devices(user) };
    this.relay = new RelayCoordinator(ctx, {
      directory: { lookup: (user, fresh) => this.directory.lookup(user, fresh) },
      social: { record: (user) => this.social.record(user) },
      accounts: devices,
      hints: this.hints,
      connected: () => this.status().natsConnected,
    });
    this.push = new PushGateway(ctx, {
      social: { prefs: (user) => this.social.prefs(user) },
      groups: { handle: (s, op, args) => this.groups.handle(s, op, args) },
      accounts: devices,
      hints: this.hints,
      // Offline devices no push reached are woken through a LAN peer (docs/relay.md).
      events: this.relay,
    });
    this.custody = new Custody(ctx, {
      accounts: () => this.accounts,
      social: () => this.social,
      directory: () => this.directory,
      mailbox: () => this.mailbox,
      routing: this.routing,
      drains: this.drains,
      proofs: this.proofs,
      events: this.push,
    });
    this.profiles = new Profiles(ctx);
    this.intake = new TrackingIntake(ctx, { proofs: this.proofs, profiles: this.profiles });
    this.runner = new CampaignRunner(ctx, {
      custody: this.custody,
      // Contacts are built in start(); the runner asks only once jobs run.
      social: { refuses: (recipient, sender) => this.social.refuses(recipient, sender) },
      profiles: this.profiles,
      intake: this.intake,
    });
    this.revocations = new Revocations(ctx, () => this.accounts);
  }

  async start(): Promise<void> {
    const { config, ctx, log } = this;
    // A fresh NATS cluster creates replicated streams slowly, and many cells ask at once.
    const b = await untilReady(() => openBuckets(this.nc, config), 'KV buckets');
    const l = config.limits;
    this.tickets = new SpentIds(b.tickets);
    const notice = (user: string, except: string | undefined, n: Parameters<Custody['notice']>[2]): void => {
      this.custody.notice(user, except, n).catch((err: unknown) => log('notice failed', err));
    };
    this.accounts = new Accounts(b.accounts, this.tickets, config.registration, l.maxDevicesPerUser, new LinkApprovals(this.hints.keys), accountEvents(this.bus, notice));
    const rates = { msg: l.accountMsgRatePerSec, fanout: l.accountFanoutRatePerSec, read: l.accountReadRatePerSec, req: l.accountRequestRatePerSec };
    this.budgets = new AccountBudgets(b.budgets, rates, l.maxDevicesPerUser, log);
    this.mailbox = new Mailbox(this.nc, ctx.names, config.mailbox, config.replicas);
    this.directory = new Directory(b.directory, (cell) => cell === this.cellId || this.membership.isLive(cell));
    this.social = new Social(ctx, { socialChanged: (user) => this.presence.socialChanged(user) }, b.social);
    this.presence = new PresenceHub(ctx, {
      social: this.social,
      directory: this.directory,
      liveness: { isLive: (cell) => this.membership?.isLive(cell) ?? false },
      groups: { typing: (s, m) => this.groups.typing(s, m) },
    }, b.presence);
    this.groups = new Groups(
      ctx,
      {
        directory: this.directory,
        social: this.social,
        accounts: this.accounts,
        events: this.push,
        presence: this.presence,
        // An invitee is told under custody, on every device (docs/groups.md#consent).
        invites: { onInvited: (user, g, by) => notice(user, undefined, { from: GROUPS_SENDER, sys: NOTICE.groupInvite, text: `${by} invited you to a group`, about: g }) },
      },
      b.groups,
    );
    await untilReady(() => Promise.all([this.mailbox.start(), this.groups.start(), this.profiles.start(), this.intake.start()]), 'streams');
    await this.relay.start();
    await untilReady(() => this.push.start(), 'push buckets');
    this.sessions = this.buildSessions();
    this.bus.listen(this.cellId, {
      dlv: (e) => this.routing.onDeliver(e),
      ack: (e) => this.routing.onAnswer(e),
      nh: (e) => this.routing.onAnswer(e),
      kick: (e) => this.sessions?.kick(e.user, e.dev, e.ep),
      mbx: (e) => this.drains.onPoke(e.user, e.dev),
      gdlv: (e) => this.groups.onDelivery(e.m, e.to),
      typ: (e) => this.presence.onTyping(e),
      exp: (e) => this.gravity.expect(e.user, e.dev),
      rly: (e) => this.relay.deliver(e.u, e.dev, e.tu, e.td, e.w),
    }, {
      revoked: (i) => this.revocations.revoked(i.key, i.dev, i.rid),
      devices: (i) => this.accounts.invalidate(i.key),
      social: (i) => this.social.invalidate(i.key, i.d),
      profile: (i) => this.profiles.invalidate(i.key),
      mutes: (i) => this.push.mutesChanged(i.key),
      group: (i) => this.groups.invalidate(i.key),
    });
    await this.listen();
    const info = () => ({ cell: this.cellId, node: config.nodeId, address: this.address, ...(this.webAddress && { web: this.webAddress }), sessions: this.hub.count, lagMs: this.metrics.lagMs(), state: this.connections.draining ? ('draining' as const) : ('up' as const) });
    this.membership = new Membership(this.nc, ctx.names.heartbeats, b.cells, info, config.membership.heartbeatMs, config.membership.timeoutMs, (cell) => this.presence.cellDied(cell));
    await untilReady(() => this.membership.start(), 'membership');
    this.custody.start();
    this.presence.start();
    this.gravity.start();
    await this.runner.start();
    // One sweeper per node is plenty; sweeps by several are harmless (stores and deletes are idempotent).
    if (this.index === 0) {
      this.expiry = new ExpirySweeper(ctx, { mailbox: this.mailbox, accounts: this.accounts, custody: this.custody });
      this.expiry.start();
    }
  }

  private buildSessions(): CellSessions {
    const requests = new Requests({
      contacts: this.social,
      prefs: this.social,
      groups: this.groups,
      devices: new DeviceRequests(() => this.accounts, [(u, d) => this.mailbox.purgeDevice(u, d), (u, d) => this.groups.forgetDevice(u, d), (u, d) => this.push.forgetDevice(u, d)]),
      track: this.intake,
      profile: this.profiles,
      push: this.push,
      mute: this.push,
      reach: { handle: (s, _op, args) => this.relay.report(s, args as RequestArgs['reach.report']) },
    }, this.log);
    return new CellSessions(this.ctx, {
      hub: this.hub,
      connections: this.connections,
      identity: { handshake: this.handshake, guard: this.guard, accounts: this.accounts, tickets: this.tickets, budgets: this.budgets, proofs: this.proofs },
      revocations: this.revocations,
      directory: this.directory,
      placement: this.gravity,
      drains: this.drains,
      routing: this.routing,
      custody: this.custody,
      groups: this.groups,
      presence: this.presence,
      request: (s, m) => requests.request(s, m),
      webAddress: () => this.webAddress,
      noteOutbound: (bytes) => this.noteOutbound(bytes),
    });
  }

  private async listen(): Promise<void> {
    const { host, basePort, webBasePort } = this.config.listen;
    this.tcp = new TcpListener(this.connections);
    const port = await this.tcp.listen(this.previousPort ?? (basePort === 0 ? 0 : basePort + this.index), host);
    this.address = `${this.config.advertiseHost}:${port}`;
    if (!this.config.web.enabled) return;
    this.web = new WebListener(this.connections);
    const webPort = await this.web.listen(this.previousWebPort ?? (webBasePort === 0 ? 0 : webBasePort + this.index), host);
    this.webAddress = `${this.config.advertiseHost}:${webPort}`;
  }

  /** Called after each write to a connection with its unsent bytes (one compare per frame). */
  noteOutbound(bytes: number): void {
    if (bytes > this.outboundPeak) this.outboundPeak = bytes;
  }

  /** Scrape-time view of the largest connection backlog since the previous scrape (O(sessions), only when metrics are read). */
  sampleGauges(): void {
    let max = this.outboundPeak;
    this.outboundPeak = 0;
    for (const s of this.hub.all()) max = Math.max(max, s.outboundBytes);
    this.metrics.outboundMax.set({ cell: this.cellId }, max);
    this.metrics.sourceEntries.set(this.connections.sourceLimits.entries);
    if (this.membership) this.gravity.sampleGauges();
    this.intake.sampleGauges();
  }

  status(): CellStatus {
    return {
      cellId: this.cellId,
      address: this.address,
      ...(this.webAddress && { web: this.webAddress }),
      natsConnected: !this.nc.isClosed() && !this.connections.draining,
      listening: (this.tcp?.listening ?? false) && (!this.web || this.web.listening),
      connections: this.connections.size,
      sessions: this.hub.count,
    };
  }

  /** After NATS comes back: wake-ups may have been lost, and revocations missed (drain.ts, revocations.ts). */
  redrainAll(): void {
    this.drains.redrainAll(this.hub.all());
  }

  recheckSessions(): void {
    this.revocations.recheck(this.hub.all());
  }

  /** Stop accepting, say goodbye to every session, leave the directory and membership; then stop the features in order. */
  async drain(): Promise<void> {
    if (this.connections.draining) return;
    this.connections.draining = true;
    this.tcp?.close();
    this.web?.close();
    const leaving = this.sessions?.leaveAll();
    this.connections.endAll(ErrorCode.SHUTTING_DOWN);
    await Promise.race([leaving, new Promise((r) => setTimeout(r, 5000))]);
    this.custody.stop();
    this.gravity.stop();
    this.push.stop();
    await this.runner.stop();
    await this.intake.stop();
    await this.profiles.stop();
    this.expiry?.stop();
    this.presence.stop();
    await this.groups.stop();
    await this.membership?.stop(this.cellId);
    this.bus.stop();
    this.metrics.stop();
  }

  // ---- until every feature takes ports (issue 16): what unported features still read from the cell ----

  get names(): Names {
    return this.ctx.names;
  }

  get draining(): boolean {
    return this.connections.draining;
  }

  get sessionCount(): number {
    return this.hub.count;
  }

  session(user: string, device: string): Session | undefined {
    return this.hub.session(user, device);
  }

  sessionsOf(user: string): Iterable<Session> {
    return this.hub.sessionsOf(user);
  }

  publish(cell: string, e: Parameters<CellBus['publish']>[1]): void {
    this.bus.publish(cell, e);
  }

  invalidate(i: Parameters<CellBus['invalidate']>[0]): void {
    this.bus.invalidate(i);
  }
}
