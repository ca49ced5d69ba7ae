import { randomBytes } from 'node:crypto';
import type { KV } from '@nats-io/kv';
import { ErrorCode, isName, pack, ProtocolError, unpack } from '@gravitas/protocol';
import { CombinedCas } from '../../infra/combined-cas.js';
import { each } from '../../infra/limiter.js';
import { isCasConflict } from '../../infra/nats.js';
import { ReadThrough, TtlCache } from '../../infra/ttl-cache.js';

/** A member of a group: the log position after which it gets the group's messages, and when it joined. */
export interface GroupMember { j: number; t: number }
/** A pending invitation: who invited, and when (it lapses `groups.inviteTtlMs` later). */
export interface Invitation { by: string; at: number }

/** A group: the source of truth for its membership. Stored under `g.<id>`, changed by compare-and-set. */
export interface GroupRecord {
  id: string;
  name: string;
  owner: string;
  admins: string[];
  /** Members in join order (oldest first). */
  members: Map<string, GroupMember>;
  /**
   * Pending invitations, in the order they were made: every user an admin named,
   * whether or not it exists, blocks the inviter or declined (none of that is
   * recorded here, so the group's view cannot tell them apart). Each takes a seat.
   */
  invited: Map<string, Invitation>;
  /** Grows with every change. */
  v: number;
  created: number;
}

/** An entry of a user's group index: the group and when the entry was written. */
export interface IndexEntry { g: string; at: number }

/** An invitation as the invitee holds it (`i.<user>`): enough to list it without reading the group. */
export interface InviteEntry { g: string; name: string; by: string; at: number }

const RECORD_TTL_MS = 30_000;
const INDEX_TTL_MS = 30_000;
const CACHE_MAX = 50_000;

/** Server-assigned group ids: 16 base64url characters (96 random bits). */
export function newGroupId(): string {
  return randomBytes(12).toString('base64url');
}

export const recordKey = (g: string): string => `g.${g}`;
export const indexKey = (user: string): string => `u.${user}`;
export const invitesKey = (user: string): string => `i.${user}`;

type O = Record<string, unknown>;
/** A KV read under way; `stale` once the key was invalidated meanwhile (its result is not cached). */

/** Members travel as a list in join order (object keys would reorder integer-like user names). */
export function encodeRecord(r: GroupRecord): Uint8Array {
  const m: Array<[string, number, number]> = [];
  for (const [u, x] of r.members) m.push([u, x.j, x.t]);
  const i: Array<[string, string, number]> = [];
  for (const [u, x] of r.invited) i.push([u, x.by, x.at]);
  return pack({ n: r.name, o: r.owner, a: r.admins, m, ...(i.length > 0 && { i }), v: r.v, c: r.created });
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
    const invited = new Map<string, Invitation>();
    if (Array.isArray(o.i)) {
      for (const x of o.i as unknown[]) {
        if (Array.isArray(x) && typeof x[0] === 'string' && isName(x[0]) && typeof x[1] === 'string' && typeof x[2] === 'number') invited.set(x[0], { by: x[1], at: x[2] });
      }
    }
    return { id, name: o.n, owner: o.o, admins, members: new Map(entries), invited, v: o.v, created: o.c };
  } catch {
    return undefined;
  }
}

/** A user's index: `{ g: [ids], a: [written at, ms] }` (entries without a time, from before times were kept, read as 0). */
function decodeIndex(bytes: Uint8Array): IndexEntry[] | undefined {
  try {
    const o = unpack(bytes) as { g?: unknown; a?: unknown };
    if (!Array.isArray(o?.g)) return undefined;
    const at = Array.isArray(o.a) ? (o.a as unknown[]) : [];
    const out: IndexEntry[] = [];
    o.g.forEach((g: unknown, i) => {
      const t = at[i];
      if (typeof g === 'string' && isName(g)) out.push({ g, at: typeof t === 'number' && Number.isFinite(t) ? t : 0 });
    });
    return out;
  } catch {
    return undefined;
  }
}

function encodeIndex(list: IndexEntry[]): Uint8Array {
  return pack({ g: list.map((e) => e.g), a: list.map((e) => e.at) });
}

/** A user's pending invitations: `{ i: [[g, name, by, at], …] }` in the order they came. */
function decodeInvites(bytes: Uint8Array): InviteEntry[] | undefined {
  try {
    const o = unpack(bytes) as { i?: unknown };
    if (!Array.isArray(o?.i)) return undefined;
    const out: InviteEntry[] = [];
    for (const x of o.i as unknown[]) {
      if (Array.isArray(x) && typeof x[0] === 'string' && isName(x[0]) && typeof x[1] === 'string' && typeof x[2] === 'string' && isName(x[2]) && typeof x[3] === 'number') {
        out.push({ g: x[0], name: x[1], by: x[2], at: x[3] });
      }
    }
    return out;
  } catch {
    return undefined;
  }
}

