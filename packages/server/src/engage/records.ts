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
  /** Idempotency key, per user: the device's event id, or `sent:<campaign>` for the runner's record. */
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
/** Server-made event ids (a colon no device id can contain). */
const SERVER_EID = /^sent:[A-Za-z0-9_-]{1,64}$/;

export function decodeRecord(v: unknown): TrackingRecord {
  const o = v as Record<string, unknown> | null;
  const num = (x: unknown): x is number => typeof x === 'number' && Number.isInteger(x) && x >= 0;
  if (
    typeof o === 'object' && o !== null &&
    typeof o.eid === 'string' && (isName(o.eid, 200) || SERVER_EID.test(o.eid)) &&
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
