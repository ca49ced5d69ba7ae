import { CellTraffic, chooseHintCell, choosePartner, loadCap, planExchange, RateLimiter, type ExchangeSide, type SessionTraffic } from '@gravitas/placement';
import { mulberry32 } from './custody-types.js';
import { pickWeighted, type Rand, type SocialGraph } from './placement-graph.js';

/*
 * Gravitation on a social graph, in simulated time, with the policy code the
 * server runs (@gravitas/placement) and no sockets. A round is one exchange
 * interval; in each round, in order:
 *
 * 1. churn: online sessions end and offline users come back, so that the online
 *    share follows a diurnal curve. A returning user connects where chooseHintCell
 *    says, given its heaviest online associates and a preferred cell: the sender's
 *    cell if someone messaged it while it was offline (the push carried it), else
 *    the cell it was on (the SDK tries that first); if nothing has room, or on a
 *    first connect, a random cell (a client dialling any address).
 * 2. messages: every online user sends a Poisson number of messages, more the
 *    heavier its ties, each to a neighbour picked by edge weight. A delivery to an
 *    online recipient is recorded by both cells' CellTraffic as the server does
 *    (record(session, peer cell) on each side); one to an offline recipient only
 *    leaves it a hint.
 * 3. exchanges, as gravity.ts runs them: every cell wakes once per round at a
 *    random time (its jittered timer), picks a partner with choosePartner (cells
 *    traded with within the cooldown rest), and asks it unless it has neither
 *    candidates nor, at its cap, spares. A cell inside another exchange (which
 *    lasts EXCHANGE_S) declines; otherwise planExchange plans over both sides'
 *    candidates and spares and each cell moves its own sessions as far as its
 *    RateLimiter allows.
 *
 * The static baselines are scored on the same deliveries and online sets.
 */

export interface SimParams {
  cells: number;
  rounds: number;
  /** Simulated seconds per round: the exchange interval. */
  intervalS: number;
  epsilon: number;
  /** Sketch capacity per cell, in (session, cell) keys. */
  capacity: number;
  halfLifeS: number;
  maxMoves: number;
  minGain: number;
  /** Per-cell migration token bucket: sustained moves per second, and burst. */
  moveRate: number;
  moveBurst: number;
  /** A session is not moved until it has been on its cell this long (a reconnect or a move starts a new session). */
  dwellS: number;
  /** Two cells trade at most this often. */
  cooldownS: number;
  /** Mean online share (1: everyone always online, no churn). */
  online: number;
  /** Mean online session length. */
  sessionS: number;
  /** Messages sent per online user-hour, on average over users (scaled by tie weight). */
  msgRate: number;
  seed: number;
}

export interface Baseline {
  name: string;
  part: Int32Array;
}

export interface RoundStats {
  /** Simulated hours at the end of the round. */
  hours: number;
  online: number;
  deliveries: number;
  locality: number;
  /** Max / mean sessions per cell. */
  balance: number;
  migrations: number;
  /** Moves planned but refused by the source cell's rate limiter. */
  rateLimited: number;
  exchanges: number;
  declined: number;
  /** Per baseline, in the order given: locality of the same deliveries, balance of the same online users. */
  baselineLocality: number[];
  baselineBalance: number[];
}

/** How returning users were placed. */
export interface ReconnectStats {
  total: number;
  /** No preferred cell (never online, no message): a random cell. */
  noHint: number;
  /** Placed on the preferred cell (the sender's, else the previous one). */
  preferred: number;
  /** Placed on another cell where associates are. */
  associate: number;
  /** Every candidate cell at its cap: a random cell. */
  full: number;
}

export interface SimResult {
  rounds: RoundStats[];
  reconnects: ReconnectStats;
}

const DAY_S = 86_400;
/** Swing of the online share over a day (±25%: a service spread over time zones). */
const DIURNAL_AMPLITUDE = 0.25;
/** Associates offered to chooseHintCell: the user's heaviest online neighbours. */
const ASSOCIATES = 8;
/** How long an exchange occupies both cells: a NATS request/reply and the planning. */
const EXCHANGE_S = 0.1;

/** Which users are on which cell, with O(1) add, remove and per-cell listing. */
class Placement {
  readonly cell: Int32Array;
  /** When the user's current session registered (simulated seconds). */
  readonly since: Float64Array;
  readonly load: Int32Array;
  private readonly lists: Int32Array[];
  private readonly pos: Int32Array;
  online = 0;

