import { MAX_HINT_LIFETIME_MS } from '@gravitas/protocol';
import type { ConfigCheck } from './check.js';

/** Gravitation (docs/gravitation.md): sessions that talk to each other move onto one cell. */
export interface GravityConfig {
  /** Off: no exchanges and no hints; traffic is still counted for the locality metric. */
  enabled: boolean;
  /** Mean time between a cell's exchange attempts (each waits 0.5–1.5× this, jittered). */
  intervalMs: number;
  /** After an exchange, the same two cells do not exchange again for this long. */
  cooldownMs: number;
  /** Load tolerance: no cell takes sessions beyond (1 + epsilon) × the cluster mean. */
  epsilon: number;
  /** Sessions moved by one exchange (both directions together). */
  maxMovesPerExchange: number;
  /** Sessions one cell sends away per second at most (token bucket, burst = maxMovesPerExchange). */
  migrationsPerSec: number;
  /** Entries of the per-cell (session, cell) traffic sketch: fixed memory. */
  sketchSize: number;
  /** Traffic counts halve over this time, so placement follows who talks now. */
  halfLifeMs: number;
  /** A session is not moved within this time of connecting (or of its last move). */
  minDwellMs: number;
  /** A move must bring at least this much decayed traffic onto one cell. */
  minGain: number;
  /** Lifetime of the connect hints this cell signs. */
  hintTtlMs: number;
}

export const DEFAULT_GRAVITY: GravityConfig = {
  enabled: true,
  intervalMs: 5_000,
  cooldownMs: 30_000,
  epsilon: 0.1,
  maxMovesPerExchange: 64,
  migrationsPerSec: 50,
  sketchSize: 8192,
  halfLifeMs: 60_000,
  minDwellMs: 30_000,
  minGain: 2,
  hintTtlMs: 30_000,
};

export function validateGravity(c: ConfigCheck): GravityConfig {
  const G = DEFAULT_GRAVITY;
  return {
    enabled: c.bool('gravity.enabled', G.enabled),
    intervalMs: c.int('gravity.intervalMs', G.intervalMs, 100, 3_600_000),
    cooldownMs: c.int('gravity.cooldownMs', G.cooldownMs, 0, 3_600_000),
    epsilon: c.num('gravity.epsilon', G.epsilon, 0.01, 10),
    maxMovesPerExchange: c.int('gravity.maxMovesPerExchange', G.maxMovesPerExchange, 1, 10_000),
    migrationsPerSec: c.int('gravity.migrationsPerSec', G.migrationsPerSec, 1, 100_000),
    sketchSize: c.int('gravity.sketchSize', G.sketchSize, 16, 1_000_000),
    halfLifeMs: c.int('gravity.halfLifeMs', G.halfLifeMs, 100, 7 * 24 * 3600_000),
    minDwellMs: c.int('gravity.minDwellMs', G.minDwellMs, 0, 24 * 3600_000),
    minGain: c.num('gravity.minGain', G.minGain, 0, 1e9),
    hintTtlMs: c.int('gravity.hintTtlMs', G.hintTtlMs, 1000, MAX_HINT_LIFETIME_MS),
  };
}
