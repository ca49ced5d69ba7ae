import { mergeStep, readCpu, type Load, type StepResult } from './custody-load.js';
import { fmt } from './custody-types.js';
import { log, procRssKiB, sleep } from './procs.js';

/*
 * Issue 17's overload test, as a benchmark: the load population held at its sustained rate, then
 * offered twice that for 30 s, then nothing. What it must show: delivered msgs/s stays near the
 * sustained rate every second of the overload, server memory stays near its steady state, no
 * message for an online, reading recipient is spilled to a mailbox (every recipient here is
 * online and acks at once: any `stored` status is a spill), nothing is lost, and the servers are
 * idle again within seconds of the load stopping.
 */

/** Targets from the issue. */
export const OVERLOAD_TARGET = { deliveredShare: 0.9, rssGrowth: 1.25, recoveryS: 10 };
/** Server CPU within this of its idle level counts as idle again (cores). */
export const IDLE_MARGIN = 0.05;
const SAMPLE_MS = 500;
/** After the overload schedule ends, how long to wait for the servers to become idle. */
const RECOVERY_WAIT_MS = 60_000;

export interface OverloadSample {
  /** Seconds since the overload schedule began (negative: the steady step). */
  t: number;
  deliveredPerSec: number;
  serverCores: number;
  serverRssMiB: number;
  /** Per server process (nodeN, nats). */
  rssMiB: Record<string, number>;
}

export interface OverloadResult {
  sustained: number;
  offered: number;
  seconds: number;
  idleCores: number;
  steady: { deliveredPerSec: number; rssMiB: number };
  samples: OverloadSample[];
  /** Lowest and mean delivered msgs/s over the overload's whole seconds after the first. */
  minDeliveredPerSec: number;
  meanDeliveredPerSec: number;
  rssPeakMiB: number;
  step: StepResult;
  /** Seconds from the end of the overload schedule until the servers' CPU was idle again; undefined: not within RECOVERY_WAIT_MS. */
  recoveryS: number | undefined;
}

/** Whether a sweep step counts as sustained: p99 under `p99Ms` (status and arrival), nothing lost, ≥ 95% achieved. */
function sustains(r: StepResult, p99Ms: number): boolean {
  return r.offered !== undefined && r.lost === 0 && r.achievedPerSec >= 0.95 * r.offered && Math.max(r.status.p99, r.recv.p99) < p99Ms;
}

/** The highest offered rate of a sweep that was sustained (0: none was). */
export function sustainedRate(steps: readonly StepResult[], p99Ms: number): number {
  return steps.filter((r) => sustains(r, p99Ms)).reduce((m, r) => Math.max(m, r.offered!), 0);
}

const isServer = (k: string): boolean => k === 'nats' || k.startsWith('node');

/** Samples delivered msgs/s (the step's unique arrivals), server CPU and RSS every SAMPLE_MS until `until()` says stop. */
class Sampler {
  readonly samples: OverloadSample[] = [];
  private lastArrived = 0;
  private lastCpu: Record<string, number>;
  private lastAt = performance.now();

  constructor(
    private readonly load: Load,
    private readonly step: number,
    private readonly origin: number,
  ) {
    this.lastCpu = readCpu(load.pids);
  }

  async sample(): Promise<OverloadSample> {
    const p = await this.load.progress([this.step]);
    const cpu = readCpu(this.load.pids);
    const now = performance.now();
    const s = (now - this.lastAt) / 1000;
    let cores = 0;
    let rss = 0;
    const rssMiB: Record<string, number> = {};
    for (const [k, v] of Object.entries(cpu)) {
      if (!isServer(k)) continue;
      cores += (v - (this.lastCpu[k] ?? v)) / s;
      try {
        rss += rssMiB[k] = procRssKiB(this.load.pids[k]!) / 1024;
      } catch {
        // exited
      }
    }
    const out = { t: (now - this.origin) / 1000, deliveredPerSec: (p.appUnique - this.lastArrived) / s, serverCores: cores, serverRssMiB: rss, rssMiB };
    this.lastArrived = p.appUnique;
    this.lastCpu = cpu;
    this.lastAt = now;
    this.samples.push(out);
    return out;
  }

  /** Samples until `done` settles. */
  async during(done: Promise<unknown>): Promise<void> {
    let finished = false;
    void done.then(
      () => (finished = true),
      () => (finished = true),
    );
    while (!finished) {
      await sleep(SAMPLE_MS);
      await this.sample();
    }
  }
}

async function serverIdleCores(load: Load, ms: number): Promise<number> {
  const pick = (c: Record<string, number>): number => Object.entries(c).reduce((a, [k, v]) => a + (isServer(k) ? v : 0), 0);
  const c0 = pick(readCpu(load.pids));
  const t0 = performance.now();
  await sleep(ms);
  return (pick(readCpu(load.pids)) - c0) / ((performance.now() - t0) / 1000);
}

/**
 * Holds `sustained` msgs/s for `steadyS` seconds, then offers twice that for `seconds`, sampling
 * twice a second, then waits for the servers to fall idle. The steady state is long enough for the
 * cells' bounded caches to fill at the sustained rate (custody's settled statuses, 100,000 per
 * cell), so that the overload's memory is compared with a plateau, not with a heap still filling. `share(k)` is generator k's share of a rate.
 */
