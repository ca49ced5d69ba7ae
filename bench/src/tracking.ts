import { readdirSync, readFileSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { open as openLmdb } from 'lmdb';
import { connect as natsConnect } from '@nats-io/transport-node';
import { jetstreamManager } from '@nats-io/jetstream';
import { GravitasClient, type Tracked } from '@gravitas/client';
import { fromBase64Url, pack, type CampaignEvent } from '@gravitas/protocol';
import { DeliveryProofs, Names } from '@gravitas/server';
import { NatsServer } from '@gravitas/testkit';
// Not exported by @gravitas/server; the tests import it the same way (test/fixtures/tracking.ts).
import { TrackingStore } from '@gravitas/server/internal';
import { GenProcess, readCpu } from './custody-load.js';
import { MergeableHistogram, type Percentiles } from './custody-types.js';
import { BENCH_LIMITS, type Child, clusterKeys, type ClusterKeys, log, nativeKeyPair, Resources, sleep, startGravitasNode } from './procs.js';
import { makeResult, numFlag, posInt, posNum, UsageError, type BenchOptions, type BenchResult, type Row } from './report.js';
import type { BurstSummary, ConnectSummary, MarkSummary, StopSummary, TrackGenCommand } from './tracking-gen.js';

export const name = 'tracking';
export const description =
  'campaign tracking: LMDB put ceiling, SDK track() ingest (acked after flush), archive lag after a burst, user-report latency over both tiers';
export const defaultDurationS = 10;
export const flags = {
  gens: 'generator processes hosting the SDK clients (default 2)',
  clients: 'SDK clients (GravitasClient, one session and one user each), spread over the generators and the cells (default 200)',
  depth: 'ingest: events each client keeps queued in its SDK feedback queue, closed loop (default 4)',
  campaigns: 'campaigns the events are spread over (default 10)',
  warmup: 'ingest: seconds of warmup before the measured window (default 2)',
  burst: 'archive: events sent at once by all clients, then the archive lag is followed to zero (default 100000)',
  reports: 'report: GET /admin/reports/users/<u>/campaigns repeated this many times over both tiers (default 200)',
  'report-events': 'report: records of the measured user (default 1000)',
  'report-local': 'report: of those, the newest kept in the node tier (not archived) while measuring (default 300)',
  'report-campaigns': 'report: campaigns the measured user\'s records are spread over (default 5)',
  cells: 'cells of the gravitas node (default 2)',
  'ship-batch': 'tracking.shipBatch of the node (default: the server default, 512)',
  'ceiling-duration': 'seconds of the LMDB put ceiling (default 2)',
} as const;

const TARGET = { ingestVsLmdb: 0.1, archiveZeroS: 10, reportP99Ms: 200 };
const ROOT_TOKEN = 'bench-tracking-root-token-0123456789';
const PREFIX = 'gravitas';
const names = new Names(PREFIX);
const EVENTS: readonly CampaignEvent[] = ['delivered', 'opened', 'clicked', 'dismissed', 'converted'];
/** /metrics polling interval while following the archive. */
const POLL_MS = 100;

const fmt = (n: number, d = 0): string => (Number.isFinite(n) ? n.toLocaleString('en-US', { maximumFractionDigits: d, minimumFractionDigits: d }) : String(n));
const verdict = (ok: boolean | undefined, t: string): string => `target ${t}: ${ok === undefined ? 'n/a' : ok ? 'PASS' : 'FAIL'}`;
const fmtCores = (c: Record<string, number>): string =>
  Object.entries(c)
    .map(([k, v]) => `${k} ${v.toFixed(2)}`)
    .join(', ');
const fmtCounts = (r: Record<string, number>): string =>
  Object.entries(r)
    .map(([k, v]) => `${k}×${v}`)
    .join(' ') || 'none';

// ---------------------------------------------------------------------------------------------
// ceiling: raw LMDB async puts

export interface LmdbCeiling { perSec: number; puts: number; ms: number; valueBytes: number; recordBytes: number }

/** A tracking record as the intake builds it (event id the size of the SDK's, a real campaign id). */
function sampleRecord(campaign: string, user: string, eid: string, at: number): { eid: string; c: string; u: string; d: string; ev: CampaignEvent; ts: number; at: number; pv: number } {
  return { eid, c: campaign, u: user, d: 'd', ev: 'opened', ts: at - 5, at, pv: 0 };
}

/**
 * `db.put` without awaiting each (lmdb-js batches them into its write transactions), in the
 * options the tracking store uses (no noSync, no writemap), values shaped like the store's `rec`
 * entry ({record, archived mark, cost}) under [user, eid] keys in random order; at most two
 * chunks of 5,000 puts outstanding; the clock stops once `flushed` resolves (on disk).
 */
async function lmdbPutCeiling(dir: string, ms: number, campaign: string): Promise<LmdbCeiling> {
  const root = openLmdb({ path: dir, maxDbs: 8 });
  const db = root.openDB<unknown, Array<string | number>>({ name: 'rec', encoding: 'msgpack' });
  const users = Array.from({ length: 1000 }, (_, i) => `t${i}`);
  let n = 0;
  // Multiplicative hash of the counter: distinct, unordered, 23 characters like an SDK event id.
  const eid = (i: number): string => `e${((i * 2654435761) >>> 0).toString(36).padStart(7, '0')}${i.toString(36).padStart(15, '0')}`;
  const put = (): Promise<boolean> => {
    const r = sampleRecord(campaign, users[n % users.length]!, eid(n), 1_750_000_000_000 + n);
    n++;
    return db.put([r.u, r.eid], { r, a: 0, n: 700 });
  };
  const CHUNK = 5000;
  const runFor = async (dur: number): Promise<number> => {
    const n0 = n;
    const t0 = performance.now();
    const end = t0 + dur;
    let prev: Promise<boolean> | undefined;
    while (performance.now() < end) {
      let last: Promise<boolean> | undefined;
      for (let i = 0; i < CHUNK; i++) last = put();
      if (prev) await prev;
      prev = last;
    }
    await prev;
    await root.flushed;
    return ((n - n0) * 1000) / (performance.now() - t0);
  };
  try {
    await runFor(Math.min(300, ms / 5)); // warmup: JIT, first pages
    const n0 = n;
    const t0 = performance.now();
    const perSec = await runFor(ms);
    const r = sampleRecord(campaign, 't123', eid(123), Date.now());
    return { perSec, puts: n - n0, ms: performance.now() - t0, valueBytes: pack({ r, a: 0, n: 700 }).length, recordBytes: pack(r).length };
  } finally {
    await root.close();
  }
}

export interface StoreReference { perSec: number; writers: number; puts: number }

/**
 * The node tier itself, without the network: TrackingStore.put + flushed() (what the intake does
 * per event: one transaction over five tables, then wait for the disk) from `writers` concurrent
 * loops in one thread, as the sessions of one cell. Not a ceiling: tells whether the store or
 * the rest of the path limits ingest.
 */
async function storePutReference(dir: string, ms: number, campaign: string, writers: number): Promise<StoreReference> {
  const store = TrackingStore.open(dir, { maxAgeMs: 7 * 24 * 3600_000, maxBytes: 2 ** 40 });
  let seq = 0;
  const loop = async (u: string, until: number): Promise<number> => {
    let n = 0;
    while (performance.now() < until) {
      const now = Date.now();
      await store.put(sampleRecord(campaign, u, `s${(seq++).toString(36).padStart(22, '0')}`, now));
      await store.flushed();
      n++;
    }
    return n;
  };
  const runFor = async (dur: number): Promise<{ n: number; s: number }> => {
    const t0 = performance.now();
    const ns = await Promise.all(Array.from({ length: writers }, (_, i) => loop(`w${i}`, t0 + dur)));
    return { n: ns.reduce((a, b) => a + b, 0), s: (performance.now() - t0) / 1000 };
  };
  try {
    await runFor(Math.min(300, ms / 5));
    const r = await runFor(ms);
    return { perSec: r.n / r.s, writers, puts: r.n };
  } finally {
    await store.close();
  }
}

// ---------------------------------------------------------------------------------------------
// the node, its admin API and /metrics

interface TrackingNode { child: Child; pid: number; clientAddresses: string[]; adminUrl: string }

async function startNode(res: Resources, dir: string, natsUrl: string, keys: ClusterKeys, cells: number, shipBatch: number | undefined): Promise<TrackingNode> {
  const config = { prefix: PREFIX, cells, admin: { host: '127.0.0.1', port: 0, token: ROOT_TOKEN }, ...(shipBatch !== undefined && { tracking: { shipBatch } }) };
  const node = await startGravitasNode(res, dir, 'track-n1', natsUrl, keys, { config, readyTimeoutMs: 60_000 });
  return { child: node.child, pid: node.pid, clientAddresses: node.addrs, adminUrl: node.adminUrl };
}

interface Answer { status: number; json: unknown }

async function adminCall(node: TrackingNode, method: string, path: string, body?: unknown, token = ROOT_TOKEN): Promise<Answer> {
  const r = await fetch(`${node.adminUrl}${path}`, {
    method,
    headers: { authorization: `Bearer ${token}`, ...(body !== undefined && { 'content-type': 'application/json' }) },
    ...(body !== undefined && { body: JSON.stringify(body) }),
  });
  const text = await r.text();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = text;
  }
  return { status: r.status, json };
}

