import { cpus, loadavg } from 'node:os';
import { fileURLToPath } from 'node:url';
import type { GravitasClient, SendResult } from '@gravitas/client';
import { pack } from '@gravitas/protocol';
import { NatsServer } from '@gravitas/testkit';
import { CEILING, measureJetStreamPublish, measureNatsPubSub, type JsPublishResult } from './ceilings.js';
import { GenProcess, Load, mergeStep, readCpu, type StepCost, type StepResult } from './custody-load.js';
import { IDLE_MARGIN, OVERLOAD_TARGET, overloadPhase, sustainedRate, type OverloadResult } from './custody-overload.js';
import { fmt, MergeableHistogram, messageId, mulberry32, messageText, ST, type GenUser, type Percentiles, type RunSummary } from './custody-types.js';
import { connectPairs, PingPong, type Pair } from './pingpong.js';
import {
  cellStatus, clusterKeys, log, Resources, sleep, spawnNode, startGravitasNode, waitFor, BENCH_LIMITS, type ClusterKeys, type GravitasNode,
} from './procs.js';
import { makeResult, numFlag, posInt, posNum, UsageError, type BenchOptions, type BenchResult, type Row } from './report.js';

export const name = 'custody';
export const description =
  'custody: online path vs a no-custody relay, offline path (store, then drain), 2,000-user offered-load sweep; JetStream ceiling in the same run';
export const defaultDurationS = 5;
export const flags = {
  phases: 'comma list of online, offline, load (default all three; the ceilings always run)',
  warmup: 'seconds of warmup before each measured step (default 1)',
  pairs: 'online: SDK sender/recipient pairs, senders on node 1, recipients on node 2 (default 50, as pingpong)',
  window: 'online: messages in flight per pair, closed loop (default 1, as pingpong)',
  'offline-senders': 'offline: senders on node 1, each with its own recipient registered on node 2 and then disconnected (default 100)',
  'offline-window': 'offline: messages without a status per sender in the closed loop (default 16)',
  'offline-rates': 'offline: comma list of offered msgs/s; "max" = closed loop (default max)',
  users: 'load: users, half on each node (default 2000)',
  contacts: 'load: contacts per user; each message goes to one of them at random (default 20)',
  rates: 'load: comma list of offered msgs/s, swept in order (default 2500,5000,10000,20000,30000,40000)',
  gens: 'load generator processes for the offline and load phases (default 2)',
  'collapse-p99': 'load: stop the sweep after a step whose send→status p99 exceeds this (ms), or that achieved < 90% of the offered rate (default 1000)',
  settle: 'seconds to wait after a step for the last statuses and arrivals (default 15)',
  'ceiling-duration': 'seconds per ceiling measurement (default 2)',
  'js-window': 'JetStream ceiling: publishes in flight (default 256)',
  'text-bytes': 'message text size in bytes (default 100)',
  seed: 'PRNG seed for contacts and recipients (default 1)',
  overload: 'load: after the sweep, hold this rate (msgs/s; "auto" = the sweep\'s highest sustained rate) for --overload-steady-s seconds, then offer twice it for --overload-s seconds (issue 17\'s overload test)',
  'overload-s': 'load: seconds of the 2× overload (default 30)',
  'overload-steady-s': 'load: seconds at the sustained rate before the overload, long enough for bounded caches to fill (default 90)',
} as const;

/** Targets from the issue. */
const TARGET = {
  offlineVsJs: 1.0,
  onlineVsRelay: 0.85,
  onlineVsJs: 1.5,
  sustainedPerSec: 20_000,
  sustainedP99Ms: 100,
  p99At10kMs: 5,
  peakPerSec: 40_000,
  /** Issue 17: all node processes plus nats-server, per delivered message. */
  serverUsPerMsg: 60,
};
/** Reference points quoted in the issue (their own published setups, not measured here). */
const REFERENCES = 'Socket.IO 4 + Redis adapter: 10,000 msg/s sustained (p99 36 ms); ejabberd 2-node: 7,500 (p99 12 ms)';
const DEVICE_CONCURRENCY = 32;
/** A generator whose own event loop lags more than this was starved or overloaded: the step measured the host, not the cluster. */
const GEN_STARVED_MS = 20;

type Phase = 'online' | 'offline' | 'load';

function listFlag<T>(opts: BenchOptions, flag: string, dflt: string, parse: (s: string) => T | undefined): T[] {
  const v = opts.flags[flag];
  const text = v === undefined ? dflt : v === true ? '' : v;
  const items = text.split(',').map((s) => s.trim()).filter(Boolean);
  const out = items.map((s) => {
    const p = parse(s);
    if (p === undefined) throw new UsageError(`--${flag}: bad item "${s}"`);
    return p;
  });
  if (out.length === 0) throw new UsageError(`--${flag} needs at least one item`);
  return out;
}

const rateItem = (s: string): number | undefined => {
  const n = Number(s);
  return Number.isFinite(n) && n > 0 ? n : undefined;
};
const range = (n: number, from = 0): number[] => Array.from({ length: n }, (_, i) => from + i);
const pct = (p: Percentiles): string => `p50 ${fmt(p.p50, 2)} / p90 ${fmt(p.p90, 2)} / p99 ${fmt(p.p99, 2)} / max ${fmt(p.max, 1)} ms`;
const pass = (ok: boolean, target: string): string => `target ${target}: ${ok ? 'PASS' : 'FAIL'}`;
const fmtCounts = (r: Record<string, number>): string =>
  Object.entries(r)
    .map(([k, v]) => `${k}×${v}`)
    .join(' ');
/** Server CPU per message: the node processes and nats-server (not the generators, not the parent). */
const serverUs = (c: StepCost): number => Object.entries(c.cpuUs).reduce((a, [k, v]) => (k === 'nats' || k.startsWith('node') ? a + v : a), 0);
const fmtCost = (c: StepCost): string =>
  `${Object.keys(c.cpuUs)
    .filter((k) => k !== 'parent')
    .map((k) => `${k} ${fmt(c.cpuUs[k]!, 0)} µs ${fmt(c.writes[k] ?? NaN, 2)} w ${fmt(c.reads[k] ?? NaN, 2)} r`)
    .join(', ')}; NATS messages published ${fmt(c.natsMsgs ?? NaN, 2)}`;

