import type { Msg, NatsConnection, Subscription } from '@nats-io/transport-node';
import { chooseHintCell, choosePartner, CellTraffic, CELL_SPACE, loadCap, planExchange, RateLimiter, type ExchangeSide, type SessionTraffic } from '@gravitas/placement';
import { fromBase64Url, hintKeyPair, isName, pack, signHint, unpack, type HintKeyPair } from '@gravitas/protocol';
import type { Cell } from '../cell/cell.js';
import type { ChatItem } from '../core/envelope.js';
import type { Session } from '../session/session.js';
import { TtlCache } from '../infra/ttl-cache.js';

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

/** A live cell as placement sees it. */
export interface CellLoad { addr: string; web?: string; load: number }

export class Gravity {
  private readonly traffic: CellTraffic;
  /** Cell ids as small numbers for the sketch (cell ids change with every incarnation). */
  private readonly cellNums = new Map<string, number>();
  private readonly bySlot = new Map<number, Session>();
  private readonly limiter: RateLimiter;
  /** The cluster's hint key pair (derived from the server key): hints, and relay wake tokens. */
  readonly keys: HintKeyPair;
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

  constructor(private readonly cell: Cell) {
    const g = cell.config.gravity;
    this.traffic = new CellTraffic(0, g.sketchSize, g.halfLifeMs, performance.now());
    this.cellNums.set(cell.cellId, 0);
    this.limiter = new RateLimiter(g.migrationsPerSec, g.maxMovesPerExchange, performance.now());
    this.keys = hintKeyPair(fromBase64Url(cell.config.serverKey, 32));
    this.cooldown = new TtlCache(1024, Math.max(1, g.cooldownMs));
    this.expected = new TtlCache(100_000, g.hintTtlMs);
  }

  /** The public half of the hint key, for the welcome. */
  get hintPublicKey(): Uint8Array {
    return this.keys.publicKey;
  }

  private get nc(): NatsConnection {
    return this.cell.nc;
  }

  private subject(cellId: string): string {
    return `${this.cell.config.prefix}.gravity.${cellId}`;
  }

  start(): void {
    this.sub = this.nc.subscribe(this.subject(this.cell.cellId), { callback: (err, msg) => void (err || this.onRequest(msg)) });
    if (this.cell.config.gravity.enabled) this.schedule();
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
    this.sub?.unsubscribe();
  }

