import t, { type Test } from 'tap';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { HARNESS_ERROR_CODES, ScenarioError } from '../../bench/src/harness/errors.js';
import { diurnalFactor, loadScenario, offeredRate, parseScenario, stepAt, stepsTotalMs, targetName, validateScenario, type Scenario } from '../../bench/src/harness/scenario.js';
import { consecutiveCommunityGraph } from '../../bench/src/placement-graph.js';
import { encodeHistogram, LatencyRecorder } from '../../bench/src/harness/latency.js';
import { deliveryId, missingAndRepeated, sendOf } from '../../bench/src/harness/ledger.js';
import type { IntervalSample } from '../../bench/src/harness/result.js';
import { comparisonTable, summarizeSteps } from '../../bench/src/harness/steps.js';

const SCENARIOS = fileURLToPath(new URL('../../bench/scenarios/', import.meta.url));
const DOC = fileURLToPath(new URL('../../docs/benchmarking.md', import.meta.url));

/** A minimal valid scenario; tests spread their one bad value over it. */
const base = (): Record<string, unknown> => ({ name: 'x', users: 100, duration: 10, target: { driver: 'gravitas' } });

/** The issues of validating `raw`, or a failure if it validated. */
function issues(t: Test, raw: unknown): readonly string[] {
  try {
    validateScenario(raw);
  } catch (e) {
    t.type(e, ScenarioError);
    t.equal((e as ScenarioError).code, 'SCENARIO_INVALID');
    return (e as ScenarioError).issues;
  }
  t.fail('expected a ScenarioError');
  return [];
}

t.test('every example scenario in bench/scenarios validates', async (t) => {
  const files = (await readdir(SCENARIOS)).filter((f) => /\.(ya?ml|json)$/.test(f));
  t.ok(files.length >= 4, 'there are examples');
  for (const f of files) {
    const s = await loadScenario(join(SCENARIOS, f));
    t.equal(`${s.name}.yaml`, f, `${f}: name matches the file`);
  }
  const small = await loadScenario(join(SCENARIOS, 'small.yaml'));
  t.equal(small.users, 200);
  t.equal(small.rampUpMs, 5000, '"5s" is 5,000 ms');
  t.equal(small.behaviours.messages.diurnal.dayLengthMs, 25_000);
  t.equal(small.behaviours.reconnectStorms[0]?.atMs, 12_000);
  t.same(small.target, { driver: 'gravitas', local: { nodes: 2, cellsPerNode: 1 } });
  const big = await loadScenario(join(SCENARIOS, '50k.yaml'));
  t.ok(big.generators.count * big.generators.maxConnections >= big.users, '50k fits its generators');
});

t.test('defaults fill a minimal scenario', async (t) => {
  const s = validateScenario(base());
  t.equal(s.seed, 1);
  t.equal(s.devicesPerUser, 1);
  t.equal(s.intervalMs, 1000);
  t.equal(s.rampUpMs, 0);
  t.same(s.metrics, ['throughput', 'latency', 'connections', 'locality', 'servers', 'generators']);
  t.equal(s.behaviours.groups.share, 0);
  t.same(s.target, { driver: 'gravitas', local: { nodes: 2, cellsPerNode: 1 } });
  t.equal(s.behaviours.messages.diurnal.dayLengthMs, 10_000, 'the day spans the run unless told');
});

t.test('a bad value is reported with its path, the rule and what was given', async (t) => {
  const raw = { ...base(), behaviours: { groups: { share: 1.5, count: 3 } } };
  t.same(issues(t, raw), ['behaviours.groups.share: must be a number in [0, 1], got 1.5']);
  t.same(issues(t, { ...base(), users: 'many' }), ['users: must be an integer in [2, 10000000], got "many"']);
  t.same(issues(t, { ...base(), duration: '10 parsecs' }), ['duration: must be a positive duration (seconds, or e.g. "30s", "10m", "500ms"), got "10 parsecs"']);
  t.match(issues(t, { ...base(), behaviours: { reconnectStorms: [{ at: '5s', share: 0 }] } }), ['behaviours.reconnectStorms[0].share: must be a number in (0, 1], got 0']);
  t.match(issues(t, { ...base(), metrics: ['latency', 'joy', 'latency'] }), [/^metrics\[1\]: must be one of throughput, /, 'metrics[2]: "latency" is listed twice']);
});

