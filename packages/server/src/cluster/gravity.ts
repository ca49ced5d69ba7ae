import type { Msg, NatsConnection, Subscription } from '@nats-io/transport-node';
import { chooseHintCell, choosePartner, CellTraffic, CELL_SPACE, loadCap, meanLoad, planExchange, RateLimiter, type ExchangeSide, type SessionTraffic } from '@gravitas/placement';
import { isName, pack, unpack, type HintKeyPair } from '@gravitas/protocol';
import type { CellContext } from '../core/context.js';
import type { ChatItem } from '../core/envelope.js';
import type { CellLoad, DirectoryPort, MessagingEvents, Placement } from '../core/ports.js';
import type { DeviceSession } from '../core/session.js';
import { TtlCache } from '../infra/ttl-cache.js';
import { Hints, type SelfAddress } from './hints.js';

/** What gravitation uses besides the context. */
export interface GravityPorts {
  hints: Hints;
  self: SelfAddress;
  directory: () => Pick<DirectoryPort, 'lookup'>;
  /** Runs a device's mailbox drain (after a move it did not follow). */
  drain(s: DeviceSession): void;
}

/*
 * Gravitation on a real cell (docs/gravitation.md). The policy itself lives in
 * @gravitas/placement, shared with the placement simulator; this module feeds it
 * the cell's traffic, talks to other cells over NATS request/reply, and turns
 * plans into signed connect hints sent to the sessions that move.
 *
 * Exchange, initiated by cell A with cell B (the remote cell it trades most with):
 *   A → B  { from, addr, load, c: [[user, device, gain]], sp: [[user, device, weight]] }
 *   B → A  { busy: true }  or  { addr, yours: [[user, device]], mine: [[user, device]] }
 * B plans with planExchange (A's lists and its own), then both send their own movers
 * a `move` hint naming the other cell. A cell takes part in one exchange at a time.
 */

type Pair = [string, string];
type Weighted = [string, string, number];
interface ExchangeRequest { from: string; addr: string; load: number; c: Weighted[]; sp: Weighted[] }
type ExchangeReply = { busy: true } | { busy?: false; addr: string; yours: Pair[]; mine: Pair[] };

const REQUEST_TIMEOUT_MS = 2000;
/** A move that did not happen within this time does not hold the session back any more. */
const ASSOCIATE_FALLBACK_MS = 2000;
const MAX_LIST = 10_000;

const isPair = (p: unknown): p is Pair => Array.isArray(p) && p.length >= 2 && typeof p[0] === 'string' && isName(p[0], 128) && typeof p[1] === 'string' && isName(p[1], 32);
const isWeighted = (p: unknown): p is Weighted => isPair(p) && typeof (p as unknown[])[2] === 'number' && Number.isFinite((p as unknown[])[2]);

function decodeRequest(v: unknown): ExchangeRequest | undefined {
  const o = v as Partial<ExchangeRequest> | null;
  if (typeof o !== 'object' || o === null || typeof o.from !== 'string' || !isName(o.from, 128) || typeof o.addr !== 'string' || typeof o.load !== 'number') return undefined;
  if (!Array.isArray(o.c) || !Array.isArray(o.sp) || o.c.length + o.sp.length > MAX_LIST || !o.c.every(isWeighted) || !o.sp.every(isWeighted)) return undefined;
  return { from: o.from, addr: o.addr, load: o.load, c: o.c, sp: o.sp };
}

function decodeReply(v: unknown): ExchangeReply | undefined {
  const o = v as { busy?: unknown; addr?: unknown; yours?: unknown; mine?: unknown } | null;
  if (typeof o !== 'object' || o === null) return undefined;
  if (o.busy === true) return { busy: true };
  if (typeof o.addr !== 'string' || !Array.isArray(o.yours) || !Array.isArray(o.mine) || !o.yours.every(isPair) || !o.mine.every(isPair)) return undefined;
  return { addr: o.addr, yours: o.yours, mine: o.mine };
}

export class Gravity implements Placement, Pick<MessagingEvents, 'delivered'> {
  private readonly traffic: CellTraffic;
  /** Cell ids as small numbers for the sketch (cell ids change with every incarnation). */
  private readonly cellNums = new Map<string, number>();
  private readonly bySlot = new Map<number, DeviceSession>();
  private readonly limiter: RateLimiter;
  /** Partners recently traded with. */
  private readonly cooldown: TtlCache<string, true>;
  /** Sessions told to move here, by user/device: an arrival counts as a followed hint. */
  private readonly expected: TtlCache<string, true>;
  /** Live deliveries since the last scrape, local and cross-cell (the locality gauge). */
  private window = { local: 0, remote: 0 };
  private busy = false;
  private timer: NodeJS.Timeout | undefined;
  private sub: Subscription | undefined;
  private stopped = false;

