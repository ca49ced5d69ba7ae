import type { NatsConnection } from '@nats-io/transport-node';
import { ErrorCode, fromBase64Url } from '@gravitas/protocol';
import type { NodeConfig } from '../config/index.js';
import type { CellContext, Log } from '../core/context.js';
import { GROUPS_SENDER, NOTICE } from '../core/envelope.js';
import type { Notice } from '../core/ports.js';
import { DeliveryProofs } from '../core/proofs.js';
import { Directory } from '../cluster/directory.js';
import { Gravity } from '../cluster/gravity.js';
import { Hints } from '../cluster/hints.js';
import { Membership } from '../cluster/membership.js';
import { CampaignRunner } from '../engage/runner.js';
import { Profiles } from '../engage/profiles.js';
import { TrackingIntake } from '../engage/intake.js';
import { CellMetrics } from '../infra/metrics.js';
import { openBuckets } from '../core/buckets.js';
import { untilReady } from '../infra/nats.js';
import { Names } from '../infra/subjects.js';
import { TurnFlusher } from '../infra/turn.js';
import { Custody } from '../messaging/custody.js';
import { MailboxDrains } from '../messaging/drain.js';
import { ExpirySweeper } from '../messaging/expiry.js';
import { Groups } from '../messaging/groups/groups.js';
import { Mailbox } from '../messaging/mailbox.js';
import { Routing } from '../messaging/routing.js';
import { PushGateway } from '../reach/push-gateway.js';
import { RelayCoordinator } from '../reach/relay.js';
import { accountEvents, DeviceRequests } from '../session/devices.js';
import { Identity } from '../session/identity.js';
import { Session } from '../session/session.js';
import { PresenceHub } from '../social/presence.js';
import { Social } from '../social/contacts.js';
import type { CellStatus } from '../supervisor/messages.js';
import { Connections } from '../transport/connections.js';
import { Listeners } from '../transport/listeners.js';
import { CellBus, envelopeHandlers, invalidationHandlers } from './bus.js';
import { SessionHub } from './hub.js';
import { requestAreas, Requests } from './requests.js';
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
  private readonly listeners: Listeners;
  private readonly identity: Identity;
  private readonly proofs: DeliveryProofs;
  private readonly hints: Hints;
  private readonly gravity: Gravity;
  private readonly drains: MailboxDrains;
  private readonly routing: Routing;
  private readonly custody: Custody;
  private readonly relay: RelayCoordinator;
  private readonly push: PushGateway;
  private readonly profiles: Profiles;
  private readonly intake: TrackingIntake;
  private readonly runner: CampaignRunner;
  // Built at start, once the KV buckets and streams are there.
  private directory!: Directory;
  private membership!: Membership;
  private mailbox!: Mailbox;
  private social!: Social;
  private presence!: PresenceHub;
  private groups!: Groups;
  private sessions: CellSessions | undefined;
  private expiry: ExpirySweeper | undefined;

  constructor(
    private readonly config: NodeConfig,
    private readonly cellId: string,
    private readonly index: number,
    private readonly nc: NatsConnection,
    private readonly log: Log,
    /** Ports of an earlier generation of this cell (TCP, web), reused so clients find it again. */
    previousPort?: number,
    previousWebPort?: number,
  ) {
    this.metrics = new CellMetrics(cellId);
    const names = new Names(config.prefix, config.mailbox.partitions);
    const turn = new TurnFlusher((err) => log('end-of-turn flush failed', err));
    this.bus = new CellBus(nc, names, log, turn);
    const ctx = (this.ctx = { cellId, index, config, nc, names, metrics: this.metrics, log, bus: this.bus, hub: this.hub, turn });
    this.connections = new Connections(ctx, (t) => new Session(this.sessions!, t));
    this.listeners = new Listeners(ctx, this.connections, { port: previousPort, webPort: previousWebPort });
    this.proofs = new DeliveryProofs(fromBase64Url(config.serverKey, 32));
    this.identity = new Identity(ctx, this.proofs);
    const self = this.listeners;
    this.hints = new Hints(ctx, () => this.membership, self);
    this.gravity = new Gravity(ctx, { hints: this.hints, self, directory: () => this.directory, drain: (s) => this.drains.drain(s) });
    this.drains = new MailboxDrains(ctx, { mailbox: () => this.mailbox, placement: this.gravity });
    this.routing = new Routing(ctx, { custody: () => this.custody, mailbox: () => this.mailbox, groups: () => this.groups, events: this.gravity });
    const devices = { devices: (user: string) => this.identity.accounts.devices(user) };
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
    const late = { accounts: () => this.identity.accounts, social: () => this.social, directory: () => this.directory, mailbox: () => this.mailbox };
    this.custody = new Custody(ctx, { ...late, routing: this.routing, drains: this.drains, proofs: this.proofs, events: this.push });
    this.profiles = new Profiles(ctx);
    this.intake = new TrackingIntake(ctx, { proofs: this.proofs, profiles: this.profiles });
    this.runner = new CampaignRunner(ctx, {
      custody: this.custody,
      // Contacts are built in start(); the runner asks only once jobs run.
      social: { refuses: (recipient, sender) => this.social.refuses(recipient, sender) },
      profiles: this.profiles,
      intake: this.intake,
    });
  }

  async start(): Promise<void> {
    const { config, ctx, log } = this;
    // A fresh NATS cluster creates replicated streams slowly, and many cells ask at once.
    const b = await untilReady(() => openBuckets(this.nc, config), 'KV buckets');
    const notice = (user: string, except: string | undefined, n: Notice): void => {
      this.custody.notice(user, except, n).catch((err: unknown) => log('notice failed', err));
    };
    this.identity.open(b, this.hints.keys, accountEvents(this.bus, notice));
    this.mailbox = new Mailbox(this.nc, ctx.names, config.mailbox, config.replicas);
    this.directory = new Directory(b.directory, (cell) => cell === this.cellId || this.membership.isLive(cell));
    this.social = new Social(ctx, { socialChanged: (user) => this.presence.socialChanged(user) }, b.social);
    this.presence = new PresenceHub(ctx, {
      social: this.social,
      directory: this.directory,
      liveness: { isLive: (cell) => this.membership?.isLive(cell) ?? false },
      groups: { typing: (s, m) => this.groups.typing(s, m) },
    }, b.presence);
    // An invitee is told under custody, on every device (docs/groups.md#consent).
    const invites = { onInvited: (user: string, g: string, by: string) => notice(user, undefined, { from: GROUPS_SENDER, sys: NOTICE.groupInvite, text: `${by} invited you to a group`, about: g }) };
    this.groups = new Groups(ctx, { directory: this.directory, social: this.social, accounts: this.identity.accounts, events: this.push, presence: this.presence, invites }, b.groups);
    await untilReady(() => Promise.all([this.mailbox.start(), this.groups.start(), this.profiles.start(), this.intake.start()]), 'streams');
    await this.relay.start();
    await untilReady(() => this.push.start(), 'push buckets');
    this.sessions = this.buildSessions();
    const { routing, drains, groups, presence, relay, push, profiles, social, identity } = this;
    this.bus.listen(
      this.cellId,
      envelopeHandlers({ routing, sessions: this.sessions, drains, groups, presence, placement: this.gravity, relay }),
      invalidationHandlers({ revocations: identity.revocations, accounts: identity.accounts, social, profiles, push, groups }),
    );
    await this.listeners.listen();
    const web = this.listeners.webAddress();
    const info = () => ({ cell: this.cellId, node: config.nodeId, address: this.listeners.address(), ...(web && { web }), sessions: this.hub.count, lagMs: this.metrics.lagMs(), state: this.connections.draining ? ('draining' as const) : ('up' as const) });
    this.membership = new Membership(this.nc, ctx.names.heartbeats, b.cells, info, config.membership.heartbeatMs, config.membership.timeoutMs, (cell) => this.presence.cellDied(cell));
    await untilReady(() => this.membership.start(), 'membership');
    this.custody.start();
    this.presence.start();
    this.gravity.start();
    await this.runner.start();
    // One sweeper per node is plenty; sweeps by several are harmless (stores and deletes are idempotent).
    if (this.index === 0) {
      this.expiry = new ExpirySweeper(ctx, { mailbox: this.mailbox, accounts: this.identity.accounts, custody: this.custody });
      this.expiry.start();
    }
  }

  private buildSessions(): CellSessions {
    const { social, groups, intake, profiles, push, relay, mailbox } = this;
    const devices = new DeviceRequests(() => this.identity.accounts, [(u, d) => mailbox.purgeDevice(u, d), (u, d) => groups.forgetDevice(u, d), (u, d) => push.forgetDevice(u, d)]);
    const requests = new Requests(requestAreas({ social, groups, devices, intake, profiles, push, relay }), this.log);
    return new CellSessions(this.ctx, {
      hub: this.hub,
      connections: this.connections,
      identity: this.identity,
      revocations: this.identity.revocations,
      directory: this.directory,
      placement: this.gravity,
      drains: this.drains,
      routing: this.routing,
      custody: this.custody,
      groups: this.groups,
      presence: this.presence,
      request: (s, m) => requests.request(s, m),
      webAddress: () => this.listeners.webAddress(),
      noteOutbound: (bytes) => this.connections.noteOutbound(bytes),
    });
  }

  /** Scrape-time view of the largest connection backlog since the previous scrape (O(sessions), only when metrics are read). */
  sampleGauges(): void {
    this.metrics.outboundMax.set({ cell: this.cellId }, this.connections.outboundPeak());
    this.metrics.custodyPendingMax.set({ cell: this.cellId }, this.custody.pendingPeak());
    this.metrics.sourceEntries.set(this.connections.sourceLimits.entries);
    if (this.membership) this.gravity.sampleGauges();
    this.intake.sampleGauges();
  }

  status(): CellStatus {
    return {
      cellId: this.cellId,
      address: this.listeners.address(),
      ...(this.listeners.webAddress() && { web: this.listeners.webAddress() }),
      natsConnected: !this.nc.isClosed() && !this.connections.draining,
      listening: this.listeners.listening,
      connections: this.connections.size,
      sessions: this.hub.count,
    };
  }

  /**
   * NATS came back. Core NATS dropped what was published meanwhile: wake-ups may have been
   * lost (every session drains again), revocations missed (every session is checked again),
   * and invalidations missed (the caches they keep current start again from the store).
   */
  natsReconnected(): void {
    this.metrics.natsReconnects.inc();
    this.identity.accounts.invalidateAll();
    this.drains.redrainAll(this.hub.all());
    this.identity.revocations.recheck(this.hub.all());
  }

  /** Stop accepting, say goodbye to every session, leave the directory and membership; then stop the features in order. */
  async drain(): Promise<void> {
    if (this.connections.draining) return;
    this.connections.draining = true;
    this.listeners.close();
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
}
