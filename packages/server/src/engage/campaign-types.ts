import { isName, isSystemName, SYSTEM_PREFIX } from '@gravitas/protocol';

/*
 * Publishers and campaigns as stored in the `<prefix>_campaigns` and
 * `<prefix>_publishers` KV buckets (msgpack). One definition for the admin API
 * (which writes them) and the campaign runner (which reads them).
 *
 * Keys:
 *   publishers bucket:  p.<publisherId>                 → Publisher
 *   campaigns bucket:   c.<campaignId>                  → Campaign
 *                       progress.<campaignId>           → CampaignProgress
 *                       sent.<campaignId>.<user>        → empty (this recipient was sent the campaign)
 */

/**
 * admin: everything, publishers included. campaigns: create and run its own campaigns.
 * reports: read reports of its own campaigns (and user reports restricted to them).
 * auditor: read every campaign and every report.
 */
export const ROLES = ['admin', 'campaigns', 'reports', 'auditor'] as const;
export type Role = (typeof ROLES)[number];

export interface Publisher {
  id: string;
  name: string;
  roles: Role[];
  /** sha256 of the API key secret, hex. */
  keyHash: string;
  /** The sender name campaign messages come from (a user name, e.g. `pub-acme`). */
  sender: string;
  createdAt: number;
}

/** A predicate over profile attributes: one comparison, or all/any of several. */
export type Predicate =
  | { attr: string; op: 'eq' | 'ne'; value: string | number | boolean }
  | { attr: string; op: 'lt' | 'lte' | 'gt' | 'gte'; value: number }
  | { attr: string; op: 'in'; values: Array<string | number | boolean> }
  | { attr: string; op: 'exists' }
  | { all: Predicate[] }
  | { any: Predicate[] };

export type Audience = { users: string[] } | { where: Predicate };

export const CAMPAIGN_STATES = ['draft', 'running', 'paused', 'done'] as const;
export type CampaignState = (typeof CAMPAIGN_STATES)[number];

export interface Campaign {
  id: string;
  publisher: string;
  name: string;
  audience: Audience;
  content: { text: string; push: boolean };
  /** Not before this time (ms); absent: as soon as started. */
  startAt?: number;
  /** Recipients per second, cluster-wide. */
  ratePerSec: number;
  state: CampaignState;
  createdAt: number;
  startedAt?: number;
  doneAt?: number;
}

/** How far a running campaign got (written by the runner, read by status). */
export interface CampaignProgress {
  /** Send jobs the expansion produced (known once expansion finished). */
  batches?: number;
  /** Send jobs finished. */
  batchesDone: number;
  recipients: number;
  sent: number;
  /** Recipients that could not be sent to (no such user, no device), by code. */
  failed: Record<string, number>;
}

export const isCampaignId = (s: string): boolean => isName(s, 64);

/**
 * Evaluates a predicate over a profile's attributes (missing attribute: false,
 * except `ne`). Only the profile's own attributes count, for every op: a name
 * like `constructor` or `toString` must not find the prototype's function (an
 * `exists` on it matched every profile).
 */
export function matches(p: Predicate, attrs: Record<string, unknown>): boolean {
  if ('all' in p) return p.all.every((q) => matches(q, attrs));
  if ('any' in p) return p.any.some((q) => matches(q, attrs));
  const v = Object.hasOwn(attrs, p.attr) ? attrs[p.attr] : undefined;
  switch (p.op) {
    case 'exists':
      return v !== undefined;
    case 'eq':
      return v === p.value;
    case 'ne':
      return v !== p.value;
    case 'in':
      return p.values.some((x) => x === v);
    case 'lt':
      return typeof v === 'number' && v < p.value;
    case 'lte':
      return typeof v === 'number' && v <= p.value;
    case 'gt':
      return typeof v === 'number' && v > p.value;
    case 'gte':
      return typeof v === 'number' && v >= p.value;
  }
}

/**
 * The sender name of a publisher's campaign messages, in the system's namespace
 * (a leading `_`, which no client can register): a publisher's `sender` setting
 * names it, the namespace makes it unforgeable.
 */
export function systemSender(sender: string): string {
  return isSystemName(sender) ? sender : `${SYSTEM_PREFIX}${sender}`;
}

/** The id of a campaign's message, the same for every recipient (so every retry is de-duplicated), in the system's namespace. */
export function campaignMessageId(campaign: string): string {
  return `${SYSTEM_PREFIX}c-${campaign}`;
}

// ---- errors ---------------------------------------------------------------------

/** Stable codes of campaign failures: bad input, missing records, state conflicts, storage (the admin API answers them as they are). */
export const CampaignErrorCode = {
  BAD_REQUEST: 'BAD_REQUEST',
  NOT_FOUND: 'NOT_FOUND',
  CONFLICT: 'CONFLICT',
  PAYLOAD_TOO_LARGE: 'PAYLOAD_TOO_LARGE',
  UNAVAILABLE: 'UNAVAILABLE',
} as const;
export type CampaignErrorCode = (typeof CampaignErrorCode)[keyof typeof CampaignErrorCode];

export class CampaignError extends Error {
  override name = 'CampaignError';
  constructor(readonly code: CampaignErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
  }
}