t.test('every problem is listed at once, not just the first', async (t) => {
  const raw = { name: 'bad name!', users: 1, duration: 0, target: { driver: 'irc' }, graph: { mu: 2 } };
  const got = issues(t, raw);
  t.match(got.join('\n'), /^name: /m);
  t.match(got.join('\n'), /^users: /m);
  t.match(got.join('\n'), /^duration: /m);
  t.match(got.join('\n'), /^target\.driver: must be "gravitas", "xmpp" or "socketio", got "irc"/m);
  t.match(got.join('\n'), /^graph\.mu: /m);
  try {
    validateScenario(raw, 'bad.yaml');
  } catch (e) {
    t.match((e as Error).message, /^scenario bad\.yaml: \d+ problems:\n {2}/, 'the message lists them, one per line');
  }
});

t.test('typos and missing sections are named', async (t) => {
  t.same(issues(t, { ...base(), behaviours: { mesages: {} } }), ['behaviours.mesages: unknown key (did you mean "messages"?); allowed: messages, groups, presence, reconnectStorms, offline, campaigns']);
  t.same(issues(t, { name: 'x', users: 10, duration: 1 }), ['target: is required (an object)']);
  t.same(issues(t, [1, 2]).length, 1, 'a list at the top level');
});

t.test('cross-field rules', async (t) => {
  t.same(issues(t, { ...base(), graph: { degree: { min: 50, max: 5 } } }), ['graph.degree: min (50) must not exceed max (5)']);
  t.same(issues(t, { ...base(), behaviours: { groups: { share: 0.5 } } }), ['behaviours.groups.count: must be ≥ 1 when behaviours.groups.share is 0.5']);
  t.same(issues(t, { ...base(), behaviours: { campaigns: [{ at: '20s', audience: 1 }] } }), ['behaviours.campaigns[0].at: must be before the end of the run (rampUp + duration = 10 s), got 20 s']);
  t.match(issues(t, { ...base(), users: 40_000, generators: { count: 2, maxConnections: 15_000 } }), [/^generators: 2 generator\(s\) × 15000 connections cannot hold 40000 devices .* ≥ 3$/]);
  t.match(issues(t, { ...base(), generators: { maxConnections: 20_000 } }), [/^generators\.maxConnections: must be an integer in \[1, 19000\]/]);
  t.same(issues(t, { ...base(), target: { driver: 'xmpp', local: { nodes: 1 } } }), ['target.local.server: must be "prosody" or "ejabberd" (the servers the harness can start), got nothing']);
  t.same(issues(t, { ...base(), target: { driver: 'xmpp', remote: { addresses: ['a:1'] } } }), ['target.remote: is for driver "gravitas"']);
  t.same(issues(t, { ...base(), target: { driver: 'xmpp', local: { server: 'prosody' }, port: 5333 } }), ['target.port: comes from the local server: give either local or host/port/domain']);
  t.same(issues(t, { ...base(), target: { driver: 'gravitas', local: {}, muc: 'x' } }), ['target.muc: is for driver "xmpp"']);
  t.same(issues(t, { ...base(), target: { driver: 'gravitas', local: { config: { cells: 4, admin: {} } } } }), [
    'target.local.config.cells: is set by the harness (nodes and cells come from nodes and cellsPerNode)',
    'target.local.config.admin: is set by the harness (nodes and cells come from nodes and cellsPerNode)',
  ]);
  t.same(issues(t, { ...base(), target: { driver: 'gravitas', local: { config: 'fast' } } }), ['target.local.config: must be an object of node settings, got "fast"']);
  t.same(issues(t, { ...base(), behaviours: { campaigns: [{ at: 1, audience: 0.5 }] }, target: { driver: 'xmpp', host: 'h' } }), ['behaviours.campaigns: need driver "gravitas" (campaigns are a Gravitas feature), got driver "xmpp"']);
  t.same(
    issues(t, { ...base(), behaviours: { campaigns: [{ at: 1, audience: 0.5 }] }, target: { driver: 'gravitas', remote: { addresses: ['h:1'], serverPublicKey: 'a'.repeat(43) } } }),
    ['behaviours.campaigns: need target.remote.admin (url and token) to create campaigns on a remote cluster'],
  );
  t.match(issues(t, { ...base(), target: { driver: 'gravitas', remote: { addresses: ['h:1'], serverPublicKey: 'a'.repeat(43), metrics: ['ftp://x'] } } }), [/^target\.remote\.metrics\[0\]: must be an http\(s\) URL/]);
  t.match(issues(t, { ...base(), target: { driver: 'gravitas', remote: { addresses: ['nohost'], serverPublicKey: 'short' } } }), ['target.remote.addresses[0]: must be "host:port", got "nohost"', /^target\.remote\.serverPublicKey: must be a string matching/]);
});

