import { createServer, type Server, type Socket } from 'node:net';
import type { NatsConnection, Subscription } from '@nats-io/transport-node';
import { encodeFrame, ErrorCode, nativeSuite, fromBase64Url, pack, unpack, type Send, type ServerHandshakeContext } from '@gravitas/protocol';
import type { NodeConfig } from '../config.js';
import { Names } from '../subjects.js';
import type { CellStatus } from '../types.js';
import { Accounts } from './accounts.js';
import { Directory, type DeviceLocation } from './directory.js';
import { HandshakeGuard } from './guard.js';
import { Membership } from './membership.js';
import { CellMetrics } from './metrics.js';
import { openBuckets } from './nats.js';
import { Session, type Origin } from './session.js';
import { SpentTickets } from './tickets.js';
import { decodeEnvelope, type Envelope, type WireMsg } from './envelope.js';

/** A message awaiting acknowledgement from every recipient device. */
interface Pending {
  from: string;
  fd: string;
  m: WireMsg;
  /** device → where we sent it, and whether we already retried after a "not here". */
  remaining: Map<string, { loc: DeviceLocation; retried: boolean }>;
  acked: number;
  deadline: number;
}

const SWEEP_MS = 100;

/**
 * One cell: a TCP listener, the sessions it accepted, its own NATS connection and
 * inbox subject. Routes a message by direct call when the recipient device is on
 * this cell and by one NATS publish when it is elsewhere.
 */
export class Cell {
  readonly metrics: CellMetrics;
  readonly guard: HandshakeGuard;
  readonly handshakeContext: ServerHandshakeContext;
  readonly names: Names;
  accounts!: Accounts;
  tickets!: SpentTickets;
  directory!: Directory;
  membership!: Membership;
  private server: Server | undefined;
  private sub: Subscription | undefined;
  private readonly sockets = new Set<Socket>();
  /** Open sessions by `user/device`. */
  private readonly sessions = new Map<string, Session>();
  private readonly pending = new Map<string, Pending>();
  /** Messages in flight per sending device (bounded by limits.maxInFlightPerSession). */
  private readonly inFlight = new Map<string, number>();
  private sweeper: NodeJS.Timeout | undefined;
  private draining = false;
  address = '';
  private port = 0;

  constructor(
    readonly config: NodeConfig,
    readonly cellId: string,
    readonly index: number,
    readonly nc: NatsConnection,
    readonly log: (msg: string, err?: unknown) => void,
    /** Port of an earlier generation of this cell, reused so clients find it again. */
    private readonly previousPort?: number,
  ) {
    this.metrics = new CellMetrics(cellId);
    this.names = new Names(config.prefix);
    this.guard = new HandshakeGuard(config.limits.maxHandshakesInFlight, config.limits.cookieThresholdPerSec);
    const [current, previous] = config.ticketKeys.map((k) => ({ id: k.id, key: fromBase64Url(k.key, 32) }));
    this.handshakeContext = {
      staticKey: nativeSuite.fromSecret(fromBase64Url(config.serverKey, 32)),
      ticketKeys: { current: current!, ...(previous && { previous }) },
      ticketLifetimeMs: config.ticketLifetimeMs,
      suite: nativeSuite,
      now: Date.now,
    };
  }

  async start(): Promise<void> {
    const b = await openBuckets(this.nc, this.config);
    this.accounts = new Accounts(b.accounts, this.config.registration);
    this.tickets = new SpentTickets(b.tickets);
    this.sub = this.nc.subscribe(this.names.cellInbox(this.cellId), {
      callback: (err, msg) => {
        if (!err) this.onEnvelope(msg.data);
      },
    });
    await this.listen();
    this.membership = new Membership(
      b.cells,
      () => ({ cell: this.cellId, node: this.config.nodeId, address: this.address, sessions: this.sessions.size, lagMs: this.metrics.lagMs(), state: this.draining ? 'draining' : 'up' }),
      this.config.membership.heartbeatMs,
      this.config.membership.timeoutMs,
    );
    this.directory = new Directory(b.directory, (cell) => cell === this.cellId || this.membership.isLive(cell));
    await this.membership.start();
    this.sweeper = setInterval(() => this.sweep(), SWEEP_MS);
    this.sweeper.unref();
  }

