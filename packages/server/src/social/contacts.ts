import { jetstreamManager, type JetStreamManager } from '@nats-io/jetstream';
import type { KV } from '@nats-io/kv';
import { DEFAULT_MAX_FRAME_BYTES, ErrorCode, isName, MAX_ID_LENGTH, pack, ProtocolError, unpack, type Prefs, type RequestArgs, type RequestOp } from '@gravitas/protocol';
import type { CellContext } from '../core/context.js';
import type { PresencePort, SocialGraph, SocialRecord } from '../core/ports.js';
import type { DeviceSession } from '../core/session.js';
import { casModifyRev, isCasConflict } from '../infra/kv.js';
import { Limiter } from '../infra/limiter.js';
import { ReadThrough, TtlCache } from '../infra/ttl-cache.js';

/**
 * Users one contact list may hold (TOO_MANY_CONTACTS beyond), and one block list
 * (TOO_MANY_BLOCKED). Each entry is its own KV key; the counts in the user's head
 * record enforce the bounds (docs/social.md, "Data layout").
 */
export const MAX_CONTACTS = 5000;
export const MAX_BLOCKED = 5000;
/**
 * Names per `contacts.list` answer: msgpack str header + longest name each, plus
 * the answer's envelope and the seal, must fit the SDK's frame limit.
 */
export const LIST_PAGE = 900;
if (LIST_PAGE * (MAX_ID_LENGTH + 2) + 256 > DEFAULT_MAX_FRAME_BYTES) throw new Error('a contacts.list page does not fit one frame');
export const DEFAULT_PREFS: Readonly<Prefs> = Object.freeze({ readReceipts: true, presence: 'contacts', pushPreview: false, mutedPush: 'silent' });

/**
 * How long a cached record is used without asking KV. Changes are invalidated
 * cluster-wide; this only bounds the damage of a lost invalidation. After it, one
 * KV get of the head revalidates the record (the lists are re-read only if the head
 * changed).
 */
const FRESH_MS = 30_000;
/** How long a record may stay cached for such cheap revalidation. */
const CACHE_TTL_MS = 10 * 60_000;
const CACHE_MAX = 20_000;
/** Names held by the cache in all (≈ 150 MB at worst with 64-character names): a few full lists cannot crowd memory. */
const CACHE_MAX_NAMES = 1_000_000;
/**
 * Listings of entries (one ordered consumer each) at once per cell, and waiting: a
 * connect storm of users with contacts must not open thousands of consumers at once.
 */
const LIST_CONCURRENCY = 16;
const LIST_QUEUE = 200_000;
/**
 * A head whose counts disagree with its entries is corrected when its last write is
 * at least this old: a change writes its entry within one KV request of reserving
 * its place in the head, so by then none is in flight (a crashed one left the count
 * one too high, which only ever made the bound stricter).
 */
export const REPAIR_AFTER_MS = 60_000;


type Kind = 'c' | 'b';

/**
 * The head record (msgpack, key = user): `n` contacts and `m` blocked users counted
 * (reserved before an entry is written, released after it is removed, so a count is
 * never below the entries), `p` preferences that differ from the defaults, `t` ms of
 * the last write. The entries are the keys `<user>.c.<contact>` and `<user>.b.<blocked>`
 * with empty values.
 */
interface Head { n: number; m: number; p: Prefs; t: number }

const EMPTY: SocialRecord = Object.freeze({ contacts: new Set<string>(), blocked: new Set<string>(), prefs: DEFAULT_PREFS });
const NOTHING = new Uint8Array(0);

const count = (v: unknown, max: number): number => (typeof v === 'number' && Number.isInteger(v) && v > 0 ? Math.min(v, max) : 0);

/** Decodes a head; anything malformed (a foreign writer, the old whole-list layout's lists) reads as defaults rather than failing. */
export function decodeHead(v: Uint8Array | undefined): Head {
  let o: unknown;
  try {
    o = v && v.length > 0 ? unpack(v) : undefined;
  } catch {
    o = undefined;
  }
  const h = (typeof o === 'object' && o !== null ? o : {}) as Record<string, unknown>;
  return {
    n: count(h.n, MAX_CONTACTS),
    m: count(h.m, MAX_BLOCKED),
    t: typeof h.t === 'number' && Number.isFinite(h.t) ? h.t : 0,
    p: decodePrefs(h.p),
  };
}

