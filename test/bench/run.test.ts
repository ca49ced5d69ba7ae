import t from 'tap';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { check, NatsServer, trackChild } from '@gravitas/testkit';
import { runScenario } from '../../bench/src/harness/runner.js';
import type { RunResult } from '../../bench/src/harness/result.js';
import { Capture } from './capture.js';
import { chromiumMissing, launchChromium } from '../fixtures/browser.js';
import { plotView } from '../fixtures/report-page.js';

/*
 * `gravitas bench run` for real: a private nats-server, a gravitas node with two cells, two
 * generator processes coordinated over a control NATS, every behaviour switched on at a small
 * scale. The run must account for every accepted message, fire the campaign, sample the servers
 * and locality, and write a JSON result and an HTML report. Then the ways a run fails: a
 * generator killed mid-run, a target nobody listens on, a bad scenario file on the command line.
 */

const BENCH_MAIN = fileURLToPath(new URL('../../bench/dist/main.js', import.meta.url));

const SCENARIO = `
name: e2e
description: every behaviour, small
seed: 5
users: 60
devicesPerUser: 1.3
graph: { mu: 0.3, communities: { min: 5, max: 20, exponent: 2 }, degree: { min: 2, max: 10, exponent: 2.5 } }
behaviours:
  messages: { perUserPerMinute: 120, bodyBytes: 80, diurnal: { curve: flat } }
  groups: { share: 0.2, count: 4, size: { min: 3, max: 10, exponent: 2 } }
  presence: { changesPerUserPerMinute: 6 }
  reconnectStorms: [{ at: 5s, share: 0.5, over: 1s }]
  offline: { share: 0.1, meanDuration: 2s }
  campaigns: [{ at: 4s, audience: 0.5, ratePerSec: 50 }]
rampUp: 2s
duration: 8s
interval: 1s
generators: { count: 2, maxConnections: 100 }
target: { driver: gravitas, local: { nodes: 1, cellsPerNode: 2 } }
`;