/** An admin call that must succeed; 503 (the main thread's NATS connection coming up) is retried. */
async function adminOk<T>(node: TrackingNode, method: string, path: string, body?: unknown, token?: string): Promise<T> {
  for (let i = 0; ; i++) {
    const a = await adminCall(node, method, path, body, token);
    if (a.status >= 200 && a.status < 300) return a.json as T;
    if (a.status !== 503 || i >= 20) throw new Error(`${method} ${path}: ${a.status} ${JSON.stringify(a.json)}`);
    await sleep(500);
  }
}

interface Metrics {
  /** Epoch ms when the answer arrived. */
  t: number;
  unarchived: number;
  lagS: number;
  shipped: number;
  stored: number;
  duplicate: number;
  retryLater: number;
  shipFailures: number;
}

/** The node's tracking metrics (summed over cells by the node), from its Prometheus endpoint. */
async function readMetrics(node: TrackingNode): Promise<Metrics> {
  const text = await (await fetch(`${node.adminUrl}/metrics`)).text();
  const sum = (metric: string, label?: string): number => {
    let s = 0;
    for (const line of text.split('\n')) {
      if (!line.startsWith(metric)) continue;
      const rest = line.slice(metric.length);
      if (rest[0] !== ' ' && rest[0] !== '{') continue;
      if (label !== undefined && !rest.includes(label)) continue;
      s += Number(rest.slice(rest.lastIndexOf(' ') + 1));
    }
    return s;
  };
  return {
    t: Date.now(),
    unarchived: sum('gravitas_tracking_unarchived_records'),
    lagS: sum('gravitas_tracking_archive_lag_seconds'),
    shipped: sum('gravitas_tracking_shipped_total'),
    stored: sum('gravitas_tracking_intake_total', 'result="stored"'),
    duplicate: sum('gravitas_tracking_intake_total', 'result="duplicate"'),
    retryLater: sum('gravitas_tracking_intake_total', 'result="retry_later"'),
    shipFailures: sum('gravitas_tracking_ship_failures_total'),
  };
}

/** Waits until every record the intake stored has been archived (counters, not the sampled gauge). */
async function awaitArchived(node: TrackingNode, timeoutMs: number): Promise<{ ok: boolean; ms: number; last: Metrics }> {
  const t0 = Date.now();
  for (;;) {
    const m = await readMetrics(node);
    if (m.shipped >= m.stored && m.unarchived === 0) return { ok: true, ms: Date.now() - t0, last: m };
    if (Date.now() - t0 > timeoutMs) return { ok: false, ms: Date.now() - t0, last: m };
    await sleep(POLL_MS);
  }
}

// ---------------------------------------------------------------------------------------------
// CPU: per thread of the node, and the whole host (other engineers share it)

/** Seconds on a CPU and waiting for one (run queue), of every thread of `pid` (/proc/<pid>/task/<tid>/schedstat, ns). */
function threadSched(pid: number): Map<number, { cpu: number; runq: number }> {
  const out = new Map<number, { cpu: number; runq: number }>();
  try {
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      try {
        const [cpu, runq] = readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').trim().split(/\s+/).map(Number);
        out.set(Number(tid), { cpu: (cpu ?? 0) / 1e9, runq: (runq ?? 0) / 1e9 });
      } catch {
        // thread gone
      }
    }
  } catch {
    // process gone
  }
  return out;
}

/** Busy and total jiffies of the whole host (/proc/stat, first line). */
function hostCpu(): { busy: number; total: number } {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  const total = f.slice(0, 8).reduce((a, b) => a + b, 0);
  const idle = (f[3] ?? 0) + (f[4] ?? 0);
  return { busy: total - idle, total };
}

interface ThreadLoad {
  tid: string;
  /** Cores used (on a CPU), and cores' worth of time spent runnable but waiting for a CPU. */
  cores: number;
  runq: number;
}

