import { mulberry32 } from './custody-types.js';

/*
 * A synthetic social graph with community structure and heavy tails (after LFR:
 * Lancichinetti, Fortunato, Radicchi 2008), built in O(edges) into typed arrays so
 * that 10 million users and ~100 million edge endpoints fit without one JS object
 * per user.
 *
 * - Community sizes follow a power law; users are assigned to communities in a
 *   random order, so user ids say nothing about communities.
 * - Degrees follow a power law, truncated per user so that its internal edges
 *   (1 − mu of them) fit inside its community.
 * - Internal stubs are paired at random within each community, external stubs at
 *   random over the whole graph (configuration model; self-loops are dropped,
 *   repeated pairs are kept as heavier ties).
 * - Every edge has a Pareto weight: its share of the two users' messages.
 */

export interface GraphParams {
  users: number;
  /** Share of each user's edges that leave its community. */
  mu: number;
  seed: number;
  /** Overrides of SHAPE (the load harness takes them from a scenario file); unset: SHAPE. */
  shape?: Partial<GraphShape>;
}

/** Shape constants (fixed so runs with different --users are the same kind of graph). */
export const SHAPE = {
  communityMin: 10,
  communityMax: 2000,
  /** P(size) ∝ size^-2: as many users in communities of 10–45 as of 450–2000. */
  communityExp: 2,
  degreeMin: 4,
  degreeMax: 1000,
  degreeExp: 2.5,
  /** Pareto tail of edge weights (mean 3), truncated so one pair cannot dominate a run. */
  weightAlpha: 1.5,
  weightMax: 1000,
} as const;

export type GraphShape = { -readonly [K in keyof typeof SHAPE]: number };

/** Adjacency in CSR form; row u is [offsets[u], offsets[u + 1]). */
export interface SocialGraph {
  users: number;
  offsets: Int32Array;
  adj: Int32Array;
  /** Edge weight, the same on both endpoints of an edge. */
  weight: Float32Array;
  /** Running sum of `weight` within each row, for sampling a recipient. */
  cumWeight: Float32Array;
  /** Sum of a user's edge weights: how much it talks. */
  strength: Float32Array;
  community: Int32Array;
  communities: number;
  /** Share of edges, and of edge weight, that cross communities (the realised mu). */
  crossEdges: number;
  crossWeight: number;
}

export type Rand = () => number;

/** Inverse-CDF sample of a continuous power law x^-exp on [lo, hi]. */
function powerLaw(rand: Rand, lo: number, hi: number, exp: number): number {
  const a = lo ** (1 - exp);
  const b = hi ** (1 - exp);
  return (a + rand() * (b - a)) ** (1 / (1 - exp));
}

/** x rounded down or up at random, so the mean is x. */
const stochasticRound = (rand: Rand, x: number): number => Math.floor(x) + (rand() < x - Math.floor(x) ? 1 : 0);

export function shuffle(rand: Rand, a: Int32Array, from = 0, to = a.length): void {
  for (let i = to - 1; i > from; i--) {
    const j = from + Math.floor(rand() * (i - from + 1));
    const t = a[i]!;
    a[i] = a[j]!;
    a[j] = t;
  }
}

/** Power-law community sizes summing to `users`; members[start[c] .. start[c+1]) are community c's users. */
function communities(rand: Rand, users: number, shape: GraphShape): { start: Int32Array; members: Int32Array; community: Int32Array } {
  const sizes: number[] = [];
  for (let total = 0; total < users; ) {
    const s = Math.min(users - total, Math.round(powerLaw(rand, shape.communityMin, shape.communityMax, shape.communityExp)));
    sizes.push(s);
    total += s;
  }
  const start = new Int32Array(sizes.length + 1);
  for (let c = 0; c < sizes.length; c++) start[c + 1] = start[c]! + sizes[c]!;
  const members = new Int32Array(users);
  for (let u = 0; u < users; u++) members[u] = u;
  shuffle(rand, members);
  const community = new Int32Array(users);
  for (let c = 0; c < sizes.length; c++) for (let i = start[c]!; i < start[c + 1]!; i++) community[members[i]!] = c;
  return { start, members, community };
}

