import type { HostInfo } from '../report.js';
import type { LatencyPercentiles } from './latency.js';
import type { Scenario } from './scenario.js';

/*
 * The JSON result of a scenario run: one sample per reported interval, totals, and the verdict
 * on whether the generators, not the system under test, set the limit. The HTML report
 * (html.ts) is rendered from this alone, so a saved result can be re-rendered later.
 */

export const RESULT_FORMAT = 'gravitas-bench-run/1';

/** Latency percentiles in ms; null where the interval had no samples (NaN does not survive JSON). */
export type LatencyJson = { count: number } & { [K in Exclude<keyof LatencyPercentiles, 'count'>]: number | null };

export interface ProcSample {
  /** CPU over the interval, % of one core (a process using two cores shows 200). */
  cpu: number;
  rssMiB: number;
}

export interface GeneratorSample extends ProcSample {
  /** Event-loop delay of the generator's own loop over the interval. */
  loopLagP99Ms: number;
  loopLagMaxMs: number;
  /** Sends the pacer dropped because the generator was too far behind (see Pacer). */
  skipped: number;
  /** CPU or loop lag over the scenario's generators.saturation thresholds, or skipped > 0. */
  saturated: boolean;
}

export interface HostSample extends ProcSample {
  /** CPU cores of the host: `cpu` reaches 100 × cores when every core is busy. */
  cores: number;
}

export interface IntervalSample {
  /** End of the interval, seconds since the start of the run. */
  t: number;
  /** ramp: users still connecting; steady: the measured part; drain: after the run, waiting for the last deliveries. */
  phase: 'ramp' | 'steady' | 'drain';
  sentPerSec: number;
  /** Sends the server took custody of (for drivers without acceptance: written to the socket). */
  acceptedPerSec: number;
  /** Sends the server refused for good. */
  failedPerSec: number;
  /** Deliveries to live devices: the ones `latency` is about. */
  receivedPerSec: number;
  /** Deliveries of messages sent before their device's current connection (mailbox catch-up after offline periods and storms). */
  catchupPerSec: number;
  campaignPerSec: number;
  presencePerSec: number;
  /** Receive − intended send, of the live deliveries in this interval. */
  latency: LatencyJson;
  /** How late the generators sent (actual − intended), p99 ms: latency the target did not cause. */
  sendLagP99: number | null;
  /** Devices connected at the end of the interval. */
  connected: number;
  connectsPerSec: number;
  connectFailedPerSec: number;
  /** Session set-up time of this interval's connects, ms. */
  connectTime: { p50: number | null; p99: number | null };
  /** Share of live 1:1 deliveries that stayed on the sender's cell; null if the target cannot tell. */
  locality: number | null;
  /** By process name (e.g. "node1", "nats"). */
  servers: Record<string, ProcSample>;
  /** By generator name ("gen0", ...). */
  generators: Record<string, GeneratorSample>;
  /** By host name: the whole machine, every process on it. */
  hosts: Record<string, HostSample>;
}

export interface Verdict {
  /** Generators were saturated by their own load in ≥ SATURATED_SHARE of the steady intervals, or dropped sends: the numbers describe them. */
  generatorBound: boolean;
  /**
   * Not generator-bound, but generators lagged in ≥ SATURATED_SHARE of the steady intervals, mostly
   * while the host they share with the target was out of CPU: the host is the limit, and latency in
   * those intervals includes the generators' own delay (the send lag shows how much).
   */
  hostBound: boolean;
  /** Why, one line per generator concerned; empty when neither. */
  reasons: string[];
  /** Worth knowing, not disqualifying (e.g. generators above 50 % CPU). */
  warnings: string[];
  /** Highest generator CPU (%) in any steady-state interval. */
  generatorPeakCpu: number;
}