  private schedule(): void {
    const every = this.cell.config.gravity.intervalMs;
    this.timer = setTimeout(() => {
      if (this.stopped) return;
      this.exchange()
        .catch((err) => this.cell.log('gravity exchange failed', err))
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
      this.cellNums.set(this.cell.cellId, 0);
      this.traffic.forget(() => true);
    }
    n = this.cellNums.size;
    this.cellNums.set(cellId, n);
    return n;
  }

  /** One delivery between session `s` of this cell and a session on `peerCell`. */
  record(s: Session, peerCell: string): void {
    this.traffic.record(s.slot, this.cellNum(peerCell), 1, performance.now());
  }

  /**
   * A live delivery this cell (the custody cell) made: `sender` is the sending
   * session if it is here, `recipient` the receiving one if it is here, `peerCell`
   * where the recipient is. The recipient's cell records its side on arrival.
   */
  delivered(sender: Session | undefined, recipient: Session | undefined, peerCell: string): void {
    if (peerCell === this.cell.cellId) this.window.local++;
    else this.window.remote++;
    if (sender) this.record(sender, peerCell);
    if (recipient) this.record(recipient, peerCell);
  }

  /** Scrape time: locality since the last scrape, and the balance this cell sees. */
  sampleGauges(): void {
    const { local, remote } = this.window;
    if (local + remote > 0) this.cell.metrics.locality.set({ cell: this.cell.cellId }, local / (local + remote));
    this.window = { local: 0, remote: 0 };
    this.cell.metrics.balance.set({ cell: this.cell.cellId }, this.balance());
  }

  /** A device was sent a hint to this cell: its arrival will count as followed. */
  expect(user: string, device: string): void {
    this.expected.set(`${user}/${device}`, true);
  }

  registered(s: Session): void {
    this.bySlot.set(s.slot, s);
    if (this.expected.get(`${s.user}/${s.device}`)) {
      this.expected.delete(`${s.user}/${s.device}`);
      this.cell.metrics.hintsFollowed.inc();
    }
  }

  detached(s: Session): void {
    this.bySlot.delete(s.slot);
  }

  // ---- who may move, and where -----------------------------------------------------

  /** Not in a handshake (unregistered), not draining its mailbox, settled long enough. */
  private movable(s: Session | undefined, now: number): s is Session {
    return s !== undefined && s.isOpen && s.registered && !s.drain.running && !s.moving && now - s.registeredAt >= this.cell.config.gravity.minDwellMs;
  }

  /** Live, accepting cells: addresses (TCP, web) and loads, this cell's own load taken fresh. */
  loads(): Map<string, CellLoad> {
    const out = new Map<string, CellLoad>();
    for (const c of this.cell.membership.live()) if (c.state === 'up') out.set(c.cell, { addr: c.address, ...(c.web && { web: c.web }), load: c.sessions });
    const web = this.cell.webAddress;
    out.set(this.cell.cellId, { addr: this.cell.address, ...(web && { web }), load: this.cell.sessionCount });
    return out;
  }

  /**
   * A signed hint sending `user`/`device` to live cell `cellId`, with its web address
   * too so a device on WebSocket or chunked HTTP can follow. Undefined if the cell is not live.
   */
  signHintTo(cellId: string, user: string, device: string, ttlMs: number, now = Date.now(), loads = this.loads()): Uint8Array | undefined {
    const c = loads.get(cellId);
    if (!c) return undefined;
    return signHint({ cell: cellId, addr: c.addr, ...(c.web && { web: c.web }), user, device, issuedAt: now, expiresAt: now + ttlMs }, this.keys.secretKey);
  }

  static mean(loads: Map<string, { load: number }>): number {
    let total = 0;
    for (const l of loads.values()) total += l.load;
    return loads.size > 0 ? total / loads.size : 0;
  }

  /** max/mean sessions over the live cells (1 = perfectly even). */
  balance(): number {
    const loads = this.loads();
    const mean = Gravity.mean(loads);
    let max = 0;
    for (const l of loads.values()) max = Math.max(max, l.load);
    return mean > 0 ? max / mean : 1;
  }

  /** Sends `s` a signed hint to move to `cellId` at `addr`. */
  private move(s: Session, cellId: string, addr: string, why: 'rebalance' | 'associate'): void {
    const now = Date.now();
    // The target's web listener too, so a device on WebSocket or chunked HTTP can follow.
    const web = cellId === this.cell.cellId ? this.cell.webAddress : this.cell.membership.live().find((c) => c.cell === cellId)?.web;
    const h = signHint({ cell: cellId, addr, ...(web && { web }), user: s.user, device: s.device, issuedAt: now, expiresAt: now + this.cell.config.gravity.hintTtlMs }, this.keys.secretKey);
    s.moving = true;
    s.send({ t: 'move', h, why });
    this.cell.metrics.migrations.inc({ why });
    // A hint not followed by its expiry (an old SDK, an unreachable cell): the session may be planned again.
    setTimeout(() => (s.moving = false), this.cell.config.gravity.hintTtlMs).unref();
  }

  /**
   * The first stored item a device gets at connect, from another user: the device
   * belongs with that user (an associate), so it is told to move where
   * chooseHintCell says among the sender's devices' cells (the sending device's
   * first), as long as the cell is below its load cap. True if a move was sent
   * (the drain waits).
   */
  async associateHint(s: Session, item: ChatItem): Promise<boolean> {
    if (!this.cell.config.gravity.enabled || item.from === s.user || s.moving) return false;
    const locs = await this.cell.directory.lookup(item.from);
    const loads = this.loads();
    const preferred = locs.find((l) => l.device === item.fd)?.cell ?? locs[0]?.cell;
    if (preferred === undefined) return false;
    const cap = loadCap(Gravity.mean(loads), this.cell.config.gravity.epsilon);
    // What the cell knows of this device's associates: the sender, its sending device first.
    const associates = locs.map((l) => ({ cell: l.cell, weight: l.device === item.fd ? 2 : 1 }));
    const target = chooseHintCell(preferred, associates, (c) => loads.get(c)?.load, cap);
    if (target === undefined || target === this.cell.cellId || !s.isOpen) return false;
    this.move(s, target, loads.get(target)!.addr, 'associate');
    this.cell.publish(target, { k: 'exp', user: s.user, dev: s.device });
    setTimeout(() => {
      // Not followed (a dead cell, an old SDK): stay, and drain here after all.
      if (!s.isOpen) return;
      s.moving = false;
      this.cell.drainMailbox(s);
    }, ASSOCIATE_FALLBACK_MS).unref();
    return true;
  }

  // ---- exchanges --------------------------------------------------------------------

  private sides(summary: Map<number, SessionTraffic>, partner: string): { cands: Weighted[]; spares: Weighted[] } {
    const g = this.cell.config.gravity;
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
    const mean = Gravity.mean(loads);
    const cap = loadCap(mean, this.cell.config.gravity.epsilon);
    const partner = choosePartner(this.cell.cellId, cross, (c) => loads.get(c)?.load, (c) => this.cooldown.get(c) === true, loads.keys(), mean, cap);
    if (!partner) return;
    const { cands, spares } = this.sides(summary, partner);
    if (cands.length === 0 && (this.cell.sessionCount < cap || spares.length === 0)) return;
    this.busy = true;
    try {
      const req: ExchangeRequest = { from: this.cell.cellId, addr: this.cell.address, load: this.cell.sessionCount, c: cands, sp: spares };
      const res = await this.nc.request(this.subject(partner), pack(req), { timeout: REQUEST_TIMEOUT_MS });
      const reply = decodeReply(unpack(res.data));
      if (!reply) return this.cell.metrics.exchanges.inc({ result: 'malformed' });
      if (reply.busy) return this.cell.metrics.exchanges.inc({ result: 'busy' });
      this.cooldown.set(partner, true);
      this.cell.metrics.exchanges.inc({ result: reply.yours.length + reply.mine.length > 0 ? 'moved' : 'empty' });
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
    if (this.busy || this.stopped || !this.cell.config.gravity.enabled) return reply({ busy: true });
    this.busy = true;
    try {
      const g = this.cell.config.gravity;
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
      const plan = planExchange(side(req.c, req.sp, req.load), side(cands, spares, this.cell.sessionCount), {
        mean: Gravity.mean(loads),
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
      reply({ addr: this.cell.address, yours, mine });
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
    const movers = leaving.map(([u, d]) => this.cell.session(u, d)).filter((s): s is Session => this.movable(s, now));
    const granted = this.limiter.take(movers.length, performance.now());
    for (const s of movers.slice(0, granted)) this.move(s, partner, addr, 'rebalance');
  }
}
