import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { NatsServer } from '@gravitas/testkit';
import { GenProcess, Load, mergeStep, type StepResult } from './custody-load.js';
import type { GenUser, Percentiles } from './custody-types.js';
import { communityGraph, expectedLocality, randomPlacement, type CommunityGraph } from './gravity-graph.js';
import { BENCH_LIMITS, type GravitasNode, clusterKeys, type ClusterKeys, log, Resources, sleep, startGravitasNode } from './procs.js';
import { makeResult, numFlag, posInt, posNum, UsageError, type BenchOptions, type BenchResult, type Row } from './report.js';

/*
 * Gravitation on a real cluster: one nats-server and one `gravitas node` with --cells cells,
 * users of a community graph (gravity-graph.ts) placed on the cells at random, the same workload
 * and the same placement twice — gravitation off, then on. Per run: connect everyone; a
 * convergence phase at a moderate open-loop rate, sampling locality (deltas of
 * gravitas_deliveries_total local vs cross_cell on /metrics) and balance (max/mean sessions per
 * cell on /admin/cells) every second; the highest delivered rate in a closed loop (every user
 * keeps --window messages without a status); then p50/p99 at one offered rate for both runs.
 * The load generators are the custody benchmark's (custody-load.ts, custody-gen.ts); with
 * gravitation on they follow `move` hints as the SDK does, and the exactly-once account by
 * message id covers every phase, moves included.
 */

export const name = 'gravity';
export const description =
  'gravitation off vs on: one node of --cells cells on one nats-server, community graph, random initial placement; locality over time, balance, closed-loop delivered msgs/s, p50/p99 at a common offered rate, lost/dup';
export const defaultDurationS = 8;
export const flags = {
  users: 'users (default 800)',
  community: 'users per community (default 16); every user has all its community as contacts',
  mu: 'share of a user\'s contacts outside its community (default 0.1)',
  cells: 'cells of the one gravitas node (default 4)',
  gens: 'load generator processes (default 2)',
  converge: 'seconds of the convergence phase at --warm-rate (default 40)',
  'warm-rate': 'offered msgs/s during the convergence phase (default 2000)',
  window: 'closed loop: messages without a status per user (default 1)',
  'latency-rates': 'comma list of offered msgs/s of the latency steps, the same in both runs (default: 1/2 and 3/4 of the closed-loop rate of the first run)',
  warmup: 'seconds before the measured window of the closed-loop and latency steps (default 2)',
  settle: 'seconds to wait after a step for the last statuses and arrivals (default 10)',
  runs: 'comma list of off, on, in order (default off,on; the ratios need both)',
  'text-bytes': 'message text size in bytes (default 100)',
  seed: 'PRNG seed of the graph and the placement (default 1)',
} as const;

const TARGET = { locality: 0.85, balance: 1.1, throughputRatio: 1.25 };
/** The gravity settings of the "on" run; maxMovesPerExchange and migrationsPerSec are sized to the population (below). */
const GRAVITY_ON = { enabled: true, intervalMs: 1000, cooldownMs: 2000, minDwellMs: 2000, halfLifeMs: 10_000, epsilon: 0.1, minGain: 2, hintTtlMs: 30_000 };
const DEVICE_CONCURRENCY = 32;
const MAX_OUTSTANDING = 1024;
const GEN_STARVED_MS = 20;
/** Cores used by other processes during a step above which the step is flagged as measured on a shared host. */
const FOREIGN_WARN = 0.1;
/** Sampling period of locality and balance. */
const SAMPLE_MS = 1000;

type RunName = 'off' | 'on';

/** A comma list of positive rates, or undefined when the flag is absent. */
function listFlag(opts: BenchOptions, flag: string): number[] | undefined {
  const v = opts.flags[flag];
  if (v === undefined) return undefined;
  const items = (v === true ? '' : v).split(',').map((x) => x.trim()).filter(Boolean);
  const out = items.map(Number);
  if (out.length === 0 || out.some((n) => !(n > 0) || !Number.isFinite(n))) throw new UsageError(`--${flag} must be a comma list of positive numbers, got "${String(v)}"`);
  return out;
}

const range = (n: number, from = 0): number[] => Array.from({ length: n }, (_, i) => from + i);
const fmt = (n: number, d = 0): string => (Number.isFinite(n) ? n.toLocaleString('en-US', { maximumFractionDigits: d, minimumFractionDigits: d }) : String(n));
const fmtCounts = (r: Record<string, number>): string =>
  Object.entries(r)
    .map(([k, v]) => `${k}×${v}`)
    .join(' ');
const fmtCores = (c: Record<string, number>): string =>
  Object.entries(c)
    .map(([k, v]) => `${k} ${v.toFixed(2)}`)
    .join(', ');
const pct = (p: Percentiles): string => `p50 ${fmt(p.p50, 2)} / p90 ${fmt(p.p90, 2)} / p99 ${fmt(p.p99, 2)} / max ${fmt(p.max, 1)} ms`;
const sum = (r: Record<string, number>): number => Object.values(r).reduce((a, b) => a + b, 0);

// ---------------------------------------------------------------------------------------------
// the node

/** The one node of a run: `cells` cells, gravitation as configured, addresses checked. */
async function startNode(res: Resources, dir: string, nodeId: string, natsUrl: string, keys: ClusterKeys, cells: number, gravity: Record<string, unknown>): Promise<GravitasNode> {
  const node = await startGravitasNode(res, dir, nodeId, natsUrl, keys, { config: { cells, gravity }, readyTimeoutMs: 60_000 });
  if (node.addrs.length !== cells) throw new Error(`${nodeId}: ${node.addrs.length} cell addresses for ${cells} cells`);
  return node;
}

