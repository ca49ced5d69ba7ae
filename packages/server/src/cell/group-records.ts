import { randomBytes } from 'node:crypto';
import type { KV } from '@nats-io/kv';
import { ErrorCode, isName, pack, ProtocolError, unpack } from '@gravitas/protocol';
import { isCasConflict } from './nats.js';
import { ReadThrough, TtlCache } from './ttl-cache.js';

/** A member of a group: the log position after which it gets the group's messages, and when it joined. */
export interface GroupMember { j: number; t: number }

/** A group: the source of truth for its membership. Stored under `g.<id>`, changed by compare-and-set. */
export interface GroupRecord {
  id: string;
  name: string;
  owner: string;
  admins: string[];
  /** Members in join order (oldest first). */
  members: Map<string, GroupMember>;
  /** Grows with every change. */
  v: number;
  created: number;
}

const CAS_ATTEMPTS = 16;
const RECORD_TTL_MS = 30_000;
const INDEX_TTL_MS = 30_000;
const CACHE_MAX = 50_000;

/** Server-assigned group ids: 16 base64url characters (96 random bits). */
export function newGroupId(): string {
  return randomBytes(12).toString('base64url');
}

export const recordKey = (g: string): string => `g.${g}`;
export const indexKey = (user: string): string => `u.${user}`;

type O = Record<string, unknown>;
/** A KV read under way; `stale` once the key was invalidated meanwhile (its result is not cached). */

/** Members travel as a list in join order (object keys would reorder integer-like user names). */
export function encodeRecord(r: GroupRecord): Uint8Array {
  const m: Array<[string, number, number]> = [];
  for (const [u, x] of r.members) m.push([u, x.j, x.t]);
  return pack({ n: r.name, o: r.owner, a: r.admins, m, v: r.v, c: r.created });
}

/** Decodes a stored record; undefined if it is not one (never throws on stored bytes). */
export function decodeRecord(id: string, bytes: Uint8Array): GroupRecord | undefined {
  try {
    const o = unpack(bytes) as O;
    if (typeof o !== 'object' || o === null || typeof o.n !== 'string' || typeof o.o !== 'string' || !Array.isArray(o.a)) return undefined;
    if (!Array.isArray(o.m) || typeof o.v !== 'number' || typeof o.c !== 'number') return undefined;
    const entries: Array<[string, GroupMember]> = [];
    for (const x of o.m as unknown[]) {
      if (!Array.isArray(x) || typeof x[0] !== 'string' || !isName(x[0]) || typeof x[1] !== 'number' || typeof x[2] !== 'number') return undefined;
      entries.push([x[0], { j: x[1], t: x[2] }]);
    }
    const admins = (o.a as unknown[]).filter((u): u is string => typeof u === 'string' && isName(u));
    return { id, name: o.n, owner: o.o, admins, members: new Map(entries), v: o.v, created: o.c };
  } catch {
    return undefined;
  }
}

function decodeIndex(bytes: Uint8Array | undefined): string[] {
  if (!bytes || bytes.length === 0) return [];
  try {
    const o = unpack(bytes) as { g?: unknown };
    return Array.isArray(o?.g) ? o.g.filter((g): g is string => typeof g === 'string' && isName(g)) : [];
  } catch {
    return [];
  }
}

/** A KV failure as the client sees it. */
export function storageError(err: unknown): ProtocolError {
  if (err instanceof ProtocolError) return err;
  return new ProtocolError(ErrorCode.STORAGE_UNAVAILABLE, 'group storage is unavailable, try again', { cause: err });
}

/**
 * Group records and user indexes in the groups KV bucket, with read-through
 * caches that every cell drops on a cluster-wide invalidation (and after a TTL
 * as a fallback). The record is the source of truth; a user's index
 * (`u.<user>` → group ids) is kept close to it: entries are added before a user
 * joins a record and removed after it left, so the index may name a group the
 * user is not in (readers filter) but never misses one.
 */
export class GroupRecords {
  private readonly records = new ReadThrough<string, GroupRecord | undefined>(new TtlCache(CACHE_MAX, RECORD_TTL_MS));
  private readonly indexes = new ReadThrough<string, string[]>(new TtlCache(CACHE_MAX, INDEX_TTL_MS));

  constructor(private readonly kv: KV) {}

  /** The group, or undefined if there is none. Cached unless `fresh`; one read per group at a time. */
  get(g: string, fresh = false): Promise<GroupRecord | undefined> {
    return this.records.get(
      g,
      async () => {
        const e = await this.kv.get(recordKey(g));
        return e && e.operation === 'PUT' ? decodeRecord(g, e.value) : undefined;
      },
      fresh,
    );
  }

  /** Creates a new group record; false if the id is taken. */
  async create(rec: GroupRecord): Promise<boolean> {
    try {
      await this.kv.create(recordKey(rec.id), encodeRecord(rec));
    } catch (err) {
      if (isCasConflict(err)) return false;
      throw err;
    }
    this.records.set(rec.id, rec);
    return true;
  }

  /**
   * Read, change, compare-and-set. `change` returns the new record, `null` to
   * delete the group, or `undefined` for no change; it may throw a ProtocolError.
   */
  async modify(g: string, change: (r: GroupRecord) => GroupRecord | null | undefined): Promise<{ before: GroupRecord; after: GroupRecord | null }> {
    for (let attempt = 0; attempt < CAS_ATTEMPTS; attempt++) {
      const e = await this.kv.get(recordKey(g));
      const rec = e && e.operation === 'PUT' ? decodeRecord(g, e.value) : undefined;
      if (!e || !rec) throw new ProtocolError(ErrorCode.NOT_FOUND, 'no such group');
      const out = change(rec);
      if (out === undefined) {
        this.records.set(g, rec);
        return { before: rec, after: rec };
      }
      try {
        if (out === null) await this.kv.delete(recordKey(g), { previousSeq: e.revision });
        else await this.kv.update(recordKey(g), encodeRecord(out), e.revision);
      } catch (err) {
        if (isCasConflict(err)) continue;
        throw err;
      }
      if (out) this.records.set(g, out);
      else this.records.invalidate(g);
      return { before: rec, after: out };
    }
    throw new ProtocolError(ErrorCode.CONFLICT, 'the group is changing too fast, try again');
  }

  /** Ids in a user's index (may include groups it has left since). Cached. */
  groupsOf(user: string): Promise<string[]> {
    return this.indexes.get(user, async () => {
      const e = await this.kv.get(indexKey(user));
      return e && e.operation === 'PUT' ? decodeIndex(e.value) : [];
    });
  }

  /** Adds (`on`) or removes a group in a user's index. */
  async index(user: string, g: string, on: boolean): Promise<void> {
    for (let attempt = 0; attempt < CAS_ATTEMPTS; attempt++) {
      const e = await this.kv.get(indexKey(user));
      const list = e && e.operation === 'PUT' ? decodeIndex(e.value) : [];
      const has = list.includes(g);
      if (has === on) return;
      const next = on ? [...list, g] : list.filter((x) => x !== g);
      try {
        if (e) await this.kv.update(indexKey(user), pack({ g: next }), e.revision);
        else await this.kv.create(indexKey(user), pack({ g: next }));
        this.indexes.set(user, next);
        return;
      } catch (err) {
        if (!isCasConflict(err)) throw err;
      }
    }
    throw new ProtocolError(ErrorCode.CONFLICT, `the group list of ${user} is changing too fast, try again`);
  }

  /** Drops cached copies: `key` is a group id or a user (the two never need telling apart). */
  invalidate(key: string): void {
    this.records.invalidate(key);
    this.indexes.invalidate(key);
  }
}