t.test('YAML and JSON parse errors have their own code', async (t) => {
  t.throws(() => parseScenario('name: [unclosed', 'yaml'), { code: 'SCENARIO_PARSE', name: 'ScenarioError' });
  t.throws(() => parseScenario('name: a\nname: b\n', 'yaml'), { code: 'SCENARIO_PARSE' }, 'duplicate keys are an error, not last-wins');
  t.throws(() => parseScenario('{"name": ', 'json'), { code: 'SCENARIO_PARSE' });
  await t.rejects(loadScenario('/nonexistent/x.yaml'), { code: 'SCENARIO_READ' });
  const dir = t.testdir({});
  const file = join(dir, 's.json');
  await writeFile(file, JSON.stringify(base()));
  t.equal((await loadScenario(file)).name, 'x', 'JSON files load');
});

t.test('the diurnal curve and the offered rate', async (t) => {
  const s: Scenario = validateScenario({ ...base(), behaviours: { messages: { perUserPerMinute: 60, diurnal: { curve: [1, 3], dayLength: 10 } } } });
  const d = s.behaviours.messages.diurnal;
  t.same(d.curve, [1 / 3, 1], 'scaled so the peak is 1');
  t.equal(diurnalFactor(d, 0), 1 / 3, 'start of the day');
  t.equal(diurnalFactor(d, 5000), 1, 'half a (compressed) day later');
  t.equal(diurnalFactor(d, 2500), 2 / 3, 'interpolated');
  t.equal(diurnalFactor(d, 10_000), 1 / 3, 'cyclic');
  t.equal(offeredRate(s, 5000, 100), 100, '100 users × 60/min at the peak = 100/s');
  const h = validateScenario({ ...base(), behaviours: { messages: { diurnal: { curve: 'chat', startHour: 20 } } } });
  t.ok(Math.abs(diurnalFactor(h.behaviours.messages.diurnal, 0) - 1) < 1e-9, 'the chat preset peaks at 20 h');
});

t.test('every harness error code is documented in docs/benchmarking.md', async (t) => {
  const doc = await readFile(DOC, 'utf8');
  for (const code of HARNESS_ERROR_CODES) t.ok(doc.includes(`\`${code}\``), `${code} documented`);
});

t.test('peer targets: ejabberd, Socket.IO, and a list of targets', async (t) => {
  const ej = validateScenario({ ...base(), target: { driver: 'xmpp', local: { server: 'ejabberd', nodes: 2 } } });
  t.same(ej.target, { driver: 'xmpp', local: { server: 'ejabberd', nodes: 2 }, host: '127.0.0.1', port: 5222, domain: 'localhost', muc: 'conference.localhost', register: true });
  t.same(ej.targets, [ej.target], 'one target is a list of one');
  t.same(validateScenario({ ...base(), target: { driver: 'xmpp', local: { server: 'ejabberd' } } }).target, { driver: 'xmpp', local: { server: 'ejabberd', nodes: 1 }, host: '127.0.0.1', port: 5222, domain: 'localhost', muc: 'conference.localhost', register: true }, 'one node by default');
  t.same(validateScenario({ ...base(), target: { driver: 'socketio', local: { processes: 3 } } }).target, { driver: 'socketio', local: { processes: 3 } });
  t.same(validateScenario({ ...base(), target: { driver: 'socketio' } }).target, { driver: 'socketio', local: { processes: 2 } }, 'two processes by default');
  t.same(issues(t, { ...base(), target: { driver: 'xmpp', local: { server: 'ejabberd', nodes: 0 } } }), ['target.local.nodes: must be an integer in [1, 8], got 0']);
  t.same(issues(t, { ...base(), target: { driver: 'xmpp', local: { server: 'prosody', nodes: 2 } } }), ['target.local.nodes: is for server "ejabberd" (the harness starts one prosody)']);
  t.same(issues(t, { ...base(), target: { driver: 'socketio', local: { processes: 'two' } } }), ['target.local.processes: must be an integer in [1, 16], got "two"']);
  t.same(issues(t, { ...base(), target: { driver: 'socketio', host: 'x', local: { proceses: 2 } } }), [
    'target.host: is not for driver "socketio" (the harness starts the peer: give local)',
    'target.local.proceses: unknown key (did you mean "processes"?); allowed: processes',
  ]);
  t.same(issues(t, { ...base(), target: { driver: 'socketio' }, behaviours: { groups: { share: 0.5, count: 2, size: { min: 2, max: 5 } } } }), ['behaviours.groups.share: must be 0 with driver "socketio" (the Socket.IO peer has no groups)']);

  const list = validateScenario({ ...base(), target: undefined, targets: [{ driver: 'gravitas' }, { driver: 'xmpp', local: { server: 'ejabberd', nodes: 2 } }, { driver: 'socketio' }] });
  t.same(list.targets.map(targetName), ['gravitas', 'ejabberd', 'socketio']);
  t.equal(list.target, list.targets[0], 'target is the first of targets');
  t.same(issues(t, { ...base(), targets: [{ driver: 'socketio' }] }), ['targets: give either target or targets, not both']);
  t.same(issues(t, { ...base(), target: undefined, targets: [] }), ['targets: must list at least one target']);
  t.same(issues(t, { ...base(), target: undefined, targets: [{ driver: 'socketio' }, { driver: 'socketio', local: { processes: 1 } }] }), ['targets[1]: "socketio" is listed twice (targets are told apart by name)']);
  t.same(issues(t, { ...base(), target: undefined, targets: [{ driver: 'gravitas' }, { driver: 'xmpp', local: { server: 'openfire' } }] }), ['targets[1].local.server: must be "prosody" or "ejabberd" (the servers the harness can start), got "openfire"']);
  t.same(issues(t, { ...base(), pin: 'yes' }), ['pin: must be true or false, got "yes"']);
  t.equal(validateScenario({ ...base(), pin: true }).pin, true);
});

