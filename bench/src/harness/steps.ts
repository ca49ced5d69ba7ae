import { mergeEncoded, percentiles } from './latency.js';
import { sendOf } from './ledger.js';
import { latencyJson, type IntervalSample, type StepSummary, type StepsResult } from './result.js';
import { stepAt, targetName, type Scenario } from './scenario.js';

/*
 * Step sweeps (issue 17's comparison): each step's hold summarised from the run's intervals —
 * sent and delivered rates, latency from the merged histograms of its intervals (not a mean of
 * percentiles), server CPU, loss and repeats by delivery id placed in the step that sent them —
 * and the comparison's figures: the highest rate with p99 < 100 ms and nothing lost, the server
 * CPU per message there, the closed-loop peak, and the first step past the knee.
 */

/** A step is good below this p99 (ms) with nothing lost. */
export const GOOD_P99_MS = 100;

export interface StepInputs {
  /** Per interval k (1-based): every generator's encoded latency histogram of it. */
  hists: Map<number, string[]>;
  /** Per generator: its last send ref at the end of each interval k (index k − 1). */
  lastRefs: Map<number, number[]>;
  /** Delivery ids missing and repeated after the drain, or null when the run did not track them. */
  lost: { missing: number[]; repeated: number[] } | null;
  generators: number;
  devices: number;
}

export function summarizeSteps(s: Scenario, intervals: readonly IntervalSample[], inp: StepInputs): StepsResult | undefined {
  const st = s.behaviours.messages.steps;
  if (!st) return undefined;
  const n = st.rates.length + (st.closedLoop ? 1 : 0);
  const ks: number[][] = Array.from({ length: n }, () => []);
  intervals.forEach((iv, i) => {
    // Interval k = i + 1 covers run time ((k − 1)·interval, k·interval]: measured when its start is in a hold.
    const start = i * s.intervalMs;
    const at = stepAt(s, start);
    const end = stepAt(s, start + s.intervalMs - 1);
    if (at?.measured && end?.index === at.index) ks[at.index]!.push(i);
  });
  // The step of each send ref, per generator: the interval its ref was used in.
  const stepOfSend = (generator: number, ref: number): number => {
    const marks = inp.lastRefs.get(generator) ?? [];
    let lo = 0;
    let hi = marks.length - 1;
    if (hi < 0 || marks[hi]! < ref) return -1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (marks[mid]! >= ref) hi = mid;
      else lo = mid + 1;
    }
    return stepAt(s, lo * s.intervalMs)?.index ?? -1;
  };
  const missing = new Array<number>(n).fill(0);
  const repeats = new Array<number>(n).fill(0);
  if (inp.lost) {
    for (const id of inp.lost.missing) {
      const { generator, ref } = sendOf(id, inp.generators, inp.devices);
      const k = stepOfSend(generator, ref);
      if (k >= 0) missing[k]!++;
    }
    for (const id of inp.lost.repeated) {
      const { generator, ref } = sendOf(id, inp.generators, inp.devices);
      const k = stepOfSend(generator, ref);
      if (k >= 0) repeats[k]!++;
    }
  }
  const mean = (xs: number[]): number => (xs.length === 0 ? 0 : xs.reduce((a, b) => a + b, 0) / xs.length);
  const steps: StepSummary[] = ks.map((is, index) => {
    const ivs = is.map((i) => intervals[i]!);
    const delivered = mean(ivs.map((iv) => iv.receivedPerSec));
    const serverCpu = mean(ivs.map((iv) => Object.values(iv.servers).reduce((a, p) => a + p.cpu, 0)));
    const h = mergeEncoded(is.flatMap((i) => inp.hists.get(i + 1) ?? []));
    return {
      index,
      offered: index < st.rates.length ? st.rates[index]! : null,
      sentPerSec: mean(ivs.map((iv) => iv.sentPerSec)),
      deliveredPerSec: delivered,
      latency: latencyJson(percentiles(h)),
      missing: inp.lost ? missing[index]! : null,
      repeats: inp.lost ? repeats[index]! : null,
      serverCpu,
      cpuPerMsgUs: delivered > 0 ? (serverCpu / 100 / delivered) * 1e6 : null,
      generatorCpu: mean(ivs.map((iv) => Math.max(0, ...Object.values(iv.generators).map((g) => g.cpu)))),
    };
  });
  const open = steps.filter((x) => x.offered !== null);
  const good = (x: StepSummary): boolean => x.latency.p99 !== null && x.latency.p99 < GOOD_P99_MS && x.missing === 0 && x.latency.count > 0;
  let best: StepSummary | null = null;
  for (const x of open) if (good(x) && (best === null || x.offered! > best.offered!)) best = x;
  const pastKnee = open.find((x) => (best === null ? !good(x) : x.offered! > best.offered!)) ?? null;
  return { steps, best, pastKnee, closedLoop: steps.find((x) => x.offered === null) ?? null };
}

