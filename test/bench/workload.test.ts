import t from 'tap';
import { mulberry32 } from '../../bench/src/custody-types.js';
import { buildPopulation } from '../../bench/src/harness/population.js';
import { validateScenario, type Scenario } from '../../bench/src/harness/scenario.js';
import { deviceRef, deviceSecret, NAMESPACE_PATTERN, userName } from '../../bench/src/harness/identity.js';
import {
  ActiveSet, campaignAudience, exponential, expectedDirect, groupDevices, localMemberships, localUsers, offlineMeans, recipientOf, TimerQueue, tracksDeliveries,
} from '../../bench/src/harness/workload.js';

const scenario = (extra: Record<string, unknown> = {}): Scenario =>
  validateScenario({
    name: 'w',
    seed: 9,
    users: 3000,
    duration: 10,
    devicesPerUser: 1.4,
    graph: { mu: 0.2, communities: { min: 10, max: 100, exponent: 2 }, degree: { min: 2, max: 60, exponent: 2.5 } },
    behaviours: { groups: { share: 0.2, count: 30, size: { min: 3, max: 40, exponent: 2 } }, campaigns: [{ at: 1, audience: 0.25 }, { at: 2, audience: 0.001 }] },
    target: { driver: 'gravitas' },
    ...extra,
  });

t.test('users are dealt round-robin: every user exactly once, devices together', async (t) => {
  for (const [users, count] of [[10, 3], [7, 7], [5, 8], [3000, 4]] as const) {
    const seen = new Int32Array(users);
    for (let g = 0; g < count; g++) for (const u of localUsers(users, g, count)) seen[u]!++;
    t.ok(seen.every((x) => x === 1), `${users} users over ${count} generators`);
  }
  t.same([...localUsers(10, 1, 3)], [1, 4, 7]);
  t.equal(localUsers(5, 7, 8).length, 0, 'a generator may have nobody');
});

t.test('names and device secrets are deterministic per namespace, and valid on both wires', async (t) => {
  t.equal(userName('ab12', 35), 'ab12uz');
  t.ok(NAMESPACE_PATTERN.test('ab12') && !NAMESPACE_PATTERN.test('AB') && !NAMESPACE_PATTERN.test('a.b'));
  const a = deviceRef('ns1', 7, 1);
  t.same(a, deviceRef('ns1', 7, 1), 'another generator derives the same device');
  t.equal(a.secret.length, 32);
  t.notSame(Buffer.from(a.secret), Buffer.from(deviceRef('ns2', 7, 1).secret), 'another namespace, another secret');
  t.notSame(Buffer.from(deviceSecret('ns1', 'u', 'd0')), Buffer.from(deviceSecret('ns1', 'u', 'd1')), 'another device, another secret');
  t.match(a.user, /^[a-z0-9]+$/, 'lower case: an XMPP localpart unchanged by nodeprep');
});

t.test('the offline process keeps the configured share offline in the long run', async (t) => {
  t.equal(offlineMeans(0, 1000), undefined, 'share 0: never offline');
  const m = offlineMeans(0.2, 5000)!;
  t.equal(m.offlineMs, 5000);
  t.equal(m.onlineMs, 20_000);
  // Simulate the alternating renewal process and measure the share of time offline.
  const rand = mulberry32(1);
  let on = 0;
  let off = 0;
  for (let i = 0; i < 20_000; i++) {
    on += exponential(rand, m.onlineMs);
    off += exponential(rand, m.offlineMs);
  }
  t.ok(Math.abs(off / (on + off) - 0.2) < 0.01, `offline share ${(off / (on + off)).toFixed(3)} ≈ 0.2`);
});

t.test('ActiveSet: add, delete, membership and uniform sampling', async (t) => {
  const s = new ActiveSet(10);
  t.equal(s.sample(Math.random), -1, 'empty');
  for (const x of [3, 5, 7, 5]) s.add(x);
  t.equal(s.size, 3, 'adding twice is a no-op');
  s.delete(5);
  s.delete(9);
  t.equal(s.size, 2);
  t.ok(s.has(3) && s.has(7) && !s.has(5));
  const rand = mulberry32(2);
  const hits = new Map<number, number>();
  for (let i = 0; i < 10_000; i++) {
    const x = s.sample(rand);
    hits.set(x, (hits.get(x) ?? 0) + 1);
  }
  t.same([...hits.keys()].sort(), [3, 7], 'only members are drawn');
  t.ok(Math.abs(hits.get(3)! - hits.get(7)!) < 600, 'about evenly');
});

