import type { ConfigCheck } from './check.js';

/** Campaign tracking tiers (docs/campaigns.md): the node's LMDB, shipped to the JetStream archive. */
export interface TrackingConfig {
  /** Records older than this leave the local tier (once archived). */
  maxAgeMs: number;
  /** Local tier budget in bytes of records; past it, with nothing archived to evict, intake answers RETRY_LATER. */
  maxBytes: number;
  /** Archive retention (JetStream max age of the tracking stream). */
  archiveMaxAgeMs: number;
  /** Records shipped to the archive per batch. */
  shipBatch: number;
  /** Feedback timestamps further than this from the server clock are refused (BAD_MESSAGE). */
  maxClockSkewMs: number;
}

/** Message campaigns (docs/campaigns.md). */
export interface CampaignConfig {
  /** Recipients per send job. */
  batchSize: number;
  /** Default and upper bound of a campaign's send rate (recipients per second, cluster-wide). */
  defaultRatePerSec: number;
  maxRatePerSec: number;
  /** Explicit audience lists at most this long. */
  maxListSize: number;
}

export const DEFAULT_TRACKING: TrackingConfig = {
  maxAgeMs: 7 * 24 * 3600_000,
  maxBytes: 1024 ** 3,
  archiveMaxAgeMs: 400 * 24 * 3600_000,
  shipBatch: 512,
  maxClockSkewMs: 24 * 3600_000,
};

export const DEFAULT_CAMPAIGNS: CampaignConfig = {
  batchSize: 100,
  defaultRatePerSec: 1000,
  maxRatePerSec: 100_000,
  maxListSize: 100_000,
};

export function validateTracking(c: ConfigCheck): TrackingConfig {
  const T = DEFAULT_TRACKING;
  return {
    maxAgeMs: c.int('tracking.maxAgeMs', T.maxAgeMs, 1000, 10 * 365 * 24 * 3600_000),
    maxBytes: c.int('tracking.maxBytes', T.maxBytes, 64 * 1024, 2 ** 46),
    archiveMaxAgeMs: c.int('tracking.archiveMaxAgeMs', T.archiveMaxAgeMs, 1000, 100 * 365 * 24 * 3600_000),
    shipBatch: c.int('tracking.shipBatch', T.shipBatch, 1, 10_000),
    maxClockSkewMs: c.int('tracking.maxClockSkewMs', T.maxClockSkewMs, 1000, 365 * 24 * 3600_000),
  };
}

export function validateCampaigns(c: ConfigCheck): CampaignConfig {
  const C = DEFAULT_CAMPAIGNS;
  const campaigns: CampaignConfig = {
    batchSize: c.int('campaigns.batchSize', C.batchSize, 1, 1000),
    defaultRatePerSec: c.int('campaigns.defaultRatePerSec', C.defaultRatePerSec, 1, 1_000_000),
    maxRatePerSec: c.int('campaigns.maxRatePerSec', C.maxRatePerSec, 1, 1_000_000),
    maxListSize: c.int('campaigns.maxListSize', C.maxListSize, 1, 10_000_000),
  };
  if (campaigns.defaultRatePerSec > campaigns.maxRatePerSec) c.fail('campaigns.defaultRatePerSec', 'must not exceed campaigns.maxRatePerSec');
  return campaigns;
}