const f0 = (x: number): string => Math.round(x).toLocaleString('en-US');
const ms = (x: number | null): string => (x === null ? '–' : x < 10 ? `${x.toFixed(1)} ms` : `${f0(x)} ms`);

/** One step as a table cell's text. */
export function describeStep(x: StepSummary | null): string {
  if (!x) return '–';
  const lost = x.missing === null ? 'loss not tracked' : `${f0(x.missing)} lost${x.repeats ? `, ${f0(x.repeats)} dup` : ''}`;
  return `${x.offered === null ? '' : `${f0(x.offered)} offered: `}${f0(x.deliveredPerSec)} delivered/s, p99 ${ms(x.latency.p99)}, ${lost}`;
}

/** The per-step table of one run. */
export function stepsTable(r: StepsResult): string {
  const head = ['step', 'offered/s', 'sent/s', 'delivered/s', 'p50', 'p99', 'max', 'lost', 'dup', 'server CPU %', 'µs/msg', 'gen CPU %'];
  const rows = r.steps.map((x) => [
    String(x.index + 1), x.offered === null ? 'closed' : f0(x.offered), f0(x.sentPerSec), f0(x.deliveredPerSec), ms(x.latency.p50), ms(x.latency.p99), ms(x.latency.max),
    x.missing === null ? '–' : f0(x.missing), x.repeats === null ? '–' : f0(x.repeats), f0(x.serverCpu), x.cpuPerMsgUs === null ? '–' : f0(x.cpuPerMsgUs), f0(x.generatorCpu),
  ]);
  return table(head, rows);
}

/** The comparison across targets, in the shape of issue 17's table. */
export function comparisonTable(runs: ReadonlyArray<{ target: string; steps: StepsResult | undefined; error?: string }>): string {
  const head = ['target', 'highest rate with p99 < 100 ms, nothing lost', 'server CPU per message there', 'closed-loop peak', 'past the knee'];
  const rows = runs.map((run) => {
    const { target, steps } = run;
    if (!steps) return [target, run.error !== undefined ? `run failed: ${run.error}` : '–', '–', '–', '–'];
    const b = steps.best;
    return [
      target,
      b ? `${f0(b.offered!)} msgs/s (p99 ${ms(b.latency.p99)})` : 'none',
      b?.cpuPerMsgUs != null ? `${f0(b.cpuPerMsgUs)} µs` : '–',
      steps.closedLoop ? `${f0(steps.closedLoop.deliveredPerSec)} msgs/s (p99 ${ms(steps.closedLoop.latency.p99)})` : '–',
      describeStep(steps.pastKnee),
    ];
  });
  return table(head, rows);
}

function table(head: string[], rows: string[][]): string {
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]): string => `| ${cells.map((c, i) => c.padEnd(w[i]!)).join(' | ')} |`;
  return [line(head), `|${w.map((n) => '-'.repeat(n + 2)).join('|')}|`, ...rows.map(line)].join('\n') + '\n';
}

export { targetName };