interface CpuWindow {
  /** Busiest threads of the node process (the main thread is named `main`; the two busiest others are the cells). */
  nodeThreads: ThreadLoad[];
  /** Each generator process, all threads summed. */
  gens: ThreadLoad[];
  /** Busy cores of the whole host, and how many of them were not the measured processes. */
  hostBusy: number;
  others: number;
}

class CpuMeter {
  private t0 = 0;
  private th0 = new Map<number, Map<number, { cpu: number; runq: number }>>();
  private h0 = hostCpu();
  constructor(
    private readonly nodePid: number,
    private readonly genPids: number[],
  ) {}
  start(): void {
    this.t0 = performance.now();
    this.th0 = new Map([this.nodePid, ...this.genPids].map((p) => [p, threadSched(p)]));
    this.h0 = hostCpu();
  }
  private loads(pid: number, secs: number): ThreadLoad[] {
    const before = this.th0.get(pid) ?? new Map<number, { cpu: number; runq: number }>();
    return [...threadSched(pid)].map(([tid, x]) => ({
      tid: tid === this.nodePid ? 'main' : `t${tid}`,
      cores: (x.cpu - (before.get(tid)?.cpu ?? 0)) / secs,
      runq: (x.runq - (before.get(tid)?.runq ?? 0)) / secs,
    }));
  }
  stop(measuredCores: number): CpuWindow {
    const secs = (performance.now() - this.t0) / 1000;
    const h1 = hostCpu();
    const nodeThreads = this.loads(this.nodePid, secs)
      .sort((a, b) => b.cores - a.cores)
      .slice(0, 5);
    const gens = this.genPids.map((p, k) => this.loads(p, secs).reduce((a, t) => ({ tid: a.tid, cores: a.cores + t.cores, runq: a.runq + t.runq }), { tid: `gen${k}`, cores: 0, runq: 0 }));
    const hostBusy = ((h1.busy - this.h0.busy) / (h1.total - this.h0.total)) * cpus().length;
    return { nodeThreads, gens, hostBusy, others: Math.max(0, hostBusy - measuredCores) };
  }
}

// ---------------------------------------------------------------------------------------------
// generator processes (tracking-gen.ts)

const GEN_JS = fileURLToPath(new URL('./tracking-gen.js', import.meta.url));
type TrackGenProc = GenProcess<TrackGenCommand>;

/** About one timeline sample per second, and the last one: `+t s: records / lag s`. */
function lagTimeline(b: Pick<BurstResult, 'timeline' | 'burstEndT'>): string[] {
  const out: string[] = [];
  let next = 0;
  b.timeline.forEach((x, i) => {
    if (x.t >= next || i === b.timeline.length - 1) {
      out.push(`+${(x.t / 1000).toFixed(1)}${x.t >= b.burstEndT && out.every((o) => !o.includes('end')) ? ' (end)' : ''}: ${fmt(x.unarchived)} / ${x.lagS.toFixed(2)}`);
      next = Math.max(next + 1000, x.t + 1000 - 1);
    }
  });
  return out;
}

function mergeHist(encoded: string[]): Percentiles {
  const h = new MergeableHistogram();
  for (const e of encoded) h.addEncoded(e);
  return h.summary();
}

// ---------------------------------------------------------------------------------------------
// phases

export interface IngestResult {
  clients: number;
  depth: number;
  perSec: number;
  windowMs: number;
  trackedInWindow: number;
  /** Records the intake stored in the parent's window, from /metrics (cross-check). */
  serverStoredPerSec: number;
  latency: Percentiles;
  cores: Record<string, number>;
  genElu: number[];
  genLoopDelayP99Ms: number[];
  stop: StopSummary[];
  archivedAfterMs: number;
  cpu: CpuWindow;
  /** Node CPU time per acknowledged event, µs. */
  nodeUsPerEvent: number;
  bottleneck: string;
}

export interface BurstResult {
  events: number;
  tracked: number;
  failed: Record<string, number>;
  unsettled: number;
  dups: number;
  ingestPerSec: number;
  ingestMs: number;
  latency: Percentiles;
  genCpuS: number[];
  genElu: number[];
  /** Unarchived records (intake stored − shipped) when the last event was acknowledged. */
  backlogAtEnd: number;
  lagAtEndS: number;
  zeroAfterMs: number | undefined;
  archivePerSec: number;
  /** Backlog at the burst's end over the time to zero: the shipper alone, intake quiet. */
  drainPerSec: number;
  archivePeakPerSec: number;
  maxUnarchived: number;
  maxLagS: number;
  cores: Record<string, number>;
  /** ms from the burst's first event to its last acknowledgement (timeline origin: the first event). */
  burstEndT: number;
  timeline: Array<{ t: number; unarchived: number; lagS: number; shipped: number; stored: number }>;
}

export interface ReportPhase {
  user: string;
  events: number;
  local: number;
  held: { archived: number; local: number } | undefined;
  mixed: ReportStats;
  archived: ReportStats | undefined;
  releaseMs: number | undefined;
}

export interface ReportStats {
  n: number;
  latency: Percentiles;
  complete: number;
  /** Answers whose events differ from what was tracked: missing and extra events summed over answers. */
  missing: number;
  extra: number;
  sources: Record<string, number>;
  errors: Record<string, number>;
}

const fmtThread = (t: ThreadLoad): string => `${t.tid} ${t.cores.toFixed(2)} on CPU + ${t.runq.toFixed(2)} waiting for one`;

function bottleneckOf(cores: Record<string, number>, genElu: number[], cpu: CpuWindow, nCpu: number): string {
  const gen = Object.entries(cores).filter(([k]) => k.startsWith('gen')).reduce((s, [, v]) => s + v, 0);
  const parts: string[] = [];
  const genBusy = Math.max(0, ...genElu);
  // A thread that is on a CPU or waiting for one ~all the time is CPU-bound, whether or not it got the CPU.
  const hot = cpu.nodeThreads.filter((t) => t.cores + t.runq >= 0.85);
  if (genBusy >= 0.9) parts.push(`GENERATOR-BOUND (a generator's event loop was busy ${(genBusy * 100).toFixed(0)}% of the time)`);
  if (hot.length > 0) parts.push(`NODE CPU-BOUND: ${hot.map(fmtThread).join('; ')}`);
  if (cpu.hostBusy >= 0.9 * nCpu) parts.push(`host saturated: ${cpu.hostBusy.toFixed(2)} of ${nCpu} cores busy, ${cpu.others.toFixed(2)} of them other processes on the host`);
  if (parts.length === 0) parts.push(`no CPU saturated (host ${cpu.hostBusy.toFixed(2)} of ${nCpu} cores busy): latency-bound`);
  if (genBusy < 0.9) parts.push(`generators not the bottleneck (event loops busy ≤ ${(genBusy * 100).toFixed(0)}%)`);
  parts.push(`generators ${gen.toFixed(2)} cores vs node ${(cores['node'] ?? 0).toFixed(2)} + nats ${(cores['nats'] ?? 0).toFixed(2)}`);
  return parts.join('; ');
}