/** The highest rate the target kept up with, and what the generators cost there. */
export interface Capacity {
  /** Sends/s of the best steady interval that was sustained (see `sustained`). */
  sentPerSec: number;
  /** Its end, seconds since start. */
  t: number;
  latencyP99: number | null;
  /** The busiest generator's CPU (% of one core) in that interval: the issue's "below 50 %" target. */
  generatorCpu: number;
  /** How many steady intervals were sustained, of how many. */
  sustainedIntervals: number;
  steadyIntervals: number;
  /**
   * Higher rates (by > 2 %) were offered in several steady intervals (≥ 3 and ≥ 5 %), with no
   * generator saturated, and none was sustained: `sentPerSec` is a measured limit and
   * `notSustainedPerSec` the lowest such rate. Otherwise the capacity is at least `sentPerSec`.
   */
  limitReached: boolean;
  notSustainedPerSec: number | null;
}

/** Messages the server accepted against deliveries that arrived: what a chat user would call lost. */
export interface DeliveryAccount {
  /** False when the driver cannot say what the server accepted (e.g. XMPP): nothing below is counted. */
  tracked: boolean;
  /** Deliveries owed by accepted messages (each recipient device, and the sender's other devices where the server copies). */
  expected: number;
  /** Owed deliveries that arrived, each once. */
  received: number;
  /** Owed deliveries that had not arrived after the drain, by delivery id (harness/ledger.ts): an extra arrival never offsets a missing one. */
  missing: number;
  /** Deliveries that arrived though nothing was owed to that device (by id). */
  unexpected: number;
  /** Arrivals of an id already counted, which the driver did not drop as re-deliveries. */
  repeats: number;
  /** Time after the end of the run until every owed delivery arrived, or the drain timed out. */
  drainMs: number;
  complete: boolean;
}

export interface GeneratorInfo {
  name: string;
  host: string;
  pid: number;
  users: number;
  devices: number;
  /** Offset of its clock to the runner's, and the bound of that estimate (rtt / 2). */
  clockOffsetMs: number;
  clockErrorMs: number;
}

export interface RunResult {
  format: typeof RESULT_FORMAT;
  scenario: Scenario;
  startedAt: string;
  host: HostInfo;
  /** The driver and what it ran against, for the header (e.g. "gravitas: 2 local nodes × 1 cell"). */
  target: string;
  /** Accounts and groups are named after it: a re-run with the same namespace reuses them. */
  namespace: string;
  generators: GeneratorInfo[];
  /** Before t0: registering every device (and contacts), creating the groups. */
  setup: { provisionMs: number; groupsMs: number; groupsCreated: number; groupsFailed: number; errors: Record<string, number> };
  intervals: IntervalSample[];
  totals: {
    sent: number;
    accepted: number;
    failed: number;
    received: number;
    catchup: number;
    campaign: number;
    presence: number;
    /** Messages from another run (or nobody) that reached this run's devices. */
    stray: number;
    latency: LatencyJson;
    catchupLatency: LatencyJson;
    /** Campaign deliveries: time from the campaign's start. */
    campaignReach: LatencyJson;
    sendLag: LatencyJson;
    connectTime: LatencyJson;
    skipped: number;
    /** Error code → count (connect failures, refused sends, lost sessions…). */
    errors: Record<string, number>;
    delivery: DeliveryAccount;
    /** Campaign deliveries owed (every device of every audience user) and received. */
    campaigns: { expected: number; received: number };
    /** Counters the driver keeps (hints followed, resumptions…), summed over generators. */
    driver: Record<string, number>;
  };
  verdict: Verdict;
  capacity: Capacity | null;
  /** Where the limit was, in sentences: generators, a host out of CPU, a pinned process, a backlog… */
  bottlenecks: string[];
  /** Step sweeps (behaviours.messages.steps): each step's hold, and the comparison's figures. */
  steps?: StepsResult;
  notes: string[];
}

/** One step's hold (its warmup left out). */
export interface StepSummary {
  index: number;
  /** Offered msgs/s, or null for the closed-loop step. */
  offered: number | null;
  sentPerSec: number;
  deliveredPerSec: number;
  latency: LatencyJson;
  /** Deliveries owed by this step's sends that never arrived, and arrivals beyond the first (by id); null when not tracked. */
  missing: number | null;
  repeats: number | null;
  /** Server processes' CPU summed, % of one core (mean over the hold). */
  serverCpu: number;
  /** Server CPU per delivered message, µs. */
  cpuPerMsgUs: number | null;
  /** Busiest generator's CPU, % of one core (mean over the hold). */
  generatorCpu: number;
}

