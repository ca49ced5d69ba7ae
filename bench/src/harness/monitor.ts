import { readFileSync } from 'node:fs';
import { cpus, freemem, totalmem } from 'node:os';
import { monitorEventLoopDelay, type IntervalHistogram } from 'node:perf_hooks';
import { procCpuSeconds, procRssKiB } from '../procs.js';
import type { GeneratorSample, ProcSample } from './result.js';

/*
 * Per-interval readings of the processes in a run: a generator watches itself (CPU, RSS,
 * event-loop delay) so that it can say when *it* is the bottleneck; the runner reads the server
 * processes from /proc.
 */

/** A generator's view of its own load. Call `sample()` once per interval. */
export class SelfMonitor {
  private readonly loop: IntervalHistogram = monitorEventLoopDelay({ resolution: 10 });
  private cpu = process.cpuUsage();
  private at = performance.now();

  constructor(private readonly saturation: { cpu: number; loopLagMs: number }) {
    this.loop.enable();
  }

  sample(skipped: number): GeneratorSample {
    const now = performance.now();
    const d = process.cpuUsage(this.cpu);
    this.cpu = process.cpuUsage();
    const cpu = ((d.user + d.system) / 1000 / Math.max(1, now - this.at)) * 100;
    this.at = now;
    // The histogram is in ns and includes the sampling resolution itself.
    const loopLagP99Ms = Math.max(0, this.loop.percentile(99) / 1e6 - 10);
    const loopLagMaxMs = Math.max(0, this.loop.max / 1e6 - 10);
    this.loop.reset();
    const saturated = cpu >= this.saturation.cpu * 100 || loopLagP99Ms >= this.saturation.loopLagMs || skipped > 0;
    return { cpu, rssMiB: process.memoryUsage.rss() / 2 ** 20, loopLagP99Ms, loopLagMaxMs, skipped, saturated };
  }

  stop(): void {
    this.loop.disable();
  }
}

/** CPU % and RSS of named processes between calls of `sample()` (Linux /proc). */
export class ProcSampler {
  private last = new Map<string, number>();
  private at = performance.now();

  constructor(private readonly pids: Readonly<Record<string, number>>) {
    for (const [name, pid] of Object.entries(pids)) this.last.set(name, tryRead(() => procCpuSeconds(pid)) ?? 0);
  }

  sample(): Record<string, ProcSample> {
    const now = performance.now();
    const s = Math.max(1e-3, (now - this.at) / 1000);
    this.at = now;
    const out: Record<string, ProcSample> = {};
    for (const [name, pid] of Object.entries(this.pids)) {
      const cpu = tryRead(() => procCpuSeconds(pid));
      const rss = tryRead(() => procRssKiB(pid));
      if (cpu === undefined || rss === undefined) continue; // exited
      out[name] = { cpu: ((cpu - (this.last.get(name) ?? cpu)) / s) * 100, rssMiB: rss / 1024 };
      this.last.set(name, cpu);
    }
    return out;
  }
}

function tryRead(f: () => number): number | undefined {
  try {
    return f();
  } catch {
    return undefined;
  }
}

/**
 * Busy share of the whole host between calls of `sample()` (Linux /proc/stat, all CPUs): 100 × cores
 * when every core is busy. Told apart from the processes' own CPU, it shows a host that is out of
 * CPU although no single process is pinned — the usual state of a one-host run.
 */
export class HostSampler {
  private last = readHostTicks();
  readonly cores = cpus().length;

  sample(): ProcSample & { cores: number } {
    const now = readHostTicks();
    const busy = now.busy - this.last.busy;
    const total = now.total - this.last.total;
    this.last = now;
    return { cpu: total > 0 ? (busy / total) * 100 * this.cores : 0, rssMiB: (totalmem() - freemem()) / 2 ** 20, cores: this.cores };
  }
}

function readHostTicks(): { busy: number; total: number } {
  try {
    const line = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0] ?? '';
    // cpu user nice system idle iowait irq softirq steal ...
    const f = line.trim().split(/\s+/).slice(1).map(Number);
    const total = f.slice(0, 8).reduce((a, b) => a + b, 0);
    const idle = (f[3] ?? 0) + (f[4] ?? 0);
    return { busy: total - idle, total };
  } catch {
    return { busy: 0, total: 0 };
  }
}