async function ingestPhase(node: TrackingNode, gens: TrackGenProc[], o: { clients: number; depth: number; warmMs: number; ms: number }, pids: Record<string, number | undefined>): Promise<IngestResult> {
  await Promise.all(gens.map((g) => g.call({ k: 'start', depth: o.depth })));
  await sleep(o.warmMs);
  const meter = new CpuMeter(node.pid, gens.map((g) => g.pid));
  const c0 = readCpu(pids);
  meter.start();
  const s0 = await readMetrics(node);
  const m0 = await Promise.all(gens.map((g) => g.call<MarkSummary>({ k: 'mark', record: true })));
  const t0 = performance.now();
  await sleep(o.ms);
  const m1 = await Promise.all(gens.map((g) => g.call<MarkSummary>({ k: 'mark', record: false })));
  const s1 = await readMetrics(node);
  const c1 = readCpu(pids);
  const secs = (performance.now() - t0) / 1000;
  const cores: Record<string, number> = {};
  for (const k of Object.keys(c1)) cores[k] = (c1[k]! - (c0[k] ?? 0)) / secs;
  const cpu = meter.stop(Object.values(cores).reduce((a, b) => a + b, 0));
  const stop = await Promise.all(gens.map((g) => g.call<StopSummary>({ k: 'stop', timeoutMs: 30_000 })));
  let perSec = 0;
  let inWindow = 0;
  let windowMs = 0;
  m1.forEach((b, k) => {
    const a = m0[k]!;
    perSec += ((b.tracked - a.tracked) * 1000) / (b.at - a.at);
    inWindow += b.tracked - a.tracked;
    windowMs = Math.max(windowMs, b.at - a.at);
  });
  const genElu = m1.map((m) => m.elu);
  const arch = await awaitArchived(node, 60_000);
  return {
    clients: o.clients,
    depth: o.depth,
    perSec,
    windowMs,
    trackedInWindow: inWindow,
    serverStoredPerSec: ((s1.stored - s0.stored) * 1000) / (s1.t - s0.t),
    latency: mergeHist(m1.map((m) => m.latency)),
    cores,
    genElu,
    genLoopDelayP99Ms: m1.map((m) => m.loopDelayP99Ms),
    stop,
    archivedAfterMs: arch.ms,
    cpu,
    nodeUsPerEvent: ((cores['node'] ?? 0) * 1e6) / perSec,
    bottleneck: bottleneckOf(cores, genElu, cpu, cpus().length),
  };
}

async function burstPhase(node: TrackingNode, gens: TrackGenProc[], total: number, pids: Record<string, number | undefined>): Promise<BurstResult> {
  const timeline: Metrics[] = [];
  let polling = true;
  const base = await readMetrics(node);
  timeline.push(base);
  const poller = (async () => {
    while (polling) {
      await sleep(POLL_MS);
      try {
        timeline.push(await readMetrics(node));
      } catch (e) {
        log(`  /metrics failed: ${(e as Error).message}`);
      }
    }
  })();
  const c0 = readCpu(pids);
  const t0 = performance.now();
  const shares = gens.map((_, k) => Math.floor(total / gens.length) + (k < total % gens.length ? 1 : 0));
  const b = await Promise.all(gens.map((g, k) => g.call<BurstSummary>({ k: 'burst', total: shares[k]!, timeoutMs: 180_000 })));
  const startAt = Math.min(...b.map((x) => x.startAt));
  const endAt = Math.max(...b.map((x) => x.lastAt));
  const atEnd = await readMetrics(node);
  log(`  burst acknowledged in ${fmt(endAt - startAt)} ms; ${fmt(atEnd.stored - atEnd.shipped)} records not yet archived; following the archive`);
  // Follow until everything stored is shipped (counters; the lag gauge is sampled once per shipper round).
  const deadline = Date.now() + 120_000;
  let zeroAt: number | undefined;
  while (Date.now() < deadline) {
    const last = timeline[timeline.length - 1]!;
    if (last.t > endAt && last.shipped >= last.stored && last.stored >= atEnd.stored) {
      zeroAt = last.t;
      break;
    }
    await sleep(POLL_MS / 2);
  }
  // A few more samples so the gauges show the settled state.
  await sleep(500);
  polling = false;
  await poller;
  const c1 = readCpu(pids);
  const secs = (performance.now() - t0) / 1000;
  const cores: Record<string, number> = {};
  for (const k of Object.keys(c1)) if (k !== 'parent') cores[k] = (c1[k]! - (c0[k] ?? 0)) / secs;
  const events = b.reduce((s, x) => s + x.queued, 0);
  const tracked = b.reduce((s, x) => s + x.tracked, 0);
  const failed: Record<string, number> = {};
  for (const x of b) for (const [k, v] of Object.entries(x.failed)) failed[k] = (failed[k] ?? 0) + v;
  // Archive throughput: records shipped from the burst's start until the outbox was empty again.
  const zeroSample = zeroAt !== undefined ? timeline.find((s) => s.t === zeroAt) : undefined;
  const archivePerSec = zeroSample ? ((zeroSample.shipped - base.shipped) * 1000) / (zeroSample.t - startAt) : NaN;
  let peak = 0;
  for (let i = 0, j = 0; i < timeline.length; i++) {
    while (j < i && timeline[i]!.t - timeline[j + 1]!.t >= 1000) j++;
    const dt = timeline[i]!.t - timeline[j]!.t;
    if (dt >= 1000) peak = Math.max(peak, ((timeline[i]!.shipped - timeline[j]!.shipped) * 1000) / dt);
  }
  return {
    events,
    tracked,
    failed,
    unsettled: b.reduce((s, x) => s + x.unsettled, 0),
    dups: b.reduce((s, x) => s + x.dups, 0),
    ingestPerSec: (tracked * 1000) / (endAt - startAt),
    ingestMs: endAt - startAt,
    latency: mergeHist(b.map((x) => x.latency)),
    genCpuS: b.map((x) => x.cpuS),
    genElu: b.map((x) => x.elu),
    backlogAtEnd: atEnd.stored - atEnd.shipped,
    lagAtEndS: atEnd.lagS,
    zeroAfterMs: zeroAt === undefined ? undefined : zeroAt - endAt,
    archivePerSec,
    drainPerSec: zeroAt !== undefined && zeroAt > endAt ? ((atEnd.stored - atEnd.shipped) * 1000) / (zeroAt - endAt) : NaN,
    archivePeakPerSec: peak,
    maxUnarchived: Math.max(...timeline.map((s) => s.stored - s.shipped)),
    maxLagS: Math.max(...timeline.map((s) => s.lagS)),
    cores,
    burstEndT: endAt - startAt,
    timeline: timeline.map((s) => ({ t: s.t - startAt, unarchived: s.stored - s.shipped, lagS: s.lagS, shipped: s.shipped - base.shipped, stored: s.stored - base.stored })),
  };
}