/**
 * Messages clients published to nats-server so far — envelopes, KV and JetStream requests, heartbeats
 * — from its monitoring endpoint (`/varz` in_msgs): no subscriber is added to the run.
 */
async function natsPublished(nats: Pick<NatsServer, 'monitor'>): Promise<number> {
  return (await nats.monitor<{ in_msgs?: number }>('/varz')).in_msgs ?? NaN;
}
const fmtCores = (c: Record<string, number>): string =>
  Object.entries(c)
    .map(([k, v]) => `${k} ${v.toFixed(2)}`)
    .join(', ');

// ---------------------------------------------------------------------------------------------
// online path: SDK pairs (pingpong's PingPong), custody cluster vs the no-custody relay

/**
 * Wraps the pairs' `send` and listens to their recipients, so every message PingPong sends is
 * accounted by id: its status at the sender and how often the recipient application saw it.
 */
class SdkAccount {
  private readonly msgs = new Map<string, { t: number; rec: boolean; st: number; app: number }>();
  recording = false;
  readonly status = new MergeableHistogram();
  readonly recv = new MergeableHistogram();

  constructor(pairs: Pair[]) {
    for (const p of pairs) {
      const a: GravitasClient = p.a;
      const orig = a.send.bind(a);
      a.send = (to: string, text: string, id?: string): Promise<SendResult> => {
        if (id === undefined) return orig(to, text); // probes: SDK ids, not accounted
        const e = { t: performance.now(), rec: this.recording, st: ST.none as number, app: 0 };
        this.msgs.set(id, e);
        return orig(to, text, id).then(
          (r) => {
            e.st = r.status === 'delivered' ? ST.delivered : ST.stored;
            if (e.rec) this.status.recordMs(performance.now() - e.t);
            return r;
          },
          (err: unknown) => {
            e.st = ST.failed;
            throw err;
          },
        );
      };
      p.b.on('message', (m) => {
        const e = this.msgs.get(m.id);
        if (e && ++e.app === 1 && e.rec) this.recv.recordMs(performance.now() - e.t);
      });
    }
  }

  private missing(): number {
    let n = 0;
    for (const e of this.msgs.values()) if ((e.st === ST.delivered || e.st === ST.stored) && e.app === 0) n++;
    return n;
  }

  /** Waits (up to `timeoutMs`) until every accepted message arrived, then counts. */
  async settle(timeoutMs: number): Promise<{ sent: number; accepted: number; stored: number; lost: number; duplicated: number; unconfirmed: number; failed: number }> {
    const end = Date.now() + timeoutMs;
    while (this.missing() > 0 && Date.now() < end) await sleep(100);
    let accepted = 0;
    let stored = 0;
    let lost = 0;
    let duplicated = 0;
    let unconfirmed = 0;
    let failed = 0;
    for (const e of this.msgs.values()) {
      const ok = e.st === ST.delivered || e.st === ST.stored;
      if (ok) accepted++;
      if (e.st === ST.stored) stored++;
      if (e.st === ST.failed) failed++;
      if (e.st === ST.none) unconfirmed++;
      if (ok && e.app === 0) lost++;
      if (e.app > 1) duplicated++;
    }
    return { sent: this.msgs.size, accepted, stored, lost, duplicated, unconfirmed, failed };
  }
}

export interface OnlineResult {
  /** PingPong.closedLoop's delivered msgs/s. */
  perSec: number;
  pairs: number;
  window: number;
  errors: Record<string, number>;
  status: Percentiles;
  recv: Percentiles;
  account: Awaited<ReturnType<SdkAccount['settle']>>;
  cores: Record<string, number>;
}

async function onlinePairs(
  res: Resources,
  addrs: [string, string],
  keys: ClusterKeys,
  o: { pairs: number; window: number; warmMs: number; ms: number; settleMs: number },
  pids: Record<string, number | undefined>,
): Promise<OnlineResult> {
  const pairs = await connectPairs(res, { clientAddress: addrs[0] }, { clientAddress: addrs[1] }, keys, o.pairs);
  try {
    const acct = new SdkAccount(pairs);
    const pp = new PingPong(pairs);
    await pp.probe();
    await pp.closedLoop(o.warmMs, o.window, false);
    acct.recording = true;
    const c0 = readCpu(pids);
    const t0 = performance.now();
    const closed = await pp.closedLoop(o.ms, o.window, true);
    const s = (performance.now() - t0) / 1000;
    const c1 = readCpu(pids);
    acct.recording = false;
    const cores: Record<string, number> = {};
    for (const k of Object.keys(c1)) cores[k] = (c1[k]! - (c0[k] ?? 0)) / s;
    const account = await acct.settle(o.settleMs);
    return { perSec: closed.perSec, pairs: o.pairs, window: o.window, errors: closed.errors, status: acct.status.summary(), recv: acct.recv.summary(), account, cores };
  } finally {
    await Promise.all(pairs.flatMap((p) => [p.a.close(), p.b.close()]));
  }
}

const RELAY_JS = fileURLToPath(new URL('./custody-relay.js', import.meta.url));

async function startRelays(res: Resources, natsUrl: string, keys: ClusterKeys): Promise<Array<{ addr: string; pid: number; stop: () => Promise<void> }>> {
  const prefix = `benchrelay.${Date.now().toString(36)}`;
  return Promise.all(
    ['r1', 'r2'].map(async (id) => {
      const { child, ready } = spawnNode(`relay-${id}`, [RELAY_JS, '--nats', natsUrl, '--id', id, '--prefix', prefix, '--server-key', keys.serverKey], /^ready (\d+)$/m, 10_000);
      res.add(child);
      const port = Number((await ready)[1]);
      return { addr: `127.0.0.1:${port}`, pid: child.pid, stop: () => child.stop(5000) };
    }),
  );
}

// ---------------------------------------------------------------------------------------------
// offline path: recipients registered then disconnected; store; reconnect; drain

