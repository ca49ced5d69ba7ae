import { mulberry32 } from './custody-types.js';

/*
 * The gravity benchmark's population: users in communities of equal size, each user's contacts
 * being every other member of its community plus a few users outside it, so that a share `mu` of
 * its contacts (and, with recipients drawn uniformly from the contacts, of its messages) leaves
 * the community. User ids are shuffled before communities are cut, so ids say nothing about
 * communities, and each user is placed on a cell uniformly at random (like a client with a
 * shuffled server list). Everything is drawn from mulberry32 streams of the seed: the same seed
 * gives the same graph and the same placement.
 */

export interface CommunityGraph {
  users: number;
  communitySize: number;
  communities: number;
  /** Community of each user. */
  community: Int32Array;
  /** Global indices each user sends to (a recipient is drawn uniformly from them per message). */
  contacts: number[][];
  /** Realised share of contacts outside the user's community, over all users. */
  crossShare: number;
}

/** x rounded down or up at random, so the mean is x. */
const stochasticRound = (rand: () => number, x: number): number => Math.floor(x) + (rand() < x - Math.floor(x) ? 1 : 0);

export function communityGraph(users: number, size: number, mu: number, seed: number): CommunityGraph {
  if (!(mu >= 0 && mu < 1)) throw new RangeError(`mu must be in [0, 1), got ${mu}`);
  if (size < 2 || size > users) throw new RangeError(`community size must be in 2..users, got ${size}`);
  const rand = mulberry32(seed);
  const order = Int32Array.from({ length: users }, (_, i) => i);
  for (let i = users - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    const t = order[i]!;
    order[i] = order[j]!;
    order[j] = t;
  }
  // Communities of `size`; a short remainder joins the last full community.
  const communities = Math.max(1, Math.floor(users / size));
  const community = new Int32Array(users);
  const members: number[][] = Array.from({ length: communities }, () => []);
  for (let k = 0; k < users; k++) {
    const c = Math.min(communities - 1, Math.floor(k / size));
    community[order[k]!] = c;
    members[c]!.push(order[k]!);
  }
  let inside = 0;
  let outside = 0;
  const contacts: number[][] = Array.from({ length: users }, (_, u) => {
    const c = community[u]!;
    const own = members[c]!.filter((v) => v !== u);
    // own.length internal contacts are a share (1 - mu) of all of them.
    const want = communities > 1 ? stochasticRound(rand, (own.length * mu) / (1 - mu)) : 0;
    const ext = new Set<number>();
    while (ext.size < want) {
      const v = Math.floor(rand() * users);
      if (community[v] !== c) ext.add(v);
    }
    inside += own.length;
    outside += ext.size;
    return [...own, ...ext];
  });
  return { users, communitySize: size, communities, community, contacts, crossShare: outside / Math.max(1, inside + outside) };
}

/** The cell (index) each user connects to: uniform at random, from its own stream of the seed. */
export function randomPlacement(users: number, cells: number, seed: number): Int32Array {
  const rand = mulberry32(seed ^ 0x5bd1e995);
  return Int32Array.from({ length: users }, () => Math.floor(rand() * cells));
}

/** Share of (sender, contact) pairs on one cell under `cellOf`, weighting each contact of a user equally (the expected locality of uniform traffic). */
export function expectedLocality(g: CommunityGraph, cellOf: (u: number) => number): number {
  let sum = 0;
  let n = 0;
  for (let u = 0; u < g.users; u++) {
    const cs = g.contacts[u]!;
    if (cs.length === 0) continue;
    let same = 0;
    for (const v of cs) if (cellOf(v) === cellOf(u)) same++;
    sum += same / cs.length;
    n++;
  }
  return n > 0 ? sum / n : 0;
}