  private readonly hints: Hints;

  constructor(private readonly ctx: CellContext, private readonly ports: GravityPorts) {
    const g = ctx.config.gravity;
    this.hints = ports.hints;
    this.traffic = new CellTraffic(0, g.sketchSize, g.halfLifeMs, performance.now());
    this.cellNums.set(ctx.cellId, 0);
    this.limiter = new RateLimiter(g.migrationsPerSec, g.maxMovesPerExchange, performance.now());
    this.cooldown = new TtlCache(1024, Math.max(1, g.cooldownMs));
    this.expected = new TtlCache(100_000, g.hintTtlMs);
  }

  /** The cluster's hint key pair (derived from the server key): hints, and relay wake tokens. */
  get keys(): HintKeyPair {
    return this.hints.keys;
  }

  /** The public half of the hint key, for the welcome. */
  get hintPublicKey(): Uint8Array {
    return this.hints.keys.publicKey;
  }

  private get nc(): NatsConnection {
    return this.ctx.nc;
  }

  private subject(cellId: string): string {
    return `${this.ctx.config.prefix}.gravity.${cellId}`;
  }

  start(): void {
    this.sub = this.nc.subscribe(this.subject(this.ctx.cellId), { callback: (err, msg) => void (err || this.onRequest(msg)) });
    if (this.ctx.config.gravity.enabled) this.schedule();
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
    this.sub?.unsubscribe();
  }

  private schedule(): void {
    const every = this.ctx.config.gravity.intervalMs;
    this.timer = setTimeout(() => {
      if (this.stopped) return;
      this.exchange()
        .catch((err) => this.ctx.log('gravity exchange failed', err))
        .finally(() => !this.stopped && this.schedule());
    }, every * (0.5 + Math.random()));
    this.timer.unref();
  }

  // ---- counting -------------------------------------------------------------------

  private cellNum(cellId: string): number {
    let n = this.cellNums.get(cellId);
    if (n !== undefined) return n;
    if (this.cellNums.size >= CELL_SPACE) {
      // Many incarnations of cells since start: forget the old ids (and their counts).
      this.cellNums.clear();
      this.cellNums.set(this.ctx.cellId, 0);
      this.traffic.forget(() => true);
    }
    n = this.cellNums.size;
    this.cellNums.set(cellId, n);
    return n;
  }

  /** One delivery between session `s` of this cell and a session on `peerCell`. */
  record(s: DeviceSession, peerCell: string): void {
    this.traffic.record(s.slot, this.cellNum(peerCell), 1, performance.now());
  }

  /** A live item held by cell `origin` reached `s` here: the recipient's side of the count. */
  arrived(s: DeviceSession, origin: string): void {
    this.record(s, origin);
  }

  /**
   * A live delivery this cell (the custody cell) made: `sender` is the sending
   * session if it is here, `recipient` the receiving one if it is here, `peerCell`
   * where the recipient is. The recipient's cell records its side on arrival.
   */
  delivered(sender: DeviceSession | undefined, recipient: DeviceSession | undefined, peerCell: string): void {
    if (peerCell === this.ctx.cellId) this.window.local++;
    else this.window.remote++;
    if (sender) this.record(sender, peerCell);
    if (recipient) this.record(recipient, peerCell);
  }

  /** Scrape time: locality since the last scrape, and the balance this cell sees. */
  sampleGauges(): void {
    const { local, remote } = this.window;
    if (local + remote > 0) this.ctx.metrics.locality.set({ cell: this.ctx.cellId }, local / (local + remote));
    this.window = { local: 0, remote: 0 };
    this.ctx.metrics.balance.set({ cell: this.ctx.cellId }, this.balance());
  }

  /** A device was sent a hint to this cell: its arrival will count as followed. */
  expect(user: string, device: string): void {
    this.expected.set(`${user}/${device}`, true);
  }

  registered(s: DeviceSession): void {
    this.bySlot.set(s.slot, s);
    if (this.expected.get(`${s.user}/${s.device}`)) {
      this.expected.delete(`${s.user}/${s.device}`);
      this.ctx.metrics.hintsFollowed.inc();
    }
  }

  detached(s: DeviceSession): void {
    this.bySlot.delete(s.slot);
  }