export interface OfflineResult {
  senders: number;
  window: number;
  steps: StepResult[];
  /** Recipients' (re)connect: handshakes. */
  drainConnectMs: number;
  /** Unique messages the recipients' applications got in the drain. */
  drained: number;
  /** drained / (last arrival − reconnect start). */
  drainPerSec: number;
  drainMs: number;
  drainComplete: boolean;
  receipts: Record<string, number>;
  errors: Record<string, number>;
}

async function offlinePhase(
  res: Resources,
  n1: GravitasNode,
  n2: GravitasNode,
  keys: ClusterKeys,
  o: { senders: number; window: number; rates: Array<number | 'max'>; gens: number; warmMs: number; ms: number; settleMs: number; textBytes: number; seed: number; nextStep: () => number },
  pids: Record<string, number | undefined>,
): Promise<OfflineResult> {
  const S = o.senders;
  const gens = await Promise.all(range(o.gens).map((k) => GenProcess.start(res, `gen-offline-${k}`)));
  const placement = { gen: (i: number) => i % gens.length };
  const load = new Load(gens, placement, pids);
  try {
    const senders = range(S);
    const recipients = range(S, S);
    const users: GenUser[] = [
      ...senders.map((i) => ({ i, addr: n1.clientAddress, contacts: [S + i] })),
      ...recipients.map((i) => ({ i, addr: n2.clientAddress, contacts: [] })),
    ];
    await load.setup({ prefix: 'off', users }, keys.server.publicKey, o.textBytes, BENCH_MAX_OUTSTANDING, o.seed);
    log(`offline: registering ${S} recipient devices on node 2, then disconnecting them`);
    const reg = await load.connect(recipients, DEVICE_CONCURRENCY);
    if (reg.connected !== S) throw new Error(`offline: only ${reg.connected}/${S} recipients connected: ${fmtCounts(reg.errors)}`);
    await load.disconnect(recipients);
    await waitFor('offline recipients to leave node 2', async () => (await cellStatus(n2)).sessions === 0, 15_000, 100);
    await sleep(500); // directory unregistrations in flight
    const sc = await load.connect(senders, DEVICE_CONCURRENCY);
    if (sc.connected !== S) throw new Error(`offline: only ${sc.connected}/${S} senders connected: ${fmtCounts(sc.errors)}`);
    const senderShare = (k: number): number => senders.filter((i) => placement.gen(i) === k).length / S;

    const ran: Array<{ step: number; label: string; offered: number | undefined; runs: RunSummary[]; cores: Record<string, number> }> = [];
    for (const rate of o.rates) {
      const step = o.nextStep();
      const label = rate === 'max' ? `closed loop, ${o.window} in flight per sender` : `${fmt(rate)} msg/s offered`;
      log(`offline step ${step}: ${label}, recipients offline; warmup ${o.warmMs} ms, measure ${o.ms} ms`);
      const { runs, cores } = await load.run(
        { step, mode: rate === 'max' ? 'closed' : 'open', rate: rate === 'max' ? 0 : rate, window: o.window, senders, warmupMs: o.warmMs, durationMs: o.ms, settleMs: o.settleMs },
        senderShare,
      );
      const acc = runs.reduce((s, r) => s + r.acceptedInWindow, 0);
      log(`  stored ${fmt((acc * 1000) / o.ms)} msg/s; CPU cores: ${fmtCores(cores)}`);
      ran.push({ step, label, offered: rate === 'max' ? undefined : rate, runs, cores });
    }
    const stepIds = ran.map((r) => r.step);
    const expected = ran.reduce((s, r) => s + r.runs.reduce((a, x) => a + x.accepted, 0), 0);
    log(`offline: reconnecting ${S} recipients to drain ${fmt(expected)} stored messages`);
    const dc = await load.connect(recipients, DEVICE_CONCURRENCY);
    if (dc.connected !== S) log(`offline: only ${dc.connected}/${S} recipients reconnected: ${fmtCounts(dc.errors)}`);
    const arrivals = await load.awaitArrivals(stepIds, expected, Math.max(60_000, o.settleMs * 4), 10_000);
    const drainMs = arrivals.lastAt - dc.startedAt;
    log(`  drained ${fmt(arrivals.appUnique)} in ${fmt(drainMs)} ms${arrivals.complete ? '' : ' (incomplete: stopped waiting)'}`);
    // Receipts to the senders follow the drain (one per acknowledged mailbox item).
    log('  waiting for the delivery receipts to reach the senders (≤ 10 s)');
    const rcptEnd = Date.now() + 10_000;
    let progress = await load.progress(stepIds);
    while ((progress.receipts['delivered'] ?? 0) < arrivals.appUnique && Date.now() < rcptEnd) {
      await sleep(200);
      progress = await load.progress(stepIds);
    }
    log(`  receipts ${fmtCounts(progress.receipts) || 'none'}; collecting the accounts`);
    const reports = await load.collect(stepIds, true);
    const steps = ran.map((r, j) => mergeStep(r.step, r.label, r.offered, r.runs, reports[j]!, r.cores));
    return {
      senders: S,
      window: o.window,
      steps,
      drainConnectMs: dc.ms,
      drained: arrivals.appUnique,
      drainPerSec: drainMs > 0 ? (arrivals.appUnique * 1000) / drainMs : 0,
      drainMs,
      drainComplete: arrivals.complete,
      receipts: progress.receipts,
      errors: progress.errors,
    };
  } finally {
    await load.stop();
  }
}

// ---------------------------------------------------------------------------------------------
// the competitive workload: many users, random 1:1 traffic among contacts, offered-load sweep

/** Like the SDK's default maxOutbox: messages a user may have without a status. */
const BENCH_MAX_OUTSTANDING = 1024;

export interface LoadResult {
  users: number;
  contacts: number;
  gens: number;
  connect: { connected: number; ms: number; perSec: number; errors: Record<string, number> };
  steps: StepResult[];
  collapsed: { step: number; reason: string } | undefined;
  /** Per offered rate: what each process spent per message. */
  costs: Map<number, StepCost>;
  overload?: OverloadResult;
}

