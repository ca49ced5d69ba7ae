import { build, decodeFromCompressedBase64, encodeIntoCompressedBase64, type Histogram } from 'hdr-histogram-js';
import { HarnessError } from './errors.js';

/*
 * Latency without coordinated omission. A sender works from a schedule of *intended* send times
 * (open loop, `Pacer`); every latency is receive time − intended send time. When the sender (or
 * the system under test) stalls, the messages that should have gone out meanwhile still go out,
 * late, and their whole wait is counted — measuring from the actual send would hide the stall.
 *
 * Values are integer microseconds in HDR histograms (3 significant digits, up to 10 minutes),
 * kept per interval and for the whole run, shipped between processes as compressed base64 and
 * merged by adding.
 */

const HIGHEST_US = 600e6;

export function newHistogram(): Histogram {
  // The plain JS build: the WASM one needs async init and an explicit destroy().
  return build({ lowestDiscernibleValue: 1, highestTrackableValue: HIGHEST_US, numberOfSignificantValueDigits: 3, useWebAssembly: false });
}

/** Records `ms` clamped to [1 µs, 10 min], so a clock step or a pathological sample cannot throw. */
export function recordMs(h: Histogram, ms: number): void {
  h.recordValue(Math.min(HIGHEST_US, Math.max(1, Math.round(ms * 1000))));
}

export function encodeHistogram(h: Histogram): string {
  return encodeIntoCompressedBase64(h);
}

export function decodeHistogram(s: string): Histogram {
  try {
    const h = decodeFromCompressedBase64(s, 32, false);
    // Decoded histograms track only up to their max value; widen so adding larger ones never throws.
    const out = newHistogram();
    out.add(h);
    return out;
  } catch (e) {
    throw new HarnessError('HISTOGRAM_DECODE', `not an encoded histogram: ${(e as Error).message}`, { cause: e });
  }
}

/** One histogram holding every value of the encoded ones (empty strings are skipped). */
export function mergeEncoded(encoded: Iterable<string>): Histogram {
  const out = newHistogram();
  for (const s of encoded) if (s !== '') out.add(decodeHistogram(s));
  return out;
}

/** Percentiles in ms, to 3 significant digits; NaN when nothing was recorded (JSON turns that into null). */
export interface LatencyPercentiles {
  count: number;
  p50: number;
  p90: number;
  p99: number;
  p999: number;
  max: number;
}

export function percentiles(h: Histogram): LatencyPercentiles {
  if (h.totalCount === 0) return { count: 0, p50: NaN, p90: NaN, p99: NaN, p999: NaN, max: NaN };
  const ms = (q: number): number => h.getValueAtPercentile(q) / 1000;
  // max at histogram resolution (like the percentiles), so it is the same before and after encoding.
  return { count: h.totalCount, p50: ms(50), p90: ms(90), p99: ms(99), p999: ms(99.9), max: ms(100) };
}

/** One measured quantity of a generator (latency, connect time...): the current interval and the whole run. */
export class LatencyRecorder {
  private interval = newHistogram();
  private readonly all = newHistogram();

  /** `intendedMs` from the schedule, `receivedMs` on the same clock (performance.timeOrigin + now() across processes of one host). */
  record(intendedMs: number, receivedMs: number): void {
    this.add(receivedMs - intendedMs);
  }

  /** Records a duration directly (connect time, send lag). */
  add(ms: number): void {
    recordMs(this.interval, ms);
    recordMs(this.all, ms);
  }

  /** Values recorded in the current interval. */
  get count(): number {
    return this.interval.totalCount;
  }

  /** Ends the current interval: its histogram, encoded, and a fresh one for the next. */
  rotate(): string {
    const s = encodeHistogram(this.interval);
    this.interval = newHistogram();
    return s;
  }

  get total(): Histogram {
    return this.all;
  }
}

/**
 * Intended send times of an open-loop schedule whose rate (msgs/s) may change over time, e.g.
 * with the diurnal curve. `due(now)` returns every send time up to `now` that has not been taken
 * yet: after a stall they come out together, each with its own intended time. At most `maxBacklog`
 * are returned per call; older ones are dropped and counted in `skipped` (bounded memory when a
 * generator cannot keep up — which then flags it saturated).
 */
export class Pacer {
  private next: number;
  skipped = 0;

  constructor(
    private readonly rateAt: (tMs: number) => number,
    startMs: number,
    private readonly maxBacklog = 100_000,
    /** Uniform in [0, 1): offsets the first send so that generators started together do not send in lockstep. */
    phase = 0,
  ) {
    this.next = startMs + phase * this.gap(startMs);
  }

  private gap(t: number): number {
    const r = this.rateAt(t);
    // A zero rate re-checks every 100 ms of schedule time instead of never.
    return r > 0 ? 1000 / r : 100;
  }

  due(nowMs: number): number[] {
    const out: number[] = [];
    while (this.next <= nowMs) {
      if (this.rateAt(this.next) > 0) {
        out.push(this.next);
        // Trim in chunks, not one shift() per message: amortised O(1) however long the stall.
        if (out.length >= 2 * this.maxBacklog) this.drop(out);
      }
      this.next += this.gap(this.next);
    }
    if (out.length > this.maxBacklog) this.drop(out);
    return out;
  }

  private drop(out: number[]): void {
    const n = out.length - this.maxBacklog;
    out.splice(0, n);
    this.skipped += n;
  }

  /** When the next message is due (to sleep until then). */
  get nextAt(): number {
    return this.next;
  }
}
