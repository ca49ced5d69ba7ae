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

export interface IntervalSample {
  /** End of the interval, seconds since the start of the run. */
  t: number;
  sentPerSec: number;
  receivedPerSec: number;
  /** Receive − intended send, of the messages received in this interval. */
  latency: LatencyJson;
  /** Devices connected at the end of the interval. */
  connected: number;
  /** Share of messages delivered without leaving the sender's cell; null if the target cannot tell. */
  locality: number | null;
  /** By process name (e.g. "node1", "nats"). */
  servers: Record<string, ProcSample>;
  /** By generator name ("gen0", ...). */
  generators: Record<string, GeneratorSample>;
}

export interface Verdict {
  /** True when generators were saturated in ≥ SATURATED_SHARE of the steady-state intervals, or dropped sends. */
  generatorBound: boolean;
  /** Why, one line per generator; empty when not generator-bound. */
  reasons: string[];
  /** Worth knowing, not disqualifying (e.g. generators above 50 % CPU). */
  warnings: string[];
  /** Highest generator CPU (%) in any steady-state interval. */
  generatorPeakCpu: number;
}

export interface RunResult {
  format: typeof RESULT_FORMAT;
  scenario: Scenario;
  startedAt: string;
  host: HostInfo;
  /** The driver and what it ran against, for the header (e.g. "gravitas, 2 local nodes × 1 cell"). */
  target: string;
  intervals: IntervalSample[];
  totals: {
    sent: number;
    received: number;
    latency: LatencyJson;
    skipped: number;
    /** Error code → count (connect failures, send refusals...). */
    errors: Record<string, number>;
  };
  verdict: Verdict;
  notes: string[];
}

/** A generator saturated in at least this share of steady-state intervals makes the run generator-bound. */
export const SATURATED_SHARE = 0.1;
/** The target: generators below half their CPU at the highest sustained rate. */
export const GENERATOR_CPU_TARGET = 50;

export function latencyJson(p: LatencyPercentiles): LatencyJson {
  const n = (v: number): number | null => (Number.isFinite(v) ? v : null);
  return { count: p.count, p50: n(p.p50), p90: n(p.p90), p99: n(p.p99), p999: n(p.p999), max: n(p.max) };
}

/** Decides whether the generators were the bottleneck, from the steady-state intervals (after the ramp-up). */
export function judge(intervals: readonly IntervalSample[], s: Scenario): Verdict {
  const steady = intervals.filter((iv) => iv.t * 1000 > s.rampUpMs);
  const names = [...new Set(steady.flatMap((iv) => Object.keys(iv.generators)))].sort();
  const reasons: string[] = [];
  let peak = 0;
  for (const g of names) {
    let saturated = 0;
    let skipped = 0;
    let lag = 0;
    for (const iv of steady) {
      const x = iv.generators[g];
      if (!x) continue;
      if (x.saturated) saturated++;
      skipped += x.skipped;
      lag = Math.max(lag, x.loopLagP99Ms);
      peak = Math.max(peak, x.cpu);
    }
    const share = steady.length > 0 ? saturated / steady.length : 0;
    if (share >= SATURATED_SHARE || skipped > 0) {
      reasons.push(
        `${g} saturated in ${saturated} of ${steady.length} intervals (CPU ≥ ${Math.round(s.generators.saturation.cpu * 100)} % or loop lag p99 ≥ ${s.generators.saturation.loopLagMs} ms; worst lag ${lag.toFixed(1)} ms)` +
          (skipped > 0 ? `, ${skipped} sends dropped behind schedule` : ''),
      );
    }
  }
  const warnings: string[] = [];
  if (peak > GENERATOR_CPU_TARGET) warnings.push(`generator CPU peaked at ${peak.toFixed(0)} % (target: below ${GENERATOR_CPU_TARGET} % at the highest sustained rate)`);
  if (steady.length === 0) warnings.push('no steady-state interval was recorded');
  return { generatorBound: reasons.length > 0, reasons, warnings, generatorPeakCpu: peak };
}