/** `k` distinct random contacts per user (directed: i sends to its contacts). */
function contactGraph(n: number, k: number, seed: number): number[][] {
  const rand = mulberry32(seed);
  return range(n).map((i) => {
    const set = new Set<number>();
    const want = Math.min(k, n - 1);
    while (set.size < want) {
      const j = Math.floor(rand() * n);
      if (j !== i) set.add(j);
    }
    return [...set];
  });
}

async function loadPhase(
  res: Resources,
  nodes: [GravitasNode, GravitasNode],
  keys: ClusterKeys,
  o: {
    users: number; contacts: number; rates: number[]; gens: number; warmMs: number; ms: number; settleMs: number; collapseP99: number; textBytes: number; seed: number; nextStep: () => number;
    overload: number | 'auto' | undefined; overloadS: number; overloadSteadyS: number;
  },
  pids: Record<string, number | undefined>,
  nats: Pick<NatsServer, 'monitor'>,
): Promise<LoadResult> {
  const N = o.users;
  const gens = await Promise.all(range(o.gens).map((k) => GenProcess.start(res, `gen-load-${k}`)));
  // Contiguous blocks per generator; nodes alternate, so every generator talks to both nodes.
  const placement = { gen: (i: number) => Math.min(gens.length - 1, Math.floor((i * gens.length) / N)) };
  const load = new Load(gens, placement, pids);
  try {
    const graph = contactGraph(N, o.contacts, o.seed);
    const users: GenUser[] = range(N).map((i) => ({ i, addr: nodes[i % 2]!.clientAddress, contacts: graph[i]! }));
    await load.setup({ prefix: 'u', users }, keys.server.publicKey, o.textBytes, BENCH_MAX_OUTSTANDING, o.seed);
    log(`load: connecting ${N} users (${gens.length} generator processes, ${DEVICE_CONCURRENCY} handshakes in flight each; first connection registers the device)`);
    const c = await load.connect('all', DEVICE_CONCURRENCY);
    log(`  ${c.connected} connected in ${fmt(c.ms)} ms${Object.keys(c.errors).length ? `; errors ${fmtCounts(c.errors)}` : ''}`);
    if (c.connected < N) throw new Error(`load: only ${c.connected}/${N} users connected: ${fmtCounts(c.errors)}`);
    await sleep(2000); // registrations' follow-up work (directory, presence, empty-mailbox checks) settles first
    const share = (k: number): number => users.filter((u) => placement.gen(u.i) === k).length / N;
    const steps: StepResult[] = [];
    const costs = new Map<number, StepCost>();
    let collapsed: LoadResult['collapsed'];
    for (const rate of o.rates) {
      const step = o.nextStep();
      log(`load step ${step}: ${fmt(rate)} msg/s offered over ${N} users; warmup ${o.warmMs} ms, measure ${o.ms} ms`);
      const published0 = await natsPublished(nats);
      const { runs, cores, cost } = await load.run({ step, mode: 'open', rate, window: 0, senders: 'all', warmupMs: o.warmMs, durationMs: o.ms, settleMs: o.settleMs }, share);
      cost.natsMsgs = cost.sent ? ((await natsPublished(nats)) - published0) / cost.sent : NaN;
      costs.set(rate, cost);
      const accepted = runs.reduce((s, r) => s + r.accepted, 0);
      await load.awaitArrivals([step], accepted, o.settleMs, 3000);
      let r = mergeStep(step, `${fmt(rate)} msg/s`, rate, runs, (await load.collect([step], false))[0]!, cores);
      // A stored message reaches an online device through its mailbox drain, later: look again.
      const recheckEnd = Date.now() + o.settleMs;
      while ((r.lost > 0 || r.unconfirmed > 0) && Date.now() < recheckEnd) {
        await sleep(1000);
        r = mergeStep(step, r.label, rate, runs, (await load.collect([step], false))[0]!, cores);
      }
      await load.collect([step], true);
      steps.push(r);
      if (r.genLoopDelay.p99 > GEN_STARVED_MS) log(`  WARNING: generator event-loop delay p99 ${fmt(r.genLoopDelay.p99, 1)} ms — starved or overloaded (host load average ${loadavg()[0]!.toFixed(1)} on ${cpus().length} cores)`);
      log(
        `  achieved ${fmt(r.achievedPerSec)} msg/s (${fmt(r.stored)} stored); status ${pct(r.status)}; received ${pct(r.recv)}; ` +
          `lost ${r.lost}, duplicated ${r.duplicated}, unconfirmed ${r.unconfirmed}${Object.keys(r.failed).length ? `, failed ${fmtCounts(r.failed)}` : ''}; CPU cores: ${fmtCores(cores)}`,
      );
      log(`  per message: ${fmtCost(cost)}`);
      if (r.achievedPerSec < 0.9 * rate) collapsed = { step, reason: `achieved ${fmt(r.achievedPerSec)} < 90% of ${fmt(rate)} offered` };
      else if (!(r.status.p99 <= o.collapseP99)) collapsed = { step, reason: `send→status p99 ${fmt(r.status.p99, 1)} ms > ${o.collapseP99} ms` };
      if (collapsed) {
        log(`  collapsed (${collapsed.reason}): sweep stops here`);
        break;
      }
    }
    let overload: OverloadResult | undefined;
    if (o.overload !== undefined) {
      const sustained = o.overload === 'auto' ? sustainedRate(steps, TARGET.sustainedP99Ms) : o.overload;
      if (sustained > 0) overload = await overloadPhase(load, share, { sustained, seconds: o.overloadS, steadyS: o.overloadSteadyS, settleMs: o.settleMs, nextStep: o.nextStep });
      else log('overload: skipped, no step of the sweep was sustained');
    }
    return { users: N, contacts: o.contacts, gens: gens.length, connect: { connected: c.connected, ms: c.ms, perSec: (c.connected * 1000) / c.ms, errors: c.errors }, steps, collapsed, costs, overload };
  } finally {
    await load.stop();
  }
}

// ---------------------------------------------------------------------------------------------
// rows

