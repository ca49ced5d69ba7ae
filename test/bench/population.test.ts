import t from 'tap';
import { buildPopulation, degrees } from '../../bench/src/harness/population.js';
import { validateScenario, type Scenario } from '../../bench/src/harness/scenario.js';

const scenario = (seed: number, extra: Record<string, unknown> = {}): Scenario =>
  validateScenario({
    name: 'g',
    seed,
    users: 5000,
    duration: 10,
    devicesPerUser: 1.5,
    graph: { mu: 0.2, communities: { min: 10, max: 200, exponent: 2 }, degree: { min: 3, max: 300, exponent: 2.5 } },
    behaviours: { groups: { share: 0.2, count: 40, size: { min: 3, max: 50, exponent: 2 } } },
    target: { driver: 'gravitas' },
    ...extra,
  });

const bytes = (a: ArrayBufferView): Buffer => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

t.test('the same seed gives the identical graph, devices and groups', async (t) => {
  const a = buildPopulation(scenario(42));
  const b = buildPopulation(scenario(42));
  t.ok(bytes(a.graph.offsets).equals(bytes(b.graph.offsets)), 'offsets');
  t.ok(bytes(a.graph.adj).equals(bytes(b.graph.adj)), 'edges');
  t.ok(bytes(a.graph.weight).equals(bytes(b.graph.weight)), 'weights');
  t.ok(bytes(a.graph.community).equals(bytes(b.graph.community)), 'communities');
  t.ok(bytes(a.devices).equals(bytes(b.devices)), 'devices');
  t.same(a.groups.map((g) => [...g]), b.groups.map((g) => [...g]), 'groups');

  const c = buildPopulation(scenario(43));
  t.notOk(bytes(a.graph.adj).equals(bytes(c.graph.adj)), 'another seed, other edges');
});

t.test('group settings do not change the graph (separate random streams)', async (t) => {
  const a = buildPopulation(scenario(42));
  const b = buildPopulation(scenario(42, { behaviours: { groups: { share: 0.5, count: 7 } } }));
  t.ok(bytes(a.graph.adj).equals(bytes(b.graph.adj)));
  t.equal(b.groups.length, 7);
});

t.test('communities, heavy-tailed degrees and the configured bounds', async (t) => {
  const s = scenario(42);
  const p = buildPopulation(s);
  const g = p.graph;
  t.ok(g.communities >= 5000 / 200, `many communities (${g.communities})`);
  const sizes = new Map<number, number>();
  for (const c of g.community) sizes.set(c, (sizes.get(c) ?? 0) + 1);
  for (const n of sizes.values()) t.ok(n <= 200, 'no community above its max') || t.bailout();
  t.ok(Math.abs(g.crossEdges - s.graph.mu) < 0.05, `realised share of edges across communities ${g.crossEdges.toFixed(3)} ≈ mu 0.2`);

  const d = [...degrees(g)].sort((x, y) => x - y);
  const median = d[d.length >> 1]!;
  const p99 = d[Math.floor(d.length * 0.99)]!;
  const max = d[d.length - 1]!;
  // A power law with exponent 2.5 from 3: median ≈ 5, yet a tail of users with tens to hundreds of contacts.
  t.ok(median <= 8, `median degree ${median} is small`);
  t.ok(p99 >= 5 * median, `p99 degree ${p99} ≥ 5 × median: heavy tail`);
  t.ok(max >= 10 * median, `max degree ${max} ≥ 10 × median`);

  const extra = [...p.devices].filter((n) => n === 2).length / p.devices.length;
  t.ok([...p.devices].every((n) => n === 1 || n === 2), '1.5 devices per user: one or two each');
  t.ok(Math.abs(extra - 0.5) < 0.05, `about half the users have a second device (${extra.toFixed(3)})`);

  for (const grp of p.groups) {
    t.ok(grp.length >= 3 && grp.length <= 50, 'group size within bounds') || t.bailout();
    t.equal(new Set(grp).size, grp.length, 'no member twice');
  }
  // Groups grow through the graph: most pairs of members share a community more often than random pairs would.
  let same = 0;
  let pairs = 0;
  for (const grp of p.groups) for (let i = 1; i < grp.length; i++) (pairs++, g.community[grp[i]!] === g.community[grp[0]!] && same++);
  t.ok(same / pairs > 0.2, `group members share the creator's community (${(same / pairs).toFixed(2)}), far above random (~${(1 / g.communities).toFixed(3)})`);
});
