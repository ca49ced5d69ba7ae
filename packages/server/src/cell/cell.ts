import { createServer, type Server } from 'node:net';
import type { NatsConnection, Subscription } from '@nats-io/transport-node';
import {
  decodeRequestArgs, ErrorCode, nativeSuite, fromBase64Url, pack, ProtocolError, unpack, type Request, type RequestArgs, type ServerHandshakeContext,
} from '@gravitas/protocol';
import type { NodeConfig } from '../config/index.js';
import { Names } from '../infra/subjects.js';
import type { CellStatus } from '../supervisor/messages.js';
import type { Bus, CellContext, Hub } from '../core/context.js';
import { Accounts, REFUSED, type AccountEvents } from '../session/accounts.js';
import { AccountBudgets } from '../session/budgets.js';
import { DeliveryProofs } from '../core/proofs.js';
import { each } from '../infra/limiter.js';
import { LinkApprovals } from '../session/registration.js';
import { TtlCache } from '../infra/ttl-cache.js';
import { Custody } from '../messaging/custody.js';
import { Directory, type DeviceLocation } from '../cluster/directory.js';
import { ExpirySweeper } from '../messaging/expiry.js';
import { CampaignRunner } from '../engage/runner.js';
import { Profiles } from '../engage/profiles.js';
import { TrackingIntake } from '../engage/intake.js';
import { Gravity } from '../cluster/gravity.js';
import { RelayCoordinator } from '../reach/relay.js';
import { PushGateway } from '../reach/push-gateway.js';
import { Groups } from '../messaging/groups/groups.js';
import { HandshakeGuard } from '../session/guard.js';
import { Membership } from '../cluster/membership.js';
import { CellMetrics } from '../infra/metrics.js';
import { Mailbox } from '../messaging/mailbox.js';
import { openBuckets, untilReady } from '../infra/nats.js';
import { PresenceHub } from '../social/presence.js';
import { Session, type Delivery } from '../session/session.js';
import { type Transport, type TransportKind } from '../core/transport.js';
import { acceptTcp } from '../transport/tcp.js';
import { REFUSAL_SLACK, SourceLimits, type SourceCharge } from '../transport/source-limits.js';
import { SourceResolver } from '../transport/source.js';
import { WebListener } from '../transport/web-listener.js';
import { Social } from '../social/contacts.js';
import { SpentIds } from '../session/tickets.js';
import { ACCOUNT_SENDER, decodeEnvelope, decodeInvalidation, GROUPS_SENDER, NOTICE, type Envelope, type Invalidation } from '../core/envelope.js';

/** Mailbox drains running at once per cell; more wait their turn. */
const MAX_CONCURRENT_DRAINS = 32;
/**
 * Revocations are remembered this long: a handshake that read the account just
 * before a removal and registers its session just after the broadcast passed is
 * still refused (longer than any handshake may take).
 */
const REVOCATION_MEMORY_MS = 120_000;
/** Sessions re-checked against their accounts at once after a NATS outage. */
const RECHECK_CONCURRENCY = 16;

/**
 * One cell: a TCP listener, the sessions it accepted, its own NATS connection and
 * inbox subject, and the modules that act for those sessions: custody (1:1
 * messages and receipts), mailboxes, groups, presence and the social graph. An
 * item reaches a device on this cell by a call and one on another cell by one
 * NATS publish to that cell's inbox.
 */