export interface StepsResult {
  steps: StepSummary[];
  /** The highest open-loop step with p99 < 100 ms and nothing lost. */
  best: StepSummary | null;
  /** The first open-loop step above `best` (or the first of all when none was good). */
  pastKnee: StepSummary | null;
  closedLoop: StepSummary | null;
}

/** Adds `n` to `counts[key]`: errors and outcomes are counted by code everywhere in a run. */
export const tally = (counts: Record<string, number>, key: string, n = 1): void => void (counts[key] = (counts[key] ?? 0) + n);

/** A generator saturated in at least this share of steady-state intervals makes the run generator-bound. */
export const SATURATED_SHARE = 0.1;
/** The issue's target: generators below half their CPU at the highest sustained rate. */
export const GENERATOR_CPU_TARGET = 50;
/** An interval is sustained when the server accepted at least this share of what was sent in it... */
export const SUSTAINED_ACCEPT_SHARE = 0.97;
/** ...and its p99 stayed within this (ms): beyond it, a queue is growing somewhere. */
export const SUSTAINED_P99_MS = 1000;
/** A sustained rate is a measured limit when at least this many (and this share of) steady intervals at higher rates were not sustained. */
const LIMIT_MIN_INTERVALS = 3;
const LIMIT_MIN_SHARE = 0.05;
/** A host or process busy over this share of its CPU in the steady state is called saturated. */
export const BUSY_SHARE = 0.9;

export function latencyJson(p: LatencyPercentiles): LatencyJson {
  const n = (v: number): number | null => (Number.isFinite(v) ? v : null);
  return { count: p.count, p50: n(p.p50), p90: n(p.p90), p99: n(p.p99), p999: n(p.p999), max: n(p.max) };
}

/** Decides whether the generators were the bottleneck, from the steady-state intervals (after the ramp-up). */
/** A host counts as out of CPU in an interval when busy over this share of all its cores. */
const HOST_BUSY_SHARE = 0.9;

/**
 * Decides whether the generators, not the system under test, set the limit, from the steady
 * intervals. A generator's saturated interval is its *own* doing when its CPU was over the
 * threshold or it dropped sends; it was *starved* when its event loop lagged while its host (in
 * `hosts`, by the generator's host name in `genHosts`) was out of CPU — on a host shared with the
 * target that is the host's limit, not the generator's. Own saturation in ≥ 10 % of the steady
 * intervals (or any dropped send) makes the run generator-bound; otherwise own plus starved in
 * ≥ 10 % makes it host-bound.
 */
export function judge(intervals: readonly IntervalSample[], s: Scenario, genHosts: Readonly<Record<string, string>> = {}): Verdict {
  const steady = intervals.filter((iv) => iv.phase === 'steady');
  const names = [...new Set(steady.flatMap((iv) => Object.keys(iv.generators)))].sort();
  const reasons: string[] = [];
  let peak = 0;
  let own = false;
  let starvedAny = false;
  const sat = s.generators.saturation;
  for (const g of names) {
    let mine = 0;
    let starved = 0;
    let skipped = 0;
    let lag = 0;
    let cpu = 0;
    for (const iv of steady) {
      const x = iv.generators[g];
      if (!x) continue;
      skipped += x.skipped;
      lag = Math.max(lag, x.loopLagP99Ms);
      cpu = Math.max(cpu, x.cpu);
      if (!x.saturated) continue;
      const host = iv.hosts[genHosts[g] ?? ''];
      if (x.cpu < sat.cpu * 100 && x.skipped === 0 && host && host.cpu >= HOST_BUSY_SHARE * 100 * host.cores) starved++;
      else mine++;
    }
    peak = Math.max(peak, cpu);
    const n = steady.length;
    if (skipped > 0 || (n > 0 && mine / n >= SATURATED_SHARE)) {
      own = true;
      reasons.push(
        `${g} saturated by its own load in ${mine} of ${n} intervals (CPU ≥ ${Math.round(sat.cpu * 100)} % or loop lag p99 ≥ ${sat.loopLagMs} ms; worst lag ${lag.toFixed(1)} ms)` +
          (skipped > 0 ? `, ${skipped} sends dropped behind schedule` : ''),
      );
    } else if (n > 0 && (mine + starved) / n >= SATURATED_SHARE) {
      starvedAny = true;
      reasons.push(
        `${g} lagged in ${mine + starved} of ${n} intervals (worst loop lag p99 ${lag.toFixed(1)} ms), ${starved} of them while its host ${genHosts[g] ?? ''} was out of CPU; its own CPU peaked at ${cpu.toFixed(0)} %`,
      );
    }
  }
  const warnings: string[] = [];
  if (peak > GENERATOR_CPU_TARGET) warnings.push(`generator CPU peaked at ${peak.toFixed(0)} % (target: below ${GENERATOR_CPU_TARGET} % at the highest sustained rate)`);
  if (steady.length === 0) warnings.push('no steady-state interval was recorded');
  return { generatorBound: own, hostBound: !own && starvedAny, reasons, warnings, generatorPeakCpu: peak };
}