function latRows(prefix: string, p: Percentiles, note50?: string, note99?: string): Row[] {
  return (['p50', 'p90', 'p99', 'max'] as const).map((k) => ({
    metric: `${prefix}.${k}`,
    value: p[k],
    unit: 'ms',
    ...(k === 'p50' && note50 !== undefined && { note: note50 }),
    ...(k === 'p99' && note99 !== undefined && { note: note99 }),
  }));
}

function accountRows(prefix: string, a: { lost: number; duplicated: number }, notes: { lost?: string; duplicated?: string } = {}): Row[] {
  return [
    { metric: `${prefix}.lost`, value: a.lost, unit: 'msgs', note: notes.lost ?? pass(a.lost === 0, '0') },
    { metric: `${prefix}.duplicated`, value: a.duplicated, unit: 'msgs', note: notes.duplicated ?? pass(a.duplicated === 0, '0') },
  ];
}

function stepNote(r: StepResult): string {
  const parts = [
    r.offered === undefined ? r.label : `offered ${fmt(r.offered)}`,
    `sent ${fmt(r.sent)}`,
    `delivered ${fmt(r.delivered)}`,
    `stored ${fmt(r.stored)}`,
  ];
  if (r.unconfirmed) parts.push(`unconfirmed ${fmt(r.unconfirmed)}`);
  if (Object.keys(r.failed).length) parts.push(`failed ${fmtCounts(r.failed)}`);
  if (r.skipped) parts.push(`skipped (outbox full) ${fmt(r.skipped)}`);
  if (r.retries) parts.push(`retries ${fmt(r.retries)} (${fmtCounts(r.retryCodes)})`);
  if (r.redelivered) parts.push(`re-delivered on the wire ${fmt(r.redelivered)}`);
  if (r.receivedNotAccepted) parts.push(`received without acceptance ${fmt(r.receivedNotAccepted)}`);
  if (r.disconnects) parts.push(`disconnects ${r.disconnects}`);
  if (r.schedLag.count > 0) parts.push(`gen lateness p99 ${fmt(r.schedLag.p99, 2)} ms`);
  parts.push(`gen loop delay p99 ${fmt(r.genLoopDelay.p99, 1)} ms`);
  if (r.genLoopDelay.p99 > GEN_STARVED_MS) parts.push('GENERATOR STARVED: this step measured the host, not the cluster');
  return parts.join('; ');
}

interface Target { name: string; target: string; measured: number | undefined; unit: string; met: boolean | undefined }

// ---------------------------------------------------------------------------------------------
// run

