import { mulberry32 } from '../custody-types.js';
import { consecutiveCommunityGraph, generateGraph, type Rand, type SocialGraph } from '../placement-graph.js';
import type { PowerLaw, Scenario } from './scenario.js';

/*
 * A scenario's population: the social graph (placement-graph.ts, the one generator of
 * community-structured heavy-tailed graphs in this repo, with the scenario's shape), devices per
 * user and groups. Each part draws from its own mulberry32 stream of the seed, so changing the
 * group settings does not change the graph, and the same scenario always gives the same edges.
 */

export interface Population {
  graph: SocialGraph;
  /** Devices of each user (≥ 1). */
  devices: Uint8Array;
  /** Members (user indices) of each group, the group's first member being its creator. */
  groups: Int32Array[];
}

// Distinct streams per part: XOR with fixed odd constants.
const GROUP_STREAM = 0x9e3779b9;
const DEVICE_STREAM = 0x85ebca6b;

export function buildPopulation(s: Scenario): Population {
  const cons = s.graph.consecutive;
  const graph = cons ? consecutiveCommunityGraph(s.users, cons.community, cons.inside, cons.outside, s.seed) : generateGraph({
    users: s.users,
    mu: s.graph.mu,
    seed: s.seed,
    shape: {
      communityMin: s.graph.communities.min,
      communityMax: s.graph.communities.max,
      communityExp: s.graph.communities.exponent,
      degreeMin: s.graph.degree.min,
      degreeMax: s.graph.degree.max,
      degreeExp: s.graph.degree.exponent,
    },
  });
  const dr = mulberry32((s.seed ^ DEVICE_STREAM) >>> 0);
  const extra = s.devicesPerUser - 1;
  const devices = Uint8Array.from({ length: s.users }, () => 1 + Math.floor(extra) + (dr() < extra - Math.floor(extra) ? 1 : 0));
  const gr = mulberry32((s.seed ^ GROUP_STREAM) >>> 0);
  const groups = Array.from({ length: s.behaviours.groups.count }, () => socialGroup(gr, graph, Math.round(samplePowerLaw(gr, s.behaviours.groups.size))));
  return { graph, devices, groups };
}

/** Inverse-CDF sample of x^-exponent on [min, max]. */
export function samplePowerLaw(rand: Rand, p: PowerLaw): number {
  if (p.min === p.max) return p.min;
  const a = p.min ** (1 - p.exponent);
  const b = p.max ** (1 - p.exponent);
  return (a + rand() * (b - a)) ** (1 / (1 - p.exponent));
}

/**
 * A group of `size` users grown from a random creator through the graph (friends of friends, in
 * random order), so groups follow the social structure; topped up with random users when the
 * creator's component is smaller than the group.
 */
function socialGroup(rand: Rand, g: SocialGraph, size: number): Int32Array {
  const want = Math.min(size, g.users);
  const members = new Set<number>();
  const frontier: number[] = [Math.floor(rand() * g.users)];
  while (members.size < want && frontier.length > 0) {
    // Random pick from the frontier, swap-remove: breadth without a fixed order.
    const k = Math.floor(rand() * frontier.length);
    const u = frontier[k]!;
    frontier[k] = frontier[frontier.length - 1]!;
    frontier.pop();
    if (members.has(u)) continue;
    members.add(u);
    for (let i = g.offsets[u]!; i < g.offsets[u + 1]!; i++) if (!members.has(g.adj[i]!)) frontier.push(g.adj[i]!);
  }
  while (members.size < want) members.add(Math.floor(rand() * g.users));
  return Int32Array.from(members);
}

/** Degree of every user (edges, repeated pairs counted), for tests and the report. */
export function degrees(g: SocialGraph): Int32Array {
  return Int32Array.from({ length: g.users }, (_, u) => g.offsets[u + 1]! - g.offsets[u]!);
}
