/*
 * The one token bucket of the server: per-session operation limits, typing
 * indicators, failed registrations per source. Time is passed in (ms) so callers
 * on a hot path read the clock once, and a bucket allocates nothing per take.
 */

/** `rate` tokens per second, at most `burst` saved up; starts full. */
export class TokenBucket {
  private tokens: number;
  private at: number;

  constructor(private readonly rate: number, private readonly burst: number, now = Date.now()) {
    this.tokens = burst;
    this.at = now;
  }

  private refill(now: number): void {
    if (now > this.at) {
      this.tokens = Math.min(this.burst, this.tokens + ((now - this.at) * this.rate) / 1000);
      this.at = now;
    }
  }

  /** Takes `n` tokens if there are that many (nothing otherwise). A cost above the burst never passes. */
  take(n = 1, now = Date.now()): boolean {
    this.refill(now);
    if (this.tokens < n) return false;
    this.tokens -= n;
    return true;
  }

  /** Tokens available now. */
  level(now = Date.now()): number {
    this.refill(now);
    return this.tokens;
  }

  /** True when the bucket is full again: it holds no memory of past use and can be dropped. */
  idle(now = Date.now()): boolean {
    return this.level(now) >= this.burst;
  }
}

/**
 * Token buckets by key (a source address, a user), bounded to `max` keys. A key
 * whose bucket is full again carries no state and is dropped first; when every
 * bucket is in use the oldest key is forgotten, which only ever lets it start
 * afresh (a flood of keys cannot grow memory).
 */
export class KeyedBuckets {
  private readonly buckets = new Map<string, TokenBucket>();
  private prunedAt = 0;

  constructor(private readonly rate: number, private readonly burst: number, private readonly max = 100_000) {}

  /** Takes `n` tokens from `key`'s bucket if it has them. */
  take(key: string, n = 1, now = Date.now()): boolean {
    return this.bucket(key, now).take(n, now);
  }

  /** True if `key` has at least `n` tokens now (nothing is taken). */
  has(key: string, n = 1, now = Date.now()): boolean {
    const b = this.buckets.get(key);
    return b === undefined || b.level(now) >= n;
  }

  get size(): number {
    return this.buckets.size;
  }

  private bucket(key: string, now: number): TokenBucket {
    let b = this.buckets.get(key);
    if (b) return b;
    if (this.buckets.size >= this.max) this.prune(now);
    if (this.buckets.size >= this.max) this.buckets.delete(this.buckets.keys().next().value!);
    b = new TokenBucket(this.rate, this.burst, now);
    this.buckets.set(key, b);
    return b;
  }

  /** Drops idle buckets; at most once a second, so a table full of busy keys costs O(1) per new key. */
  private prune(now: number): void {
    if (now - this.prunedAt < 1000) return;
    this.prunedAt = now;
    for (const [k, b] of this.buckets) if (b.idle(now)) this.buckets.delete(k);
  }
}

/** Per-account budgets (session/budgets.ts) count in windows of this length. */
export const BUDGET_WINDOW_MS = 10_000;

/**
 * An account's budget of one window for a rate: the allowance every cell spends on
 * its own (`free`), the shared pool leased from KV, and the most one cell can spend
 * in a window (its allowance and the whole pool): what one operation may cost at most.
 */
export function budgetShares(ratePerSec: number, maxDevices: number): { free: number; pool: number; oneCell: number } {
  const budget = Math.floor((ratePerSec * BUDGET_WINDOW_MS) / 1000);
  const free = Math.floor(budget / (2 * maxDevices));
  const pool = budget - free * maxDevices;
  return { free, pool, oneCell: free + pool };
}