/** Phase of the interval ending at `tS` seconds. */
export function phaseAt(s: Scenario, tS: number): IntervalSample['phase'] {
  const ms = tS * 1000;
  return ms <= s.rampUpMs ? 'ramp' : ms <= s.rampUpMs + s.durationMs + 1 ? 'steady' : 'drain';
}

/**
 * The best steady interval the target sustained: it accepted ≥ 97 % of what was sent, p99 stayed
 * within 1 s, and no generator was saturated (those intervals measure the generator).
 */
export function capacity(intervals: readonly IntervalSample[]): Capacity | null {
  const steady = intervals.filter((iv) => iv.phase === 'steady');
  const clean = (iv: IntervalSample): boolean => !Object.values(iv.generators).some((g) => g.saturated);
  const kept = (iv: IntervalSample): boolean => iv.acceptedPerSec >= SUSTAINED_ACCEPT_SHARE * iv.sentPerSec && iv.latency.p99 !== null && iv.latency.p99 <= SUSTAINED_P99_MS;
  const ok = steady.filter((iv) => iv.sentPerSec > 0 && kept(iv) && clean(iv));
  if (ok.length === 0) return null;
  const best = ok.reduce((a, b) => (b.sentPerSec > a.sentPerSec ? b : a));
  // Every clean interval at a higher rate failed (best is the highest that did not); it takes a few
  // of them to blame the rate rather than a storm or a burst.
  const above = steady.filter((iv) => iv.sentPerSec > 1.02 * best.sentPerSec && clean(iv) && !kept(iv));
  const isLimit = above.length >= LIMIT_MIN_INTERVALS && above.length >= LIMIT_MIN_SHARE * steady.length;
  return {
    sentPerSec: best.sentPerSec,
    t: best.t,
    latencyP99: best.latency.p99,
    generatorCpu: Math.max(0, ...Object.values(best.generators).map((g) => g.cpu)),
    sustainedIntervals: ok.length,
    steadyIntervals: steady.length,
    limitReached: isLimit,
    notSustainedPerSec: isLimit ? Math.min(...above.map((iv) => iv.sentPerSec)) : null,
  };
}

const mean = (xs: readonly number[]): number => (xs.length === 0 ? 0 : xs.reduce((a, b) => a + b, 0) / xs.length);

/**
 * Where the limit was, from the steady-state samples, most decisive first: the generators
 * (then nothing else can be concluded), a host out of CPU (then it is the machine, and the split
 * of its CPU says who used it), a process pinned at one core, a backlog or refusals at the target —
 * or nothing saturated, meaning the offered load stayed below capacity.
 */