  private listen(): Promise<void> {
    const { host, basePort } = this.config.listen;
    const server = createServer({ allowHalfOpen: true, noDelay: true }, (socket) => this.accept(socket));
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

  private accept(socket: Socket): void {
    if (this.draining || this.sockets.size >= this.config.limits.maxConnectionsPerCell) {
      socket.end(encodeFrame(pack({ t: 'error', code: ErrorCode.BUSY, message: this.draining ? 'server is shutting down' : 'cell is at its connection limit' })));
      return;
    }
    this.sockets.add(socket);
    this.metrics.connections.set(this.sockets.size);
    socket.once('close', () => {
      this.sockets.delete(socket);
      this.metrics.connections.set(this.sockets.size);
    });
    new Session(this, socket);
  }

  status(): CellStatus {
    return {
      cellId: this.cellId,
      address: this.address,
      natsConnected: !this.nc.isClosed() && !this.draining,
      listening: this.server?.listening ?? false,
      connections: this.sockets.size,
      sessions: this.sessions.size,
    };
  }

  // ---- sessions ---------------------------------------------------------------

  async registerSession(s: Session): Promise<void> {
    const key = `${s.user}/${s.device}`;
    const { epoch, replaced } = await this.directory.register(s.user, s.device, this.cellId, this.config.nodeId);
    if (!s.isOpen) {
      await this.directory.unregister(s.user, s.device, epoch);
      return;
    }
    s.epoch = epoch;
    s.registered = true;
    const local = this.sessions.get(key);
    if (local && local !== s) local.bye(ErrorCode.SESSION_REPLACED, 'this device connected again elsewhere');
    this.sessions.set(key, s);
    this.metrics.sessions.set(this.sessions.size);
    if (replaced && replaced.cell !== this.cellId) this.publish(replaced.cell, { k: 'kick', user: s.user, dev: s.device, ep: replaced.epoch });
  }

  detach(s: Session, wasOpen: boolean): void {
    const key = `${s.user}/${s.device}`;
    if (this.sessions.get(key) === s) {
      this.sessions.delete(key);
      this.metrics.sessions.set(this.sessions.size);
    }
    if (wasOpen && s.registered) {
      this.directory.unregister(s.user, s.device, s.epoch).catch((err) => this.log('directory unregister failed', err));
    }
  }

  // ---- routing ----------------------------------------------------------------

  async route(s: Session, m: Send): Promise<void> {
    const key = `${s.user}/${s.device}/${m.id}`;
    if (this.pending.has(key)) return; // a re-send of a message still in flight: its status will come
    const sender = `${s.user}/${s.device}`;
    const inFlight = this.inFlight.get(sender) ?? 0;
    if (inFlight >= this.config.limits.maxInFlightPerSession) return s.send({ t: 'status', id: m.id, s: 'failed', code: ErrorCode.TOO_MANY_IN_FLIGHT });
    const locs = (await this.directory.lookup(m.to)).filter((l) => !(m.to === s.user && l.device === s.device));
    if (locs.length === 0) return s.send({ t: 'status', id: m.id, s: 'failed', code: ErrorCode.RECIPIENT_OFFLINE });
    const wire: WireMsg = { id: m.id, from: s.user, fd: s.device, to: m.to, text: m.text, ts: Date.now() };
    const p: Pending = { from: s.user, fd: s.device, m: wire, remaining: new Map(), acked: 0, deadline: Date.now() + this.config.limits.custodyWindowMs };
    for (const loc of locs) p.remaining.set(loc.device, { loc, retried: false });
    this.pending.set(key, p);
    this.inFlight.set(sender, inFlight + 1);
    for (const loc of locs) this.dispatch(p, loc);
  }

  private dispatch(p: Pending, loc: DeviceLocation): void {
    if (loc.cell === this.cellId) {
      const target = this.sessions.get(`${p.m.to}/${loc.device}`);
      if (target?.deliver(p.m, { cell: this.cellId, user: p.from, device: p.fd })) this.metrics.deliveries.inc({ path: 'local' });
      else this.notHere(p, loc.device);
    } else {
      this.publish(loc.cell, { k: 'dlv', m: p.m, dev: loc.device, oc: this.cellId });
      this.metrics.deliveries.inc({ path: 'cross_cell' });
    }
  }

  /** The device was not where the directory said: look again once, then give up on it. */
  private notHere(p: Pending, device: string): void {
    const r = p.remaining.get(device);
    if (!r) return;
    if (r.retried) {
      p.remaining.delete(device);
      return this.settleIfDone(p);
    }
    r.retried = true;
    this.directory.invalidate(p.m.to);
    this.directory
      .lookup(p.m.to, true)
      .then((locs) => {
        const loc = locs.find((l) => l.device === device);
        if (loc && (loc.cell !== r.loc.cell || loc.epoch !== r.loc.epoch)) {
          r.loc = loc;
          this.dispatch(p, loc);
        } else this.notHere(p, device);
      })
      .catch(() => this.notHere(p, device));
  }

  ackToOrigin(origin: Origin, id: string, byUser: string, byDevice: string): void {
    if (origin.cell === this.cellId) this.onAck(origin.user, origin.device, id, byDevice);
    else this.publish(origin.cell, { k: 'ack', id, from: origin.user, fd: origin.device, to: byUser, dev: byDevice });
  }

  private onAck(from: string, fd: string, id: string, byDevice: string): void {
    const p = this.pending.get(`${from}/${fd}/${id}`);
    if (!p || !p.remaining.delete(byDevice)) return;
    p.acked++;
    this.settleIfDone(p);
  }

  private settleIfDone(p: Pending): void {
    if (p.remaining.size > 0) return;
    this.settle(p, p.acked > 0 ? 'delivered' : 'failed', p.acked > 0 ? undefined : ErrorCode.RECIPIENT_OFFLINE);
  }

  private settle(p: Pending, state: 'delivered' | 'failed', code?: ErrorCode): void {
    this.pending.delete(`${p.from}/${p.fd}/${p.m.id}`);
    const key = `${p.from}/${p.fd}`;
    const n = (this.inFlight.get(key) ?? 1) - 1;
    if (n > 0) this.inFlight.set(key, n);
    else this.inFlight.delete(key);
    const sender = this.sessions.get(key);
    sender?.send({ t: 'status', id: p.m.id, s: state, ...(code && { code }) });
  }

  /** Pending entries are in deadline order (one window for all), so the sweep stops at the first live one. */
  private sweep(): void {
    const now = Date.now();
    for (const p of this.pending.values()) {
      if (p.deadline > now) break;
      this.settle(p, 'failed', ErrorCode.DELIVERY_TIMEOUT);
    }
  }

  // ---- NATS -------------------------------------------------------------------

  private publish(cell: string, e: Envelope): void {
    this.nc.publish(this.names.cellInbox(cell), pack(e));
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
        const target = this.sessions.get(`${e.m.to}/${e.dev}`);
        if (!target?.deliver(e.m, { cell: e.oc, user: e.m.from, device: e.m.fd })) {
          this.publish(e.oc, { k: 'nh', id: e.m.id, from: e.m.from, fd: e.m.fd, dev: e.dev });
        }
        return;
      }
      case 'ack':
        return this.onAck(e.from, e.fd, e.id, e.dev);
      case 'nh': {
        const p = this.pending.get(`${e.from}/${e.fd}/${e.id}`);
        if (p) this.notHere(p, e.dev);
        return;
      }
      case 'kick': {
        const s = this.sessions.get(`${e.user}/${e.dev}`);
        if (s && s.epoch <= e.ep) s.bye(ErrorCode.SESSION_REPLACED, 'this device connected again elsewhere');
        return;
      }
    }
  }

  // ---- lifecycle --------------------------------------------------------------

  /** Stop accepting, say goodbye to every session, leave the directory and membership. */
  async drain(): Promise<void> {
    if (this.draining) return;
    this.draining = true;
    this.server?.close();
    const leaving = [...this.sessions.values()].map((s) => {
      const done = s.registered ? this.directory.unregister(s.user, s.device, s.epoch).catch(() => undefined) : Promise.resolve();
      s.registered = false;
      s.bye(ErrorCode.SHUTTING_DOWN, 'server is shutting down');
      return done;
    });
    for (const socket of this.sockets) socket.end();
    await Promise.race([Promise.all(leaving), new Promise((r) => setTimeout(r, 5000))]);
    clearInterval(this.sweeper);
    await this.membership?.stop(this.cellId);
    this.sub?.unsubscribe();
    this.metrics.stop();
  }
}
