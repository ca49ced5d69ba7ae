import t from 'tap';
import { execFileSync, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { trackChild } from '@gravitas/testkit';
import { pinProcesses } from '../../bench/src/harness/pin.js';
import { Capture } from './capture.js';
import { runScenario } from '../../bench/src/harness/runner.js';

/*
 * The peers of issue 17 for real, through the runner as `npm run bench -- run` drives them: a
 * private 2-node ejabberd cluster (Debian's ejabberd) and two Socket.IO processes on a private
 * redis-server, one scenario listing both targets. 20 users, one step of 2 s at 50 msgs/s, then a
 * 2 s closed loop: every message must arrive exactly once (by delivery id), the servers must be
 * sampled, the comparison table must name both, and nothing may be left running.
 */

const EJABBERD = existsSync('/usr/lib/x86_64-linux-gnu/ejabberd-23.01');
const REDIS = existsSync('/usr/bin/redis-server');

const SCENARIO = `
name: peers
seed: 3
users: 20
graph: { consecutive: { community: 10, inside: 4, outside: 1 } }
behaviours:
  messages:
    bodyBytes: 100
    steps: { rates: [50], warmup: 0s, hold: 2s, closedLoop: { inFlight: 1 } }
rampUp: 1s
interval: 1s
generators: { count: 1, maxConnections: 100 }
targets:
  - { driver: xmpp, local: { server: ejabberd, nodes: 2 } }
  - { driver: socketio, local: { processes: 2 } }
`;


t.test('ejabberd (2 nodes) and Socket.IO + Redis (2 processes): every message exactly once', { skip: !EJABBERD ? 'ejabberd is not installed' : !REDIS ? 'redis-server is not installed' : false }, async (t) => {
  const dir = t.testdir({ 'peers.yaml': SCENARIO });
  const logs: string[] = [];
  const out = await runScenario({ file: join(dir, 'peers.yaml'), json: join(dir, 'r.json'), progress: new Capture(), log: (m) => logs.push(m), drainTimeoutMs: 5000 });
  t.equal(out.runs.length, 2, 'one run per target');
  const [ej, sio] = out.runs.map((r) => r.result);
  t.match(ej!.target, /ejabberd 23\.01, 2 node/);
  t.match(sio!.target, /socketio: 2 local Socket\.IO/);
  t.ok(logs.some((l) => /restarting the ejabberd node/.test(l)), 'ejabberd restarted after the accounts were registered');
  for (const r of [ej!, sio!]) {
    const d = r.totals.delivery;
    t.ok(d.tracked, `${r.target}: loss counted by id`);
    t.ok(d.expected > 100, `${r.target}: ${d.expected} deliveries owed`);
    t.equal(d.missing, 0, `${r.target}: none missing`);
    t.equal(d.repeats, 0, `${r.target}: none twice`);
    t.equal(d.unexpected, 0, `${r.target}: none unexpected`);
    t.equal(d.received, d.expected, `${r.target}: every one arrived`);
    t.equal(r.totals.stray, 0);
    const st = r.steps!;
    t.equal(st.steps.length, 2, 'an open-loop step and the closed loop');
    t.equal(st.steps[0]!.missing, 0);
    t.ok(st.closedLoop && st.closedLoop.deliveredPerSec > 0, `${r.target}: the closed loop ran (${Math.round(st.closedLoop?.deliveredPerSec ?? 0)}/s)`);
  }
  const servers = (r: typeof ej): string[] => [...new Set(r!.intervals.flatMap((iv) => Object.keys(iv.servers)))].sort();
  t.same(servers(ej), ['ejabberd1', 'ejabberd2'], 'both BEAM nodes sampled');
  t.same(servers(sio), ['redis', 'socketio1', 'socketio2'], 'both Socket.IO processes and redis sampled');
  t.match(out.comparison?.table, /\| ejabberd +\| /, 'the comparison has a row for ejabberd');
  t.match(out.comparison?.table, /\| socketio +\| /, 'and one for socketio');
  // Nothing left: the BEAM nodes and epmd, redis and the Socket.IO servers are gone.
  const ps = execFileSync('ps', ['-eo', 'pid,args'], { encoding: 'utf8' });
  t.notMatch(ps, /gravitas-ejabberd-|gravitas-socketio-|socketio-server\.js/, 'no peer process left running');
});

t.test('--pin: taskset puts a process, its threads and its children on one core', { skip: existsSync('/usr/bin/taskset') ? false : 'taskset is not installed' }, async (t) => {
  const child = spawn('/bin/sh', ['-c', 'sleep 30 & wait'], { stdio: 'ignore' });
  trackChild(child);
  t.teardown(() => void child.kill('SIGKILL'));
  await new Promise((r) => setTimeout(r, 200));
  pinProcesses([child.pid!], 0);
  const kids = execFileSync('ps', ['-o', 'pid=', '--ppid', String(child.pid)], { encoding: 'utf8' }).trim().split(/\s+/).filter(Boolean);
  t.ok(kids.length >= 1, 'the shell has its sleep');
  for (const p of [String(child.pid), ...kids]) t.match(execFileSync('taskset', ['-c', '-p', p], { encoding: 'utf8' }), /list: 0\s*$/, `pid ${p} on cpu 0`);
});