/** Growable edge list (two endpoint arrays). */
class Edges {
  src: Int32Array;
  dst: Int32Array;
  length = 0;
  constructor(capacity: number) {
    this.src = new Int32Array(capacity);
    this.dst = new Int32Array(capacity);
  }
  /** Pairs stubs[from..to) two by two, dropping self-loops. */
  pairUp(stubs: Int32Array, from: number, to: number): void {
    for (let i = from; i + 1 < to; i += 2) {
      const a = stubs[i]!;
      const b = stubs[i + 1]!;
      if (a === b) continue;
      this.src[this.length] = a;
      this.dst[this.length] = b;
      this.length++;
    }
  }
}

export function generateGraph(p: GraphParams): SocialGraph {
  if (!(p.mu >= 0 && p.mu < 1)) throw new RangeError('mu must be in [0, 1)');
  const shape: GraphShape = { ...SHAPE, ...p.shape };
  const rand = mulberry32(p.seed);
  const n = p.users;
  const { start, members, community } = communities(rand, n, shape);
  const nComm = start.length - 1;

  // Degrees: internal stubs fit in the community; external ones keep each user's mu.
  const internal = new Int32Array(n);
  const external = new Int32Array(n);
  let totalInternal = 0;
  let totalExternal = 0;
  let maxCommunityStubs = 0;
  for (let c = 0; c < nComm; c++) {
    const size = start[c + 1]! - start[c]!;
    const hi = Math.min(shape.degreeMax, (size - 1) / (1 - p.mu));
    let stubs = 0;
    for (let i = start[c]!; i < start[c + 1]!; i++) {
      const u = members[i]!;
      const d = hi > shape.degreeMin ? powerLaw(rand, shape.degreeMin, hi, shape.degreeExp) : hi;
      internal[u] = Math.min(size - 1, stochasticRound(rand, d * (1 - p.mu)));
      external[u] = stochasticRound(rand, d * p.mu);
      stubs += internal[u]!;
      totalExternal += external[u]!;
    }
    totalInternal += stubs;
    maxCommunityStubs = Math.max(maxCommunityStubs, stubs);
  }

  const edges = new Edges((totalInternal + totalExternal) >> 1);
  const scratch = new Int32Array(maxCommunityStubs);
  for (let c = 0; c < nComm; c++) {
    let k = 0;
    for (let i = start[c]!; i < start[c + 1]!; i++) for (let j = internal[members[i]!]!; j > 0; j--) scratch[k++] = members[i]!;
    shuffle(rand, scratch, 0, k);
    edges.pairUp(scratch, 0, k);
  }
  const ext = new Int32Array(totalExternal);
  for (let u = 0, k = 0; u < n; u++) for (let j = external[u]!; j > 0; j--) ext[k++] = u;
  shuffle(rand, ext);
  edges.pairUp(ext, 0, ext.length);

  return toCsr(rand, n, edges, community, nComm, shape);
}