export async function overloadPhase(
  load: Load,
  share: (k: number) => number,
  o: { sustained: number; seconds: number; steadyS: number; settleMs: number; nextStep: () => number },
): Promise<OverloadResult> {
  const offered = 2 * o.sustained;
  const steadyMs = o.steadyS * 1000;
  await sleep(2000);
  const idleCores = await serverIdleCores(load, 3000);
  log(`overload: servers idle at ${fmt(idleCores, 2)} cores; ${fmt(o.sustained)} msg/s for ${steadyMs / 1000} s, then ${fmt(offered)} msg/s for ${o.seconds} s`);

  const steadyStep = o.nextStep();
  const steadyStart = performance.now();
  const steadySampler = new Sampler(load, steadyStep, steadyStart);
  const steadyRun = load.run({ step: steadyStep, mode: 'open', rate: o.sustained, window: 0, senders: 'all', warmupMs: 0, durationMs: steadyMs, settleMs: 0 }, share);
  await steadySampler.during(steadyRun);
  await steadyRun;
  await load.collect([steadyStep], true);
  // The steady state: the second half of the steady step.
  const late = steadySampler.samples.filter((x) => x.t >= steadyMs / 2000 && x.t <= steadyMs / 1000);
  const steady = {
    deliveredPerSec: late.reduce((a, x) => a + x.deliveredPerSec, 0) / Math.max(1, late.length),
    rssMiB: Math.max(...late.map((x) => x.serverRssMiB)),
  };

  const step = o.nextStep();
  const origin = performance.now();
  const sampler = new Sampler(load, step, origin);
  const run = load.run({ step, mode: 'open', rate: offered, window: 0, senders: 'all', warmupMs: 0, durationMs: o.seconds * 1000, settleMs: o.settleMs }, share);
  // Sample through the schedule and the settle, then on until idle (or the wait runs out).
  await sampler.during(run);
  const { runs, cores } = await run;
  let recoveryS: number | undefined;
  const recoveryEnd = origin + o.seconds * 1000 + RECOVERY_WAIT_MS;
  for (;;) {
    const idleAt = sampler.samples.find((x) => x.t > o.seconds && x.serverCores <= idleCores + IDLE_MARGIN);
    if (idleAt) {
      // The sample covers the SAMPLE_MS before it: idle from its start.
      recoveryS = Math.max(0, idleAt.t - SAMPLE_MS / 1000 - o.seconds);
      break;
    }
    if (performance.now() > recoveryEnd) break;
    await sleep(SAMPLE_MS);
    await sampler.sample();
  }
  const accepted = runs.reduce((s, r) => s + r.accepted, 0);
  await load.awaitArrivals([step], accepted, o.settleMs, 3000);
  const r = mergeStep(step, `overload ${fmt(offered)} msg/s`, offered, runs, (await load.collect([step], false))[0]!, cores);
  await load.collect([step], true);

  const during = sampler.samples.filter((x) => x.t >= 1.5 && x.t <= o.seconds);
  const result: OverloadResult = {
    sustained: o.sustained,
    offered,
    seconds: o.seconds,
    idleCores,
    steady,
    samples: [...steadySampler.samples.map((x) => ({ ...x, t: x.t - steadyMs / 1000 })), ...sampler.samples],
    minDeliveredPerSec: Math.min(...during.map((x) => x.deliveredPerSec)),
    meanDeliveredPerSec: during.reduce((a, x) => a + x.deliveredPerSec, 0) / Math.max(1, during.length),
    rssPeakMiB: Math.max(...sampler.samples.map((x) => x.serverRssMiB)),
    step: r,
    recoveryS,
  };
  const procs = Object.keys(result.samples[0]?.rssMiB ?? {});
  log(`  second  delivered/s  server cores  server RSS MiB (${procs.join(', ')})`);
  for (const x of result.samples) {
    log(`  ${x.t.toFixed(1).padStart(6)}  ${fmt(x.deliveredPerSec).padStart(11)}  ${x.serverCores.toFixed(2).padStart(12)}  ${x.serverRssMiB.toFixed(0).padStart(14)} (${procs.map((k) => fmt(x.rssMiB[k] ?? NaN)).join(', ')})`);
  }
  log(
    `  overload: delivered min ${fmt(result.minDeliveredPerSec)} / mean ${fmt(result.meanDeliveredPerSec)} msg/s (sustained ${fmt(o.sustained)}); RSS ${fmt(steady.rssMiB)} → peak ${fmt(result.rssPeakMiB)} MiB; ` +
      `send→status p99 ${fmt(r.status.p99)} ms; stored ${r.stored}, refused BUSY ${r.retryCodes['BUSY'] ?? 0} (sent again), failed ${JSON.stringify(r.failed)}, lost ${r.lost}; idle again ${recoveryS === undefined ? `not within ${RECOVERY_WAIT_MS / 1000} s` : `${fmt(recoveryS, 1)} s`} after the load stopped`,
  );
  return result;
}
