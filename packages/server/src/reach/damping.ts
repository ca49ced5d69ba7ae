/*
 * Rate damping of push alerts (docs/push.md, "Damping"). Each (device, chat) has
 * a decaying message count c: on every message c ← c · 2^(−Δt/H) + 1, with H the
 * half-life. At a steady λ messages per minute c settles at λ·H / (60 000 · ln 2),
 * so the rate estimate is
 *
 *   rate = c · ln 2 · 60 000 / H                        (messages per minute)
 *
 * and the coalescing window that starts with a message is
 *
 *   window = min(maxWindow, base × max(1, rate / threshold))
 *
 * A quiet chat gets the base window; a chat that spikes gets one alert per
 * window, the window growing in proportion to its rate, up to maxWindow.
 */

export interface DampingSettings {
  /** The base window (push.coalesceMs). */
  baseMs: number;
  /** Messages per minute above which the window grows. */
  thresholdPerMin: number;
  halfLifeMs: number;
  /** Upper bound of a window (below base: base). */
  maxWindowMs: number;
  /** Keys tracked at most; the least recently used goes first. */
  maxKeys: number;
}

interface Rate { c: number; at: number }

export class Damper {
  private readonly rates = new Map<string, Rate>();

  constructor(private readonly s: DampingSettings) {}

  /** Records one message for `key` at `now`; returns the current rate estimate (messages per minute). */
  observe(key: string, now: number): number {
    const r = this.rates.get(key);
    let c = 1;
    if (r) {
      c = r.c * 2 ** (-Math.max(0, now - r.at) / this.s.halfLifeMs) + 1;
      this.rates.delete(key); // re-inserted last: Map order is recency
    } else if (this.rates.size >= this.s.maxKeys) {
      const oldest = this.rates.keys().next();
      if (!oldest.done) this.rates.delete(oldest.value);
    }
    this.rates.set(key, { c, at: now });
    return (c * Math.LN2 * 60_000) / this.s.halfLifeMs;
  }

  /** The coalescing window for a chat at this rate. */
  window(ratePerMin: number): number {
    const w = this.s.baseMs * Math.max(1, ratePerMin / this.s.thresholdPerMin);
    return Math.round(Math.min(Math.max(this.s.baseMs, this.s.maxWindowMs), w));
  }

  get size(): number {
    return this.rates.size;
  }
}