interface UserReportBody {
  user: string;
  campaigns: Array<{ campaign: string; events: Array<{ ev: string; device: string; ts: number }> }>;
  sources: { archived: number; local: number; nodes: string[] };
}

/** Compares a report with what was tracked: per campaign, the multiset of (event, device time). */
function checkReport(body: UserReportBody, expected: Map<string, string[]>): { missing: number; extra: number } {
  let missing = 0;
  let extra = 0;
  const seen = new Set<string>();
  for (const c of body.campaigns) {
    seen.add(c.campaign);
    const want = new Map<string, number>();
    for (const k of expected.get(c.campaign) ?? []) want.set(k, (want.get(k) ?? 0) + 1);
    for (const e of c.events) {
      const k = `${e.ev}@${e.ts}`;
      const n = want.get(k) ?? 0;
      if (n > 0) want.set(k, n - 1);
      else extra++;
    }
    for (const n of want.values()) missing += n;
  }
  for (const [c, list] of expected) if (!seen.has(c)) missing += list.length;
  return { missing, extra };
}

async function measureReports(node: TrackingNode, user: string, n: number, expected: Map<string, string[]>, total: number): Promise<ReportStats> {
  const h = new MergeableHistogram();
  const errors: Record<string, number> = {};
  const sources: Record<string, number> = {};
  let complete = 0;
  let missing = 0;
  let extra = 0;
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    let a: Answer;
    try {
      a = await adminCall(node, 'GET', `/admin/reports/users/${user}/campaigns`);
    } catch (e) {
      const k = (e as Error).message;
      errors[k] = (errors[k] ?? 0) + 1;
      continue;
    }
    h.recordMs(performance.now() - t0);
    if (a.status !== 200) {
      const k = `HTTP ${a.status}`;
      errors[k] = (errors[k] ?? 0) + 1;
      continue;
    }
    const body = a.json as UserReportBody;
    const k = `archived ${body.sources.archived} + local ${body.sources.local}`;
    sources[k] = (sources[k] ?? 0) + 1;
    const c = checkReport(body, expected);
    const events = body.campaigns.reduce((s, x) => s + x.events.length, 0);
    if (c.missing === 0 && c.extra === 0 && events === total) complete++;
    missing += c.missing;
    extra += c.extra;
  }
  return { n, latency: h.summary(), complete, missing, extra, sources, errors };
}

/** Messages in the tracking archive stream. */
async function streamMessages(natsUrl: string): Promise<number> {
  const nc = await natsConnect({ servers: natsUrl });
  try {
    return (await (await jetstreamManager(nc)).streams.info(names.trackingStream)).state.messages;
  } finally {
    await nc.close();
  }
}

async function reportPhase(
  node: TrackingNode,
  natsUrl: string,
  keys: ClusterKeys,
  o: { user: string; events: number; local: number; campaigns: string[]; reports: number },
): Promise<ReportPhase> {
  const client = new GravitasClient({ servers: [node.clientAddresses[0]!], serverPublicKey: keys.server.publicKey, identity: nativeKeyPair(), user: o.user, device: 'd', registration: '' });
  const proofs = new DeliveryProofs(fromBase64Url(keys.serverKey, 32));
  client.on('error', () => undefined);
  const tracked = new Map<string, Tracked>();
  const failed: string[] = [];
  client.on('tracked', (t) => tracked.set(t.eid, t));
  client.on('trackFailed', (f) => failed.push(`${f.eid}: ${f.error.message}`));
  const nc = await natsConnect({ servers: natsUrl });
  const jsm = await jetstreamManager(nc);
  let restore: (() => Promise<void>) | undefined;
  try {
    await client.connect();
    const send = async (from: number, to: number): Promise<void> => {
      const ids: string[] = [];
      for (let i = from; i < to; i++) {
        const c = o.campaigns[i % o.campaigns.length]!;
        ids.push(await client.track({ c, rk: proofs.campaign(c, o.user) }, EVENTS[i % EVENTS.length]!, `r${i.toString(36).padStart(22, '0')}`));
      }
      const end = Date.now() + 60_000;
      while (!ids.every((id) => tracked.has(id)) && failed.length === 0 && Date.now() < end) await sleep(20);
      if (failed.length > 0 || !ids.every((id) => tracked.has(id))) throw new Error(`report user: not every event was tracked (${failed.slice(0, 3).join('; ') || 'timeout'})`);
    };
    const older = o.events - o.local;
    log(`report: ${fmt(older)} records of ${o.user}, then waiting until they are archived`);
    await send(0, older);
    const a1 = await awaitArchived(node, 60_000);
    if (!a1.ok) throw new Error('report: the archive did not catch up within 60 s');
    // Hold the archive back: the stream refuses new messages (max_msgs = what it holds, discard new),
    // the shipper fails and retries with backoff, the newest records stay in the node tier.
    const info = await jsm.streams.info(names.trackingStream);
    const maxMsgs = info.config.max_msgs;
    await jsm.streams.update(names.trackingStream, { max_msgs: info.state.messages });
    restore = async () => void (await jsm.streams.update(names.trackingStream, { max_msgs: maxMsgs }));
    log(`report: archive held at ${fmt(info.state.messages)} messages; ${fmt(o.local)} more records stay in the node tier`);
    await send(older, o.events);
    const expected = new Map<string, string[]>();
    for (const t of tracked.values()) {
      let l = expected.get(t.c);
      if (!l) expected.set(t.c, (l = []));
      l.push(`${t.ev}@${t.ts}`);
    }
    const first = (await adminOk<UserReportBody>(node, 'GET', `/admin/reports/users/${o.user}/campaigns`)).sources;
    log(`report: ${o.reports} × GET /admin/reports/users/${o.user}/campaigns (first answer: ${first.archived} archived + ${first.local} local)`);
    const mixed = await measureReports(node, o.user, o.reports, expected, o.events);
    await restore();
    restore = undefined;
    log('report: archive released; waiting for the node tier to ship the rest (shipper backoff ≤ 10 s)');
    const rel = await awaitArchived(node, 30_000);
    let archived: ReportStats | undefined;
    if (rel.ok) {
      const n2 = Math.max(1, Math.round(o.reports / 4));
      log(`report: ${n2} × the same report with every record archived`);
      archived = await measureReports(node, o.user, n2, expected, o.events);
    }
    return { user: o.user, events: o.events, local: o.local, held: { archived: first.archived, local: first.local }, mixed, archived, releaseMs: rel.ok ? rel.ms : undefined };
  } finally {
    if (restore) await restore().catch(() => undefined);
    await client.close().catch(() => undefined);
    await nc.close();
  }
}

