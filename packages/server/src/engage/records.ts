import { CAMPAIGN_EVENTS, isName, type CampaignEvent } from '@gravitas/protocol';

/*
 * Campaign tracking records (docs/campaigns.md): what the tracking tiers (the
 * node's LMDB and the JetStream archive) hold, in one shape. Every decoder checks
 * shapes: records cross threads, processes and storage.
 */

/** Events a record can carry: what devices report, plus `sent` written by the campaign runner. */
export const TRACKING_EVENTS = ['sent', ...CAMPAIGN_EVENTS] as const;
export type TrackingEvent = 'sent' | CampaignEvent;

export interface TrackingRecord {
  /** Idempotency key: the device's event id (`sent`: `<campaign>.<user>.sent`). */
  eid: string;
  /** Campaign id. */
  c: string;
  /** User and device the event is about (device '_' for `sent`). */
  u: string;
  d: string;
  ev: TrackingEvent;
  /** When it happened (device clock for feedback, server clock for `sent`), ms. */
  ts: number;
  /** When a cell took it, ms (server clock). */
  at: number;
  /** The user's profile version at `at` (0: no profile yet). */
  pv: number;
}

const EVENTS = new Set<string>(TRACKING_EVENTS);

export function decodeRecord(v: unknown): TrackingRecord {
  const o = v as Record<string, unknown> | null;
  const num = (x: unknown): x is number => typeof x === 'number' && Number.isInteger(x) && x >= 0;
  if (
    typeof o === 'object' && o !== null &&
    typeof o.eid === 'string' && isName(o.eid, 200) &&
    typeof o.c === 'string' && isName(o.c) &&
    typeof o.u === 'string' && isName(o.u) &&
    typeof o.d === 'string' && isName(o.d, 32) &&
    typeof o.ev === 'string' && EVENTS.has(o.ev) &&
    num(o.ts) && num(o.at) && num(o.pv)
  ) {
    return { eid: o.eid, c: o.c, u: o.u, d: o.d, ev: o.ev as TrackingEvent, ts: o.ts, at: o.at, pv: o.pv };
  }
  throw new TypeError('malformed tracking record');
}
