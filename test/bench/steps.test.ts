import t from 'tap';
import { consecutiveCommunityGraph } from '../../bench/src/placement-graph.js';
import { encodeHistogram, LatencyRecorder } from '../../bench/src/harness/latency.js';
import { deliveryId, missingAndRepeated, sendOf } from '../../bench/src/harness/ledger.js';
import type { IntervalSample } from '../../bench/src/harness/result.js';
import { validateScenario } from '../../bench/src/harness/scenario.js';
import { comparisonTable, summarizeSteps } from '../../bench/src/harness/steps.js';

// The comparison's pieces without processes: its graph, lost ids placed in their step, the table.

t.test('communities of 50 consecutive ids: 16 distinct contacts inside, 4 uniform', async (t) => {
  const g = consecutiveCommunityGraph(2000, 50, 16, 4, 17);
  let inside = 0;
  for (let u = 0; u < 2000; u++) {
    const row = Array.from(g.adj.subarray(g.offsets[u]!, g.offsets[u + 1]!));
    if (row.length !== 20) t.fail(`user ${u}: ${row.length} contacts, not 20`);
    const own = row.slice(0, 16);
    if (!own.every((v) => Math.floor(v / 50) === Math.floor(u / 50) && v !== u) || new Set(own).size !== 16) t.fail(`user ${u}: 16 distinct others of its community`);
    if (row.includes(u)) t.fail(`user ${u} is its own contact`);
    inside += row.filter((v) => Math.floor(v / 50) === Math.floor(u / 50)).length;
  }
  t.equal(g.adj.length, 40_000, '20 contacts each');
  // 16 inside + 4 uniform of which ~49/1999 land inside too.
  t.ok(Math.abs(inside / 2000 - (16 + 4 * 49 / 1999)) < 0.1, `inside contacts per user ≈ 16.1 (${(inside / 2000).toFixed(2)})`);
  t.equal(g.communities, 40);
  t.same(consecutiveCommunityGraph(2000, 50, 16, 4, 17).adj, g.adj, 'the same seed, the same graph');
});

t.test('lost and repeated ids, and the send they belong to', async (t) => {
  const id = (ref: number, gen: number, dev: number): number => deliveryId(ref, gen, 2, dev, 10);
  const owed = [id(1, 0, 3), id(2, 0, 4), id(3, 1, 5), id(4, 1, 6)];
  const arrived = [id(1, 0, 3), id(3, 1, 5), id(3, 1, 5), id(9, 0, 9)];
  const r = missingAndRepeated(owed, arrived);
  t.same(r.missing.map((x) => sendOf(x, 2, 10)), [{ generator: 0, ref: 2 }, { generator: 1, ref: 4 }]);
  t.same(r.repeated.map((x) => sendOf(x, 2, 10)), [{ generator: 1, ref: 3 }]);
});

t.test('each hold summarised, the best step, the knee and the closed loop', async (t) => {
  const s = validateScenario({ name: 's', users: 10, rampUp: 1, interval: 1, behaviours: { messages: { steps: { rates: [100, 200], warmup: 1, hold: 2, closedLoop: { inFlight: 1 } } } }, target: { driver: 'socketio' } });
  // 10 intervals: ramp 1, step 1 = 2..4 (hold 3, 4), step 2 = 5..7 (hold 6, 7), closed = 8..10 (hold 9, 10).
  const hists = new Map<number, string[]>();
  const intervals: IntervalSample[] = [];
  const lastRef: number[] = [];
  for (let k = 1; k <= 10; k++) {
    const rec = new LatencyRecorder();
    const lat = k <= 4 ? 5 : k <= 7 ? 300 : 20;
    for (let i = 0; i < 100; i++) rec.record(0, lat);
    hists.set(k, [encodeHistogram(rec.total)]);
    const rate = k <= 1 ? 0 : k <= 4 ? 100 : k <= 7 ? 200 : 1000;
    lastRef.push((lastRef.at(-1) ?? 0) + rate);
    intervals.push({ t: k, phase: 'steady', sentPerSec: rate, receivedPerSec: rate, servers: { a: { cpu: 50, rssMiB: 1 }, b: { cpu: 30, rssMiB: 1 } }, generators: { gen0: { cpu: 20 } } } as unknown as IntervalSample);
  }
  // One message lost from step 2 (ref 600 was sent in interval 5), none elsewhere.
  const lost = { missing: [deliveryId(600, 0, 1, 3, 10)], repeated: [] };
  const r = summarizeSteps(s, intervals, { hists, lastRefs: new Map([[0, lastRef]]), lost, generators: 1, devices: 10 })!;
  t.same(r.steps.map((x) => x.offered), [100, 200, null]);
  t.same(r.steps.map((x) => x.missing), [0, 1, 0], 'the lost message in the step that sent it');
  t.same(r.steps.map((x) => Math.round(x.latency.p99!)), [5, 300, 20], 'p99 of the holds (warmups left out)');
  t.equal(r.steps[0]!.serverCpu, 80, 'servers summed');
  t.equal(Math.round(r.steps[0]!.cpuPerMsgUs!), 8000, '0.8 core / 100 msgs/s = 8 ms each');
  t.equal(r.best?.offered, 100);
  t.equal(r.pastKnee?.offered, 200);
  t.equal(r.closedLoop?.deliveredPerSec, 1000);
  const table = comparisonTable([{ target: 'socketio', steps: r }, { target: 'none', steps: undefined }]);
  t.match(table, /\| socketio \| 100 msgs\/s \(p99 5\.0 ms\) +\| 8,000 µs +\| 1,000 msgs\/s \(p99 20 ms\) \| 200 offered: 200 delivered\/s, p99 300 ms, 1 lost/);
});