// ---------------------------------------------------------------------------------------------
// /metrics and /admin/cells

interface Counters {
  local: number;
  cross: number;
  mailbox: number;
  migrations: Record<string, number>;
  followed: number;
  exchanges: Record<string, number>;
  /** Each cell's event-loop delay p99 over its last second (ms). */
  cellLagMs: number[];
}

/** Sums of the series of `metric` (Prometheus text), by the value of `label` ('' without it). */
function series(text: string, metric: string, label?: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const line of text.split('\n')) {
    if (!line.startsWith(metric)) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s+(\S+)/.exec(line);
    if (!m || m[1] !== metric) continue;
    const labels = Object.fromEntries([...(m[3] ?? '').matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1]!, x[2]!]));
    const k = label === undefined ? '' : (labels[label] ?? '');
    out[k] = (out[k] ?? 0) + Number(m[4]);
  }
  return out;
}

async function counters(adminUrl: string): Promise<Counters> {
  const text = await (await fetch(`${adminUrl}/metrics`)).text();
  const d = series(text, 'gravitas_deliveries_total', 'path');
  return {
    local: d['local'] ?? 0,
    cross: d['cross_cell'] ?? 0,
    mailbox: d['mailbox'] ?? 0,
    migrations: series(text, 'gravitas_gravity_migrations_total', 'why'),
    followed: series(text, 'gravitas_gravity_hints_followed_total')[''] ?? 0,
    exchanges: series(text, 'gravitas_gravity_exchanges_total', 'result'),
    cellLagMs: Object.values(series(text, 'gravitas_event_loop_lag_seconds', 'cell')).map((v) => v * 1000),
  };
}

async function sessionsPerCell(adminUrl: string): Promise<number[]> {
  const body = (await (await fetch(`${adminUrl}/admin/cells`)).json()) as { cells: Array<{ index: number; status?: { sessions: number } }> };
  return body.cells.sort((a, b) => a.index - b.index).map((c) => c.status?.sessions ?? 0);
}

/** max/mean of per-cell sessions (1 = even). */
function balanceOf(sessions: number[]): number {
  const total = sessions.reduce((a, b) => a + b, 0);
  return total > 0 ? Math.max(...sessions) / (total / sessions.length) : NaN;
}

/** Busy and total jiffies of the whole host (/proc/stat), for the share of the machine a step used. */
function hostCpu(): { busy: number; total: number } {
  const f = (readFileSync('/proc/stat', 'utf8').split('\n')[0] ?? '').trim().split(/\s+/).slice(1).map(Number);
  const total = f.slice(0, 8).reduce((a, b) => a + b, 0);
  const idle = (f[3] ?? 0) + (f[4] ?? 0);
  return { busy: total - idle, total };
}

/**
 * Host speed: SHA-256 of 1 KiB blocks per second on one thread for `ms`, taken while the cluster
 * is idle. Other processes are visible in /proc/stat, but contention from outside this VM (a busy
 * sibling hyperthread or neighbour) is not; sequential runs compared on a slower host would
 * skew the ratios, so each run reports this and the benchmark warns when the runs differ.
 */
function calibrate(ms = 500): number {
  const buf = Buffer.alloc(1024, 7);
  const end = performance.now() + ms;
  let n = 0;
  while (performance.now() < end) {
    for (let i = 0; i < 100; i++) createHash('sha256').update(buf).digest();
    n += 100;
  }
  return (n * 1000) / ms;
}

/** Tolerated difference in host speed between the runs before the ratios are flagged: the probe, and the generators' CPU per message. */
const SPEED_DRIFT = 0.05;
const GEN_DRIFT = 0.08;

const locality = (local: number, cross: number): number => (local + cross > 0 ? local / (local + cross) : NaN);

export interface Sample {
  /** Seconds since the first sample of the run. */
  t: number;
  phase: string;
  /** Live deliveries since the previous sample, same cell / across cells. */
  local: number;
  cross: number;
  locality: number;
  sessions: number[];
  balance: number;
  /** Cumulative since the node started. */
  migrations: number;
  followed: number;
  /** The worst cell's event-loop delay p99 over its last second (ms). */
  cellLagMs: number;
}

/** Samples locality and balance every second until stopped; `phase` tags the samples. */
class Sampler {
  readonly samples: Sample[] = [];
  phase = 'connect';
  private stopped = false;
  private loop: Promise<void> | undefined;
  private t0 = 0;
  private prev: Counters | undefined;

  constructor(private readonly adminUrl: string) {}

  start(): void {
    this.t0 = performance.now();
    this.loop = (async () => {
      while (!this.stopped) {
        const at = performance.now();
        try {
          await this.sample();
        } catch (err) {
          log(`sampler: ${(err as Error).message}`);
        }
        await sleep(Math.max(0, SAMPLE_MS - (performance.now() - at)));
      }
    })();
  }

  private async sample(): Promise<void> {
    const [c, sessions] = await Promise.all([counters(this.adminUrl), sessionsPerCell(this.adminUrl)]);
    const p = this.prev;
    this.prev = c;
    if (!p) return;
    const local = c.local - p.local;
    const cross = c.cross - p.cross;
    this.samples.push({
      t: Math.round((performance.now() - this.t0) / 100) / 10,
      phase: this.phase,
      local,
      cross,
      locality: locality(local, cross),
      sessions,
      balance: balanceOf(sessions),
      migrations: sum(c.migrations),
      followed: c.followed,
      cellLagMs: Math.max(0, ...c.cellLagMs),
    });
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.loop;
  }