export class Cell implements Bus, Hub {
  /** What features are given of the cell (core/context.ts). */
  readonly ctx: CellContext;
  readonly metrics: CellMetrics;
  readonly guard: HandshakeGuard;
  /** Who connections come from (trusted proxies), and what each source may hold on this cell. */
  readonly sources: SourceResolver;
  readonly sourceLimits: SourceLimits;
  /** Handshake slots of sessions not yet open, released when they open or close. */
  private readonly handshaking = new Map<Transport, SourceCharge>();
  readonly handshakeContext: ServerHandshakeContext;
  readonly names: Names;
  readonly custody: Custody;
  readonly gravity: Gravity;
  /** Wake-ups relayed through peer devices (reach/relay.ts). */
  readonly relay: RelayCoordinator;
  /** Pushes to offline devices, per-chat mutes (reach/push-gateway.ts). */
  readonly push: PushGateway;
  accounts!: Accounts;
  tickets!: SpentIds;
  /** Per-account limits, leased from KV (budgets.ts). */
  budgets!: AccountBudgets;
  /** Delivery proofs on every delivered message (proofs.ts). */
  readonly proofs: DeliveryProofs;
  /** Recent revocations: `user/device` → the revoked registration; `user` → when the account was suspended (performance.now()). */
  private readonly revocations = new TtlCache<string, number>(100_000, REVOCATION_MEMORY_MS);
  directory!: Directory;
  membership!: Membership;
  mailbox!: Mailbox;
  social!: Social;
  presence!: PresenceHub;
  groups!: Groups;
  /** Versioned profiles (engage/profiles.ts). */
  readonly profiles: Profiles;
  /** Campaign feedback into the node's tracking store (engage/intake.ts). */
  readonly intake: TrackingIntake;
  /** Campaign jobs from the cluster's work queue (engage/runner.ts). */
  readonly runner: CampaignRunner;
  private expiry: ExpirySweeper | undefined;
  private server: Server | undefined;
  private readonly subs: Subscription[] = [];
  /** Every connection carrying a session, whatever its transport. */
  private readonly transports = new Set<Transport>();
  private readonly byKind: Record<TransportKind, number> = { tcp: 0, ws: 0, http: 0 };
  private web: WebListener | undefined;
  /** Open sessions by `user/device`, and the devices of each user with a session here. */
  private readonly sessions = new Map<string, Session>();
  private readonly byUser = new Map<string, Set<Session>>();
  draining = false;
  private activeDrains = 0;
  /** Sessions waiting for a drain slot (each at most once). */
  private readonly drainQueue = new Set<Session>();
  address = '';
  /** host:port of this cell's web listener (WebSocket, chunked HTTP); '' when off. */
  webAddress = '';
  private port = 0;

  constructor(
    readonly config: NodeConfig,
    readonly cellId: string,
    readonly index: number,
    readonly nc: NatsConnection,
    readonly log: (msg: string, err?: unknown) => void,
    /** Port of an earlier generation of this cell, reused so clients find it again. */
    private readonly previousPort?: number,
    /** The same for the web listener. */
    private readonly previousWebPort?: number,
  ) {
    this.metrics = new CellMetrics(cellId);
    this.names = new Names(config.prefix, config.mailbox.partitions);
    this.ctx = { cellId, index, config, nc, names: this.names, metrics: this.metrics, log, bus: this, hub: this };
    this.guard = new HandshakeGuard(config.limits.maxHandshakesInFlight, config.limits.cookieThresholdPerSec);
    this.sources = new SourceResolver(config.network.trustedProxies);
    this.sourceLimits = new SourceLimits(config.network, (r) => this.metrics.sourceRefusals.inc({ limit: r.kind, scope: r.scope }));
    const [current, previous] = config.ticketKeys.map((k) => ({ id: k.id, key: fromBase64Url(k.key, 32) }));
    this.handshakeContext = {
      staticKey: nativeSuite.fromSecret(fromBase64Url(config.serverKey, 32)),
      ticketKeys: { current: current!, ...(previous && { previous }) },
      ticketLifetimeMs: config.ticketLifetimeMs,
      suite: nativeSuite,
      now: Date.now,
    };
    this.proofs = new DeliveryProofs(fromBase64Url(config.serverKey, 32));
    this.custody = new Custody(this);
    this.gravity = new Gravity(this);
    this.relay = new RelayCoordinator(this);
    this.push = new PushGateway(this);
    // Offline devices no push reached are woken through a LAN peer (docs/relay.md).
    this.push.onUnreachable = (user, device) => this.relay.unreachable(user, device);
    this.profiles = new Profiles(this.ctx);
    this.intake = new TrackingIntake(this.ctx, { proofs: this.proofs, profiles: this.profiles });
    this.runner = new CampaignRunner(this.ctx, {
      custody: this.custody,
      // Contacts are built in start(); the runner asks only once jobs run.
      social: { refuses: (recipient, sender) => this.social.refuses(recipient, sender) },
      profiles: this.profiles,
      intake: this.intake,
    });
  }

  /** The largest backlog any connection had right after a write, since the last scrape. */
  private outboundPeak = 0;

  /** Called after each write to a connection with its unsent bytes (one compare per frame). */
  noteOutbound(bytes: number): void {
    if (bytes > this.outboundPeak) this.outboundPeak = bytes;
  }

