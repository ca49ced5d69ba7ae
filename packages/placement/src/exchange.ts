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

/** The mean load of the live cells (sessions per cell); 0 with none. */
export function meanLoad(loads: ReadonlyMap<string, { load: number }>): number {
  let total = 0;
  for (const l of loads.values()) total += l.load;
  return loads.size > 0 ? total / loads.size : 0;
}

/**
 * The most sessions a cell may hold: (1 + epsilon) × mean, and at least one above
 * the mean, so that a small cluster (a handful of sessions per cell) can move at all.
 */
export function loadCap(mean: number, epsilon: number): number {
  return Math.max(Math.floor(mean * (1 + epsilon)), Math.ceil(mean) + 1);
}

/**
 * Plans the moves between two cells A and B.
 *
 * Moves go one way per exchange: if both sides moved their candidates at once,
 * two sessions that talk only to each other would swap cells and stay apart. Both
 * directions are planned and the one that brings more traffic together wins. When
 * the destination is at its cap, a move is paired with a spare from the
 * destination (a session with no traffic toward the source), if the gain outweighs
 * what the spare loses. Then balance: a side above the cap sheds spares to the
 * other while that one has room, and a side at its cap gives one spare to a side
 * below the mean, so that a full cell makes room for the sessions that want in.
 */
export function planExchange(a: ExchangeSide, b: ExchangeSide, p: ExchangeParams): ExchangePlan {
  const forward = planOneWay(a, b, p);
  const backward = planOneWay(b, a, p);
  if (backward.gain > forward.gain) return { aToB: backward.back, bToA: backward.out, gain: backward.gain };
  return { aToB: forward.out, bToA: forward.back, gain: forward.gain };
}

/** Moves from `src` to `dst` by gain (`out`), with `dst` spares coming back (`back`), then balance. */
function planOneWay(src: ExchangeSide, dst: ExchangeSide, p: ExchangeParams): { out: number[]; back: number[]; gain: number } {
  const cap = loadCap(p.mean, p.epsilon);
  const out: number[] = [];
  const back: number[] = [];
  let gain = 0;
  let srcLoad = src.load;
  let dstLoad = dst.load;
  let spareAt = 0; // next spare of dst
  const moves = (): number => out.length + back.length;

  for (const c of src.toOther) {
    if (c.gain < p.minGain || moves() >= p.maxMoves) break;
    if (dstLoad + 1 <= cap) {
      out.push(c.session);
      srcLoad--;
      dstLoad++;
      gain += c.gain;
      continue;
    }
    const spare = dst.spares[spareAt];
    if (!spare || moves() + 2 > p.maxMoves || c.gain - spare.weight < p.minGain) break;
    spareAt++;
    out.push(c.session);
    back.push(spare.session);
    gain += c.gain - spare.weight;
  }

  const moved = new Set([...out, ...back]);
  // Making room at the cap costs locality now for gains later: only when nothing else moves.
  const room = moved.size === 0 ? Math.floor(p.mean) : -1;
  const shed = (from: ExchangeSide, fromLoad: number, toLoad: number, into: number[], skip: number): void => {
    let atCap = 0;
    for (let i = skip; i < from.spares.length && moves() < p.maxMoves; i++) {
      const over = fromLoad > cap && toLoad + 1 <= cap;
      const full = fromLoad >= cap && toLoad + 1 <= room && atCap === 0;
      if (!over && !full) break;
      const s = from.spares[i]!;
      if (moved.has(s.session)) continue;
      if (!over) atCap++;
      into.push(s.session);
      moved.add(s.session);
      fromLoad--;
      toLoad++;
      gain -= s.weight;
    }
  };
  shed(src, srcLoad, dstLoad, out, 0);
  shed(dst, dstLoad, srcLoad, back, spareAt);
  return { out, back, gain };
}

/**
 * Whom a cell trades with next: the cell it has the most traffic with (skipping
 * `resting` ones, e.g. recently traded with). A cell at its cap that cannot take
 * anyone in asks the least-loaded cell below the mean instead, to make room.
 */
export function choosePartner<C>(self: C, cross: Iterable<[C, number]>, load: (cell: C) => number | undefined, resting: (cell: C) => boolean, cells: Iterable<C>, mean: number, cap: number): C | undefined {
  const own = load(self) ?? 0;
  if (own >= cap) {
    let best: C | undefined;
    let bestLoad = Math.floor(mean);
    for (const c of cells) {
      const l = load(c);
      if (c === self || l === undefined || resting(c) || l >= bestLoad) continue;
      best = c;
      bestLoad = l;
    }
    if (best !== undefined) return best;
  }
  let partner: C | undefined;
  let most = 0;
  for (const [c, count] of cross) {
    if (c === self || load(c) === undefined || resting(c) || count <= most) continue;
    partner = c;
    most = count;
  }
  return partner;
}

/**
 * Where a returning device should connect: among the cells of its associates
 * (weighted: who it talks with most), the one holding the most weight that is
 * below its cap; if none has room, `preferred` (the cell of whoever last wrote to
 * it, or the cell it was on) if that has room; else nowhere in particular.
 * Plurality beats "the last sender" by far in the simulator (docs/gravitation.md):
 * the last sender is one associate, the plurality is where its community lives.
 */
export function chooseHintCell<C>(preferred: C | undefined, associates: Iterable<{ cell: C; weight: number }>, load: (cell: C) => number | undefined, cap: number): C | undefined {
  const weight = new Map<C, number>();
  for (const a of associates) weight.set(a.cell, (weight.get(a.cell) ?? 0) + a.weight);
  let best: C | undefined;
  let most = 0;
  for (const [cell, w] of weight) {
    const l = load(cell);
    if (l === undefined || l >= cap || w <= most) continue;
    best = cell;
    most = w;
  }
  if (best !== undefined) return best;
  const l = preferred === undefined ? undefined : load(preferred);
  return l !== undefined && l < cap ? preferred : undefined;
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