t.test('step sweeps and the consecutive-community graph', async (t) => {
  const steps = { rates: [100, 200], warmup: '1s', hold: '2s', closedLoop: { inFlight: 2 } };
  const s = validateScenario({ ...base(), duration: undefined, rampUp: 2, graph: { consecutive: { community: 50, inside: 16, outside: 4 } }, behaviours: { messages: { steps } } });
  t.same(s.behaviours.messages.steps, { rates: [100, 200], warmupMs: 1000, holdMs: 2000, closedLoop: { inFlight: 2 } });
  t.equal(s.durationMs, 9000, 'the duration is the steps: 3 × (1 + 2) s');
  t.equal(stepsTotalMs(s.behaviours.messages.steps!), 9000);
  t.same(s.graph.consecutive, { community: 50, inside: 16, outside: 4 });
  t.equal(stepAt(s, 1999), undefined, 'nothing in the ramp-up');
  t.same(stepAt(s, 2000), { index: 0, rate: 100, closed: false, measured: false }, 'the first warmup');
  t.same(stepAt(s, 3000), { index: 0, rate: 100, closed: false, measured: true }, 'the first hold');
  t.same(stepAt(s, 6000), { index: 1, rate: 200, closed: false, measured: true });
  t.same(stepAt(s, 9000), { index: 2, rate: 0, closed: true, measured: true }, 'the closed-loop step');
  t.equal(stepAt(s, 11_000), undefined, 'after the last step');

  const b = { ...base(), rampUp: 2 };
  t.same(issues(t, { ...b, duration: 5, behaviours: { messages: { steps } } }), ['duration: must be the steps\' total (9 s: 3 steps × (warmup + hold)) or left out, got 5 s']);
  t.same(issues(t, { ...b, behaviours: { messages: { perUserPerMinute: 5, steps: { rates: [1], hold: 1 } } } }), [
    'behaviours.messages.perUserPerMinute: is not used with steps (the steps give the offered rates): leave it out',
    'duration: must be the steps\' total (4 s: 1 steps × (warmup + hold)) or left out, got 10 s',
  ]);
  t.same(issues(t, { ...b, duration: undefined, behaviours: { messages: { steps: { rates: [100, -1] } } } }), ['behaviours.messages.steps.rates[1]: must be a number in (0, 10000000] (msgs/s), got -1']);
  t.same(issues(t, { ...base(), duration: undefined, behaviours: { messages: { steps: { rates: [100] } } } }), ['rampUp: is required with steps (every user connects before the first step)']);
  t.same(issues(t, { ...b, duration: undefined, generators: { count: 2 }, behaviours: { messages: { steps } } }), [
    'behaviours.messages.steps.closedLoop: needs generators.count 1 (a message\'s arrival frees its sender\'s slot, so sender and recipient must share a generator), got 2',
  ]);
  t.same(issues(t, { ...base(), graph: { mu: 0.1, consecutive: { community: 10, inside: 10, outside: 0 } } }), [
    'graph.consecutive.inside: must be below community (10: contacts are distinct and never the user), got 10',
    'graph.mu: is not used with graph.consecutive: leave it out',
  ]);
  t.same(issues(t, { ...base(), graph: { consecutive: { community: 500, inside: 0, outside: 0 } } }), [
    'graph.consecutive.community: must not exceed users (100), got 500',
    'graph.consecutive: must give each user at least one contact (inside + outside ≥ 1)',
  ]);
});

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