  // ---- who may move, and where -----------------------------------------------------

  /** Not in a handshake (unregistered), not draining its mailbox, settled long enough. */
  private movable(s: DeviceSession | undefined, now: number): s is DeviceSession {
    return s !== undefined && s.isOpen && s.registered && !s.drain.running && !s.moving && now - s.registeredAt >= this.ctx.config.gravity.minDwellMs;
  }

  loads(): Map<string, CellLoad> {
    return this.hints.loads();
  }

  signHintTo(cellId: string, user: string, device: string, ttlMs: number, now = Date.now(), loads = this.loads()): Uint8Array | undefined {
    return this.hints.signHintTo(cellId, user, device, ttlMs, now, loads);
  }

  /** max/mean sessions over the live cells (1 = perfectly even). */
  balance(): number {
    const loads = this.loads();
    const mean = meanLoad(loads);
    let max = 0;
    for (const l of loads.values()) max = Math.max(max, l.load);
    return mean > 0 ? max / mean : 1;
  }

  /** Sends `s` a signed hint to move to `cellId` at `addr`. */
  private move(s: DeviceSession, cellId: string, addr: string, why: 'rebalance' | 'associate'): void {
    // The target's web listener too, so a device on WebSocket or chunked HTTP can follow.
    const h = this.hints.signHintAt(cellId, addr, s.user, s.device, this.ctx.config.gravity.hintTtlMs);
    s.moving = true;
    s.send({ t: 'move', h, why });
    this.ctx.metrics.migrations.inc({ why });
    // A hint not followed by its expiry (an old SDK, an unreachable cell): the session may be planned again.
    setTimeout(() => (s.moving = false), this.ctx.config.gravity.hintTtlMs).unref();
  }

  /**
   * The first stored item a device gets at connect, from another user: the device
   * belongs with that user (an associate), so it is told to move where
   * chooseHintCell says among the sender's devices' cells (the sending device's
   * first), as long as the cell is below its load cap. True if a move was sent
   * (the drain waits).
   */
  async associateHint(s: DeviceSession, item: ChatItem): Promise<boolean> {
    if (!this.ctx.config.gravity.enabled || item.from === s.user || s.moving) return false;
    const locs = await this.ports.directory().lookup(item.from);
    const loads = this.loads();
    const preferred = locs.find((l) => l.device === item.fd)?.cell ?? locs[0]?.cell;
    if (preferred === undefined) return false;
    const cap = loadCap(meanLoad(loads), this.ctx.config.gravity.epsilon);
    // What the cell knows of this device's associates: the sender, its sending device first.
    const associates = locs.map((l) => ({ cell: l.cell, weight: l.device === item.fd ? 2 : 1 }));
    const target = chooseHintCell(preferred, associates, (c) => loads.get(c)?.load, cap);
    if (target === undefined || target === this.ctx.cellId || !s.isOpen) return false;
    this.move(s, target, loads.get(target)!.addr, 'associate');
    this.ctx.bus.publish(target, { k: 'exp', user: s.user, dev: s.device });
    setTimeout(() => {
      // Not followed (a dead cell, an old SDK): stay, and drain here after all.
      if (!s.isOpen) return;
      s.moving = false;
      this.ports.drain(s);
    }, ASSOCIATE_FALLBACK_MS).unref();
    return true;
  }

  // ---- exchanges --------------------------------------------------------------------

  private sides(summary: Map<number, SessionTraffic>, partner: string): { cands: Weighted[]; spares: Weighted[] } {
    const g = this.ctx.config.gravity;
    const now = Date.now();
    const p = this.cellNum(partner);
    const eligible = (slot: number): boolean => this.movable(this.bySlot.get(slot), now);
    const named = (slot: number, w: number): Weighted => {
      const s = this.bySlot.get(slot)!;
      return [s.user, s.device, w];
    };
    return {
      cands: CellTraffic.candidates(summary, p, g.minGain, eligible, g.maxMovesPerExchange).map((c) => named(c.session, c.gain)),
      spares: CellTraffic.spares(summary, this.bySlot.keys(), p, eligible, g.maxMovesPerExchange).map((c) => named(c.session, c.weight)),
    };
  }

  /** Drops counts of sessions that left, then summarizes what is left. */
  private summary(): Map<number, SessionTraffic> {
    this.traffic.forget((slot) => !this.bySlot.has(slot));
    return this.traffic.summarize(performance.now());
  }