function toCsr(rand: Rand, n: number, edges: Edges, community: Int32Array, communities: number, shape: GraphShape): SocialGraph {
  const offsets = new Int32Array(n + 1);
  for (let e = 0; e < edges.length; e++) {
    offsets[edges.src[e]! + 1]!++;
    offsets[edges.dst[e]! + 1]!++;
  }
  for (let u = 0; u < n; u++) offsets[u + 1]! += offsets[u]!;
  const fill = offsets.slice(0, n);
  const adj = new Int32Array(offsets[n]!);
  const weight = new Float32Array(offsets[n]!);
  let cross = 0;
  let crossW = 0;
  let totalW = 0;
  for (let e = 0; e < edges.length; e++) {
    const a = edges.src[e]!;
    const b = edges.dst[e]!;
    const w = Math.min(shape.weightMax, (1 - rand()) ** (-1 / shape.weightAlpha));
    const ia = fill[a]!++;
    const ib = fill[b]!++;
    adj[ia] = b;
    adj[ib] = a;
    weight[ia] = w;
    weight[ib] = w;
    totalW += w;
    if (community[a] !== community[b]) {
      cross++;
      crossW += w;
    }
  }
  const cumWeight = new Float32Array(adj.length);
  const strength = new Float32Array(n);
  for (let u = 0; u < n; u++) {
    let s = 0;
    for (let i = offsets[u]!; i < offsets[u + 1]!; i++) cumWeight[i] = s += weight[i]!;
    strength[u] = s;
  }
  return {
    users: n, offsets, adj, weight, cumWeight, strength, community, communities,
    crossEdges: cross / Math.max(1, edges.length), crossWeight: crossW / Math.max(1, totalW),
  };
}

/** First index in [lo, hi) whose running weight exceeds x (binary search over a row of `cumWeight`). */
export function pickWeighted(cum: Float32Array, lo: number, hi: number, x: number): number {
  let a = lo;
  let b = hi - 1;
  while (a < b) {
    const m = (a + b) >> 1;
    if (cum[m]! > x) b = m;
    else a = m + 1;
  }
  return a;
}

/** A contact of `u` drawn by edge weight (how much they talk), or -1 when `u` has none. */
export function sampleContact(g: SocialGraph, u: number, rand: Rand): number {
  const lo = g.offsets[u]!;
  const hi = g.offsets[u + 1]!;
  if (hi === lo) return -1;
  return g.adj[pickWeighted(g.cumWeight, lo, hi, rand() * g.cumWeight[hi - 1]!)]!;
}

/**
 * Communities of `community` consecutive ids (the last one may be smaller); each user gets
 * `inside` distinct contacts drawn uniformly from its own community (itself excluded; all of them
 * when the community is smaller) and `outside` drawn uniformly from everyone else (repeats
 * allowed, as the comparison's workload has it). Contacts are directed (whom the user writes to)
 * and weigh 1 each.
 */
export function consecutiveCommunityGraph(users: number, community: number, inside: number, outside: number, seed: number): SocialGraph {
  const rand = mulberry32(seed >>> 0);
  const offsets = new Int32Array(users + 1);
  const adj: number[] = [];
  const comm = new Int32Array(users);
  let cross = 0;
  for (let u = 0; u < users; u++) {
    const c = Math.floor(u / community);
    comm[u] = c;
    const lo = c * community;
    const hi = Math.min(users, lo + community);
    const pool: number[] = [];
    for (let v = lo; v < hi; v++) if (v !== u) pool.push(v);
    // Partial Fisher–Yates: `inside` distinct members.
    const k = Math.min(inside, pool.length);
    for (let i = 0; i < k; i++) {
      const j = i + Math.floor(rand() * (pool.length - i));
      const t = pool[i]!;
      pool[i] = pool[j]!;
      pool[j] = t;
      adj.push(pool[i]!);
    }
    for (let i = 0; i < outside; i++) {
      const w = Math.floor(rand() * (users - 1));
      const v = w >= u ? w + 1 : w;
      adj.push(v);
      if (Math.floor(v / community) !== c) cross++;
    }
    offsets[u + 1] = adj.length;
  }
  const weight = new Float32Array(adj.length).fill(1);
  const cumWeight = new Float32Array(adj.length);
  const strength = new Float32Array(users);
  for (let u = 0; u < users; u++) {
    let s = 0;
    for (let i = offsets[u]!; i < offsets[u + 1]!; i++) cumWeight[i] = ++s;
    strength[u] = s;
  }
  const share = adj.length > 0 ? cross / adj.length : 0;
  return { users, offsets, adj: Int32Array.from(adj), weight, cumWeight, strength, community: comm, communities: Math.ceil(users / community), crossEdges: share, crossWeight: share };
}