  /** Scrape-time view of the largest connection backlog since the previous scrape (O(sessions), only when metrics are read). */
  sampleGauges(): void {
    let max = this.outboundPeak;
    this.outboundPeak = 0;
    for (const s of this.sessions.values()) max = Math.max(max, s.outboundBytes);
    this.metrics.outboundMax.set({ cell: this.cellId }, max);
    this.metrics.sourceEntries.set(this.sourceLimits.entries);
    if (this.membership) this.gravity.sampleGauges();
    this.intake.sampleGauges();
  }

  async start(): Promise<void> {
    // A fresh NATS cluster creates replicated streams slowly, and many cells ask at once.
    const b = await untilReady(() => openBuckets(this.nc, this.config), 'KV buckets');
    this.tickets = new SpentIds(b.tickets);
    this.accounts = new Accounts(b.accounts, this.tickets, this.config.registration, this.config.limits.maxDevicesPerUser, new LinkApprovals(this.gravity.keys), this.accountEvents());
    const l = this.config.limits;
    this.budgets = new AccountBudgets(
      b.budgets,
      { msg: l.accountMsgRatePerSec, fanout: l.accountFanoutRatePerSec, read: l.accountReadRatePerSec, req: l.accountRequestRatePerSec },
      l.maxDevicesPerUser,
      this.log,
    );
    this.mailbox = new Mailbox(this.nc, this.names, this.config.mailbox, this.config.replicas);
    this.social = new Social(this, b.social);
    this.presence = new PresenceHub(this, b.presence);
    this.groups = new Groups(this, b.groups);
    // An invitee is told under custody, on every device (docs/groups.md#consent).
    this.groups.setInviteNotices({
      onInvited: (user, g, by) => {
        const n = { from: GROUPS_SENDER, sys: NOTICE.groupInvite, text: `${by} invited you to a group`, about: g };
        this.custody.notice(user, undefined, n).catch((err: unknown) => this.log('group invitation notice failed', err));
      },
    });
    await untilReady(() => Promise.all([this.mailbox.start(), this.groups.start(), this.profiles.start(), this.intake.start()]), 'streams');
    await this.relay.start();
    await untilReady(() => this.push.start(), 'push buckets');
    this.subs.push(
      this.nc.subscribe(this.names.cellInbox(this.cellId), { callback: (err, msg) => void (err || this.onEnvelope(msg.data)) }),
      this.nc.subscribe(this.names.invalidations, { callback: (err, msg) => void (err || this.onInvalidation(msg.data)) }),
    );
    await this.listen();
    await this.listenWeb();
    this.membership = new Membership(
      this.nc,
      this.names.heartbeats,
      b.cells,
      () => ({ cell: this.cellId, node: this.config.nodeId, address: this.address, ...(this.webAddress && { web: this.webAddress }), sessions: this.sessions.size, lagMs: this.metrics.lagMs(), state: this.draining ? 'draining' : 'up' }),
      this.config.membership.heartbeatMs,
      this.config.membership.timeoutMs,
      (cell) => this.presence.cellDied(cell),
    );
    this.directory = new Directory(b.directory, (cell) => cell === this.cellId || this.membership.isLive(cell));
    await untilReady(() => this.membership.start(), 'membership');
    this.custody.start();
    this.presence.start();
    this.gravity.start();
    await this.runner.start();
    // One sweeper per node is plenty; sweeps by several are harmless (stores and deletes are idempotent).
    if (this.index === 0) {
      this.expiry = new ExpirySweeper(this);
      this.expiry.start();
    }
  }