export async function run(opts: BenchOptions): Promise<BenchResult> {
  const startedAt = new Date();
  const phases = new Set(
    listFlag<Phase>(opts, 'phases', 'online,offline,load', (s) => (s === 'online' || s === 'offline' || s === 'load' ? s : undefined)),
  );
  const warmMs = numFlag(opts, 'warmup', 1) * 1000;
  if (!(warmMs >= 0)) throw new UsageError('--warmup must be ≥ 0');
  const nPairs = posInt(opts, 'pairs', 50, 5000);
  const window = posInt(opts, 'window', 1, 1000);
  const offSenders = posInt(opts, 'offline-senders', 100, 5000);
  const offWindow = posInt(opts, 'offline-window', 16, 1024);
  const offRates = listFlag<number | 'max'>(opts, 'offline-rates', 'max', (s) => (s === 'max' ? 'max' : rateItem(s)));
  const nUsers = posInt(opts, 'users', 2000, 9000);
  const nContacts = posInt(opts, 'contacts', 20, 1000);
  const rates = listFlag(opts, 'rates', '2500,5000,10000,20000,30000,40000', rateItem);
  const nGens = posInt(opts, 'gens', 2, 16);
  const collapseP99 = posNum(opts, 'collapse-p99', 1000);
  const settleMs = posNum(opts, 'settle', 15) * 1000;
  const ceilMs = posNum(opts, 'ceiling-duration', 2) * 1000;
  const jsWindow = posInt(opts, 'js-window', 256, 100_000);
  const textBytes = posInt(opts, 'text-bytes', 100, 4000);
  const seed = posInt(opts, 'seed', 1, 2 ** 31);
  const overloadFlag = opts.flags['overload'];
  const overload = overloadFlag === undefined ? undefined : overloadFlag === 'auto' ? 'auto' : posInt(opts, 'overload', 1, 1_000_000);
  const overloadS = posInt(opts, 'overload-s', 30, 3600);
  const overloadSteadyS = posInt(opts, 'overload-steady-s', 90, 3600);
  const ms = opts.durationMs;
  let stepSeq = 0;
  const nextStep = (): number => ++stepSeq;
  // What a mailbox item of this benchmark weighs (the ceiling publishes as many bytes).
  const itemBytes = pack({ k: 'm', id: messageId(12, 1999, 99_999), from: 'u1jk', fd: 'd', to: 'u1jl', text: messageText(Date.now(), true, textBytes), ts: Date.now() }).length;
  const params = {
    durationMs: ms, warmupMs: warmMs, phases: [...phases], pairs: nPairs, window, offlineSenders: offSenders, offlineWindow: offWindow, offlineRates: offRates,
    users: nUsers, contacts: nContacts, rates, gens: nGens, collapseP99Ms: collapseP99, settleMs, ceilingMs: ceilMs, jsWindow, textBytes, itemBytes, seed, overload, overloadS, overloadSteadyS,
    limits: BENCH_LIMITS, nodes: '2 gravitas node processes, 1 cell each',
  };

  const hostLoad = { atStart: loadavg()[0]!, atEnd: NaN, cores: cpus().length };
  if (hostLoad.atStart > hostLoad.cores / 2) log(`WARNING: the host is busy before the run (load average ${hostLoad.atStart.toFixed(1)} on ${hostLoad.cores} cores): expect noisy numbers`);
  const res = new Resources();
  try {
    // ---- ceilings (nothing else running) ----
    log('starting nats-server (JetStream)');
    const nats = await NatsServer.start({ jetstream: true });
    res.deferLast(() => nats.stop());
    log(`ceiling ${CEILING.natsPubSub}`);
    const natsPubSub = await measureNatsPubSub(ceilMs, nats.url);
    log(`ceiling ${CEILING.jsPublish} (${jsWindow} in flight, ${itemBytes} B, one subject)`);
    const js: JsPublishResult = await measureJetStreamPublish(ceilMs, nats.url, { window: jsWindow, payloadBytes: itemBytes, layout: 'plain' });
    log(`  ${fmt(js.perSec)} msg/s`);
    log(`ceiling ${CEILING.jsPublish}.mailbox_layout (subject per message, as the mailbox streams)`);
    const jsMbox: JsPublishResult = await measureJetStreamPublish(ceilMs, nats.url, { window: jsWindow, payloadBytes: itemBytes, layout: 'mailbox' });
    log(`  ${fmt(jsMbox.perSec)} msg/s`);

    const keys = clusterKeys();
    const pidsBase: Record<string, number | undefined> = { nats: nats.pid, parent: process.pid };
    const onlineOpts = { pairs: nPairs, window, warmMs, ms, settleMs };

    // ---- online: the no-custody relay first (then stopped), then the cluster ----
    let relay: OnlineResult | undefined;
    if (phases.has('online')) {
      log('online baseline: 2 no-custody relay processes (custody-relay.ts)');
      const relays = await startRelays(res, nats.url, keys);
      log(`  ${nPairs} SDK pairs, closed loop, window ${window}: warmup ${warmMs} ms, measure ${ms} ms`);
      relay = await onlinePairs(res, [relays[0]!.addr, relays[1]!.addr], keys, onlineOpts, { ...pidsBase, relay1: relays[0]!.pid, relay2: relays[1]!.pid });
      log(`  ${fmt(relay.perSec)} msg/s; CPU cores: ${fmtCores(relay.cores)}`);
      await Promise.all(relays.map((r) => r.stop()));
    }

    let online: OnlineResult | undefined;
    let offline: OfflineResult | undefined;
    let loadRes: LoadResult | undefined;
    let nodes: [GravitasNode, GravitasNode] | undefined;
    if (phases.has('online') || phases.has('offline') || phases.has('load')) {
      const dir = await res.tempDir('gravitas-bench-custody-');
      log('starting 2 gravitas node processes (1 cell each)');
      const [n1, n2] = await Promise.all([startGravitasNode(res, dir, 'bench-n1', nats.url, keys), startGravitasNode(res, dir, 'bench-n2', nats.url, keys)]);
      nodes = [n1!, n2!];
      const pids = { ...pidsBase, node1: n1!.pid, node2: n2!.pid };
      if (phases.has('online')) {
        log(`online with custody: ${nPairs} SDK pairs, closed loop, window ${window}: warmup ${warmMs} ms, measure ${ms} ms`);
        online = await onlinePairs(res, [n1!.clientAddress, n2!.clientAddress], keys, onlineOpts, pids);
        log(`  ${fmt(online.perSec)} msg/s; CPU cores: ${fmtCores(online.cores)}`);
        await waitFor('online pairs to leave', async () => (await cellStatus(n2!)).sessions === 0 && (await cellStatus(n1!)).sessions === 0, 15_000, 100);
      }
      if (phases.has('offline')) {
        offline = await offlinePhase(res, n1!, n2!, keys, { senders: offSenders, window: offWindow, rates: offRates, gens: nGens, warmMs, ms, settleMs, textBytes, seed, nextStep }, pids);
      }
      if (phases.has('load')) {
        loadRes = await loadPhase(res, nodes, keys, { users: nUsers, contacts: nContacts, rates, gens: nGens, warmMs, ms, settleMs, collapseP99, textBytes, seed, nextStep, overload, overloadS, overloadSteadyS }, pids, nats);
      }
    }

    // ---- table ----
    const targets: Target[] = [];
    const target = (t: Target): string => {
      targets.push(t);
      return `target ${t.target}: ${t.met === undefined ? 'n/a' : t.met ? 'PASS' : 'FAIL'}`;
    };
    const rows: Row[] = [
      { metric: CEILING.natsPubSub, value: natsPubSub, unit: 'msg/s', note: '100 B, 1 pub + 1 sub conn' },
      {
        metric: CEILING.jsPublish,
        value: js.perSec,
        unit: 'msg/s',
        note: `THE JetStream ceiling: acked, 1 Node client, 1 publish per message, ${js.window} in flight, ${js.payloadBytes} B (a mailbox item), file storage, one subject, Nats-Msg-Id`,
      },
      { metric: `${CEILING.jsPublish}.p99`, value: js.latency.p99, unit: 'ms', note: `publish → ack (p50 ${fmt(js.latency.p50, 2)} ms)` },
      {
        metric: `${CEILING.jsPublish}.mailbox_layout`,
        value: jsMbox.perSec,
        unit: 'msg/s',
        ceiling: CEILING.jsPublish,
        ratio: jsMbox.perSec / js.perSec,
        note: 'same, but a subject per message + max_msgs_per_subject 1 + discard-new-per-subject (the mailbox streams\' layout)',
      },
    ];

    if (relay) {
      rows.push(
        {
          metric: 'online.relay.delivered',
          value: relay.perSec,
          unit: 'msg/s',
          note: `NO-CUSTODY BASELINE: same ${relay.pairs} SDK pairs × window ${relay.window} (pingpong's closed loop) through 2 relay processes (custody-relay.ts: same crypto, same NATS hops, no custody)`,
        },
        ...latRows('online.relay.status', relay.status, 'send() → delivered'),
        ...latRows('online.relay.recv', relay.recv, 'send() → recipient app'),
        ...accountRows('online.relay', relay.account, { lost: `accepted ${fmt(relay.account.accepted)} (informational)`, duplicated: 'informational' }),
      );
    }
    if (online) {
      const vsRelay = relay ? online.perSec / relay.perSec : undefined;
      const vsJs = online.perSec / js.perSec;
      rows.push(
        {
          metric: 'online.custody.delivered',
          value: online.perSec,
          unit: 'msg/s',
          ...(relay && { ceiling: 'online.relay.delivered', ratio: vsRelay }),
          note: `${online.pairs} SDK pairs × window ${online.window}, node 1 → node 2; ${target({ name: 'online custody vs no-custody relay', target: `≥ ${TARGET.onlineVsRelay}× relay`, measured: vsRelay, unit: '×', met: vsRelay === undefined ? undefined : vsRelay >= TARGET.onlineVsRelay })}${Object.keys(online.errors).length ? `; errors ${fmtCounts(online.errors)}` : ''}`,
        },
        {
          metric: 'online.custody.vs_js',
          value: vsJs,
          unit: '×',
          ceiling: CEILING.jsPublish,
          ratio: vsJs,
          note: target({ name: 'online custody vs JetStream ceiling', target: `≥ ${TARGET.onlineVsJs}× ${CEILING.jsPublish}`, measured: vsJs, unit: '×', met: vsJs >= TARGET.onlineVsJs }),
        },
        { metric: 'online.custody.cpu', value: Object.entries(online.cores).filter(([k]) => k !== 'parent').reduce((s, [, v]) => s + v, 0), unit: 'cores', note: `servers + nats; ${fmtCores(online.cores)} (parent = the SDK load generator)` },
        ...latRows('online.custody.status', online.status, 'send() → delivered (recipient acked)'),
        ...latRows('online.custody.recv', online.recv, 'send() → recipient app'),
        { metric: 'online.custody.stored', value: online.account.stored, unit: 'msgs', note: `of ${fmt(online.account.accepted)} accepted: recipients online, so stored means the custody window (limits.custodyWindowMs, 3 s by default) passed without an ack` },
        ...accountRows('online.custody', online.account, {
          lost: target({ name: 'online lost', target: '0', measured: online.account.lost, unit: 'msgs', met: online.account.lost === 0 }),
          duplicated: target({ name: 'online duplicated', target: '0', measured: online.account.duplicated, unit: 'msgs', met: online.account.duplicated === 0 }),
        }),
      );
    }

    if (offline) {
      for (const r of offline.steps) {
        const id = r.offered === undefined ? 'offline.max' : `offline.${r.offered}`;
        const vsJs = r.achievedPerSec / js.perSec;
        rows.push(
          {
            metric: `${id}.stored`,
            value: r.achievedPerSec,
            unit: 'msg/s',
            ceiling: CEILING.jsPublish,
            ratio: vsJs,
            note: `${offline.senders} senders on node 1, recipients offline; ${r.offered === undefined ? `${target({ name: 'offline stored/s vs JetStream ceiling', target: `≥ ${TARGET.offlineVsJs}× ${CEILING.jsPublish}`, measured: vsJs, unit: '×', met: vsJs >= TARGET.offlineVsJs })}; ` : ''}${(r.achievedPerSec / jsMbox.perSec).toFixed(2)}× the mailbox-layout ceiling; ${stepNote(r)}`,
          },
          ...latRows(`${id}.status`, r.status, 'send → stored (JetStream acked)'),
        );
      }
      const all = offline.steps.reduce((a, r) => ({ lost: a.lost + r.lost, duplicated: a.duplicated + r.duplicated, accepted: a.accepted + r.accepted, delivered: a.delivered + r.delivered }), { lost: 0, duplicated: 0, accepted: 0, delivered: 0 });
      rows.push(
        {
          metric: 'offline.drain',
          value: offline.drainPerSec,
          unit: 'msg/s',
          note: `${fmt(offline.drained)} of ${fmt(all.accepted)} stored reached the recipients' apps in ${fmt(offline.drainMs)} ms from reconnect start (handshakes ${fmt(offline.drainConnectMs)} ms)${offline.drainComplete ? '' : ' — INCOMPLETE'}; receipts to senders ${fmtCounts(offline.receipts) || 'none'}`,
        },
        ...accountRows('offline', all, {
          lost: target({ name: 'offline lost (after the drain)', target: '0', measured: all.lost, unit: 'msgs', met: all.lost === 0 }),
          duplicated: `informational (${all.delivered ? `${fmt(all.delivered)} were delivered, not stored: a recipient was still online` : 'after the SDK-equivalent de-duplication'})`,
        }),
      );
    }

    if (loadRes) {
      rows.push({
        metric: 'load.connect',
        value: loadRes.connect.perSec,
        unit: 'conn/s',
        note: `${loadRes.users} users (first connection registers the device), ${loadRes.gens} generator processes, ${fmt(loadRes.connect.ms)} ms`,
      });
      for (const r of loadRes.steps) {
        const id = `load.${r.offered}`;
        rows.push(
          { metric: `${id}.achieved`, value: r.achievedPerSec, unit: 'msg/s', note: stepNote(r) },
          { metric: `${id}.status.p50`, value: r.status.p50, unit: 'ms', note: 'intended send → delivered/stored status' },
          { metric: `${id}.status.p99`, value: r.status.p99, unit: 'ms', note: `p90 ${fmt(r.status.p90, 2)}, max ${fmt(r.status.max, 1)} ms` },
          { metric: `${id}.recv.p50`, value: r.recv.p50, unit: 'ms', note: 'intended send → recipient app' },
          { metric: `${id}.recv.p99`, value: r.recv.p99, unit: 'ms', note: `p90 ${fmt(r.recv.p90, 2)}, max ${fmt(r.recv.max, 1)} ms` },
          ...accountRows(id, r),
          { metric: `${id}.cpu`, value: Object.values(r.cores).reduce((a, b) => a + b, 0), unit: 'cores', note: fmtCores(r.cores) },
        );
        const cost = r.offered === undefined ? undefined : loadRes.costs.get(r.offered);
        if (cost) rows.push({ metric: `${id}.server_us_per_msg`, value: serverUs(cost), unit: 'µs', note: `${pass(serverUs(cost) <= TARGET.serverUsPerMsg, `≤ ${TARGET.serverUsPerMsg}`)}; nodes + nats-server CPU per message sent; ${fmtCost(cost)}` });
      }
      const sustained = sustainedRate(loadRes.steps, TARGET.sustainedP99Ms);
      const at10k = loadRes.steps.find((r) => r.offered === 10_000);
      const peak = loadRes.steps.reduce((m, r) => Math.max(m, r.achievedPerSec), 0);
      const lostAll = loadRes.steps.reduce((s, r) => s + r.lost, 0);
      const dupAll = loadRes.steps.reduce((s, r) => s + r.duplicated, 0);
      rows.push(
        {
          metric: 'load.sustained',
          value: sustained,
          unit: 'msg/s',
          note: `highest offered rate with p99 (status and received) < ${TARGET.sustainedP99Ms} ms, lost 0, achieved ≥ 95%; ${target({ name: 'sustained rate', target: `≥ ${fmt(TARGET.sustainedPerSec)}`, measured: sustained, unit: 'msg/s', met: sustained >= TARGET.sustainedPerSec })}; reference: ${REFERENCES}`,
        },
        at10k
          ? {
              metric: 'load.10000.recv_p99',
              value: at10k.recv.p99,
              unit: 'ms',
              note: `send → received p99 at 10,000 msg/s (send → status p99 ${fmt(at10k.status.p99, 2)} ms); ${target({ name: 'p99 at 10k msg/s', target: `≤ ${TARGET.p99At10kMs} ms`, measured: at10k.recv.p99, unit: 'ms', met: at10k.recv.p99 <= TARGET.p99At10kMs })}`,
            }
          : { metric: 'load.10000.recv_p99', value: NaN, unit: 'ms', note: target({ name: 'p99 at 10k msg/s', target: `≤ ${TARGET.p99At10kMs} ms`, measured: undefined, unit: 'ms', met: undefined }) + ' (10000 not in --rates)' },
        {
          metric: 'load.peak',
          value: peak,
          unit: 'msg/s',
          note: `highest achieved rate of the sweep${loadRes.collapsed ? `; collapsed at step ${loadRes.collapsed.step}: ${loadRes.collapsed.reason}` : '; no collapse within the sweep'}; ${target({ name: 'peak', target: `≥ ${fmt(TARGET.peakPerSec)}`, measured: peak, unit: 'msg/s', met: peak >= TARGET.peakPerSec })}`,
        },
        {
          metric: 'load.lost_total',
          value: lostAll,
          unit: 'msgs',
          note: `over every step, overload included (duplicated ${dupAll}); ${target({ name: 'overload never loses', target: '0 lost at every step', measured: lostAll, unit: 'msgs', met: lostAll === 0 })}`,
        },
      );
      if (loadRes.overload) rows.push(...overloadRows(loadRes.overload, target));
    }

    hostLoad.atEnd = loadavg()[0]!;
    const extra = {
      hostLoad,
      ceilings: { natsPubSub, jsPublish: js, jsPublishMailboxLayout: jsMbox },
      online: { relay, custody: online },
      offline,
      load: loadRes,
      targets,
      references: REFERENCES,
      nodeLogs: nodes ? { node1: nodes[0].child.tail(), node2: nodes[1].child.tail() } : undefined,
    };
    if (extra.nodeLogs) {
      for (const [k, tail] of Object.entries(extra.nodeLogs)) {
        if (/error|crash|fail/i.test(tail)) log(`${k} logged errors (tail in the JSON's extra.nodeLogs):\n${tail.split('\n').slice(-10).join('\n')}`);
      }
    }
    return makeResult(name, startedAt, params, rows, extra);
  } finally {
    log('stopping child processes');
    await res.close();
  }
}