// ---------------------------------------------------------------------------------------------
// run

export async function run(opts: BenchOptions): Promise<BenchResult> {
  const startedAt = new Date();
  const nGens = posInt(opts, 'gens', 2, 16);
  const nClients = posInt(opts, 'clients', 200, 20_000);
  const depth = posInt(opts, 'depth', 4, 10_000);
  const nCampaigns = posInt(opts, 'campaigns', 10, 1000);
  const warmMs = numFlag(opts, 'warmup', 2) * 1000;
  if (!(warmMs >= 0)) throw new UsageError('--warmup must be ≥ 0');
  const burst = posInt(opts, 'burst', 100_000, 10_000_000);
  const nReports = posInt(opts, 'reports', 200, 100_000);
  const reportEvents = posInt(opts, 'report-events', 1000, 100_000);
  const reportLocal = numFlag(opts, 'report-local', 300);
  if (!Number.isInteger(reportLocal) || reportLocal < 0 || reportLocal >= reportEvents) throw new UsageError('--report-local must be an integer in 0..report-events − 1');
  const reportCampaigns = posInt(opts, 'report-campaigns', 5, 1000);
  const nCells = posInt(opts, 'cells', 2, 16);
  const shipBatch = opts.flags['ship-batch'] === undefined ? undefined : posInt(opts, 'ship-batch', 512, 10_000);
  const ceilMs = posNum(opts, 'ceiling-duration', 2) * 1000;
  const ms = opts.durationMs;
  if (nClients < nGens) throw new UsageError('--clients must be at least --gens');
  const params = {
    durationMs: ms, warmupMs: warmMs, gens: nGens, clients: nClients, depth, campaigns: nCampaigns, burst, reports: nReports, reportEvents, reportLocal, reportCampaigns,
    cells: nCells, shipBatch: shipBatch ?? 'default (512)', ceilingMs: ceilMs, limits: BENCH_LIMITS, generator: 'SDK (GravitasClient.track), no storage path',
  };
  const hostLoad = { atStart: loadavg() as number[], atEnd: [] as number[], cores: cpus().length };
  if (hostLoad.atStart[0]! > hostLoad.cores / 2) log(`WARNING: the host is busy before the run (load average ${hostLoad.atStart[0]!.toFixed(2)} on ${hostLoad.cores} cores): expect noisy numbers`);

  const res = new Resources();
  try {
    log('starting nats-server (JetStream)');
    const nats = await NatsServer.start({ jetstream: true });
    res.deferLast(() => nats.stop());
    const dir = await res.tempDir('gravitas-bench-tracking-');

    log(`ceiling lmdb.put: async db.put, ${ceilMs / 1000} s`);
    const ceiling = await lmdbPutCeiling(join(dir, 'ceiling-lmdb'), ceilMs, 'c0lzz3k5q0abcde');
    log(`  ${fmt(ceiling.perSec)} puts/s (${ceiling.valueBytes} B values)`);
    log(`reference lmdb.tracking_store: TrackingStore.put + flushed, ${nClients / nCells} concurrent writers, ${ceilMs / 1000} s`);
    const storeRef = await storePutReference(join(dir, 'reference-store'), ceilMs, 'c0lzz3k5q0abcde', Math.max(1, Math.round(nClients / nCells)));
    log(`  ${fmt(storeRef.perSec)} records/s`);

    const keys = clusterKeys();
    log(`starting a gravitas node (${nCells} cells)`);
    const node = await startNode(res, dir, nats.url, keys, nCells, shipBatch);
    if (node.clientAddresses.length !== nCells) throw new Error(`the node listens on ${node.clientAddresses.length} cells, expected ${nCells}`);
    const pub = await adminOk<{ key: string }>(node, 'POST', '/admin/publishers', { name: 'Bench', roles: ['campaigns', 'reports'] });
    const campaigns: string[] = [];
    for (let i = 0; i < nCampaigns; i++) {
      // Started, due in an hour: running (feedback is taken for running and finished campaigns), nothing sent meanwhile.
      const c = await adminOk<{ campaign: { id: string } }>(node, 'POST', '/admin/campaigns', { name: `bench ${i}`, audience: { users: ['nobody'] }, content: { text: 'hello' }, startAt: Date.now() + 3600_000 }, pub.key);
      await adminOk(node, 'POST', `/admin/campaigns/${c.campaign.id}/start`, undefined, pub.key);
      campaigns.push(c.campaign.id);
    }
    // The clients stand in for recipients: their delivery proofs are made here, as the cells would put them on the messages.
    const proofs = new DeliveryProofs(fromBase64Url(keys.serverKey, 32));
    log(`  ${campaigns.length} campaigns running (due in an hour: nothing is sent, the intake takes feedback for them)`);

    log(`starting ${nGens} generator processes with ${nClients} SDK clients`);
    const gens = await Promise.all(Array.from({ length: nGens }, (_, k) => GenProcess.start<TrackGenCommand>(res, `tracking-gen-${k}`, GEN_JS)));
    res.defer(async () => void (await Promise.all(gens.map((g) => g.call({ k: 'close' }).catch(() => undefined)))));
    const perGen: Array<Array<{ user: string; addr: string; proofs: Uint8Array[] }>> = gens.map(() => []);
    for (let i = 0; i < nClients; i++) perGen[i % nGens]!.push({ user: `t${i}`, addr: node.clientAddresses[i % nCells]!, proofs: campaigns.map((c) => proofs.campaign(c, `t${i}`)) });
    const maxFeedback = Math.max(10_000, Math.ceil(burst / nClients) + depth + 10);
    await Promise.all(gens.map((g, k) => g.call({ k: 'setup', gen: k, serverPublicKey: keys.server.publicKey, clients: perGen[k]!, campaigns, maxFeedback })));
    const conn = await Promise.all(gens.map((g) => g.call<ConnectSummary>({ k: 'connect', concurrency: 16 })));
    const connected = conn.reduce((s, c) => s + c.connected, 0);
    log(`  ${connected}/${nClients} connected in ${fmt(Math.max(...conn.map((c) => c.ms)))} ms`);
    if (connected < nClients) throw new Error(`only ${connected}/${nClients} clients connected: ${fmtCounts(Object.assign({}, ...conn.map((c) => c.errors)) as Record<string, number>)}`);

    const pids: Record<string, number | undefined> = { node: node.pid, nats: nats.pid, parent: process.pid };
    gens.forEach((g, k) => (pids[`gen${k}`] = g.pid));

    log(`ingest: ${nClients} clients × ${depth} queued events, closed loop; warmup ${warmMs} ms, measure ${ms} ms`);
    const ingest = await ingestPhase(node, gens, { clients: nClients, depth, warmMs, ms }, pids);
    log(`  ${fmt(ingest.perSec)} events/s acknowledged (server stored ${fmt(ingest.serverStoredPerSec)}/s); track→tracked p50 ${fmt(ingest.latency.p50, 2)} p99 ${fmt(ingest.latency.p99, 2)} ms; CPU cores: ${fmtCores(ingest.cores)}; generator ELU ${ingest.genElu.map((e) => e.toFixed(2)).join(', ')}`);
    log(`  node threads: ${ingest.cpu.nodeThreads.slice(0, 3).map(fmtThread).join(', ')}; generators: ${ingest.cpu.gens.map(fmtThread).join(', ')}; host busy ${ingest.cpu.hostBusy.toFixed(2)} cores (others ${ingest.cpu.others.toFixed(2)}); ${ingest.bottleneck}`);
    log(`  archive caught up ${fmt(ingest.archivedAfterMs)} ms after the window`);

    log(`archive: burst of ${fmt(burst)} events from ${nClients} clients`);
    const burstRes = await burstPhase(node, gens, burst, pids);
    log(`  archive lag over time (s since the burst's first event: unarchived records / lag gauge): ${lagTimeline(burstRes).join(', ')}`);
    log(`  ${fmt(burstRes.tracked)} tracked at ${fmt(burstRes.ingestPerSec)} events/s; backlog at the end ${fmt(burstRes.backlogAtEnd)}; zero after ${burstRes.zeroAfterMs === undefined ? 'NEVER (timeout)' : `${fmt(burstRes.zeroAfterMs)} ms`}; archive ${fmt(burstRes.archivePerSec)} records/s (peak ${fmt(burstRes.archivePeakPerSec)}/s)`);

    const reports = await reportPhase(node, nats.url, keys, { user: 'reportuser', events: reportEvents, local: reportLocal, campaigns: campaigns.slice(0, Math.min(reportCampaigns, campaigns.length)), reports: nReports });
    log(`  mixed: p50 ${fmt(reports.mixed.latency.p50, 1)} p99 ${fmt(reports.mixed.latency.p99, 1)} ms; complete ${reports.mixed.complete}/${reports.mixed.n}`);

    // ---- accounting: every acknowledged event stored once and archived once ----
    const totals = await Promise.all(gens.map((g) => g.call<StopSummary>({ k: 'stop', timeoutMs: 0 })));
    const acknowledged = totals.reduce((s, t) => s + t.tracked, 0) + reportEvents;
    const settled = await awaitArchived(node, 15_000);
    const finalMetrics = settled.last;
    const archiveMessages = await streamMessages(nats.url);
    hostLoad.atEnd = loadavg();

    // ---- rows ----
    const targets: Array<{ name: string; target: string; measured: number | undefined; met: boolean | undefined }> = [];
    const target = (name: string, t: string, measured: number | undefined, met: boolean | undefined): string => {
      targets.push({ name, target: t, measured, met });
      return verdict(met, t);
    };
    const ratio = ingest.perSec / ceiling.perSec;
    const genCores = Object.entries(ingest.cores).filter(([k]) => k.startsWith('gen')).reduce((s, [, v]) => s + v, 0);
    const stopFailed: Record<string, number> = {};
    for (const s of ingest.stop) for (const [k, v] of Object.entries(s.failed)) stopFailed[k] = (stopFailed[k] ?? 0) + v;
    const ingestDups = ingest.stop.reduce((s, x) => s + x.dups, 0);
    const rows: Row[] = [
      { metric: 'lmdb.put', value: ceiling.perSec, unit: 'ops/s', note: `CEILING: lmdb-js db.put not awaited (≤ 2 × 5,000 outstanding), ${ceiling.valueBytes} B values (the store's rec entry; the bare record packs to ${ceiling.recordBytes} B), random [user, eid] keys, store options (no noSync), clock stopped at flushed; ${fmt(ceiling.puts)} puts` },
      { metric: 'lmdb.tracking_store', value: storeRef.perSec, unit: 'records/s', ceiling: 'lmdb.put', ratio: storeRef.perSec / ceiling.perSec, note: `reference, not a ceiling: TrackingStore.put + flushed() (one transaction over 5 tables, then the disk) from ${storeRef.writers} concurrent loops in one thread (one cell's sessions), no network, crypto or lookups` },
      {
        metric: 'ingest.tracked',
        value: ingest.perSec,
        unit: 'events/s',
        ceiling: 'lmdb.put',
        ratio,
        note: `SDK track() from ${ingest.clients} GravitasClients in ${nGens} generator processes, ${ingest.depth} queued each (closed loop), counted at \`tracked\` (ok after LMDB flush); ${target('ingest vs LMDB put ceiling', `≥ ${TARGET.ingestVsLmdb * 100}% of lmdb.put`, ratio, ratio >= TARGET.ingestVsLmdb)}; server stored ${fmt(ingest.serverStoredPerSec)}/s in the same window`,
      },
      { metric: 'ingest.latency.p50', value: ingest.latency.p50, unit: 'ms', note: `track() → tracked, including the wait in the SDK queue (${ingest.depth} queued per client, one request at a time per session on the cell)` },
      { metric: 'ingest.latency.p99', value: ingest.latency.p99, unit: 'ms', note: `p90 ${fmt(ingest.latency.p90, 2)}, max ${fmt(ingest.latency.max, 1)} ms` },
      { metric: 'ingest.cpu.node', value: ingest.cores['node'] ?? NaN, unit: 'cores', note: `gravitas node process (${nCells} cells + main thread), busiest threads ${ingest.cpu.nodeThreads.slice(0, 3).map(fmtThread).join(', ')}; nats-server ${(ingest.cores['nats'] ?? 0).toFixed(2)} cores` },
      { metric: 'ingest.cpu.node_per_event', value: ingest.nodeUsPerEvent, unit: 'µs', note: 'node CPU time per acknowledged event (all threads)' },
      { metric: 'ingest.cpu.generators', value: genCores, unit: 'cores', note: `${nGens} processes: ${ingest.genElu.map((e, k) => `${ingest.cpu.gens[k] ? fmtThread(ingest.cpu.gens[k]) : `gen${k}`}, event loop busy ${(e * 100).toFixed(0)}%`).join('; ')}` },
      { metric: 'ingest.cpu.host', value: ingest.cpu.hostBusy, unit: 'cores', note: `busy cores of the whole ${cpus().length}-core host in the window (/proc/stat), ${ingest.cpu.others.toFixed(2)} of them not this benchmark's processes; verdict: ${ingest.bottleneck}` },
      { metric: 'ingest.failed', value: Object.values(stopFailed).reduce((a, b) => a + b, 0), unit: 'events', note: `trackFailed/enqueue errors ${fmtCounts(stopFailed)}; dup answers ${ingestDups}; unsettled at stop ${ingest.stop.reduce((s, x) => s + x.unsettled, 0)}; disconnects ${ingest.stop.reduce((s, x) => s + x.disconnects, 0)}` },
      { metric: 'burst.tracked', value: burstRes.ingestPerSec, unit: 'events/s', ceiling: 'lmdb.put', ratio: burstRes.ingestPerSec / ceiling.perSec, note: `${fmt(burstRes.tracked)} of ${fmt(burstRes.events)} acknowledged in ${fmt(burstRes.ingestMs)} ms (all queued at once); track→tracked p50 ${fmt(burstRes.latency.p50, 0)} / p99 ${fmt(burstRes.latency.p99, 0)} ms; failed ${fmtCounts(burstRes.failed)}; unsettled ${burstRes.unsettled}; dup ${burstRes.dups}; CPU cores over burst + drain: ${fmtCores(burstRes.cores)}` },
      { metric: 'archive.backlog_at_burst_end', value: burstRes.backlogAtEnd, unit: 'records', note: `stored − shipped when the last event was acknowledged (lag gauge then ${fmt(burstRes.lagAtEndS, 2)} s); max during the burst ${fmt(burstRes.maxUnarchived)} records, max gravitas_tracking_archive_lag_seconds ${fmt(burstRes.maxLagS, 2)} s` },
      {
        metric: 'archive.time_to_zero',
        value: burstRes.zeroAfterMs === undefined ? NaN : burstRes.zeroAfterMs / 1000,
        unit: 's',
        note: `from the last acknowledged event of the burst until every stored record was archived (shipped_total ≥ intake stored, /metrics polled every ${POLL_MS} ms); ${target('archive lag to zero after the burst', `≤ ${TARGET.archiveZeroS} s`, burstRes.zeroAfterMs === undefined ? undefined : burstRes.zeroAfterMs / 1000, burstRes.zeroAfterMs !== undefined && burstRes.zeroAfterMs <= TARGET.archiveZeroS * 1000)}`,
      },
      { metric: 'archive.max_lag', value: burstRes.maxLagS, unit: 's', note: `highest gravitas_tracking_archive_lag_seconds seen during the burst (sampled by the shipper at the end of each round); ${fmt(burstRes.maxUnarchived)} records waiting at most` },
      { metric: 'archive.throughput', value: burstRes.archivePerSec, unit: 'records/s', note: `records archived from the burst's first event until the outbox was empty, over that time (the shipper runs during the burst, so this follows the intake); peak over 1 s ${fmt(burstRes.archivePeakPerSec)} records/s; shipBatch ${shipBatch ?? 512}, 32 publishes in flight` },
      { metric: 'archive.drain', value: burstRes.drainPerSec, unit: 'records/s', note: `backlog at the burst's end ÷ time to zero: the shipper alone once the intake is quiet (coarse: ${POLL_MS} ms polls)` },
      ...(['p50', 'p99', 'max'] as const).map((k): Row => ({
        metric: `report.mixed.${k}`,
        value: reports.mixed.latency[k],
        unit: 'ms',
        ...(k === 'p50' && { note: `GET /admin/reports/users/${reports.user}/campaigns × ${reports.mixed.n}, sequential, ${reports.events} records over ${Math.min(reportCampaigns, campaigns.length)} campaigns: ${reports.held ? `${reports.held.archived} archived + ${reports.held.local} local` : '?'} (archive stream held at its message count); answers ${fmtCounts(reports.mixed.sources)}` }),
        ...(k === 'p99' && { note: target('user report p99 over both tiers', `≤ ${TARGET.reportP99Ms} ms`, reports.mixed.latency.p99, reports.mixed.latency.p99 <= TARGET.reportP99Ms) }),
      })),
      {
        metric: 'report.mixed.complete',
        value: reports.mixed.complete,
        unit: 'answers',
        note: `of ${reports.mixed.n}: every tracked event exactly once (per campaign, the multiset of (event, device ts) equals what the SDK got \`tracked\` for); missing ${reports.mixed.missing}, extra ${reports.mixed.extra}, errors ${fmtCounts(reports.mixed.errors)}; ${target('reports complete', `${reports.mixed.n}/${reports.mixed.n}`, reports.mixed.complete, reports.mixed.complete === reports.mixed.n)}`,
      },
    ];
    if (reports.archived) {
      rows.push(
        { metric: 'report.archived.p50', value: reports.archived.latency.p50, unit: 'ms', note: `the same report × ${reports.archived.n} once everything was archived (released ${fmt(reports.releaseMs ?? NaN)} ms after the hold ended); answers ${fmtCounts(reports.archived.sources)}` },
        { metric: 'report.archived.p99', value: reports.archived.latency.p99, unit: 'ms', note: `complete ${reports.archived.complete}/${reports.archived.n}; missing ${reports.archived.missing}, extra ${reports.archived.extra}` },
      );
    }
    rows.push(
      {
        metric: 'account.acknowledged',
        value: acknowledged,
        unit: 'events',
        note: `every event any SDK client got \`tracked\` for, whole run; intake stored ${fmt(finalMetrics.stored)} (dup answers ${fmt(finalMetrics.duplicate)}, RETRY_LATER ${fmt(finalMetrics.retryLater)}), archived (shipped_total) ${fmt(finalMetrics.shipped)}, archive stream holds ${fmt(archiveMessages)} messages; ${target('every acknowledged event stored and archived exactly once', 'acknowledged = stored = archived = stream messages', acknowledged, acknowledged === finalMetrics.stored && finalMetrics.stored === finalMetrics.shipped && archiveMessages === acknowledged)}`,
      },
    );
    const extra = {
      hostLoad,
      ceiling,
      storeRef,
      ingest,
      burst: burstRes,
      lagTimeline: lagTimeline(burstRes),
      reports,
      finalMetrics,
      archiveMessages,
      acknowledged,
      targets,
      nodeLog: node.child.tail(),
    };
    if (/error|crash|uncaught/i.test(node.child.tail())) log(`the node logged errors (tail in the JSON's extra.nodeLog):\n${node.child.tail().split('\n').slice(-8).join('\n')}`);
    return makeResult(name, startedAt, params, rows, extra);
  } finally {
    log('stopping child processes');
    await res.close();
  }
}