export function bottlenecks(r: Pick<RunResult, 'intervals' | 'verdict' | 'totals'>): string[] {
  const steady = r.intervals.filter((iv) => iv.phase === 'steady');
  if (steady.length === 0) return ['No steady-state interval was recorded: nothing can be said about the limit.'];
  const out: string[] = [];
  if (r.verdict.generatorBound) out.push('The load generators were the bottleneck (see the verdict): the other readings describe them, not the target. Add generator processes or hosts.');
  if (r.verdict.hostBound) out.push('The generators lagged only while the host they share with the target was out of CPU: the host was the limit. Latency in those intervals includes the generators’ own delay (see the send lag); run the generators on other hosts to measure the target alone.');
  const pct = (x: number): string => `${x.toFixed(0)} %`;
  const hosts = [...new Set(steady.flatMap((iv) => Object.keys(iv.hosts)))].sort();
  for (const h of hosts) {
    const xs = steady.map((iv) => iv.hosts[h]).filter((x): x is HostSample => x !== undefined);
    const cores = xs[0]?.cores ?? 1;
    const busy = mean(xs.map((x) => x.cpu));
    if (busy < BUSY_SHARE * 100 * cores) {
      const full = xs.filter((x) => x.cpu >= HOST_BUSY_SHARE * 100 * cores).length;
      if (full / xs.length >= SATURATED_SHARE) out.push(`Host ${h} was out of CPU (≥ ${HOST_BUSY_SHARE * 100} % of its ${cores} cores) in ${full} of ${xs.length} steady intervals (${pct(busy)} of ${cores * 100} % on average): then the host, not any one process, was the limit.`);
      continue;
    }
    const procs = [...Object.entries(averageCpu(steady, (iv) => iv.servers)), ...Object.entries(averageCpu(steady, (iv) => iv.generators))].sort((a, b) => b[1] - a[1]);
    out.push(`Host ${h} was out of CPU: ${pct(busy)} of ${cores * 100} % (${cores} cores) on average in the steady state. Its CPU went to ${procs.map(([n, c]) => `${n} ${pct(c)}`).join(', ')}. A faster result needs more cores or hosts, not a faster process.`);
  }
  const pinned = Object.entries(averageCpu(steady, (iv) => iv.servers)).filter(([, c]) => c >= BUSY_SHARE * 100);
  for (const [n, c] of pinned) out.push(`${n} used ${pct(c)} of a core on average: if it is single-threaded there (nats-server is not; a Gravitas node uses one core per cell), it is the limit.`);
  const sent = steady.reduce((a, iv) => a + iv.sentPerSec, 0);
  const accepted = steady.reduce((a, iv) => a + iv.acceptedPerSec, 0);
  if (sent > 0 && accepted < SUSTAINED_ACCEPT_SHARE * sent) out.push(`The target accepted ${pct((100 * accepted) / sent)} of what was sent in the steady state: a backlog built up (or sends were refused: see the errors).`);
  const p99s = steady.map((iv) => iv.latency.p99).filter((x): x is number => x !== null);
  const half = Math.floor(p99s.length / 2);
  if (half >= 3 && mean(p99s.slice(half)) > 2 * mean(p99s.slice(0, half)) && mean(p99s.slice(half)) > 50) out.push('Latency p99 doubled from the first to the second half of the steady state: a queue was growing.');
  const d = r.totals.delivery;
  if (d.tracked && d.unexpected > 0) out.push(`${d.unexpected} deliveries arrived on devices nothing was owed to.`);
  if (d.tracked && d.missing > 0) out.push(`${d.missing} accepted deliveries had not arrived ${(d.drainMs / 1000).toFixed(1)} s after the end of the run.`);
  if (out.length === 0) out.push('No resource was saturated: no host out of CPU, no process pinned, no backlog. The offered load was below the capacity of this set-up; raise it to find the limit.');
  return out;
}

function averageCpu(steady: readonly IntervalSample[], pick: (iv: IntervalSample) => Record<string, ProcSample>): Record<string, number> {
  const sum: Record<string, number> = {};
  const n: Record<string, number> = {};
  for (const iv of steady) {
    for (const [k, v] of Object.entries(pick(iv))) {
      sum[k] = (sum[k] ?? 0) + v.cpu;
      n[k] = (n[k] ?? 0) + 1;
    }
  }
  return Object.fromEntries(Object.keys(sum).map((k) => [k, sum[k]! / n[k]!]));
}