  /** Seconds since the sampler started (the clock of `Sample.t`). */
  now(): number {
    return (performance.now() - this.t0) / 1000;
  }

  of(phase: string): Sample[] {
    return this.samples.filter((s) => s.phase === phase);
  }
}

/** Locality over a set of samples (deliveries summed, not the mean of ratios). */
function localityOver(samples: Sample[]): number {
  return locality(
    samples.reduce((a, s) => a + s.local, 0),
    samples.reduce((a, s) => a + s.cross, 0),
  );
}

// ---------------------------------------------------------------------------------------------
// one run

export interface StepOut extends StepResult {
  /** Live deliveries on the same cell / across cells during the step (from /metrics). */
  deliveries: { local: number; cross: number; mailbox: number; locality: number };
  /** Generator-side move counts during the step. */
  moves: Record<string, number>;
  /** The worst cell's event-loop delay p99 per second while the step ran (ms): mean and max over the samples. */
  cellLag: { mean: number; max: number };
  /** Busy share of the whole host (all cores) while the step ran, anything else on it included. */
  hostBusy: number;
  /** Cores used by processes other than this benchmark's (host busy − ours): > 0.1 means a shared, noisy measurement. */
  foreignCores: number;
}

export interface RunResult {
  run: RunName;
  gravity: Record<string, unknown>;
  addrs: string[];
  connect: { connected: number; ms: number; errors: Record<string, number> };
  initialSessions: number[];
  samples: Sample[];
  converge: StepOut;
  max: StepOut;
  /** One open-loop step per common offered rate. */
  latency: StepOut[];
  latencyRates: number[];
  /** Locality: the last 5 s of convergence; the measurement (closed loop + latency step). */
  localityConverged: number;
  localityMeasured: number;
  /** Balance: at the start, at the end of convergence; worst and median 1-s sample of the measurement. */
  balanceInitial: number;
  balanceConverged: number;
  balanceMeasuredWorst: number;
  balanceMeasuredMedian: number;
  balanceFinal: number;
  finalSessions: number[];
  /** Host speed (calibrate(), hashes/s) right before and right after the closed-loop step. */
  hostSpeed: { before: number; after: number };
  /** Sampler time (s) when the convergence phase started. */
  convergeStartT: number;
  /** First sample of the convergence phase from which locality stayed ≥ the target for 3 samples. */
  convergedAtS: number | undefined;
  migrations: Record<string, number>;
  hintsFollowed: number;
  exchanges: Record<string, number>;
  genMoves: Record<string, number>;
  lost: number;
  duplicated: number;
  nodeLog: string;
}

interface RunOpts {
  cells: number;
  gens: number;
  graph: CommunityGraph;
  placement: Int32Array;
  convergeMs: number;
  warmRate: number;
  window: number;
  latencyRates: number[] | undefined;
  warmMs: number;
  ms: number;
  settleMs: number;
  textBytes: number;
  seed: number;
  gravity: Record<string, unknown>;
}

