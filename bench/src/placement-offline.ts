import { loadCap } from '@gravitas/placement';
import { mulberry32 } from './custody-types.js';
import { shuffle, type SocialGraph } from './placement-graph.js';

/*
 * Static placements to compare gravitation with: a user's cell for good, whether
 * online or not. Random and hash are what a cluster without gravitation gets;
 * the offline partition (global knowledge of the whole graph, no migration cost)
 * is the practical upper bound; the planted one packs the generator's own
 * communities, which no placement policy can see.
 */

/** Every user on a uniformly random cell. */
export function randomPartition(users: number, cells: number, seed: number): Int32Array {
  const rand = mulberry32(seed);
  const part = new Int32Array(users);
  for (let u = 0; u < users; u++) part[u] = Math.floor(rand() * cells);
  return part;
}

/** murmur3's 32-bit finalizer: a cheap, well-mixed hash of the user id. */
function fmix32(h: number): number {
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

/** hash(user id) mod cells, as a stateless router would place users. */
export function hashPartition(users: number, cells: number): Int32Array {
  const part = new Int32Array(users);
  for (let u = 0; u < users; u++) part[u] = fmix32(u) % cells;
  return part;
}

/** Whole communities, largest first, each onto the emptiest cell (spilling onto the next emptiest when it is full). */
export function plantedPartition(g: SocialGraph, cells: number): Int32Array {
  const { start, members } = membersByCommunity(g);
  const order = Array.from({ length: g.communities }, (_, c) => c).sort((a, b) => start[b + 1]! - start[b]! - (start[a + 1]! - start[a]!));
  const room = new Int32Array(cells).fill(Math.ceil(g.users / cells));
  const emptiest = (): number => {
    let best = 0;
    for (let c = 1; c < cells; c++) if (room[c]! > room[best]!) best = c;
    return best;
  };
  const part = new Int32Array(g.users);
  for (const c of order) {
    let cell = emptiest();
    for (let i = start[c]!; i < start[c + 1]!; i++) {
      if (room[cell] === 0) cell = emptiest();
      part[members[i]!] = cell;
      room[cell]!--;
    }
  }
  return part;
}

function membersByCommunity(g: SocialGraph): { start: Int32Array; members: Int32Array } {
  const start = new Int32Array(g.communities + 1);
  for (let u = 0; u < g.users; u++) start[g.community[u]! + 1]!++;
  for (let c = 0; c < g.communities; c++) start[c + 1]! += start[c]!;
  const fill = start.slice(0, g.communities);
  const members = new Int32Array(g.users);
  for (let u = 0; u < g.users; u++) members[fill[g.community[u]!]!++] = u;
  return { start, members };
}

/**
 * Balanced offline partition: linear deterministic greedy (Stanton & Kliot 2012)
 * over a breadth-first stream of the users, then label-propagation passes that
 * move a user to the cell holding most of its edge weight if that cell is below
 * the cap. No cell ever exceeds loadCap(users / cells, epsilon).
 */
export function offlinePartition(g: SocialGraph, cells: number, epsilon: number, seed: number, passes: number): Int32Array {
  const rand = mulberry32(seed);
  const cap = loadCap(g.users / cells, epsilon);
  const part = new Int32Array(g.users).fill(-1);
  const size = new Int32Array(cells);
  const tally = new Tally(cells);
  const least = new LeastLoaded(size);
  for (const u of bfsOrder(g, rand)) {
    tally.neighbours(g, part, u);
    let best = -1;
    let bestScore = 0;
    tally.each((c, w) => {
      const s = size[c]! < cap ? w * (1 - size[c]! / cap) : 0;
      if (s > bestScore) {
        best = c;
        bestScore = s;
      }
    });
    if (best < 0) best = least.next();
    part[u] = best;
    size[best]!++;
  }
  const order = new Int32Array(g.users);
  for (let u = 0; u < g.users; u++) order[u] = u;
  for (let pass = 0; pass < passes; pass++) {
    shuffle(rand, order);
    let moved = 0;
    for (const u of order) {
      tally.neighbours(g, part, u);
      const cur = part[u]!;
      let best = cur;
      let bestW = tally.weight(cur);
      tally.each((c, w) => {
        if (w > bestW && size[c]! < cap) {
          best = c;
          bestW = w;
        }
      });
      if (best === cur) continue;
      size[cur]!--;
      size[best]!++;
      part[u] = best;
      moved++;
    }
    if (moved < g.users / 1000) break;
  }
  return part;
}

/** Share of the graph's edge weight that a placement keeps inside cells. */
export function weightLocality(g: SocialGraph, part: Int32Array): number {
  let local = 0;
  let total = 0;
  for (let u = 0; u < g.users; u++) {
    for (let i = g.offsets[u]!; i < g.offsets[u + 1]!; i++) {
      total += g.weight[i]!;
      if (part[g.adj[i]!] === part[u]) local += g.weight[i]!;
    }
  }
  return local / Math.max(1, total);
}

/** Edge weight from one user to each cell, for the cells its neighbours are on. */
class Tally {
  private readonly w: Float64Array;
  private readonly touched: Int32Array;
  private n = 0;
  constructor(cells: number) {
    this.w = new Float64Array(cells);
    this.touched = new Int32Array(cells);
  }
  /** Resets, then adds up u's edge weight per cell of its placed neighbours (part −1: not placed yet). */
  neighbours(g: SocialGraph, part: Int32Array, u: number): void {
    for (let i = 0; i < this.n; i++) this.w[this.touched[i]!] = 0;
    this.n = 0;
    for (let i = g.offsets[u]!; i < g.offsets[u + 1]!; i++) {
      const c = part[g.adj[i]!]!;
      if (c < 0) continue;
      if (this.w[c] === 0) this.touched[this.n++] = c;
      this.w[c]! += g.weight[i]!;
    }
  }
  weight(cell: number): number {
    return this.w[cell]!;
  }
  each(f: (cell: number, weight: number) => void): void {
    for (let i = 0; i < this.n; i++) f(this.touched[i]!, this.w[this.touched[i]!]!);
  }
}

/** Cells in rotation among those with the fewest users; sizes only grow while it is used. */
class LeastLoaded {
  private cursor = 0;
  private min = 0;
  constructor(private readonly size: Int32Array) {}
  next(): number {
    const n = this.size.length;
    for (;;) {
      for (let i = 0; i < n; i++) {
        const c = (this.cursor + i) % n;
        if (this.size[c] === this.min) {
          this.cursor = c + 1;
          return c;
        }
      }
      this.min++;
    }
  }
}

/** Users in breadth-first order, each component started from a random user. */
function* bfsOrder(g: SocialGraph, rand: () => number): Generator<number> {
  const starts = new Int32Array(g.users);
  for (let u = 0; u < g.users; u++) starts[u] = u;
  shuffle(rand, starts);
  const seen = new Uint8Array(g.users);
  const queue = new Int32Array(g.users);
  for (const s of starts) {
    if (seen[s]) continue;
    seen[s] = 1;
    let head = 0;
    let tail = 0;
    queue[tail++] = s;
    while (head < tail) {
      const u = queue[head++]!;
      yield u;
      for (let i = g.offsets[u]!; i < g.offsets[u + 1]!; i++) {
        const v = g.adj[i]!;
        if (!seen[v]) {
          seen[v] = 1;
          queue[tail++] = v;
        }
      }
    }
  }
}