  /** One attempt: pick a partner (choosePartner) and trade sessions with it. */
  async exchange(): Promise<void> {
    if (this.busy || this.stopped) return;
    const loads = this.loads();
    const summary = this.summary();
    const names = new Map<number, string>();
    for (const [id, n] of this.cellNums) names.set(n, id);
    const cross: Array<[string, number]> = [];
    for (const [n, count] of CellTraffic.crossTraffic(summary)) {
      const id = names.get(n);
      if (id !== undefined) cross.push([id, count]);
    }
    const mean = meanLoad(loads);
    const cap = loadCap(mean, this.ctx.config.gravity.epsilon);
    const partner = choosePartner(this.ctx.cellId, cross, (c) => loads.get(c)?.load, (c) => this.cooldown.get(c) === true, loads.keys(), mean, cap);
    if (!partner) return;
    const { cands, spares } = this.sides(summary, partner);
    if (cands.length === 0 && (this.ctx.hub.count < cap || spares.length === 0)) return;
    this.busy = true;
    try {
      const req: ExchangeRequest = { from: this.ctx.cellId, addr: this.ports.self.address(), load: this.ctx.hub.count, c: cands, sp: spares };
      const res = await this.nc.request(this.subject(partner), pack(req), { timeout: REQUEST_TIMEOUT_MS });
      const reply = decodeReply(unpack(res.data));
      if (!reply) return this.ctx.metrics.exchanges.inc({ result: 'malformed' });
      if (reply.busy) return this.ctx.metrics.exchanges.inc({ result: 'busy' });
      this.cooldown.set(partner, true);
      this.ctx.metrics.exchanges.inc({ result: reply.yours.length + reply.mine.length > 0 ? 'moved' : 'empty' });
      for (const [u, d] of reply.mine) this.expect(u, d);
      this.carryOut(reply.yours, partner, reply.addr);
    } finally {
      this.busy = false;
    }
  }

  private onRequest(msg: Msg): void {
    const reply = (r: ExchangeReply): void => void msg.respond(pack(r));
    let req: ExchangeRequest | undefined;
    try {
      req = decodeRequest(unpack(msg.data));
    } catch {
      req = undefined;
    }
    if (!req) return; // malformed: no answer, the requester times out
    if (this.busy || this.stopped || !this.ctx.config.gravity.enabled) return reply({ busy: true });
    this.busy = true;
    try {
      const g = this.ctx.config.gravity;
      const loads = this.loads();
      loads.set(req.from, { addr: req.addr, load: req.load });
      const summary = this.summary();
      const { cands, spares } = this.sides(summary, req.from);
      // Plan over numbers: the requester's entries by index (candidates, then spares), ours likewise.
      const side = (c: Weighted[], sp: Weighted[], load: number): ExchangeSide => ({
        load,
        toOther: c.map((e, i) => ({ session: i, cell: 0, gain: e[2] })),
        spares: sp.map((e, i) => ({ session: c.length + i, weight: e[2] })),
      });
      const plan = planExchange(side(req.c, req.sp, req.load), side(cands, spares, this.ctx.hub.count), {
        mean: meanLoad(loads),
        epsilon: g.epsilon,
        maxMoves: g.maxMovesPerExchange,
        minGain: g.minGain,
      });
      const pick = (c: Weighted[], sp: Weighted[]) => (i: number): Pair => {
        const e = i < c.length ? c[i]! : sp[i - c.length]!;
        return [e[0], e[1]];
      };
      const yours = plan.aToB.map(pick(req.c, req.sp));
      const mine = plan.bToA.map(pick(cands, spares));
      reply({ addr: this.ports.self.address(), yours, mine });
      this.cooldown.set(req.from, true);
      for (const [u, d] of yours) this.expect(u, d);
      // The reply first (it tells the requester whom to expect), then the moves: a mover
      // must not reach the requester before the reply that names it.
      this.nc.flush().then(
        () => this.carryOut(mine, req.from, req.addr),
        () => undefined, // NATS away: no moves this time
      );
    } finally {
      this.busy = false;
    }
  }

  /** Sends this cell's movers to `partner`, within the migration rate. */
  private carryOut(leaving: Pair[], partner: string, addr: string): void {
    const now = Date.now();
    const movers = leaving.map(([u, d]) => this.ctx.hub.session(u, d)).filter((s): s is DeviceSession => this.movable(s, now));
    const granted = this.limiter.take(movers.length, performance.now());
    for (const s of movers.slice(0, granted)) this.move(s, partner, addr, 'rebalance');
  }
}