/** The overload test's rows: each of the issue's overload targets against what the run measured. */
function overloadRows(ov: OverloadResult, target: (t: Target) => string): Row[] {
  const share = ov.minDeliveredPerSec / ov.sustained;
  const growth = ov.rssPeakMiB / ov.steady.rssMiB;
  const r = ov.step;
  // BUSY is retryable: the generator sends again, so refusals are counted among the retries, not the failures.
  const busy = r.retryCodes['BUSY'] ?? 0;
  return [
    {
      metric: 'load.overload.delivered_min',
      value: ov.minDeliveredPerSec,
      unit: 'msg/s',
      note: `lowest delivered msgs/s over any half second of ${ov.seconds} s at ${fmt(ov.offered)} offered (2× the sustained ${fmt(ov.sustained)}); mean ${fmt(ov.meanDeliveredPerSec)}; ${target({ name: 'overload delivered', target: `≥ ${OVERLOAD_TARGET.deliveredShare} × sustained`, measured: share, unit: '× sustained', met: share >= OVERLOAD_TARGET.deliveredShare })}`,
    },
    {
      metric: 'load.overload.rss_growth',
      value: growth,
      unit: '×',
      note: `server RSS (nodes + nats-server) peak ${fmt(ov.rssPeakMiB)} MiB against ${fmt(ov.steady.rssMiB)} MiB at the sustained rate; ${target({ name: 'overload memory', target: `≤ ${OVERLOAD_TARGET.rssGrowth} × steady`, measured: growth, unit: '×', met: growth <= OVERLOAD_TARGET.rssGrowth })}`,
    },
    {
      metric: 'load.overload.spilled',
      value: r.stored,
      unit: 'msgs',
      note: `messages stored for online, reading recipients (every recipient here is); refused BUSY ${fmt(busy)} (retried by the generator), lost ${r.lost}, duplicated ${r.duplicated}; ${target({ name: 'no spills from server lag', target: '0', measured: r.stored, unit: 'msgs', met: r.stored === 0 && r.lost === 0 })}`,
    },
    {
      metric: 'load.overload.recovery_s',
      value: ov.recoveryS ?? NaN,
      unit: 's',
      note: `from the end of the overload until the servers' CPU was within ${IDLE_MARGIN} cores of idle (${fmt(ov.idleCores, 2)} cores); ${target({ name: 'back to idle', target: `≤ ${OVERLOAD_TARGET.recoveryS} s`, measured: ov.recoveryS, unit: 's', met: ov.recoveryS !== undefined && ov.recoveryS <= OVERLOAD_TARGET.recoveryS })}`,
    },
  ];
}