async function runOnce(run: RunName, o: RunOpts, latencyRatesOf: (maxPerSec: number) => number[]): Promise<RunResult> {
  const res = new Resources();
  try {
    log(`[${run}] starting nats-server (JetStream) and one gravitas node with ${o.cells} cells, gravitation ${run}`);
    const nats = await NatsServer.start({ jetstream: true });
    res.deferLast(() => nats.stop());
    const dir = await res.tempDir(`gravitas-bench-gravity-${run}-`);
    const keys = clusterKeys();
    const node = await startNode(res, dir, `grav-${run}`, nats.url, keys, o.cells, o.gravity);
    const pids = { nats: nats.pid, node: node.pid, parent: process.pid };
    const N = o.graph.users;
    const gens = await Promise.all(range(o.gens).map((k) => GenProcess.start(res, `gen-${run}-${k}`)));
    const genOf = (i: number): number => i % gens.length;
    const load = new Load(gens, { gen: genOf }, pids);
    const share = (k: number): number => range(N).filter((i) => genOf(i) === k).length / N;
    const users: GenUser[] = range(N).map((i) => ({ i, addr: node.addrs[o.placement[i]!]!, contacts: o.graph.contacts[i]! }));
    await load.setup({ prefix: 'g', users }, keys.server.publicKey, o.textBytes, MAX_OUTSTANDING, o.seed, { follow: true });

    const sampler = new Sampler(node.adminUrl);
    sampler.start();
    try {
      log(`[${run}] connecting ${N} users (${gens.length} generators, ${DEVICE_CONCURRENCY} handshakes in flight each)`);
      const c = await load.connect('all', DEVICE_CONCURRENCY);
      log(`[${run}]   ${c.connected} connected in ${fmt(c.ms)} ms${Object.keys(c.errors).length ? `; errors ${fmtCounts(c.errors)}` : ''}`);
      if (c.connected < N) throw new Error(`[${run}] only ${c.connected}/${N} users connected: ${fmtCounts(c.errors)}`);
      // The initial placement (moves may start minDwellMs after a session registered, so what the
      // cells report a moment later can already differ).
      const initialSessions = range(o.cells).map((k) => o.placement.filter((c) => c === k).length);
      const reported = await sessionsPerCell(node.adminUrl);
      log(`[${run}]   placed per cell ${initialSessions.join(' / ')} (balance ${fmt(balanceOf(initialSessions), 3)}); cells report ${reported.join(' / ')}`);
      await sleep(2000); // registrations' follow-up work settles first

      let stepSeq = 0;
      const step = async (phase: string, label: string, cmd: { mode: 'open' | 'closed'; rate: number; window: number; warmupMs: number; durationMs: number }): Promise<StepOut> => {
        const id = ++stepSeq;
        sampler.phase = phase;
        const c0 = await counters(node.adminUrl);
        const m0 = (await load.progress([])).moves;
        log(`[${run}] step ${id} (${phase}): ${label}; warmup ${cmd.warmupMs} ms, measure ${cmd.durationMs} ms`);
        const h0 = hostCpu();
        const { runs, cores } = await load.run({ step: id, ...cmd, senders: 'all', settleMs: o.settleMs }, share);
        const h1 = hostCpu();
        const hostBusy = (h1.busy - h0.busy) / Math.max(1, h1.total - h0.total);
        const c1 = await counters(node.adminUrl);
        sampler.phase = `${phase}-settle`;
        const accepted = runs.reduce((s, r) => s + r.accepted, 0);
        await load.awaitArrivals([id], accepted, o.settleMs, 3000);
        const offered = cmd.mode === 'open' ? cmd.rate : undefined;
        let r = mergeStep(id, label, offered, runs, (await load.collect([id], false))[0]!, cores);
        // A stored message reaches an online device through its mailbox drain, later: look again.
        const recheckEnd = Date.now() + o.settleMs;
        while ((r.lost > 0 || r.unconfirmed > 0) && Date.now() < recheckEnd) {
          await sleep(1000);
          r = mergeStep(id, label, offered, runs, (await load.collect([id], false))[0]!, cores);
        }
        await load.collect([id], true);
        const m1 = (await load.progress([])).moves;
        const moves: Record<string, number> = {};
        for (const [k, v] of Object.entries(m1)) if (v - (m0[k] ?? 0) > 0) moves[k] = v - (m0[k] ?? 0);
        const local = c1.local - c0.local;
        const cross = c1.cross - c0.cross;
        const foreignCores = Math.max(0, hostBusy * cpus().length - Object.values(cores).reduce((a, b) => a + b, 0));
        const lags = sampler.of(phase).map((x) => x.cellLagMs);
        const cellLag = { mean: lags.length ? lags.reduce((a, b) => a + b, 0) / lags.length : NaN, max: lags.length ? Math.max(...lags) : NaN };
        const out: StepOut = { ...r, deliveries: { local, cross, mailbox: c1.mailbox - c0.mailbox, locality: locality(local, cross) }, moves, cellLag, hostBusy, foreignCores };
        if (foreignCores > FOREIGN_WARN) log(`[${run}]   WARNING: other processes used ${fmt(foreignCores, 2)} cores during this step: the host was shared, the numbers are noisy`);
        if (r.genLoopDelay.p99 > GEN_STARVED_MS) log(`[${run}]   WARNING: generator event-loop delay p99 ${fmt(r.genLoopDelay.p99, 1)} ms (host load average ${loadavg()[0]!.toFixed(1)})`);
        log(
          `[${run}]   achieved ${fmt(r.achievedPerSec)} msg/s (${fmt(r.stored)} stored); status ${pct(r.status)}; received ${pct(r.recv)}; locality ${fmt(out.deliveries.locality, 3)}; ` +
            `${moveSplit(out).replace(/^; /, '(')}${out.recvMoved.count > 0 ? '); ' : ''}lost ${r.lost}, duplicated ${r.duplicated}, unconfirmed ${r.unconfirmed}${Object.keys(r.failed).length ? `, failed ${fmtCounts(r.failed)}` : ''}; moves ${fmtCounts(moves) || 'none'}; worst cell loop delay p99 ${fmt(cellLag.mean, 1)} ms (max ${fmt(cellLag.max, 1)}); CPU cores: ${fmtCores(cores)}; host busy ${fmt(hostBusy * 100)}%`,
        );
        return out;
      };

      const convergeStartT = sampler.now();
      const converge = await step('converge', `convergence, ${fmt(o.warmRate)} msg/s offered`, { mode: 'open', rate: o.warmRate, window: 0, warmupMs: 0, durationMs: o.convergeMs });
      const convSamples = sampler.of('converge');
      const last5 = convSamples.slice(-5);
      const localityConverged = localityOver(last5);
      const balanceConverged = convSamples.length > 0 ? convSamples[convSamples.length - 1]!.balance : NaN;
      let convergedAtS: number | undefined;
      for (let i = 0; i + 2 < convSamples.length; i++) {
        if (convSamples.slice(i, i + 3).every((s) => s.locality >= TARGET.locality)) {
          convergedAtS = convSamples[i]!.t - convergeStartT;
          break;
        }
      }
      log(`[${run}]   locality per second: ${convSamples.map((x) => fmt(x.locality, 2)).join(' ')}`);
      log(`[${run}]   locality over the last 5 s of convergence ${fmt(localityConverged, 3)}, balance ${fmt(balanceConverged, 3)}${convergedAtS !== undefined ? `; ≥ ${TARGET.locality} from ${fmt(convergedAtS, 1)} s` : ''}`);

      const speedBefore = calibrate();
      const max = await step('max', `closed loop, ${o.window} without a status per user`, { mode: 'closed', rate: 0, window: o.window, warmupMs: o.warmMs, durationMs: o.ms });
      await sleep(500);
      const hostSpeed = { before: speedBefore, after: calibrate() };
      log(`[${run}]   host speed ${fmt(hostSpeed.before / 1000)}k / ${fmt(hostSpeed.after / 1000)}k SHA-256 (1 KiB) per s before / after the closed loop`);
      const latencyRates = o.latencyRates ?? latencyRatesOf(max.achievedPerSec);
      const latency: StepOut[] = [];
      for (const rate of latencyRates) latency.push(await step(`latency@${rate}`, `${fmt(rate)} msg/s offered`, { mode: 'open', rate, window: 0, warmupMs: o.warmMs, durationMs: o.ms }));
      sampler.phase = 'end';
      await sleep(SAMPLE_MS + 200);
      await sampler.stop();

      const measured = sampler.samples.filter((s) => s.phase === 'max' || s.phase.startsWith('latency@'));
      const bal = measured.map((s) => s.balance).filter(Number.isFinite).sort((a, b) => a - b);
      const finalSessions = await sessionsPerCell(node.adminUrl);
      const cEnd = await counters(node.adminUrl);
      const genMoves = (await load.progress([])).moves;
      const steps = [converge, max, ...latency];
      return {
        run,
        gravity: o.gravity,
        addrs: node.addrs,
        connect: { connected: c.connected, ms: c.ms, errors: c.errors },
        initialSessions,
        samples: sampler.samples,
        hostSpeed,
        convergeStartT,
        converge,
        max,
        latency,
        latencyRates,
        localityConverged,
        localityMeasured: locality(max.deliveries.local + latency.reduce((a, x) => a + x.deliveries.local, 0), max.deliveries.cross + latency.reduce((a, x) => a + x.deliveries.cross, 0)),
        balanceInitial: balanceOf(initialSessions),
        balanceConverged,
        balanceMeasuredWorst: bal.length > 0 ? bal[bal.length - 1]! : NaN,
        balanceMeasuredMedian: bal.length > 0 ? bal[Math.floor(bal.length / 2)]! : NaN,
        balanceFinal: balanceOf(finalSessions),
        finalSessions,
        convergedAtS,
        migrations: cEnd.migrations,
        hintsFollowed: cEnd.followed,
        exchanges: cEnd.exchanges,
        genMoves,
        lost: steps.reduce((a, s) => a + s.lost, 0),
        duplicated: steps.reduce((a, s) => a + s.duplicated, 0),
        nodeLog: node.child.tail(),
      };
    } finally {
      await sampler.stop();
      await load.stop();
    }
  } finally {
    log(`[${run}] stopping child processes`);
    await res.close();
  }
}