t.test('a short run against a private cluster: every behaviour, every message accounted for', async (t) => {
  const dir = t.testdir({ 'e2e.yaml': SCENARIO });
  const progress = new Capture();
  const logs: string[] = [];
  const { result: r, json, html } = await runScenario({ file: join(dir, 'e2e.yaml'), json: join(dir, 'out', 'r.json'), progress, log: (m) => logs.push(m) });

  t.equal(r.generators.length, 2, 'two generator processes');
  t.equal(r.generators.reduce((a, g) => a + g.users, 0), 60, 'every user hosted once');
  t.ok(r.generators.every((g) => Math.abs(g.clockOffsetMs) <= g.clockErrorMs + 1), 'one host, one clock');
  t.equal(r.setup.groupsCreated, 4, 'the groups were created');
  t.same(r.setup.errors, {}, 'provisioning without errors');

  const steady = r.intervals.filter((iv) => iv.phase === 'steady');
  t.ok(r.intervals.filter((iv) => iv.phase === 'ramp').length >= 2, 'ramp-up intervals');
  t.ok(steady.length >= 7, `steady intervals (${steady.length})`);
  t.ok(r.totals.sent > 300, `messages sent (${r.totals.sent})`);
  t.equal(r.totals.accepted + r.totals.failed, r.totals.sent, 'every send has an outcome');
  t.equal(r.totals.failed, 0, 'none refused');
  t.equal(r.totals.stray, 0, 'nothing from another run');

  // Custody: every delivery an accepted message owes arrived, live or after its device came back.
  const d = r.totals.delivery;
  t.ok(d.tracked, 'the Gravitas driver is tracked');
  t.ok(d.complete, `all owed deliveries arrived (${d.received} of ${d.expected}, ${d.drainMs.toFixed(0)} ms after the end)`);
  t.equal(d.missing, 0, 'missing, by delivery id: 0');
  t.equal(d.unexpected, 0, 'nothing arrived on a device it was not owed to');
  t.equal(r.totals.received + r.totals.catchup, d.received, 'live + catch-up = every unique delivery');
  t.ok(r.totals.catchup > 0, `offline periods and the storm made mailbox catch-up (${r.totals.catchup})`);
  t.ok(r.totals.latency.count > 0 && r.totals.latency.p50! > 0, 'live latency recorded');

  // Behaviours show where they should.
  const at = (s: number): RunResult['intervals'][number] => r.intervals.find((iv) => iv.t === s)!;
  t.ok(at(6).connectsPerSec + at(7).connectsPerSec > 5, 'the storm at 5 s made devices reconnect');
  t.ok(r.totals.presence > 0, `presence updates reached contacts (${r.totals.presence})`);
  t.equal(r.totals.campaigns.received, r.totals.campaigns.expected, `the campaign reached every audience device (${r.totals.campaigns.received})`);
  t.ok(r.totals.campaigns.expected > 0);
  t.ok(r.totals.campaignReach.count > 0, 'campaign reach recorded');
  t.ok(Math.max(...r.intervals.map((iv) => iv.connected)) >= 60, 'every user connected at some point');

  // Readings of the target and the host.
  t.ok(steady.some((iv) => iv.locality !== null), 'locality read from the node’s /metrics');
  t.ok(steady.every((iv) => iv.servers['nats'] && iv.servers['node1']), 'nats-server and the node sampled every interval');
  t.ok(steady.every((iv) => Object.keys(iv.generators).length === 2), 'both generators reported every interval');
  t.ok(steady.every((iv) => Object.values(iv.hosts).every((h) => h.cores >= 1 && h.cpu > 0)), 'the host’s CPU read every interval');
  t.notOk(r.verdict.generatorBound, 'a light load: no generator saturated by its own work');
  t.ok(r.capacity !== null && r.capacity.sentPerSec > 60, `a sustained rate near the ~120 msgs/s offered (${r.capacity?.sentPerSec.toFixed(0)})`);

  // The files.
  const saved = JSON.parse(await readFile(json, 'utf8')) as RunResult;
  t.equal(saved.format, 'gravitas-bench-run/1');
  t.equal(saved.intervals.length, r.intervals.length);
  const page = await readFile(html, 'utf8');
  t.match(page, /<figure class="plot" id="plot-throughput">/);
  t.match(page, /id="bottlenecks"/);
  t.match(progress.text, /connected/, 'progress lines were written');

  t.ok(logs.some((l) => /provisioning accounts/.test(l)));

  // The real run's report in a real browser: every plot drawn from data, nothing loaded from elsewhere.
  await t.test('the run’s HTML report in headless Chromium', { skip: chromiumMissing() }, async (t) => {
    const browser = await launchChromium();
    t.teardown(() => browser.close());
    const tab = await browser.newPage({ viewport: { width: 960, height: 900 } });
    const requests: string[] = [];
    tab.on('request', (q) => requests.push(q.url()));
    await tab.goto(pathToFileURL(html).href);
    for (const id of ['throughput', 'presence', 'latency', 'connections', 'connect-rate', 'connect-time', 'locality', 'host-cpu', 'server-cpu', 'server-memory', 'generator-cpu', 'generator-lag']) {
      const p = await plotView(tab, id);
      t.ok(p.svg && p.paths >= 1 && p.empty === null, `${id}: drawn from the run's data (${p.paths} series)`);
      t.ok(p.lengths.some((l) => l > 0), `${id}: a line with a length`);
    }
    t.equal(await tab.locator('#plot-server-cpu path.series').count(), 2, 'server CPU: nats and node1');
    t.ok((await tab.locator('#plot-throughput line.event').count()) >= 2, 'the storm and the campaign are marked');
    t.same(requests.filter((u) => !u.startsWith('file:')), [], 'no network request');
  });
});

t.test('the same workload against XMPP: a private Prosody started by the runner', { skip: existsSync('/usr/bin/prosody') ? false : 'prosody is not installed' }, async (t) => {
  const dir = t.testdir({
    'x.yaml': SCENARIO.replace(/\n  campaigns: .*/, '').replace('target: { driver: gravitas, local: { nodes: 1, cellsPerNode: 2 } }', 'target: { driver: xmpp, local: { server: prosody } }'),
  });
  const { result: r } = await runScenario({ file: join(dir, 'x.yaml'), json: join(dir, 'r.json'), progress: new Capture(), log: () => undefined });
  t.match(r.target, /xmpp: a local prosody/);
  t.equal(r.setup.groupsCreated, 4, 'MUC rooms for the groups');
  t.ok(r.totals.sent > 300 && r.totals.received > 300, `messages went through (${r.totals.sent} sent, ${r.totals.received} received live)`);
  t.notOk(r.totals.delivery.tracked, 'XMPP cannot say what the server took custody of: no loss accounting');
  t.ok(r.notes.some((n) => /cannot tell what the server accepted/.test(n)), 'and the report says so');
  t.ok(r.intervals.some((iv) => iv.servers['prosody']), 'the Prosody process sampled');
  t.ok(r.intervals.every((iv) => iv.locality === null), 'no locality from an XMPP server');
  t.equal(r.totals.stray, 0);
});