function encodeInvites(list: InviteEntry[]): Uint8Array {
  return pack({ i: list.map((x) => [x.g, x.name, x.by, x.at]) });
}

/** A KV failure as the client sees it. */
export function storageError(err: unknown): ProtocolError {
  if (err instanceof ProtocolError) return err;
  return new ProtocolError(ErrorCode.STORAGE_UNAVAILABLE, 'group storage is unavailable, try again', { cause: err });
}

/** Index entries younger than this are never pruned: their user may be joining that group right now. */
const PRUNE_MIN_AGE_MS = 60_000;
/** Records read at once when pruning an index. */
const PRUNE_CONCURRENCY = 32;
/** A user whose index had nothing to prune is not pruned again for this long (each prune reads up to maxPerUser records). */
const PRUNE_AGAIN_MS = 60_000;

/** Limits of a user's invitation list. */
export interface InviteLimits {
  /** Entries at most; beyond, the oldest goes. */
  max: number;
  /** Entries from one inviter at most; beyond, that inviter's oldest goes. */
  perInviter: number;
  /** Entries made at or before this time (ms) have lapsed. */
  cutoff: number;
}

/**
 * Group records, user indexes and invitation lists in the groups KV bucket.
 * Records and indexes are read through caches that every cell drops on a
 * cluster-wide invalidation (and after a TTL as a fallback); invitation lists are
 * read fresh (only their owner reads them, rarely). Every write is a
 * compare-and-set, combined per key on this cell (combined-cas.ts). The record is
 * the source of truth; a user's index (`u.<user>` → group ids) is kept close to
 * it: entries are added before a user joins a record and removed after it left,
 * so the index may name a group the user is not in (readers filter) but never
 * misses one.
 */
export class GroupRecords {
  private readonly records = new ReadThrough<string, GroupRecord | undefined>(new TtlCache(CACHE_MAX, RECORD_TTL_MS));
  private readonly indexes = new ReadThrough<string, IndexEntry[]>(new TtlCache(CACHE_MAX, INDEX_TTL_MS));
  private readonly recordCas: CombinedCas<GroupRecord>;
  private readonly indexCas: CombinedCas<IndexEntry[]>;
  private readonly inviteCas: CombinedCas<InviteEntry[]>;
  /** Users whose index was found clean lately: a user at its cap retrying does not make the cell read all its groups each time. */
  private readonly clean = new TtlCache<string, true>(CACHE_MAX, PRUNE_AGAIN_MS);

  constructor(private readonly kv: KV) {
    const conflict = (what: string) => (): ProtocolError => new ProtocolError(ErrorCode.CONFLICT, `${what} is changing too fast, try again`);
    this.recordCas = new CombinedCas<GroupRecord>(kv, { decode: (b, key) => decodeRecord(key.slice(2), b), encode: encodeRecord }, conflict('the group'), (key, r) => {
      if (r) this.records.set(r.id, r);
      else this.records.invalidate(key.slice(2));
    });
    this.indexCas = new CombinedCas<IndexEntry[]>(kv, { decode: decodeIndex, encode: encodeIndex }, conflict('this user’s group list'), (key, list) => this.indexes.set(key.slice(2), list ?? []));
    this.inviteCas = new CombinedCas<InviteEntry[]>(kv, { decode: decodeInvites, encode: encodeInvites }, conflict('this user’s invitation list'));
  }

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
   * Read, change, compare-and-set (combined with this cell's other changes of the
   * group). `change` returns the new record, `null` to delete the group, or
   * `undefined` for no change; it may throw a ProtocolError (NOT_FOUND if there is
   * no such group). `before`/`after` are the record as this change saw and left it.
   */
  async modify(g: string, change: (r: GroupRecord) => GroupRecord | null | undefined): Promise<{ before: GroupRecord; after: GroupRecord | null }> {
    const { before, after } = await this.recordCas.change(recordKey(g), (r) => {
      if (!r) throw new ProtocolError(ErrorCode.NOT_FOUND, 'no such group');
      return change(r);
    });
    return { before: before!, after: after ?? null };
  }

  /** Ids in a user's index (may include groups it has left since). Cached. */
  async groupsOf(user: string): Promise<string[]> {
    return (await this.index(user)).map((e) => e.g);
  }