// ---------------------------------------------------------------------------------------------
// rows

function stepNote(r: StepOut): string {
  const parts = [r.offered === undefined ? r.label : `offered ${fmt(r.offered)}`, `sent ${fmt(r.sent)}`, `delivered ${fmt(r.delivered)}`, `stored ${fmt(r.stored)}`];
  if (r.unconfirmed) parts.push(`unconfirmed ${fmt(r.unconfirmed)}`);
  if (Object.keys(r.failed).length) parts.push(`failed ${fmtCounts(r.failed)}`);
  if (r.skipped) parts.push(`skipped (outbox full) ${fmt(r.skipped)}`);
  if (r.retries) parts.push(`retries ${fmt(r.retries)} (${fmtCounts(r.retryCodes)})`);
  if (r.redelivered) parts.push(`re-delivered on the wire ${fmt(r.redelivered)}`);
  if (r.receivedNotAccepted) parts.push(`received without acceptance ${fmt(r.receivedNotAccepted)}`);
  if (r.disconnects) parts.push(`disconnects ${r.disconnects}`);
  parts.push(`locality ${fmt(r.deliveries.locality, 3)}`);
  if (Object.keys(r.moves).length) parts.push(`moves ${fmtCounts(r.moves)}`);
  parts.push(`worst cell loop delay p99 ${fmt(r.cellLag.mean, 1)} ms (max ${fmt(r.cellLag.max, 1)})`);
  parts.push(`gen loop delay p99 ${fmt(r.genLoopDelay.p99, 1)} ms`);
  if (r.genLoopDelay.p99 > GEN_STARVED_MS) parts.push('generator loop lagging');
  parts.push(`host busy ${fmt(r.hostBusy * 100)}%`);
  if (r.foreignCores > FOREIGN_WARN) parts.push(`SHARED HOST: other processes used ${fmt(r.foreignCores, 2)} cores`);
  return parts.join('; ');
}

/** recv latency split by moves, for a note ('' when nobody moved). */
function moveSplit(r: StepOut): string {
  if (r.recvMoved.count === 0) return '';
  return `; messages of users that started a move in the previous 5 s: ${fmt(r.recvMoved.count)} (${fmt((100 * r.recvMoved.count) / Math.max(1, r.recv.count), 1)}%), p50 ${fmt(r.recvMoved.p50, 2)} / p99 ${fmt(r.recvMoved.p99, 2)} ms; the others p50 ${fmt(r.recvStill.p50, 2)} / p99 ${fmt(r.recvStill.p99, 2)} ms`;
}

const serverCores = (c: Record<string, number>): number => (c['node'] ?? 0) + (c['nats'] ?? 0);
const genCores = (c: Record<string, number>): number => Object.entries(c).filter(([k]) => k.startsWith('gen')).reduce((a, [, v]) => a + v, 0);

/**
 * Locality per `every`-second window of the convergence phase: [end of the window in seconds
 * from the phase's start, locality of the deliveries sampled in it].
 */
function localitySeries(samples: Sample[], startT: number, every = 5): Array<[number, number]> {
  const conv = samples.filter((s) => s.phase === 'converge');
  const buckets = new Map<number, Sample[]>();
  for (const s of conv) {
    const b = Math.max(0, Math.ceil((s.t - startT) / every) - 1);
    let w = buckets.get(b);
    if (!w) buckets.set(b, (w = []));
    w.push(s);
  }
  return [...buckets.entries()].sort((a, b) => a[0] - b[0]).map(([b, w]) => [(b + 1) * every, localityOver(w)]);
}

