import { isName, unpack, type PresenceState } from '@gravitas/protocol';
import type { SocialRecord } from '../core/ports.js';

/*
 * The stored and published shapes of presence (docs/social.md): one KV record per
 * user, `{ d: { <device>: { c: cell, i: session, e: epoch, a: 0|1, t: ms } }, l?: last seen ms }`,
 * and the view its writer publishes on `<prefix>.pres.<user>`. Decoders read
 * anything a foreign or broken writer left as "nothing" rather than failing.
 */

/** Device entries read from one record, at most (a user has at most limits.maxDevicesPerUser). */
export const MAX_ENTRIES = 64;

export interface DeviceEntry { c: string; i: string; e: number; a: 0 | 1; t: number }
export interface PresRecord { d: Record<string, DeviceEntry>; l?: number }

/** What watchers are told: state, last seen (offline only), cells holding sessions, KV revision (orders views). */
export interface View { s: PresenceState; l: number | undefined; c: string[]; r: number }

export const EMPTY: PresRecord = { d: {} };
const STATES = new Set<string>(['online', 'away', 'offline']);
const num = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);
const cellName = (v: unknown): v is string => typeof v === 'string' && isName(v, 128);

export function decodePresRecord(v: Uint8Array | undefined): PresRecord {
  if (!v || v.length === 0) return EMPTY;
  let o: Record<string, unknown>;
  try {
    o = unpack(v) as Record<string, unknown>;
  } catch {
    return EMPTY;
  }
  if (typeof o !== 'object' || o === null || typeof o.d !== 'object' || o.d === null) return EMPTY;
  const d: Record<string, DeviceEntry> = {};
  let n = 0;
  for (const [dev, x] of Object.entries(o.d as Record<string, Record<string, unknown>>)) {
    if (++n > MAX_ENTRIES) break;
    if (!isName(dev, 32) || typeof x !== 'object' || x === null) continue;
    if (cellName(x.c) && typeof x.i === 'string' && num(x.e) && (x.a === 0 || x.a === 1) && num(x.t)) d[dev] = { c: x.c, i: x.i, e: x.e, a: x.a, t: x.t };
  }
  return num(o.l) ? { d, l: o.l } : { d };
}

/** A view published on a presence subject; throws on anything malformed. */
export function decodeView(v: unknown): View {
  const o = v as Record<string, unknown>;
  if (typeof o === 'object' && o !== null && typeof o.s === 'string' && STATES.has(o.s) && num(o.r) && (o.l === undefined || num(o.l))) {
    if (Array.isArray(o.c) && o.c.length <= MAX_ENTRIES && o.c.every(cellName)) return { s: o.s as PresenceState, l: o.l as number | undefined, c: o.c as string[], r: o.r };
  }
  throw new TypeError('malformed presence view');
}

export const viewKey = (v: View): string => `${v.s}:${v.l ?? ''}`;
export const sameView = (a: View, b: View): boolean => a.s === b.s && a.l === b.l && a.c.length === b.c.length && a.c.every((c, i) => c === b.c[i]);
/** Viewer V sees owner O iff O lists V as a contact, shows its presence to contacts, and has not blocked V. */
export const visible = (owner: SocialRecord, viewer: string): boolean => owner.prefs.presence === 'contacts' && owner.contacts.has(viewer) && !owner.blocked.has(viewer);

/**
 * When the session of entry `x` ended with its cell (the time the cell died if
 * known, else the entry's last write), or undefined while its cell may be live.
 */
export type GoneAt = (x: DeviceEntry) => number | undefined;

/** A copy of `rec` without the entries on gone cells, their end folded into last seen; `dropped` if there were any. */
export function withoutGone(rec: PresRecord, goneAt: GoneAt): { after: PresRecord; dropped: boolean } {
  const after: PresRecord = { d: { ...rec.d }, ...(rec.l !== undefined && { l: rec.l }) };
  let dropped = false;
  for (const [dev, x] of Object.entries(after.d)) {
    const end = goneAt(x);
    if (end === undefined) continue;
    delete after.d[dev];
    after.l = Math.max(after.l ?? 0, end);
    dropped = true;
  }
  return { after, dropped };
}

/** What watchers see of `rec` (read at revision `rev`): entries on gone cells count as ended. */
export function derive(rec: PresRecord, rev: number, goneAt: GoneAt): View {
  let online = false;
  let last = rec.l;
  const cells = new Set<string>();
  for (const x of Object.values(rec.d)) {
    const end = goneAt(x);
    if (end !== undefined) {
      last = Math.max(last ?? 0, end);
      continue;
    }
    cells.add(x.c);
    if (x.a === 0) online = true;
  }
  const s: PresenceState = online ? 'online' : cells.size > 0 ? 'away' : 'offline';
  return { s, l: s === 'offline' ? last : undefined, c: [...cells].sort(), r: rev };
}