/** Stored or announced preferences: each one that is missing or malformed reads as its default. */
function decodePrefs(v: unknown): Prefs {
  const p = (typeof v === 'object' && v !== null ? v : {}) as Record<string, unknown>;
  return {
    readReceipts: typeof p.readReceipts === 'boolean' ? p.readReceipts : DEFAULT_PREFS.readReceipts,
    presence: p.presence === 'nobody' || p.presence === 'contacts' ? p.presence : DEFAULT_PREFS.presence,
    pushPreview: typeof p.pushPreview === 'boolean' ? p.pushPreview : DEFAULT_PREFS.pushPreview,
    mutedPush: p.mutedPush === 'silent' || p.mutedPush === 'suppress' ? p.mutedPush : DEFAULT_PREFS.mutedPush,
  };
}

const samePrefs = (a: Prefs, b: Prefs): boolean => a.readReceipts === b.readReceipts && a.presence === b.presence && a.pushPreview === b.pushPreview && a.mutedPush === b.mutedPush;

function encodeHead(h: Head): Uint8Array {
  const p: Partial<Prefs> = {};
  if (h.p.readReceipts !== DEFAULT_PREFS.readReceipts) p.readReceipts = h.p.readReceipts;
  if (h.p.presence !== DEFAULT_PREFS.presence) p.presence = h.p.presence;
  if (h.p.pushPreview !== DEFAULT_PREFS.pushPreview) p.pushPreview = h.p.pushPreview;
  if (h.p.mutedPush !== DEFAULT_PREFS.mutedPush) p.mutedPush = h.p.mutedPush;
  return pack({ n: h.n, m: h.m, t: h.t, ...(Object.keys(p).length > 0 && { p }) });
}

/**
 * A change as the writer announces it, for cells holding the copy at head revision
 * `f` to bring it to revision `r`: an entry added or removed (`o`, `u`), or the new
 * preferences (`p`). A copy at any other revision is dropped and re-read instead.
 */
interface Delta { f: number; r: number; o?: `${Kind}${'+' | '-'}`; u?: string; p?: Prefs }

const OPS = new Set(['c+', 'c-', 'b+', 'b-']);
const rev = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;

/** A delta from the invalidations subject, or undefined for anything malformed (the copy is then dropped). */
export function decodeDelta(v: unknown): Delta | undefined {
  if (typeof v !== 'object' || v === null) return undefined;
  const o = v as Record<string, unknown>;
  if (!rev(o.f) || !rev(o.r) || o.r <= o.f) return undefined;
  const d: Delta = { f: o.f, r: o.r };
  if (o.o !== undefined || o.u !== undefined) {
    if (typeof o.o !== 'string' || !OPS.has(o.o) || typeof o.u !== 'string' || !isName(o.u, MAX_ID_LENGTH)) return undefined;
    d.o = o.o as Delta['o'];
    d.u = o.u;
  }
  if (o.p !== undefined) {
    if (typeof o.p !== 'object' || o.p === null) return undefined;
    d.p = decodePrefs(o.p);
  }
  return d;
}

/** The key of one entry: user names hold no dots, so `<user>.>` lists exactly that user's entries. */
export const entryKey = (user: string, kind: Kind, other: string): string => `${user}.${kind}.${other}`;

/** What the cache holds: the record, the head revision it was read at (0: no head), when it was last confirmed. */
interface Cached { rec: SocialRecord; rev: number; checked: number }

/**
 * Contacts, blocks and preferences. Per user, a small head record (counts and
 * preferences) and one KV key per contact or block, so adding or removing one
 * writes a few dozen bytes whatever the size of the lists. Every change writes
 * the head by compare-and-set after its entry (which is how the bounds hold with
 * several devices adding at once, and how a cached copy is revalidated with one
 * get). Records are read through a per-cell cache that every cell drops when the
 * owner's record changes (Bus.invalidate). `refuses` is what every delivery path
 * asks before it lets one user reach another: it never waits for KV on a hit.
 */
