import { MAX_WAKE_LIFETIME_MS, REACH_LIMITS } from '@gravitas/protocol';
import type { ConfigCheck } from './check.js';

/** The `relay` section of a node's config (docs/relay.md, docs/operations.md). */
export interface RelayConfig {
  /** Off: reachability reports are still taken, but no device is woken through a peer. */
  enabled: boolean;
  /** Lifetime of a wake token and of the connect hint inside it. */
  tokenTtlMs: number;
  /** A device's report counts for at most this long, whatever ttlMs it asked for. */
  maxReportTtlMs: number;
  /** One report per device within this interval; sooner ones are answered RATE_LIMITED. */
  minReportIntervalMs: number;
  /** Relayers remembered per target device (when full, the least trusted tier goes first, then the report expiring soonest). */
  maxRelayersPerTarget: number;
  /** The window of both rate limits below. */
  windowMs: number;
  /** Relay requests for one target device per window, cluster-wide. */
  perTargetPerWindow: number;
  /** Relay requests sent to one relayer device per window, cluster-wide. */
  perRelayerPerWindow: number;
  /** Wake attempts running at once per cell; more are dropped (counted as `busy`). */
  maxInFlight: number;
}

export const DEFAULT_RELAY: RelayConfig = {
  enabled: true,
  tokenTtlMs: 30_000,
  maxReportTtlMs: 10 * 60_000,
  minReportIntervalMs: 1_000,
  maxRelayersPerTarget: 8,
  windowMs: 60_000,
  perTargetPerWindow: 3,
  perRelayerPerWindow: 10,
  maxInFlight: 256,
};

export const RELAY_KEYS = new Set(Object.keys(DEFAULT_RELAY));

export function validateRelayConfig(c: ConfigCheck): RelayConfig {
  const D = DEFAULT_RELAY;
  return {
    enabled: c.bool('relay.enabled', D.enabled),
    tokenTtlMs: c.int('relay.tokenTtlMs', D.tokenTtlMs, 1000, MAX_WAKE_LIFETIME_MS),
    maxReportTtlMs: c.int('relay.maxReportTtlMs', D.maxReportTtlMs, REACH_LIMITS.minTtlMs, REACH_LIMITS.maxTtlMs),
    minReportIntervalMs: c.int('relay.minReportIntervalMs', D.minReportIntervalMs, 0, 3_600_000),
    maxRelayersPerTarget: c.int('relay.maxRelayersPerTarget', D.maxRelayersPerTarget, 1, 64),
    windowMs: c.int('relay.windowMs', D.windowMs, 1000, 24 * 3600_000),
    perTargetPerWindow: c.int('relay.perTargetPerWindow', D.perTargetPerWindow, 1, 1000),
    perRelayerPerWindow: c.int('relay.perRelayerPerWindow', D.perRelayerPerWindow, 1, 1000),
    maxInFlight: c.int('relay.maxInFlight', D.maxInFlight, 1, 100_000),
  };
}