  constructor(users: number, cells: number) {
    this.cell = new Int32Array(users).fill(-1);
    this.since = new Float64Array(users);
    this.pos = new Int32Array(users);
    this.load = new Int32Array(cells);
    this.lists = Array.from({ length: cells }, () => new Int32Array(Math.max(16, Math.ceil((2 * users) / cells))));
  }

  sessions(c: number): Int32Array {
    return this.lists[c]!.subarray(0, this.load[c]!);
  }

  add(u: number, c: number, at: number): void {
    let list = this.lists[c]!;
    const n = this.load[c]!;
    if (n === list.length) {
      const grown = new Int32Array(2 * n);
      grown.set(list);
      this.lists[c] = list = grown;
    }
    list[n] = u;
    this.pos[u] = n;
    this.load[c] = n + 1;
    this.cell[u] = c;
    this.since[u] = at;
    this.online++;
  }

  remove(u: number): void {
    const c = this.cell[u]!;
    const list = this.lists[c]!;
    const last = list[--this.load[c]!]!;
    list[this.pos[u]!] = last;
    this.pos[last] = this.pos[u]!;
    this.cell[u] = -1;
    this.online--;
  }

  balance(): number {
    return maxOverMean(this.load, this.online);
  }
}

function maxOverMean(load: Int32Array, total: number): number {
  let max = 0;
  for (const l of load) max = Math.max(max, l);
  return total > 0 ? max / (total / load.length) : 1;
}

/** Poisson sample: Knuth's product method for small means, a normal approximation above. */
function poisson(rand: Rand, mean: number): number {
  if (mean >= 30) {
    const z = Math.sqrt(-2 * Math.log(1 - rand())) * Math.cos(2 * Math.PI * rand());
    return Math.max(0, Math.round(mean + Math.sqrt(mean) * z));
  }
  const limit = Math.exp(-mean);
  let k = 0;
  for (let p = rand(); p > limit; p *= rand()) k++;
  return k;
}

export class Simulation {
  private readonly rand: Rand;
  private readonly at: Placement;
  private readonly hint: Int32Array;
  /** The cell each offline user was last on (-1: never online). */
  private readonly last: Int32Array;
  private readonly traffic: CellTraffic[];
  private readonly limiter: RateLimiter[];
  /** End of the exchange each cell is in (simulated seconds). */
  private readonly busyUntil: Float64Array;
  /** When each cell last traded with each partner, for the cooldown. */
  private readonly traded: Array<Map<number, number>>;
  private readonly cellIds: number[];
  /** baseCell[u × baselines + b]: user u's cell in baseline b, interleaved so one user's cells share a cache line. */
  private readonly baseCell: Uint16Array;
  /** Messages per round of a user of strength 1. */
  private readonly msgPerStrength: number;
  readonly reconnects: ReconnectStats = { total: 0, noHint: 0, preferred: 0, associate: 0, full: 0 };
  private t = 0;

  constructor(private readonly g: SocialGraph, private readonly p: SimParams, private readonly baselines: readonly Baseline[]) {
    this.rand = mulberry32(p.seed);
    this.at = new Placement(g.users, p.cells);
    this.hint = new Int32Array(g.users).fill(-1);
    this.last = new Int32Array(g.users).fill(-1);
    this.traffic = Array.from({ length: p.cells }, (_, c) => new CellTraffic(c, p.capacity, p.halfLifeS * 1000));
    this.limiter = Array.from({ length: p.cells }, () => new RateLimiter(p.moveRate, p.moveBurst, 0));
    this.busyUntil = new Float64Array(p.cells);
    this.traded = Array.from({ length: p.cells }, () => new Map());
    this.cellIds = Array.from({ length: p.cells }, (_, c) => c);
    this.baseCell = new Uint16Array(g.users * baselines.length);
    baselines.forEach((b, i) => b.part.forEach((c, u) => (this.baseCell[u * baselines.length + i] = c)));
    let strength = 0;
    for (const s of g.strength) strength += s;
    this.msgPerStrength = (p.msgRate * (p.intervalS / 3600)) / (strength / g.users);
    // At start the online users connect to random cells.
    const share = this.onlineShare(0);
    for (let u = 0; u < g.users; u++) if (this.rand() < share) this.at.add(u, this.randomCell(), Number.NEGATIVE_INFINITY);
  }