  private listen(): Promise<void> {
    const { host, basePort } = this.config.listen;
    const server = createServer({ allowHalfOpen: true, noDelay: true }, (socket) => acceptTcp(this, socket));
    // A hard bound on descriptors: beyond the cap plus room for coded refusals, Node closes at accept.
    server.maxConnections = this.config.limits.maxConnectionsPerCell + REFUSAL_SLACK;
    this.server = server;
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.previousPort ?? (basePort === 0 ? 0 : basePort + this.index), host, () => {
        server.off('error', reject);
        server.on('error', (err) => this.log('listener error', err));
        const addr = server.address();
        this.port = typeof addr === 'object' && addr ? addr.port : 0;
        this.address = `${this.config.advertiseHost}:${this.port}`;
        resolve();
      });
    });
  }

  private async listenWeb(): Promise<void> {
    const { host, webBasePort } = this.config.listen;
    if (!this.config.web.enabled) return;
    this.web = new WebListener(this);
    const port = await this.web.listen(this.previousWebPort ?? (webBasePort === 0 ? 0 : webBasePort + this.index), host);
    this.webAddress = `${this.config.advertiseHost}:${port}`;
  }

  /** Room for one more session connection (web listener). */
  canAccept(): boolean {
    return !this.draining && this.transports.size < this.config.limits.maxConnectionsPerCell;
  }

  /** Starts a session on a new connection, counted by transport until it closes; `handshake`: its source's slot until the session opens. */
  adopt(t: Transport, handshake: SourceCharge): void {
    this.handshaking.set(t, handshake);
    this.transports.add(t);
    this.byKind[t.kind]++;
    this.metrics.connections.set({ transport: t.kind }, this.byKind[t.kind]);
    t.onClosed(() => {
      this.handshakeDone(t);
      if (!this.transports.delete(t)) return;
      this.byKind[t.kind]--;
      this.metrics.connections.set({ transport: t.kind }, this.byKind[t.kind]);
    });
    new Session(this, t);
  }

  /** The session on `t` opened (or closed): its source's handshake slot is free again. */
  private handshakeDone(t: Transport): void {
    this.handshaking.get(t)?.release();
    this.handshaking.delete(t);
  }

  status(): CellStatus {
    return {
      cellId: this.cellId,
      address: this.address,
      ...(this.webAddress && { web: this.webAddress }),
      natsConnected: !this.nc.isClosed() && !this.draining,
      listening: (this.server?.listening ?? false) && (!this.web || this.web.listening),
      connections: this.transports.size,
      sessions: this.sessions.size,
    };
  }

  // ---- sessions ---------------------------------------------------------------

  get sessionCount(): number {
    return this.sessions.size;
  }

  get count(): number {
    return this.sessions.size;
  }

  session(user: string, device: string): Session | undefined {
    return this.sessions.get(`${user}/${device}`);
  }

  /** Every session of `user` on this cell. */
  sessionsOf(user: string): Iterable<Session> {
    return this.byUser.get(user) ?? [];
  }

  async registerSession(s: Session): Promise<void> {
    this.handshakeDone(s.transport); // registration is the first thing an open session does
    const key = `${s.user}/${s.device}`;
    const { epoch, replaced } = await this.directory.register(s.user, s.device, this.cellId, this.config.nodeId);
    // Revoked while this session was being set up (its handshake read the account just before)?
    const suspendedAt = this.revocations.get(s.user);
    const revoked = this.revocations.get(key) === s.rid ? ErrorCode.DEVICE_REVOKED : suspendedAt !== undefined && suspendedAt >= s.startedAt ? ErrorCode.ACCOUNT_SUSPENDED : undefined;
    if (revoked) s.bye(revoked, REFUSED[revoked]);
    if (!s.isOpen) {
      await this.directory.unregister(s.user, s.device, epoch);
      return;
    }
    s.epoch = epoch;
    s.registered = true;
    s.registeredAt = Date.now();
    const local = this.sessions.get(key);
    if (local && local !== s) local.bye(ErrorCode.SESSION_REPLACED, 'this device connected again elsewhere');
    this.sessions.set(key, s);
    let mine = this.byUser.get(s.user);
    if (!mine) this.byUser.set(s.user, (mine = new Set()));
    mine.add(s);
    this.metrics.sessions.set(this.sessions.size);
    this.gravity.registered(s);
    if (replaced && replaced.cell !== this.cellId) this.publish(replaced.cell, { k: 'kick', user: s.user, dev: s.device, ep: replaced.epoch });
    // Registered first, then drained: a store that raced with this registration is
    // followed by a lookup that finds the session and wakes the drain again.
    this.drainMailbox(s);
    this.groups.catchUp(s);
    this.presence.online(s);
  }

  detach(s: Session, wasOpen: boolean): void {
    const key = `${s.user}/${s.device}`;
    this.drainQueue.delete(s);
    if (this.sessions.get(key) === s) {
      this.sessions.delete(key);
      const mine = this.byUser.get(s.user);
      mine?.delete(s);
      if (mine?.size === 0) this.byUser.delete(s.user);
      this.metrics.sessions.set(this.sessions.size);
      this.gravity.detached(s);
    }
    // Live items the device never acknowledged: their custody cells need not wait out
    // the window, they can store them (or find the device's new session) now.
    for (const d of s.unacked.values()) {
      if (d.via !== 'live') continue;
      const { item } = d;
      if (d.origin === this.cellId) this.custody.notHereFor(`${item.from}/${item.fd}/${item.id}`, s.user, s.device);
      else this.publish(d.origin, { k: 'nh', id: item.id, from: item.from, fd: item.fd, u: s.user, dev: s.device });
    }
    s.unacked.clear();
    if (wasOpen && s.registered) {
      this.presence.offline(s);
      this.groups.detached(s);
      this.directory.unregister(s.user, s.device, s.epoch).catch((err) => this.log('directory unregister failed', err));
    }
  }

  // ---- mailbox drain ------------------------------------------------------------

  /**
   * Delivers a device's mailbox in order, at most `mailbox.drainWindow` items
   * unacknowledged at a time. One drain per session; a wake-up during a drain
   * makes it run once more from where it stopped.
   */
  drainMailbox(s: Session): void {
    const d = s.drain;
    if (d.running) {
      d.again = true;
      return;
    }
    // Bounded concurrency: a reconnect storm must not starve handshakes and live traffic.
    if (this.activeDrains >= MAX_CONCURRENT_DRAINS) {
      this.drainQueue.add(s);
      return;
    }
    this.activeDrains++;
    d.running = true;
    const atConnect = !d.hinted;
    void (async () => {
      try {
        do {
          d.again = false;
          for await (const { item, ref } of this.mailbox.read(s.user, s.device, d.next)) {
            if (!s.isOpen) return;
            d.next = ref.seq + 1;
            if (s.unacked.has(`${item.from}/${item.id}`)) continue; // already in flight on this session
            // The first thing a device finds at connect tells whom it belongs with (gravitation).
            if (atConnect && !d.hinted && item.k === 'm') {
              d.hinted = true;
              if (await this.gravity.associateHint(s, item)) {
                d.next = ref.seq; // the new cell drains it; if the device stays, this one does
                return;
              }
            }
            await s.windowFor(this.config.mailbox.drainWindow);
            if (!s.isOpen) return;
            s.deliverStored(item, ref);
            this.metrics.deliveries.inc({ path: 'mailbox' });
          }
        } while (d.again && s.isOpen);
        d.retryMs = 0;
        d.hinted = true;
      } catch (err) {
        // NATS away or a stream changing leader: the items stay in the mailbox; try again soon.
        this.log('mailbox drain failed', err);
        d.retryMs = Math.min(5000, Math.max(250, d.retryMs * 2));
        setTimeout(() => s.isOpen && this.drainMailbox(s), d.retryMs).unref();
      } finally {
        d.running = false;
        this.activeDrains--;
        for (const next of this.drainQueue) {
          this.drainQueue.delete(next);
          if (next.isOpen) {
            this.drainMailbox(next);
            break;
          }
        }
      }
    })();
  }

  /**
   * After NATS comes back, wake-ups meant for this cell may have been lost or never
   * sent (others counted it dead): every session looks at its mailbox again (one
   * cheap read each when empty).
   */
  redrainAll(): void {
    for (const s of this.sessions.values()) this.drainMailbox(s);
  }

  /** Tells the cell hosting `loc` that the device's mailbox has new items. */
  pokeMailbox(loc: DeviceLocation, user: string): void {
    if (loc.cell === this.cellId) {
      const s = this.session(user, loc.device);
      if (s) this.drainMailbox(s);
    } else this.publish(loc.cell, { k: 'mbx', user, dev: loc.device });
  }

  // ---- acknowledgements -----------------------------------------------------------

  /** A device acknowledged something it was given; what that means depends on how it came. */
  onDeviceAck(s: Session, d: Delivery): void {
    const item = d.item;
    switch (d.via) {
      case 'live': {
        if (d.ref) this.mailbox.remove(d.ref).catch((err) => this.log('mailbox ack failed', err));
        const key = `${item.from}/${item.fd}/${item.id}`;
        if (d.origin === this.cellId) this.custody.acked(key, s.user, s.device);
        else this.publish(d.origin, { k: 'ack', id: item.id, from: item.from, fd: item.fd, u: s.user, dev: s.device });
        return;
      }
      case 'mbox':
        this.mailbox
          .remove(d.ref)
          .then((removed) => {
            // The sender was told `stored`; now tell it this device has it. Not for the
            // sender's own devices, nor for receipts (no receipts of receipts).
            if (removed && item.k === 'm' && item.from !== s.user) return this.custody.receipt(item.from, item.id, s.user, s.device, 'delivered');
          })
          .catch((err) => this.log('mailbox ack failed', err));
        return;
      case 'group':
        this.groups.acked(s, d.item);
    }
  }

  // ---- requests -----------------------------------------------------------------

  /** A `req` from a session: validated here, answered with `res` carrying the same rid. */
  async request(s: Session, m: Request): Promise<void> {
    try {
      const args = decodeRequestArgs(m.op, m.a);
      const [area] = m.op.split('.');
      let data: unknown;
      if (area === 'contacts' || area === 'prefs') data = await this.social.handle(s, m.op, args);
      else if (area === 'groups') data = await this.groups.handle(s, m.op, args);
      else if (area === 'devices') data = await this.devices(s, m.op, args);
      else if (area === 'track') data = await this.intake.handle(s, m.op, args);
      else if (area === 'profile') data = await this.profiles.handle(s, m.op, args);
      else if (area === 'push' || area === 'mute') data = await this.push.handle(s, m.op, args);
      else if (area === 'reach') data = await this.relay.report(s, args as RequestArgs['reach.report']);
      else throw new ProtocolError(ErrorCode.UNKNOWN_TYPE, `no handler for ${m.op}`);
      s.send({ t: 'res', rid: m.rid, ok: true, ...(data !== undefined && { data }) });
    } catch (err) {
      const pe = err instanceof ProtocolError ? err : undefined;
      if (!pe) this.log(`request ${m.op} failed`, err);
      s.send({ t: 'res', rid: m.rid, ok: false, code: pe?.code ?? ErrorCode.BUSY, message: pe?.message ?? 'the request could not be completed now' });
    }
  }

  private async devices(s: Session, op: string, args: unknown): Promise<unknown> {
    switch (op) {
      case 'devices.list':
        return { devices: await this.accounts.deviceList(s.user) };
      case 'devices.link': {
        const a = args as RequestArgs['devices.link'];
        return this.accounts.approve(s.user, s.device, s.rid, a.device, a.key);
      }
      default: {
        const { device } = args as RequestArgs['devices.remove'];
        // Answers once no cell accepts the device any more; its sessions end everywhere (onInvalidation).
        await this.accounts.removeDevice(s.user, device);
        await Promise.all([this.mailbox.purgeDevice(s.user, device), this.groups.forgetDevice(s.user, device), this.push.forgetDevice(s.user, device)]);
        return undefined;
      }
    }
  }

  /** What accounts tell the cell: caches to drop, revocations to broadcast, notices for the account's other devices. */
  private accountEvents(): AccountEvents {
    const notice = (user: string, device: string, sys: string, text: string): void => {
      this.custody.notice(user, device, { from: ACCOUNT_SENDER, sys, text, about: device }).catch((err: unknown) => this.log('account notice failed', err));
    };
    return {
      changed: (user) => this.invalidate({ kind: 'devices', key: user }),
      revoked: (user, dev, rid) => this.invalidate({ kind: 'revoked', key: user, ...(dev !== undefined && { dev, rid: rid ?? 0 }) }),
      added: (user, device) => notice(user, device, NOTICE.deviceAdded, `a new device (${device}) was added to your account`),
      removed: (user, device) => notice(user, device, NOTICE.deviceRemoved, `the device ${device} was removed from your account`),
    };
  }

  /**
   * Keys were revoked somewhere in the cluster: live sessions of that registration
   * (or of the whole suspended account) end with the code, and the revocation is
   * remembered for sessions still being set up (registerSession).
   */
  private revoked(user: string, dev: string | undefined, rid: number | undefined): void {
    // A rid is never registered twice; a suspension refuses only sessions that began before it was heard of.
    if (dev === undefined) this.revocations.set(user, performance.now());
    else this.revocations.set(`${user}/${dev}`, rid ?? 0);
    for (const s of [...this.sessionsOf(user)]) {
      if (dev !== undefined && (s.device !== dev || s.rid !== rid)) continue;
      this.metrics.revokedSessions.inc();
      const why = dev === undefined ? ErrorCode.ACCOUNT_SUSPENDED : ErrorCode.DEVICE_REVOKED;
      s.bye(why, REFUSED[why]);
    }
  }

  /**
   * After NATS comes back: a revocation broadcast while this cell was cut off
   * never reached it, so every session's registration is read again (a few at a
   * time) and those no longer current end.
   */
  recheckSessions(): void {
    void each([...this.sessions.values()], RECHECK_CONCURRENCY, async (s) => {
      if (!s.isOpen) return;
      try {
        const why = await this.accounts.standing(s.user, s.device, s.rid);
        if (why) {
          this.metrics.revokedSessions.inc();
          s.bye(why, REFUSED[why]);
        }
      } catch (err) {
        this.log('session re-check failed (kept)', err);
      }
    });
  }

  // ---- NATS -------------------------------------------------------------------

  publish(cell: string, e: Envelope): void {
    this.nc.publish(this.names.cellInbox(cell), pack(e));
  }

  /** Tells every cell of the cluster (this one included) that a cached record changed. */
  invalidate(i: Invalidation): void {
    this.nc.publish(this.names.invalidations, pack(i));
  }

  private onInvalidation(data: Uint8Array): void {
    let i: Invalidation;
    try {
      i = decodeInvalidation(unpack(data));
    } catch {
      return;
    }
    if (i.kind === 'revoked') this.revoked(i.key, i.dev, i.rid);
    else if (i.kind === 'devices') this.accounts.invalidate(i.key);
    else if (i.kind === 'social') this.social.invalidate(i.key, i.d);
    else if (i.kind === 'profile') this.profiles.invalidate(i.key);
    else if (i.kind === 'mutes') this.push.mutesChanged(i.key);
    else this.groups.invalidate(i.key);
  }

  private onEnvelope(data: Uint8Array): void {
    let e: Envelope;
    try {
      e = decodeEnvelope(unpack(data));
    } catch (err) {
      this.log('dropped a malformed cell envelope', err);
      return;
    }
    switch (e.k) {
      case 'dlv': {
        const target = this.session(e.u, e.dev);
        if (target?.deliverLive(e.m, e.oc)) this.gravity.record(target, e.oc);
        else this.publish(e.oc, { k: 'nh', id: e.m.id, from: e.m.from, fd: e.m.fd, u: e.u, dev: e.dev });
        return;
      }
      case 'ack':
        return this.custody.acked(`${e.from}/${e.fd}/${e.id}`, e.u, e.dev);
      case 'nh':
        return this.custody.notHereFor(`${e.from}/${e.fd}/${e.id}`, e.u, e.dev);
      case 'kick': {
        const s = this.session(e.user, e.dev);
        if (s && s.epoch <= e.ep) s.bye(ErrorCode.SESSION_REPLACED, 'this device connected again elsewhere');
        return;
      }
      case 'mbx': {
        const s = this.session(e.user, e.dev);
        if (s) this.drainMailbox(s);
        return;
      }
      case 'gdlv':
        return this.groups.onDelivery(e.m, e.to);
      case 'typ':
        return this.presence.onTyping(e);
      case 'exp':
        return this.gravity.expect(e.user, e.dev);
      case 'rly':
        return this.relay.deliver(e.u, e.dev, e.tu, e.td, e.w);
    }
  }

  // ---- lifecycle --------------------------------------------------------------

  /** Stop accepting, say goodbye to every session, leave the directory and membership. */
  async drain(): Promise<void> {
    if (this.draining) return;
    this.draining = true;
    this.server?.close();
    this.web?.close();
    const leaving = [...this.sessions.values()].map((s) => {
      const done = s.registered ? this.directory.unregister(s.user, s.device, s.epoch).catch(() => undefined) : Promise.resolve();
      s.registered = false;
      s.bye(ErrorCode.SHUTTING_DOWN, 'server is shutting down');
      return done;
    });
    for (const t of this.transports) t.end(ErrorCode.SHUTTING_DOWN);
    await Promise.race([Promise.all(leaving), new Promise((r) => setTimeout(r, 5000))]);
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
    for (const sub of this.subs) sub.unsubscribe();
    this.metrics.stop();
  }
}