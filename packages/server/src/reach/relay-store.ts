import type { KV } from '@nats-io/kv';
import { isName, pack, unpack } from '@gravitas/protocol';
import { isCasConflict } from '../cell/nats.js';

/*
 * Reachability and relay rate state, one KV key per device (`<user>.<device>`) in
 * the bucket `<prefix>_reach` (docs/relay.md):
 *
 *   { r: [[user, device, expiresAt]],   devices that recently reported reaching this one
 *     w: [ms],                          relay requests for this device (as a target) in the window
 *     s: [ms] }                         relay requests sent via this device (as a relayer) in the window
 *
 * Every change is a compare-and-set, so the rate limits hold cluster-wide. The
 * bucket's max age drops the records of devices nobody talks about any more.
 */

export interface Relayer { user: string; device: string; expiresAt: number }
export interface ReachRecord { r: Relayer[]; w: number[]; s: number[] }

const CAS_ATTEMPTS = 8;
/** Timestamps kept per list: the rate limits are at most 1000 per window (relay-config.ts). */
const MAX_STAMPS = 1000;

export const reachKey = (user: string, device: string): string => `${user}.${device}`;

const stamps = (v: unknown): number[] => (Array.isArray(v) ? v.filter((x): x is number => typeof x === 'number' && Number.isFinite(x)).slice(-MAX_STAMPS) : []);

/** Decodes a stored record; anything malformed reads as empty (a foreign writer must not break wake-ups). */
export function decodeReach(v: Uint8Array | undefined): ReachRecord {
  const empty: ReachRecord = { r: [], w: [], s: [] };
  if (!v || v.length === 0) return empty;
  let o: Record<string, unknown>;
  try {
    o = unpack(v) as Record<string, unknown>;
  } catch {
    return empty;
  }
  if (typeof o !== 'object' || o === null) return empty;
  const r: Relayer[] = [];
  if (Array.isArray(o.r)) {
    for (const e of o.r.slice(0, 64)) {
      if (Array.isArray(e) && typeof e[0] === 'string' && isName(e[0]) && typeof e[1] === 'string' && isName(e[1], 32) && typeof e[2] === 'number') r.push({ user: e[0], device: e[1], expiresAt: e[2] });
    }
  }
  return { r, w: stamps(o.w), s: stamps(o.s) };
}

function encodeReach(rec: ReachRecord): Uint8Array {
  return pack({ r: rec.r.map((x) => [x.user, x.device, x.expiresAt]), w: rec.w, s: rec.s });
}

export class ReachStore {
  constructor(readonly kv: KV) {}

  async read(user: string, device: string): Promise<ReachRecord> {
    const e = await this.kv.get(reachKey(user, device));
    return e && e.operation === 'PUT' ? decodeReach(e.value) : { r: [], w: [], s: [] };
  }

  /**
   * Read, change, compare-and-set; `change` returns false to leave the record as it
   * is (the result is then false too). Conflicts are retried with a fresh read.
   */
  async modify(user: string, device: string, change: (rec: ReachRecord) => boolean): Promise<boolean> {
    const key = reachKey(user, device);
    for (let attempt = 0; attempt < CAS_ATTEMPTS; attempt++) {
      const cur = await this.kv.get(key);
      const rec = cur && cur.operation === 'PUT' ? decodeReach(cur.value) : { r: [], w: [], s: [] };
      if (!change(rec)) return false;
      try {
        if (cur) await this.kv.update(key, encodeReach(rec), cur.revision);
        else await this.kv.create(key, encodeReach(rec));
        return true;
      } catch (err) {
        if (!isCasConflict(err)) throw err;
      }
    }
    throw new Error(`reach record of ${key} is too contended`);
  }

  /** `relayer` reached `target` and says so until `expiresAt`; at most `max` relayers per target, the latest kept. */
  addRelayer(target: { user: string; device: string }, relayer: { user: string; device: string }, expiresAt: number, max: number, now: number): Promise<boolean> {
    return this.modify(target.user, target.device, (rec) => {
      rec.r = rec.r.filter((x) => x.expiresAt > now && !(x.user === relayer.user && x.device === relayer.device));
      rec.r.push({ user: relayer.user, device: relayer.device, expiresAt });
      rec.r.sort((a, b) => a.expiresAt - b.expiresAt);
      if (rec.r.length > max) rec.r = rec.r.slice(-max);
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