  run(onRound: (r: RoundStats) => void): SimResult {
    const rounds: RoundStats[] = [];
    for (let r = 0; r < this.p.rounds; r++) {
      this.t = r * this.p.intervalS;
      this.churn();
      const msgs = this.messages();
      const ex = this.exchanges();
      const stats: RoundStats = {
        hours: (this.t + this.p.intervalS) / 3600,
        online: this.at.online,
        deliveries: msgs.deliveries,
        locality: msgs.local / Math.max(1, msgs.deliveries),
        balance: this.at.balance(),
        ...ex,
        baselineLocality: msgs.baselineLocal.map((l) => l / Math.max(1, msgs.deliveries)),
        baselineBalance: this.baselines.map((_, b) => this.baselineBalance(b)),
      };
      rounds.push(stats);
      onRound(stats);
    }
    return { rounds, reconnects: this.reconnects };
  }

  private randomCell(): number {
    return Math.floor(this.rand() * this.p.cells);
  }

  private onlineShare(t: number): number {
    if (this.p.online >= 1) return 1;
    return Math.min(0.95, this.p.online * (1 + DIURNAL_AMPLITUDE * Math.sin((2 * Math.PI * t) / DAY_S)));
  }

  private cap(): number {
    return loadCap(this.at.online / this.p.cells, this.p.epsilon);
  }

  /** Sessions end with rate 1/sessionS; offline users return at the rate that keeps the online share on its curve. */
  private churn(): void {
    const share = this.onlineShare(this.t);
    if (share >= 1) return;
    const leave = Math.min(1, this.p.intervalS / this.p.sessionS);
    const arrive = Math.min(1, (leave * share) / (1 - share));
    const cell = this.at.cell;
    for (let u = 0; u < this.g.users; u++) {
      if (cell[u]! >= 0) {
        if (this.rand() < leave) {
          this.last[u] = cell[u]!; // the SDK reconnects to the cell it was on
          this.at.remove(u);
        }
      } else if (this.rand() < arrive) this.reconnect(u);
    }
  }

  private reconnect(u: number): void {
    this.reconnects.total++;
    const hinted = this.hint[u]!;
    this.hint[u] = -1;
    // No message hint: the SDK tries the cell it was on first.
    const preferred = hinted >= 0 ? hinted : this.last[u]!;
    let c: number | undefined;
    if (preferred < 0) this.reconnects.noHint++;
    else {
      c = chooseHintCell(preferred, this.associates(u), (cell) => this.at.load[cell], this.cap());
      if (c === undefined) this.reconnects.full++;
      else if (c === preferred) this.reconnects.preferred++;
      else this.reconnects.associate++;
    }
    this.at.add(u, c ?? this.randomCell(), this.t);
  }

  /** Cells of u's heaviest online neighbours, with their tie weights. */
  private *associates(u: number): Generator<{ cell: number; weight: number }> {
    const { offsets, adj, weight } = this.g;
    const top: Array<{ cell: number; w: number }> = [];
    for (let i = offsets[u]!; i < offsets[u + 1]!; i++) {
      const cell = this.at.cell[adj[i]!]!;
      if (cell < 0) continue;
      const w = weight[i]!;
      if (top.length < ASSOCIATES) top.push({ cell, w });
      else if (w > top[ASSOCIATES - 1]!.w) top[ASSOCIATES - 1] = { cell, w };
      else continue;
      top.sort((a, b) => b.w - a.w);
    }
    for (const a of top) yield { cell: a.cell, weight: a.w };
  }