export class Social implements SocialGraph {
  /** Bounded by entries and by the names they hold: a few full lists cannot crowd memory. */
  private readonly records = new ReadThrough<string, Cached>(
    new TtlCache(CACHE_MAX, CACHE_TTL_MS, CACHE_MAX_NAMES, (c) => c.rec.contacts.size + c.rec.blocked.size),
  );
  private jsm: Promise<JetStreamManager> | undefined;
  private readonly listings = new Limiter(LIST_CONCURRENCY, LIST_QUEUE, 'contact list');
  private readonly stream: string;
  private readonly subjectPrefix: string;

  constructor(
    private readonly ctx: CellContext,
    /** Told after every change of a record, so watchers here follow it. */
    private readonly presence: Pick<PresencePort, 'socialChanged'>,
    readonly kv: KV,
  ) {
    const bucket = ctx.names.socialBucket;
    this.stream = `KV_${bucket}`;
    this.subjectPrefix = `$KV.${bucket}.`;
  }

  /** True when `recipient` blocked `sender`: the caller then answers exactly as for an unknown user. */
  async refuses(recipient: string, sender: string): Promise<boolean> {
    if (recipient === sender) return false;
    return (await this.record(recipient)).blocked.has(sender);
  }

  async prefs(user: string): Promise<Prefs> {
    return (await this.record(user)).prefs;
  }

  /** `refuses` from the cache (no I/O), when the cached record is fresh enough for it; else undefined. */
  refusesNow(recipient: string, sender: string): boolean | undefined {
    if (recipient === sender) return false;
    const hit = this.records.cache.get(recipient);
    return hit && Date.now() - hit.checked < FRESH_MS ? hit.rec.blocked.has(sender) : undefined;
  }

  /** The record of `user` (defaults for a user who never changed anything), read through the cache. */
  async record(user: string): Promise<SocialRecord> {
    const now = Date.now();
    const hit = this.records.cache.get(user);
    if (hit && now - hit.checked < FRESH_MS) return hit.rec;
    return (await this.records.get(user, () => this.load(user, this.records.cache.get(user)), false, (c) => Date.now() - c.checked < FRESH_MS)).rec;
  }

  /** The record as stored now (one get if the cached copy is still current), cached for the others. */
  private async current(user: string): Promise<SocialRecord> {
    return (await this.records.get(user, () => this.load(user, this.records.cache.get(user)), true)).rec;
  }

  /**
   * Reads the head; if it is the one `prev` was read at, `prev` is confirmed,
   * otherwise the entries are listed (one ordered consumer, keys only), unless the
   * head counts none. A head that counts more than its entries and has not been
   * written for REPAIR_AFTER_MS is corrected (a change that crashed halfway).
   */
  private async load(user: string, prev: Cached | undefined): Promise<Cached> {
    const e = await this.kv.get(user);
    const rev = e?.revision ?? 0;
    const checked = Date.now();
    if (prev && prev.rev === rev) return { ...prev, checked };
    const head = decodeHead(e?.operation === 'PUT' ? e.value : undefined);
    // Most users have no entries and default preferences: they all share one frozen record.
    if (head.n === 0 && head.m === 0) return { rec: samePrefs(head.p, DEFAULT_PREFS) ? EMPTY : { contacts: EMPTY.contacts, blocked: EMPTY.blocked, prefs: head.p }, rev, checked };
    const { contacts, blocked } = await this.listings.run(() => this.list(user));
    if ((contacts.size < head.n || blocked.size < head.m) && checked - head.t >= REPAIR_AFTER_MS) {
      // Best effort: a conflict means someone else changed it, and their change will be re-read.
      void this.kv.update(user, encodeHead({ ...head, n: contacts.size, m: blocked.size, t: checked }), rev).catch(() => undefined);
    }
    return { rec: { contacts, blocked, prefs: head.p }, rev, checked };
  }

