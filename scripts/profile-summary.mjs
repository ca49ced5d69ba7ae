#!/usr/bin/env node
// Summarises V8 .cpuprofile files (node --cpu-prof): self time by function and by area
// (socket writes, NATS client, crypto, msgpack, GC, …), as shares of the busy (non-idle) time.
//   node scripts/profile-summary.mjs [--top N] [--by-file] [--after S] [--until S] [--timeline] [--inclusive] FILE_OR_DIR...
// --inclusive adds the time spent under each of Gravitas' own functions, callees included (what a
// handshake or a send costs whole, not only its own lines). --after/--until keep the samples from S seconds after each profile's start (skip connects and
// warmup); --timeline prints busy ms per second, to find where the measured step is.
// Several files are summed (e.g. both cells of a run). docs/performance.md shows how to take them.
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';

const args = process.argv.slice(2);
let top = 25;
let byFile = false;
let after = 0;
let until = Infinity;
let timeline = false;
let inclusive = false;
const inputs = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--top') top = Number(args[++i]);
  else if (args[i] === '--by-file') byFile = true;
  else if (args[i] === '--after') after = Number(args[++i]) * 1e6;
  else if (args[i] === '--until') until = Number(args[++i]) * 1e6;
  else if (args[i] === '--timeline') timeline = true;
  else if (args[i] === '--inclusive') inclusive = true;
  else inputs.push(args[i]);
}
if (inputs.length === 0) {
  console.error('usage: profile-summary.mjs [--top N] [--by-file] FILE_OR_DIR...');
  process.exit(2);
}
const files = inputs.flatMap((p) => (statSync(p).isDirectory() ? readdirSync(p).filter((f) => f.endsWith('.cpuprofile')).map((f) => join(p, f)) : [p]));

// First match wins: the area a function's self time is charged to.
const AREAS = [
  ['idle', (n, u) => n === '(idle)' || n === '(program)' && false],
  ['gc', (n) => n === '(garbage collector)'],
  ['socket write', (n) => /^(writeBuffer|writev|writeUtf8String|writeLatin1String|writeGeneric|writevGeneric)$/.test(n)],
  ['nats client', (n, u) => /@nats-io\//.test(u)],
  ['tweetnacl', (n, u) => /tweetnacl/.test(u)],
  ['msgpackr', (n, u) => /msgpackr/.test(u)],
  ['lmdb', (n, u) => /lmdb/.test(u)],
  ['prom-client', (n, u) => /prom-client/.test(u)],
  ['node:crypto', (n, u) => /node:internal\/crypto|^(hmac|Hmac|createHmac|digest|update|sign|verify)$/.test(n + ' ' + u) && /crypto/.test(u)],
  ['node internals', (n, u) => u.startsWith('node:') || u === ''],
  ['gravitas', (n, u) => /packages\/(server|protocol|placement|client)\//.test(u)],
  ['other', () => true],
];

const self = new Map(); // key → µs
const under = new Map(); // key → µs with callees (--inclusive), Gravitas' functions only
const OWN = /packages\/(server|protocol|placement|client)\//;
const areas = new Map();
let total = 0;
let idle = 0;
for (const f of files) {
  const p = JSON.parse(readFileSync(f, 'utf8'));
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const parent = new Map();
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const dt = new Map();
  const idleId = p.nodes.find((n) => n.callFrame.functionName === '(idle)')?.id;
  const secs = [];
  let t = 0;
  for (let i = 0; i < p.samples.length; i++) {
    const d = p.timeDeltas[i] ?? 0;
    t += d;
    if (timeline && p.samples[i] !== idleId) secs[Math.floor(t / 1e6)] = (secs[Math.floor(t / 1e6)] ?? 0) + d;
    if (t < after || t > until) continue;
    dt.set(p.samples[i], (dt.get(p.samples[i]) ?? 0) + d);
  }
  if (timeline) console.log(`${f}\n  busy ms per second: ${Array.from(secs, (v) => Math.round((v ?? 0) / 1000)).join(' ')}`);
  for (const [id, us] of dt) {
    const node = byId.get(id);
    const cf = node.callFrame;
    const name = cf.functionName || '(anonymous)';
    const url = cf.url || '';
    if (name === '(idle)') {
      idle += us;
      continue;
    }
    total += us;
    const key = keyOf(cf);
    self.set(key, (self.get(key) ?? 0) + us);
    const area = AREAS.find(([, m]) => m(name, url))[0];
    areas.set(area, (areas.get(area) ?? 0) + us);
    if (!inclusive) continue;
    // Each of Gravitas' functions on this sample's stack once (recursion counted once).
    const seen = new Set();
    for (let n = node; n; n = byId.get(parent.get(n.id))) {
      if (!OWN.test(n.callFrame.url || '')) continue;
      const k = keyOf(n.callFrame);
      if (seen.has(k)) continue;
      seen.add(k);
      under.set(k, (under.get(k) ?? 0) + us);
    }
  }
}
function keyOf(cf) {
  const name = cf.functionName || '(anonymous)';
  const short = (cf.url || '').replace(/^.*node_modules\//, '').replace(/^file:\/\/.*\/packages\//, '').replace(/^file:\/\/.*\/bench\//, 'bench/');
  return byFile ? short || name : `${name} ${short}:${cf.lineNumber + 1}`;
}
const pct = (us) => `${((100 * us) / total).toFixed(1).padStart(5)} %`;
console.log(`${files.length} profile(s): busy ${(total / 1e6).toFixed(2)} s, idle ${(idle / 1e6).toFixed(2)} s`);
console.log('\nby area');
for (const [a, us] of [...areas].sort((x, y) => y[1] - x[1])) console.log(`  ${pct(us)}  ${a}`);
console.log(`\ntop ${top} by self time`);
for (const [k, us] of [...self].sort((x, y) => y[1] - x[1]).slice(0, top)) console.log(`  ${pct(us)}  ${k}`);
if (inclusive) {
  console.log(`\ntop ${top} of Gravitas' functions by time with callees`);
  for (const [k, us] of [...under].sort((x, y) => y[1] - x[1]).slice(0, top)) console.log(`  ${pct(us)}  ${k}`);
}