  private index(user: string, fresh = false): Promise<IndexEntry[]> {
    return this.indexes.get(
      user,
      async () => {
        const e = await this.kv.get(indexKey(user));
        return (e && e.operation === 'PUT' ? decodeIndex(e.value) : undefined) ?? [];
      },
      fresh,
    );
  }

  /**
   * Adds `g` to a user's index (before the user joins it), refusing with
   * TOO_MANY_GROUPS when the index already holds `cap` groups and none of them is
   * stale (a group the user is no longer in: those are pruned first).
   */
  async join(user: string, g: string, cap: number): Promise<void> {
    const add = (list: IndexEntry[] | undefined): IndexEntry[] | undefined => {
      const cur = list ?? [];
      const now = Date.now();
      const i = cur.findIndex((e) => e.g === g);
      // Already there (perhaps stale): renewed, so that pruning leaves it alone while the user joins.
      if (i >= 0) return now - cur[i]!.at < PRUNE_MIN_AGE_MS ? undefined : cur.map((e, k) => (k === i ? { g, at: now } : e));
      if (cur.length >= cap) throw new ProtocolError(ErrorCode.TOO_MANY_GROUPS, `a user may be in at most ${cap} groups`);
      return [...cur, { g, at: now }];
    };
    try {
      await this.indexCas.change(indexKey(user), add);
    } catch (err) {
      if (!(err instanceof ProtocolError) || err.code !== ErrorCode.TOO_MANY_GROUPS || !(await this.prune(user))) throw err;
      await this.indexCas.change(indexKey(user), add);
    }
  }

  /** Removes `g` from a user's index (after the user left it). */
  async leave(user: string, g: string): Promise<void> {
    await this.indexCas.change(indexKey(user), (list) => (list?.some((e) => e.g === g) ? list.filter((e) => e.g !== g) : undefined));
  }

  /**
   * Drops groups the user is not in from its index (left while the index update
   * failed, or a join that never completed). Entries younger than a minute are
   * kept: their join may be under way. True if anything was dropped.
   */
  private async prune(user: string): Promise<boolean> {
    if (this.clean.get(user)) return false;
    const old = (await this.index(user, true)).filter((e) => Date.now() - e.at >= PRUNE_MIN_AGE_MS);
    const stale = new Set<string>();
    await each(old, PRUNE_CONCURRENCY, async (e) => {
      if (!(await this.get(e.g, true))?.members.has(user)) stale.add(e.g);
    });
    if (stale.size === 0) {
      this.clean.set(user, true);
      return false;
    }
    await this.indexCas.change(indexKey(user), (list) => {
      // Only entries still as old as when they were judged: one renewed meanwhile is being joined.
      const keep = list?.filter((e) => !stale.has(e.g) || Date.now() - e.at < PRUNE_MIN_AGE_MS);
      return keep && keep.length < list!.length ? keep : undefined;
    });
    return true;
  }

  /** A user's pending invitations as stored (lapsed ones included; the caller filters). */
  async invitesOf(user: string): Promise<InviteEntry[]> {
    const e = await this.kv.get(invitesKey(user));
    return (e && e.operation === 'PUT' ? decodeInvites(e.value) : undefined) ?? [];
  }

  /**
   * Records an invitation in the invitee's list (replacing an earlier one to the
   * same group). Lapsed entries go; beyond the limits the oldest entry of the same
   * inviter, else the oldest of all, makes room.
   */
  async invite(user: string, inv: InviteEntry, lim: InviteLimits): Promise<void> {
    await this.inviteCas.change(invitesKey(user), (list) => {
      const next = (list ?? []).filter((x) => x.g !== inv.g && x.at > lim.cutoff);
      const mine = next.filter((x) => x.by === inv.by);
      if (mine.length >= lim.perInviter) next.splice(next.indexOf(mine[0]!), 1);
      while (next.length >= lim.max) next.shift();
      next.push(inv);
      return next;
    });
  }

  /** Removes the invitation to `g` from a user's list (accepted, declined, revoked, or found void); no write if it is not there. */
  async uninvite(user: string, g: string): Promise<void> {
    await this.inviteCas.change(invitesKey(user), (list) => (list?.some((x) => x.g === g) ? list.filter((x) => x.g !== g) : undefined));
  }

  /** Drops cached copies: `key` is a group id or a user (the two never need telling apart). */
  invalidate(key: string): void {
    this.records.invalidate(key);
    this.indexes.invalidate(key);
  }
}