function runRows(r: RunResult, off: RunResult | undefined): Row[] {
  const p = r.run;
  const vs = (metric: string, on: number, base: number | undefined): Partial<Row> =>
    r.run === 'on' && off && base !== undefined && base > 0 ? { ceiling: `off.${metric}`, ratio: on / base } : {};
  const rows: Row[] = [];
  for (const [t, l] of localitySeries(r.samples, r.convergeStartT)) rows.push({ metric: `${p}.locality.t${t}s`, value: l, unit: 'share', note: `convergence phase, deliveries in the 5 s up to ${t} s` });
  const migr = sum(r.migrations);
  rows.push(
    {
      metric: `${p}.locality`,
      value: r.localityMeasured,
      unit: 'share',
      ...vs('locality', r.localityMeasured, off?.localityMeasured),
      note: `live deliveries on the sender's cell ÷ all live deliveries, closed-loop + latency steps (${fmt(r.max.deliveries.local + r.latency.reduce((a, x) => a + x.deliveries.local, 0))} local, ${fmt(r.max.deliveries.cross + r.latency.reduce((a, x) => a + x.deliveries.cross, 0))} cross-cell); last 5 s of convergence ${fmt(r.localityConverged, 3)}${r.convergedAtS !== undefined ? `; ≥ ${TARGET.locality} from ${fmt(r.convergedAtS, 0)} s into convergence` : ''}`,
    },
    {
      metric: `${p}.balance`,
      value: r.balanceMeasuredMedian,
      unit: 'max/mean',
      note: `median 1-s sample of sessions per cell during the measurement (worst ${fmt(r.balanceMeasuredWorst, 3)}); at start ${fmt(r.balanceInitial, 3)} (${r.initialSessions.join('/')}), end of convergence ${fmt(r.balanceConverged, 3)}, end ${fmt(r.balanceFinal, 3)} (${r.finalSessions.join('/')})`,
    },
    {
      metric: `${p}.migrations`,
      value: migr,
      unit: 'moves',
      note: `gravitas_gravity_migrations_total ${fmtCounts(r.migrations) || '0'}; exchanges ${fmtCounts(r.exchanges) || 'none'}`,
    },
    {
      metric: `${p}.hints_followed`,
      value: r.hintsFollowed,
      unit: 'moves',
      note: `gravitas_gravity_hints_followed_total; generators: ${fmtCounts(r.genMoves) || 'no hints'}`,
    },
    {
      metric: `${p}.delivered`,
      value: r.max.achievedPerSec,
      unit: 'msg/s',
      ...vs('delivered', r.max.achievedPerSec, off?.max.achievedPerSec),
      note: `closed loop: accepted statuses in the window ÷ window; ${stepNote(r.max)}`,
    },
    {
      metric: `${p}.host_speed`,
      value: (r.hostSpeed.before + r.hostSpeed.after) / 2,
      unit: 'hash/s',
      ...vs('host_speed', (r.hostSpeed.before + r.hostSpeed.after) / 2, off && (off.hostSpeed.before + off.hostSpeed.after) / 2),
      note: `SHA-256 of 1 KiB per second on one thread, idle cluster, before ${fmt(r.hostSpeed.before)} / after ${fmt(r.hostSpeed.after)} the closed loop: contention from outside this VM shows here, not in /proc/stat`,
    },
    { metric: `${p}.delivered.status.p99`, value: r.max.status.p99, unit: 'ms', note: `closed loop, send → status (p50 ${fmt(r.max.status.p50, 2)} ms)` },
    ...r.latency.flatMap((l, j): Row[] => {
      const id = `latency@${r.latencyRates[j]}`;
      const b = off?.latency[j];
      return [
        { metric: `${p}.${id}.achieved`, value: l.achievedPerSec, unit: 'msg/s', note: stepNote(l) },
        { metric: `${p}.${id}.recv.p50`, value: l.recv.p50, unit: 'ms', ...vs(`${id}.recv.p50`, l.recv.p50, b?.recv.p50), note: 'intended send → recipient app' },
        { metric: `${p}.${id}.recv.p99`, value: l.recv.p99, unit: 'ms', ...vs(`${id}.recv.p99`, l.recv.p99, b?.recv.p99), note: `p90 ${fmt(l.recv.p90, 2)}, max ${fmt(l.recv.max, 1)} ms${moveSplit(l)}` },
        ...(l.recvMoved.count > 0
          ? [{ metric: `${p}.${id}.recv.p99.unmoved`, value: l.recvStill.p99, unit: 'ms', ...vs(`${id}.recv.p99`, l.recvStill.p99, b?.recv.p99), note: `diagnostic: the messages whose sender and recipient had not started a move in the previous 5 s (${fmt(l.recvStill.count)} of ${fmt(l.recv.count)})` }]
          : []),
        { metric: `${p}.${id}.status.p50`, value: l.status.p50, unit: 'ms', ...vs(`${id}.status.p50`, l.status.p50, b?.status.p50), note: 'intended send → delivered/stored status (includes the recipient\'s ack)' },
        { metric: `${p}.${id}.status.p99`, value: l.status.p99, unit: 'ms', ...vs(`${id}.status.p99`, l.status.p99, b?.status.p99), note: `p90 ${fmt(l.status.p90, 2)}, max ${fmt(l.status.max, 1)} ms` },
      ];
    }),
    {
      metric: `${p}.lost`,
      value: r.lost,
      unit: 'msgs',
      note: `over every step (convergence ${r.converge.lost}, closed loop ${r.max.lost}, latency ${r.latency.map((l) => l.lost).join('/')}); accepted ${fmt([r.converge, r.max, ...r.latency].reduce((a, x) => a + x.accepted, 0))}; ${r.lost === 0 ? 'PASS' : 'FAIL'} (target 0)`,
    },
    {
      metric: `${p}.duplicated`,
      value: r.duplicated,
      unit: 'msgs',
      note: `at the applications, after the SDK-equivalent de-duplication; re-delivered on the wire ${fmt([r.converge, r.max, ...r.latency].reduce((a, x) => a + x.redelivered, 0))}; ${r.duplicated === 0 ? 'PASS' : 'FAIL'} (target 0)`,
    },
    { metric: `${p}.cpu.server`, value: serverCores(r.max.cores), unit: 'cores', note: `closed loop: node (${o2(r.max.cores['node'])}) + nats-server (${o2(r.max.cores['nats'])}); latency steps ${r.latency.map((l) => fmt(serverCores(l.cores), 2)).join(' / ')}` },
    { metric: `${p}.cpu.gens`, value: genCores(r.max.cores), unit: 'cores', note: `closed loop, ${Object.keys(r.max.cores).filter((k) => k.startsWith('gen')).length} generator processes; latency steps ${r.latency.map((l) => fmt(genCores(l.cores), 2)).join(' / ')}; parent ${o2(r.max.cores['parent'])}` },
  );
  return rows;
}

