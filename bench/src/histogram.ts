import { build, type Histogram } from 'hdr-histogram-js';

/** Latency percentiles in milliseconds. */
export interface LatencySummary {
  count: number;
  p50: number;
  p99: number;
  p999: number;
  max: number;
}

const HIGHEST_US = 60e6;

/** Records latencies in integer microseconds (hdr needs integers); reports in ms. */
export class LatencyHistogram {
  // Plain JS implementation: the WASM one needs async init and explicit destroy().
  private readonly h: Histogram = build({
    lowestDiscernibleValue: 1,
    highestTrackableValue: HIGHEST_US,
    numberOfSignificantValueDigits: 3,
    useWebAssembly: false,
  });

  recordMicros(us: number): void {
    // Clamp so a sub-µs or pathological sample can't throw or resize the histogram.
    this.h.recordValue(Math.min(HIGHEST_US, Math.max(1, Math.round(us))));
  }

  /** Convenience for `const t = performance.now(); ...; hist.recordSince(t)`. */
  recordSince(startMs: number): void {
    this.recordMicros((performance.now() - startMs) * 1000);
  }

  get count(): number {
    return this.h.totalCount;
  }

  reset(): void {
    this.h.reset();
  }

  summary(): LatencySummary {
    const ms = (us: number): number => us / 1000;
    return {
      count: this.h.totalCount,
      p50: ms(this.h.getValueAtPercentile(50)),
      p99: ms(this.h.getValueAtPercentile(99)),
      p999: ms(this.h.getValueAtPercentile(99.9)),
      max: ms(this.h.maxValue),
    };
  }
}