  /** The entries of `user`, in the order they were written (one ordered consumer, keys only). */
  private async list(user: string): Promise<{ contacts: Set<string>; blocked: Set<string> }> {
    const contacts = new Set<string>();
    const blocked = new Set<string>();
    const keys = await this.kv.keys(`${user}.>`);
    for await (const k of keys) {
      const kind = k.charAt(user.length + 1);
      const other = k.slice(user.length + 3);
      if (k.charAt(user.length + 2) !== '.' || !isName(other, MAX_ID_LENGTH)) continue;
      // Bounded by the caps, not the counts: an entry written after the head was read is newer, and kept.
      if (kind === 'c' && contacts.size < MAX_CONTACTS) contacts.add(other);
      else if (kind === 'b' && blocked.size < MAX_BLOCKED) blocked.add(other);
    }
    return { contacts, blocked };
  }

  /** A `req` of area contacts or prefs (arguments already validated). */
  async handle(s: DeviceSession, op: RequestOp, args: unknown): Promise<unknown> {
    const me = s.user;
    switch (op) {
      case 'contacts.list': {
        // Fresh, not cached: a user listing right after a change on another device must see it.
        const rec = await this.current(me);
        // One sequence, contacts then blocked users, in pages that fit a frame.
        const from = (args as RequestArgs['contacts.list']).from ?? 0;
        const contacts = [...rec.contacts].slice(from, from + LIST_PAGE);
        const skip = Math.max(0, from - rec.contacts.size);
        const blocked = [...rec.blocked].slice(skip, skip + LIST_PAGE - contacts.length);
        const next = from + contacts.length + blocked.length;
        return { contacts, blocked, ...(next < rec.contacts.size + rec.blocked.size && { next }) };
      }
      case 'contacts.add':
      case 'contacts.block': {
        const { user } = args as RequestArgs['contacts.add'];
        if (user === me) throw new ProtocolError(ErrorCode.NOT_ALLOWED, op === 'contacts.add' ? 'you cannot add yourself as a contact' : 'you cannot block yourself');
        await this.addEntry(me, op === 'contacts.block' ? 'b' : 'c', user);
        return undefined;
      }
      case 'contacts.remove':
      case 'contacts.unblock': {
        // Idempotent: removing what is not there succeeds, so a retry after a lost answer is harmless.
        const { user } = args as RequestArgs['contacts.remove'];
        await this.removeEntry(me, op === 'contacts.remove' ? 'c' : 'b', user);
        return undefined;
      }
      case 'prefs.get': {
        // The head alone: fresh, and no listing of the entries.
        const e = await this.kv.get(me);
        return { ...decodeHead(e?.operation === 'PUT' ? e.value : undefined).p };
      }
      case 'prefs.set': {
        const want = args as RequestArgs['prefs.set'];
        const { head, from, to } = await this.changeHead(me, (h) => {
          let changed = false;
          for (const k of ['readReceipts', 'presence', 'pushPreview', 'mutedPush'] as const) {
            if (want[k] !== undefined && want[k] !== h.p[k]) {
              (h.p as Record<typeof k, unknown>)[k] = want[k];
              changed = true;
            }
          }
          return changed;
        });
        if (to !== from) this.changed(me, { f: from, r: to, p: head.p });
        return { ...head.p };
      }
      default:
        throw new ProtocolError(ErrorCode.NOT_ALLOWED, `${op} is not a contacts or prefs operation`);
    }
  }

  /**
   * Adds one entry: reserve a place in the head (compare-and-set, refused at the
   * bound), write the entry, then write the head again (the reservation undone if
   * another device wrote the same entry first). Two devices adding at once both
   * compete for the head, so the bound holds; a crash between the writes leaves a
   * count one too high (repaired later, see `load`), never too low.
   */
  private async addEntry(me: string, kind: Kind, user: string): Promise<void> {
    const key = entryKey(me, kind, user);
    if ((await this.kv.get(key))?.operation === 'PUT') return; // idempotent: nothing written
    const block = kind === 'b';
    const max = block ? MAX_BLOCKED : MAX_CONTACTS;
    const reserved = await this.changeHead(me, (h) => {
      const have = block ? h.m : h.n;
      if (have >= max) throw new ProtocolError(block ? ErrorCode.TOO_MANY_BLOCKED : ErrorCode.TOO_MANY_CONTACTS, `a ${block ? 'block' : 'contact'} list may hold at most ${max} users`);
      if (block) h.m++;
      else h.n++;
      return true;
    });
    let created = true;
    try {
      await this.kv.create(key, NOTHING);
    } catch (err) {
      // Anything but "it is there already" leaves the reservation in place (the write may have been stored).
      if (!isCasConflict(err)) throw err;
      created = false;
    }
    // Written again either way: the head's revision must move after the entry did (revalidation by revision).
    const done = await this.changeHead(me, (h) => {
      if (!created) {
        if (block) h.m = Math.max(0, h.m - 1);
        else h.n = Math.max(0, h.n - 1);
      }
      return true;
    });
    // Others may apply the change to their copy only if nothing else wrote the head in between.
    this.changed(me, done.from === reserved.to ? { f: reserved.from, r: done.to, o: `${kind}+`, u: user } : undefined);
  }