const o2 = (v: number | undefined): string => (v === undefined ? '?' : v.toFixed(2));

// ---------------------------------------------------------------------------------------------
// run

export async function run(opts: BenchOptions): Promise<BenchResult> {
  const startedAt = new Date();
  const nUsers = posInt(opts, 'users', 800, 20_000);
  const community = posInt(opts, 'community', 16, 10_000);
  if (community < 2 || community > nUsers) throw new UsageError(`--community must be in 2..--users, got ${community}`);
  const mu = posNum(opts, 'mu', 0.1);
  if (mu >= 1) throw new UsageError(`--mu must be below 1, got ${mu}`);
  const cells = posInt(opts, 'cells', 4, 64);
  const nGens = posInt(opts, 'gens', 2, 16);
  const convergeMs = posNum(opts, 'converge', 40) * 1000;
  const warmRate = posNum(opts, 'warm-rate', 2000);
  const window = posInt(opts, 'window', 1, 1024);
  const latencyFlag = listFlag(opts, 'latency-rates');
  const warmMs = numFlag(opts, 'warmup', 2) * 1000;
  if (!(warmMs >= 0)) throw new UsageError('--warmup must be ≥ 0');
  const settleMs = posNum(opts, 'settle', 10) * 1000;
  const runsText = opts.flags['runs'] === undefined ? 'off,on' : opts.flags['runs'] === true ? '' : String(opts.flags['runs']);
  const runs = runsText.split(',').map((s) => s.trim()).filter(Boolean);
  if (runs.length === 0 || runs.some((r) => r !== 'off' && r !== 'on') || new Set(runs).size !== runs.length) throw new UsageError(`--runs must be a comma list of off, on; got "${runsText}"`);
  const textBytes = posInt(opts, 'text-bytes', 100, 4000);
  const seed = posInt(opts, 'seed', 1, 2 ** 31);
  const ms = opts.durationMs;

  const graph = communityGraph(nUsers, community, mu, seed);
  const placement = randomPlacement(nUsers, cells, seed);
  const perCell = nUsers / cells;
  // One exchange may move a quarter of a cell; a cell may send that many away per second.
  const maxMoves = Math.max(16, Math.ceil(perCell / 4));
  const gravityOn = { ...GRAVITY_ON, maxMovesPerExchange: maxMoves, migrationsPerSec: maxMoves };
  const gravityOff = { enabled: false };
  const randomLoc = expectedLocality(graph, (u) => placement[u]!);
  const packedLoc = expectedLocality(graph, (u) => graph.community[u]! % cells);
  const params = {
    durationMs: ms, warmupMs: warmMs, users: nUsers, community, mu, realisedMu: graph.crossShare, communities: graph.communities, cells, gens: nGens,
    convergeMs, warmRate, window, latencyRates: latencyFlag ?? '1/2 and 3/4 of the first run\'s closed-loop rate', settleMs, runs, textBytes, seed,
    gravityOn, gravityOff, limits: BENCH_LIMITS, expectedLocality: { randomPlacement: randomLoc, communitiesPacked: packedLoc },
    nodes: `1 gravitas node process, ${cells} cells, on 1 nats-server (fresh for each run)`,
  };
  log(
    `graph: ${nUsers} users, ${graph.communities} communities of ${community}, mu ${mu} (realised ${fmt(graph.crossShare, 3)}); ` +
      `expected locality: random placement ${fmt(randomLoc, 3)}, whole communities per cell ${fmt(packedLoc, 3)}`,
  );
  const hostLoad = { atStart: loadavg()[0]!, atEnd: NaN, cores: cpus().length };
  if (hostLoad.atStart > hostLoad.cores / 2) log(`WARNING: the host is busy before the run (load average ${hostLoad.atStart.toFixed(1)} on ${hostLoad.cores} cores): expect noisy numbers`);

  calibrate(300); // JIT warm-up of the host-speed probe
  const results: Partial<Record<RunName, RunResult>> = {};
  let latencyRates = latencyFlag;
  for (const r of runs as RunName[]) {
    const out = await runOnce(
      r,
      { cells, gens: nGens, graph, placement, convergeMs, warmRate, window, latencyRates, warmMs, ms, settleMs, textBytes, seed, gravity: r === 'on' ? gravityOn : gravityOff },
      (maxPerSec) => [0.5, 0.75].map((f) => Math.max(100, Math.round((maxPerSec * f) / 100) * 100)),
    );
    latencyRates ??= out.latencyRates; // every later run at the same offered rates
    results[r] = out;
  }
  hostLoad.atEnd = loadavg()[0]!;

  const off = results.off;
  const on = results.on;
  const rows: Row[] = [
    { metric: 'graph.expected_locality.random', value: randomLoc, unit: 'share', note: `uniform traffic over contacts, the random initial placement (both runs); ${graph.communities} communities of ${community}, realised mu ${fmt(graph.crossShare, 3)}` },
    { metric: 'graph.expected_locality.packed', value: packedLoc, unit: 'share', note: 'the same with whole communities dealt to cells in turn: about what a perfect placement reaches' },
  ];
  if (off) rows.push(...runRows(off, undefined));
  if (on) rows.push(...runRows(on, off));
  const targets: Array<{ name: string; target: string; measured: number | undefined; met: boolean | undefined }> = [];
  const target = (t: (typeof targets)[number]): string => {
    targets.push(t);
    return `target ${t.target}: ${t.met === undefined ? 'n/a' : t.met ? 'PASS' : 'FAIL'}`;
  };
  if (on) {
    rows.push(
      { metric: 'target.locality', value: on.localityMeasured, unit: 'share', note: target({ name: 'locality with gravitation on', target: `≥ ${TARGET.locality}`, measured: on.localityMeasured, met: on.localityMeasured >= TARGET.locality }) },
      {
        metric: 'target.balance',
        value: on.balanceMeasuredMedian,
        unit: 'max/mean',
        note: `${target({ name: 'balance with gravitation on (median 1-s sample of the measurement)', target: `≤ ${TARGET.balance}`, measured: on.balanceMeasuredMedian, met: on.balanceMeasuredMedian <= TARGET.balance })}; worst 1-s sample ${fmt(on.balanceMeasuredWorst, 3)} (${on.balanceMeasuredWorst <= TARGET.balance ? 'also within' : 'OUTSIDE'} the target); end of run ${fmt(on.balanceFinal, 3)}`,
      },
    );
  }
  if (on && off) {
    const thr = on.max.achievedPerSec / off.max.achievedPerSec;
    const speed = (on.hostSpeed.before + on.hostSpeed.after) / (off.hostSpeed.before + off.hostSpeed.after);
    // The generators do the same work per message in both runs: their CPU per message is a probe of the host's speed *during* the closed loop.
    const genPerMsg = genCores(on.max.cores) / on.max.achievedPerSec / (genCores(off.max.cores) / off.max.achievedPerSec);
    const drifted = Math.abs(speed - 1) > SPEED_DRIFT || Math.abs(genPerMsg - 1) > GEN_DRIFT;
    const drift = `; host speed on ÷ off ${fmt(speed, 3)} (probe) and ${fmt(genPerMsg, 3)} (generator CPU per message in the closed loop)${drifted ? ': HOST SPEED DIFFERED between the runs, the ratios are not trustworthy, run again' : ''}`;
    if (drifted) log(`WARNING: HOST SPEED DIFFERED between the runs${drift}`);
    rows.push(
      { metric: 'ratio.delivered', value: thr, unit: '×', ceiling: 'off.delivered', ratio: thr, note: `${target({ name: 'delivered msgs/s on ÷ off (closed loop)', target: `≥ ${TARGET.throughputRatio}×`, measured: thr, met: thr >= TARGET.throughputRatio })}${drift}` },
      ...on.latency.flatMap((l, j): Row[] => {
        const b = off.latency[j];
        const rate = on.latencyRates[j]!;
        if (!b || off.latencyRates[j] !== rate) return [];
        const recv = l.recv.p99 / b.recv.p99;
        const status = l.status.p99 / b.status.p99;
        const moves = `${sum(l.moves)} moves during the on step`;
        return [
          { metric: `ratio.latency@${rate}.recv.p99`, value: recv, unit: '×', ceiling: `off.latency@${rate}.recv.p99`, ratio: recv, note: `${target({ name: `send → received p99 on ÷ off at ${rate} msg/s`, target: '< 1', measured: recv, met: recv < 1 })}; ${moves}` },
          { metric: `ratio.latency@${rate}.status.p99`, value: status, unit: '×', ceiling: `off.latency@${rate}.status.p99`, ratio: status, note: `${target({ name: `send → status p99 on ÷ off at ${rate} msg/s`, target: '< 1', measured: status, met: status < 1 })}` },
        ];
      }),
      (() => {
        const cpu = serverCores(on.max.cores) / on.max.achievedPerSec / (serverCores(off.max.cores) / off.max.achievedPerSec);
        const gen = genCores(on.max.cores) / on.max.achievedPerSec / (genCores(off.max.cores) / off.max.achievedPerSec);
        return {
          metric: 'ratio.server_cpu_per_msg',
          value: cpu,
          unit: '×',
          note: `closed loop: (node + nats-server) CPU-seconds per delivered message, on ÷ off (= ${fmt(1 / cpu, 2)}× messages per server core-second; informational: the generators' CPU per message, on ÷ off, is ${fmt(gen, 2)}, and they share the cores)`,
        };
      })(),
    );
  }
  const extra = {
    hostLoad,
    targets,
    runs: results,
  };
  for (const r of Object.values(results)) if (/error|crash|fail/i.test(r.nodeLog)) log(`[${r.run}] node logged errors (tail in the JSON's extra.runs.${r.run}.nodeLog):\n${r.nodeLog.split('\n').slice(-10).join('\n')}`);
  return makeResult(name, startedAt, params, rows, extra);
}