t.test('generators on "other hosts": a daemon on a shared control NATS serves one run after another', async (t) => {
  const control = await NatsServer.start({ jetstream: false });
  t.teardown(() => control.stop());
  // What `gravitas bench generator --control URL` runs on another host or in a pod.
  const daemon = spawn(process.execPath, [BENCH_MAIN, 'generator', '--control', control.url], { stdio: ['ignore', 'pipe', 'pipe'] });
  trackChild(daemon);
  t.teardown(() => void daemon.kill('SIGKILL'));
  let out = '';
  daemon.stdout.on('data', (d: Buffer) => (out += d.toString()));
  await check('the daemon is ready', () => /generator ready/.test(out));
  const dir = t.testdir({
    'ext.yaml': `name: ext\nusers: 20\nbehaviours: { messages: { perUserPerMinute: 120 } }\nrampUp: 1s\nduration: 3s\ngenerators: { count: 1, maxConnections: 50 }\ntarget: { driver: gravitas, local: { nodes: 1, cellsPerNode: 1 } }\n`,
  });
  for (const round of [1, 2]) {
    const { result: r } = await runScenario({ file: join(dir, 'ext.yaml'), json: join(dir, `r${round}.json`), control: control.url, externalGenerators: true, progress: new Capture(), log: () => undefined });
    t.equal(r.generators[0]!.pid, daemon.pid, `run ${round} was served by the daemon`);
    t.ok(r.totals.sent > 0 && r.totals.delivery.missing === 0, `run ${round}: ${r.totals.sent} sent, nothing missing`);
  }
  t.equal(daemon.exitCode, null, 'the daemon waits for the next runner');
});

t.test('a generator killed mid-run fails the run, and nothing is left behind', async (t) => {
  const dir = t.testdir({ 'e2e.yaml': SCENARIO.replace('duration: 8s', 'duration: 30s').replace(/\n  campaigns: .*/, '') });
  let pid = 0;
  const run = runScenario({
    file: join(dir, 'e2e.yaml'),
    json: join(dir, 'r.json'),
    progress: new Capture(),
    log: (m) => {
      const p = /gen1 \(pid (\d+)\)/.exec(m);
      if (p) pid = Number(p[1]);
      if (/setup done/.test(m)) setTimeout(() => process.kill(pid, 'SIGKILL'), 2000);
    },
  });
  await t.rejects(run, { code: 'GENERATOR_FAILED' });
  t.ok(pid > 0, 'the generator’s pid was logged');
  t.throws(() => process.kill(pid, 0), { code: 'ESRCH' }, 'the killed generator is gone');
  t.notOk(existsSync(join(dir, 'r.json')), 'no result for a failed run');
});

t.test('a target nobody listens on: provisioning fails the run with its code', async (t) => {
  const dir = t.testdir({
    'remote.yaml': `name: nobody\nusers: 4\nrampUp: 1s\nduration: 2s\ngenerators: { count: 1, maxConnections: 10 }\ntarget: { driver: gravitas, remote: { addresses: ['127.0.0.1:1'], serverPublicKey: ${'A'.repeat(43)} } }\n`,
  });
  await t.rejects(runScenario({ file: join(dir, 'remote.yaml'), json: join(dir, 'r.json'), progress: new Capture(), log: () => undefined }), { code: 'PROVISION_FAILED', message: /4 of 4 devices could not be provisioned/ });
});

t.test('the command line: a bad scenario file exits 2 with every problem named', { skip: existsSync(BENCH_MAIN) ? false : 'bench not built' }, async (t) => {
  const dir = t.testdir({ 'bad.yaml': 'name: bad\nusers: 1\nduration: 0\ntarget: { driver: telnet }\n' });
  const child = spawn(process.execPath, [BENCH_MAIN, join(dir, 'bad.yaml')], { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const code = await new Promise<number | null>((r) => child.once('exit', r));
  t.equal(code, 2);
  t.match(err, /SCENARIO_INVALID/);
  t.match(err, /users: must be an integer/);
  t.match(err, /target\.driver: must be "gravitas", "xmpp" or "socketio"/);
  await writeFile(join(dir, 'empty.yaml'), '');
  const usage = spawn(process.execPath, [BENCH_MAIN, 'run'], { stdio: ['ignore', 'ignore', 'pipe'] });
  let uerr = '';
  usage.stderr.on('data', (d: Buffer) => (uerr += d.toString()));
  t.equal(await new Promise<number | null>((r) => usage.once('exit', r)), 2, 'no file: usage');
  t.match(uerr, /missing the scenario file/);
});