  /**
   * Removes one entry: purge that key's message by its sequence (so a concurrent
   * remover's purge finds nothing and does not count it twice, and nothing is left
   * behind: no delete markers piling up), then release its place in the head.
   * Not `casModify`: a KV delete leaves a marker, and only a purge filtered by the
   * revision read tells which of two removers took the entry away.
   */
  private async removeEntry(me: string, kind: Kind, user: string): Promise<void> {
    const key = entryKey(me, kind, user);
    const e = await this.kv.get(key);
    if (e?.operation !== 'PUT') return; // idempotent
    this.jsm ??= jetstreamManager(this.ctx.nc);
    const jsm = await this.jsm.catch((err: unknown) => {
      this.jsm = undefined;
      throw err;
    });
    const { purged } = await jsm.streams.purge(this.stream, { filter: this.subjectPrefix + key, seq: e.revision + 1 });
    if (purged === 0) return; // another device removed it first and releases its place
    const done = await this.changeHead(me, (h) => {
      if (kind === 'b') h.m = Math.max(0, h.m - 1);
      else h.n = Math.max(0, h.n - 1);
      return true;
    });
    this.changed(me, { f: done.from, r: done.to, o: `${kind}-`, u: user });
  }

  /**
   * Read the head, change it, compare-and-set; retried on conflict. `change`
   * returns false when there is nothing to write (and may throw a coded error).
   * Answers the head and the revisions it was read at (`from`) and written at (`to`).
   */
  private async changeHead(user: string, change: (h: Head) => boolean): Promise<{ head: Head; from: number; to: number }> {
    const { result, rev } = await casModifyRev(
      this.kv,
      user,
      (cur, from) => {
        const head = decodeHead(cur);
        if (!change(head)) return { result: { head, from } };
        head.t = Date.now();
        return { write: encodeHead(head), result: { head, from } };
      },
      { contended: () => new ProtocolError(ErrorCode.BUSY, 'the contact list is being changed too often; try again') },
    );
    return { ...result, to: rev };
  }

  /**
   * After a write: this cell's copy follows at once (presence here too), and every
   * cell is told, with the change itself when it can be applied to a copy.
   */
  private changed(user: string, d: Delta | undefined): void {
    this.follow(user, d);
    this.ctx.bus.invalidate({ kind: 'social', key: user, ...(d && { d }) });
  }

  /** Applies `d` to the cached copy if that copy is the one `d` starts from; else drops the copy. */
  private follow(user: string, d: Delta | undefined): void {
    const c = this.records.cache.get(user);
    if (c && d && c.rev === d.r) return; // already followed (the writer's own cell)
    if (c && d && c.rev === d.f) {
      let { contacts, blocked, prefs } = c.rec;
      if (d.o !== undefined && d.u !== undefined) {
        const set = new Set(d.o.startsWith('c') ? contacts : blocked);
        if (d.o.endsWith('+')) set.add(d.u);
        else set.delete(d.u);
        if (d.o.startsWith('c')) contacts = set;
        else blocked = set;
      }
      if (d.p) prefs = d.p;
      this.records.set(user, { rec: { contacts, blocked, prefs }, rev: d.r, checked: Date.now() });
    } else {
      this.records.invalidate(user);
    }
    this.presence.socialChanged(user);
  }

  /** Another cell (or this one) changed the record of `user`; `d` is the change, if it came with one. */
  invalidate(user: string, d?: unknown): void {
    this.follow(user, decodeDelta(d));
  }
}
