import type { KV } from '@nats-io/kv';
import { isName, pack, unpack } from '@gravitas/protocol';
import { casModify } from '../infra/kv.js';

/*
 * Reachability and relay rate state, one KV key per device (`<user>.<device>`) in
 * the bucket `<prefix>_reach` (docs/relay.md):
 *
 *   { r: [[user, device, expiresAt, tier]],  devices that recently reported reaching this one, with
 *                                       the consent they had (0 own device, 1 contact, 2 mutual)
 *     c: [[user, device, until]],       devices this one reported reaching: its consent that they
 *                                       relay for it (the mutual rule), until `until`
 *     w: [ms],                          relay requests for this device (as a target) in the window
 *     s: [ms] }                         relay requests sent via this device (as a relayer) in the window
 *
 * Every change is a compare-and-set, so the rate limits hold cluster-wide. The
 * bucket's max age drops the records of devices nobody talks about any more.
 */

export interface Relayer { user: string; device: string; expiresAt: number; tier: number }
/** A device this one reported reaching: it consents to that device relaying for it until `until`. */
export interface Consent { user: string; device: string; until: number }
export interface ReachRecord { r: Relayer[]; c: Consent[]; w: number[]; s: number[] }

/** Consents kept per device (a report names at most 32 peers; the SDK keeps 64). */
export const MAX_CONSENTS = 64;
const empty = (): ReachRecord => ({ r: [], c: [], w: [], s: [] });

/**
 * Fewer attempts than the default (infra/kv.ts), as this store always had: a wake-up is best effort and
 * fire-and-forget, and a burst of them for one popular relayer should give up
 * (counted as `error`) rather than keep the KV busy for the others.
 */
const REACH_CAS_ATTEMPTS = 8;
/** Timestamps kept per list: the rate limits are at most 1000 per window (relay-config.ts). */
const MAX_STAMPS = 1000;

export const reachKey = (user: string, device: string): string => `${user}.${device}`;

const stamps = (v: unknown): number[] => (Array.isArray(v) ? v.filter((x): x is number => typeof x === 'number' && Number.isFinite(x)).slice(-MAX_STAMPS) : []);

/** Decodes a stored record; anything malformed reads as empty (a foreign writer must not break wake-ups). */
export function decodeReach(v: Uint8Array | undefined): ReachRecord {
  if (!v || v.length === 0) return empty();
  let o: Record<string, unknown>;
  try {
    o = unpack(v) as Record<string, unknown>;
  } catch {
    return empty();
  }
  if (typeof o !== 'object' || o === null) return empty();
  const triples = (v: unknown, max: number, each: (user: string, device: string, n: number, e: unknown[]) => void): void => {
    if (!Array.isArray(v)) return;
    for (const e of v.slice(0, max)) {
      if (Array.isArray(e) && typeof e[0] === 'string' && isName(e[0]) && typeof e[1] === 'string' && isName(e[1], 32) && typeof e[2] === 'number') each(e[0], e[1], e[2], e);
    }
  };
  const r: Relayer[] = [];
  // A relayer stored without its tier (an older writer) counts as the least trusted.
  triples(o.r, 64, (user, device, expiresAt, e) => r.push({ user, device, expiresAt, tier: e[3] === 0 || e[3] === 1 ? e[3] : 2 }));
  const c: Consent[] = [];
  triples(o.c, MAX_CONSENTS, (user, device, until) => c.push({ user, device, until }));
  return { r, c, w: stamps(o.w), s: stamps(o.s) };
}

function encodeReach(rec: ReachRecord): Uint8Array {
  return pack({ r: rec.r.map((x) => [x.user, x.device, x.expiresAt, x.tier]), c: rec.c.map((x) => [x.user, x.device, x.until]), w: rec.w, s: rec.s });
}

/** True when `rec` (a target's record) holds the target's unexpired consent for `relayer`. */
export function consents(rec: ReachRecord, relayer: { user: string; device: string }, now: number): boolean {
  return rec.c.some((x) => x.user === relayer.user && x.device === relayer.device && x.until > now);
}

export class ReachStore {
  constructor(readonly kv: KV) {}

  async read(user: string, device: string): Promise<ReachRecord> {
    const e = await this.kv.get(reachKey(user, device));
    return e && e.operation === 'PUT' ? decodeReach(e.value) : empty();
  }

  /**
   * Read, change, compare-and-set; `change` returns false to leave the record as it
   * is (the result is then false too). Conflicts are retried with a fresh read.
   */
  modify(user: string, device: string, change: (rec: ReachRecord) => boolean): Promise<boolean> {
    const key = reachKey(user, device);
    return casModify(
      this.kv,
      key,
      (cur) => {
        const rec = decodeReach(cur);
        return change(rec) ? { write: encodeReach(rec), result: true } : { result: false };
      },
      { attempts: REACH_CAS_ATTEMPTS, contended: () => new Error(`reach record of ${key} is too contended`) },
    );
  }

  /**
   * `relayer` reached `target` and says so until `expiresAt`, with the consent of
   * `tier`; at most `max` relayers per target: when full, the least trusted go
   * first (so a contact's many devices cannot push out the target's own), then
   * the ones that expire soonest.
   */
  addRelayer(target: { user: string; device: string }, relayer: { user: string; device: string }, expiresAt: number, tier: number, max: number, now: number): Promise<boolean> {
    return this.modify(target.user, target.device, (rec) => {
      rec.r = rec.r.filter((x) => x.expiresAt > now && !(x.user === relayer.user && x.device === relayer.device));
      rec.r.push({ user: relayer.user, device: relayer.device, expiresAt, tier });
      rec.r.sort((a, b) => a.tier - b.tier || b.expiresAt - a.expiresAt);
      if (rec.r.length > max) rec.r = rec.r.slice(0, max);
      return true;
    });
  }

  /** `reporter` reached these devices and consents to their relaying for it until `until` (the latest MAX_CONSENTS kept). */
  addConsents(reporter: { user: string; device: string }, peers: ReadonlyArray<{ user: string; device: string }>, until: number, now: number): Promise<boolean> {
    return this.modify(reporter.user, reporter.device, (rec) => {
      const named = new Set(peers.map((p) => `${p.user}/${p.device}`));
      rec.c = rec.c.filter((x) => x.until > now && !named.has(`${x.user}/${x.device}`));
      for (const p of peers) rec.c.push({ user: p.user, device: p.device, until });
      if (rec.c.length > MAX_CONSENTS) rec.c = rec.c.slice(-MAX_CONSENTS);
      return true;
    });
  }

  /** Takes one slot of list `which` (w: as a target, s: as a relayer) if fewer than `limit` are within the window. */
  takeSlot(user: string, device: string, which: 'w' | 's', limit: number, windowMs: number, now: number): Promise<boolean> {
    return this.modify(user, device, (rec) => {
      const recent = rec[which].filter((ts) => ts > now - windowMs);
      if (recent.length >= limit) return false;
      recent.push(now);
      rec[which] = recent;
      rec.r = rec.r.filter((x) => x.expiresAt > now);
      return true;
    });
  }
}

/** Stamps within the window (for choosing lightly loaded relayers). */
export function recentCount(list: number[], windowMs: number, now: number): number {
  let n = 0;
  for (const ts of list) if (ts > now - windowMs) n++;
  return n;
}
