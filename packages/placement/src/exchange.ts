import type { Candidate, Spare } from './traffic.js';

/** One side of a pairwise exchange, as its cell reports it. */
export interface ExchangeSide {
  load: number;
  /** Sessions that gain by moving to the other side, best first. */
  toOther: Candidate[];
  /** Sessions with no traffic toward the other side, lightest first (moved for balance only). */
  spares: Spare[];
}

export interface ExchangeParams {
  /** Mean sessions per cell over the cluster. */
  mean: number;
  /** Load tolerance: no cell above (1 + epsilon) × mean. */
  epsilon: number;
  /** Sessions moved by one exchange, both directions together. */
  maxMoves: number;
  /** A move must gain at least this much decayed traffic. */
  minGain: number;
}

export interface ExchangePlan {
  aToB: number[];
  bToA: number[];
  /** Traffic made local by the plan, net of what balance moves cost. */
  gain: number;
}

/** The most sessions a cell may hold: (1 + epsilon) × mean, and never below the mean itself. */
export function loadCap(mean: number, epsilon: number): number {
  return Math.max(Math.floor(mean * (1 + epsilon)), Math.ceil(mean));
}

/**
 * Plans the moves between two cells A and B.
 *
 * Moves go one way per exchange, from the side with the larger total gain: if
 * both sides moved their candidates at once, two sessions that talk only to each
 * other would swap cells and stay apart. When the destination is at its cap, a
 * move is paired with a spare from the destination (a session with no traffic
 * toward the source), if the gain outweighs what the spare loses. Finally a side
 * above the cap sheds spares to the other while it has room: balance first.
 */
export function planExchange(a: ExchangeSide, b: ExchangeSide, p: ExchangeParams): ExchangePlan {
  const cap = loadCap(p.mean, p.epsilon);
  const plan: ExchangePlan = { aToB: [], bToA: [], gain: 0 };
  const sum = (s: ExchangeSide): number => s.toOther.reduce((acc, c) => acc + (c.gain >= p.minGain ? c.gain : 0), 0);
  const forward = sum(a) >= sum(b);
  const src = forward ? a : b;
  const dst = forward ? b : a;
  const out = forward ? plan.aToB : plan.bToA; // src → dst
  const back = forward ? plan.bToA : plan.aToB; // dst → src
  let srcLoad = src.load;
  let dstLoad = dst.load;
  let spareAt = 0; // next spare of dst
  const moves = (): number => plan.aToB.length + plan.bToA.length;

  for (const c of src.toOther) {
    if (c.gain < p.minGain || moves() >= p.maxMoves) break;
    if (dstLoad + 1 <= cap) {
      out.push(c.session);
      srcLoad--;
      dstLoad++;
      plan.gain += c.gain;
      continue;
    }
    const spare = dst.spares[spareAt];
    if (!spare || moves() + 2 > p.maxMoves || c.gain - spare.weight < p.minGain) break;
    spareAt++;
    out.push(c.session);
    back.push(spare.session);
    plan.gain += c.gain - spare.weight;
  }

  // Balance: a side over the cap gives spares to the other while that one has room.
  const moved = new Set([...plan.aToB, ...plan.bToA]);
  const shed = (from: ExchangeSide, fromLoad: number, toLoad: number, into: number[], skip: number): void => {
    for (let i = skip; i < from.spares.length && fromLoad > cap && toLoad + 1 <= cap && moves() < p.maxMoves; i++) {
      const s = from.spares[i]!;
      if (moved.has(s.session)) continue;
      into.push(s.session);
      moved.add(s.session);
      fromLoad--;
      toLoad++;
      plan.gain -= s.weight;
    }
  };
  shed(src, srcLoad, dstLoad, out, 0);
  shed(dst, dstLoad, srcLoad, back, spareAt);
  return plan;
}

/**
 * Where an offline associate should connect when it comes back: the cell of the
 * user who messaged it, unless that cell is at its cap; then the least-loaded
 * cell among those where its strongest associates live (if any has room).
 */
export function chooseHintCell<C>(preferred: C, associates: Iterable<C>, load: (cell: C) => number | undefined, cap: number): C | undefined {
  const l = load(preferred);
  if (l !== undefined && l < cap) return preferred;
  let best: C | undefined;
  let bestLoad = Number.POSITIVE_INFINITY;
  for (const c of associates) {
    const cl = load(c);
    if (cl === undefined || cl >= cap || cl >= bestLoad) continue;
    best = c;
    bestLoad = cl;
  }
  return best;
}

/**
 * Token bucket for migrations: `ratePerSec` sustained, `burst` at once. A wave of
 * moves is spread out instead of arriving as a reconnect storm.
 */
export class RateLimiter {
  private tokens: number;
  private at: number;

  constructor(private readonly ratePerSec: number, private readonly burst: number, now: number) {
    this.tokens = burst;
    this.at = now;
  }

  /** Takes up to `want` tokens; returns how many were granted. */
  take(want: number, now: number): number {
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.at) * this.ratePerSec) / 1000);
    this.at = now;
    const n = Math.max(0, Math.min(want, Math.floor(this.tokens)));
    this.tokens -= n;
    return n;
  }
}