  /** Senders cell by cell, so the sender-side sketch stays in cache; a recipient's cell and baseline cells share a cache line or two. */
  private messages(): { deliveries: number; local: number; baselineLocal: number[] } {
    const { offsets, adj, cumWeight, strength } = this.g;
    const cell = this.at.cell;
    const base = this.baseCell;
    const nb = this.baselines.length;
    const now = this.t * 1000;
    const baselineLocal = this.baselines.map(() => 0);
    let deliveries = 0;
    let local = 0;
    for (let c = 0; c < this.p.cells; c++) {
      const sketch = this.traffic[c]!;
      for (const u of this.at.sessions(c)) {
        const lo = offsets[u]!;
        const hi = offsets[u + 1]!;
        if (hi === lo) continue;
        const total = cumWeight[hi - 1]!;
        for (let k = poisson(this.rand, strength[u]! * this.msgPerStrength); k > 0; k--) {
          const v = adj[pickWeighted(cumWeight, lo, hi, this.rand() * total)]!;
          const cv = cell[v]!;
          if (cv < 0) {
            this.hint[v] = c;
            continue;
          }
          deliveries++;
          if (cv === c) local++;
          sketch.record(u, cv, 1, now);
          this.traffic[cv]!.record(v, c, 1, now);
          for (let b = 0; b < nb; b++) if (base[u * nb + b] === base[v * nb + b]) baselineLocal[b]!++;
        }
      }
    }
    return { deliveries, local, baselineLocal };
  }

  private exchanges(): Pick<RoundStats, 'migrations' | 'rateLimited' | 'exchanges' | 'declined'> {
    const out = { migrations: 0, rateLimited: 0, exchanges: 0, declined: 0 };
    const wake = this.cellIds.map((c) => ({ c, at: this.t + this.rand() * this.p.intervalS })).sort((x, y) => x.at - y.at);
    for (const { c: a, at } of wake) {
      if (this.busyUntil[a]! > at) continue;
      const mean = this.at.online / this.p.cells;
      const cap = this.cap();
      const sa = this.summary(a, at);
      const resting = (c: number): boolean => at - (this.traded[a]!.get(c) ?? Number.NEGATIVE_INFINITY) < this.p.cooldownS;
      const b = choosePartner(a, CellTraffic.crossTraffic(sa), (c) => this.at.load[c], resting, this.cellIds, mean, cap);
      if (b === undefined) continue;
      const sideA = this.side(a, sa, b, at);
      if (sideA.toOther.length === 0 && (this.at.load[a]! < cap || sideA.spares.length === 0)) continue;
      if (this.busyUntil[b]! > at) {
        out.declined++;
        continue;
      }
      this.busyUntil[a] = this.busyUntil[b] = at + EXCHANGE_S;
      this.traded[a]!.set(b, at);
      this.traded[b]!.set(a, at);
      out.exchanges++;
      const plan = planExchange(sideA, this.side(b, this.summary(b, at), a, at), { mean, epsilon: this.p.epsilon, maxMoves: this.p.maxMoves, minGain: this.p.minGain });
      for (const [list, from, to] of [[plan.aToB, a, b], [plan.bToA, b, a]] as const) {
        const granted = this.limiter[from]!.take(list.length, at * 1000);
        for (let i = 0; i < granted; i++) this.migrate(list[i]!, to, at);
        out.migrations += granted;
        out.rateLimited += list.length - granted;
      }
    }
    return out;
  }

  /** What cell c knows: its sketch without the sessions that left it, summarised. */
  private summary(c: number, at: number): Map<number, SessionTraffic> {
    const cell = this.at.cell;
    this.traffic[c]!.forget((s) => cell[s] !== c);
    return this.traffic[c]!.summarize(at * 1000);
  }

  /**
   * One side's report. Spares are only consulted when a side can reach the cap
   * within maxMoves, so below that they are skipped (same plan, less work).
   */
  private side(c: number, summary: Map<number, SessionTraffic>, other: number, at: number): ExchangeSide {
    const { cell, since } = this.at;
    const eligible = (s: number): boolean => cell[s] === c && at - since[s]! >= this.p.dwellS;
    const load = this.at.load[c]!;
    const nearCap = load + this.p.maxMoves > this.cap();
    return {
      load,
      toOther: CellTraffic.candidates(summary, other, this.p.minGain, eligible, this.p.maxMoves),
      spares: nearCap ? CellTraffic.spares(summary, this.at.sessions(c), other, eligible, this.p.maxMoves) : [],
    };
  }

  private migrate(u: number, to: number, at: number): void {
    this.at.remove(u);
    this.at.add(u, to, at);
  }

  private baselineBalance(b: number): number {
    const nb = this.baselines.length;
    const load = new Int32Array(this.p.cells);
    for (let c = 0; c < this.p.cells; c++) for (const u of this.at.sessions(c)) load[this.baseCell[u * nb + b]!]!++;
    return maxOverMean(load, this.at.online);
  }
}