t.test('TimerQueue pops in time order whatever the push order', async (t) => {
  const q = new TimerQueue();
  const rand = mulberry32(3);
  const times = Array.from({ length: 1000 }, () => Math.floor(rand() * 1e6));
  times.forEach((at, i) => q.push(at, i % 5, i));
  t.equal(q.size, 1000);
  const out = { kind: 0, arg: 0 };
  let last = -Infinity;
  let ordered = true;
  const args = new Set<number>();
  while (q.size > 0) {
    const at = q.pop(out);
    if (at < last) ordered = false;
    last = at;
    if (times[out.arg] !== at || out.kind !== out.arg % 5) ordered = false;
    args.add(out.arg);
  }
  t.ok(ordered, 'ascending, with each entry’s own kind and argument');
  t.equal(args.size, 1000, 'every entry once');
  t.equal(q.pop(out), Infinity, 'empty');
  t.equal(q.next, Infinity);
});

t.test('recipients follow the graph’s weights; expected deliveries follow the driver’s semantics', async (t) => {
  const s = scenario();
  const pop = buildPopulation(s);
  const rand = mulberry32(4);
  const g = pop.graph;
  // A user with several contacts: the most talked-to contact is drawn most often.
  let u = 0;
  while (g.offsets[u + 1]! - g.offsets[u]! < 5) u++;
  const counts = new Map<number, number>();
  for (let i = 0; i < 20_000; i++) {
    const v = recipientOf(pop, u, rand);
    counts.set(v, (counts.get(v) ?? 0) + 1);
  }
  const contacts = new Set(Array.from(g.adj.subarray(g.offsets[u]!, g.offsets[u + 1]!)));
  t.ok([...counts.keys()].every((v) => contacts.has(v)), 'only contacts');
  let heaviest = -1;
  let w = -1;
  for (let i = g.offsets[u]!; i < g.offsets[u + 1]!; i++) if (g.weight[i]! > w) [w, heaviest] = [g.weight[i]!, g.adj[i]!];
  t.equal([...counts.entries()].sort((a, b) => b[1] - a[1])[0]![0], heaviest, 'the heaviest edge wins most');

  const from = 0;
  const to = 1;
  const all = { acceptance: true, ownDeviceCopies: true, offlineDelivery: { direct: true, groups: true } };
  t.equal(expectedDirect(pop, from, to, all), pop.devices[to]! + pop.devices[from]! - 1, 'recipient devices + the sender’s other devices');
  t.equal(expectedDirect(pop, from, to, { ...all, ownDeviceCopies: false }), pop.devices[to]!);
  const gd = groupDevices(pop);
  t.equal(gd[0], Array.from(pop.groups[0]!).reduce((a, m) => a + pop.devices[m]!, 0));
  t.ok(tracksDeliveries(all));
  t.notOk(tracksDeliveries({ ...all, acceptance: false }), 'no acceptance, no loss accounting');
  t.notOk(tracksDeliveries({ ...all, offlineDelivery: { direct: true, groups: false } }), 'MUC-like groups lose offline members by design');
});

t.test('group memberships of a generator’s users', async (t) => {
  const pop = buildPopulation(scenario());
  const users = localUsers(pop.graph.users, 1, 3);
  const m = localMemberships(pop, users);
  let expected = 0;
  for (const members of pop.groups) for (const x of members) if (x % 3 === 1) expected++;
  t.equal(m.slot.length, expected, 'one entry per (local member, group)');
  t.ok(Array.from(m.slot).every((slot, i) => pop.groups[m.group[i]!]!.includes(users[slot]!)), 'every entry is a real membership');
  t.same(m.groupsOfSlot.flat().length, expected);
});

t.test('a campaign audience is a fixed share of distinct users, the same in every process', async (t) => {
  const s = scenario();
  const a = campaignAudience(s, 0);
  t.equal(a.length, Math.ceil(0.25 * 3000));
  t.equal(new Set(a).size, a.length, 'distinct');
  t.same([...a], [...campaignAudience(s, 0)], 'deterministic');
  t.notSame([...a.slice(0, 20)], [...campaignAudience(s, 1).slice(0, 20)], 'each campaign its own draw');
  t.equal(campaignAudience(s, 1).length, 3, 'rounded up, never empty');
});
