import type { KV } from '@nats-io/kv';
import { DEFAULT_MAX_FRAME_BYTES, ErrorCode, isName, MAX_ID_LENGTH, pack, ProtocolError, unpack, type Prefs, type RequestArgs, type RequestOp } from '@gravitas/protocol';
import type { Cell } from './cell.js';
import { isCasConflict } from './nats.js';
import { ReadThrough, TtlCache } from './ttl-cache.js';
import type { Session } from './session.js';

/**
 * Users one contact list may hold (TOO_MANY_CONTACTS beyond), and one block list
 * (TOO_MANY_BLOCKED). Both live in one KV value (at most ~660 KB with 64-character
 * names, under NATS's 1 MB payload); `contacts.list` pages through them.
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

/** Changes are invalidated cluster-wide; the TTL only bounds the damage of a lost invalidation. */
const CACHE_TTL_MS = 30_000;
const CACHE_MAX = 20_000;
/** Names held by the cache in all (≈ 150 MB at worst with 64-character names): a few full lists cannot crowd memory. */
const CACHE_MAX_NAMES = 1_000_000;
const CAS_ATTEMPTS = 16;

/** One user's social record, as the cell uses it. */
export interface SocialRecord {
  readonly contacts: ReadonlySet<string>;
  readonly blocked: ReadonlySet<string>;
  readonly prefs: Readonly<Prefs>;
}

/** The stored form (msgpack, key = user): `c` contacts, `b` blocked, `p` preferences that differ from the defaults. */
interface Stored { c: string[]; b: string[]; p?: Partial<Prefs> }

const EMPTY: SocialRecord = Object.freeze({ contacts: new Set<string>(), blocked: new Set<string>(), prefs: DEFAULT_PREFS });

function names(v: unknown, max: number): Set<string> {
  const out = new Set<string>();
  if (!Array.isArray(v)) return out;
  for (const u of v) {
    if (out.size >= max) break;
    if (typeof u === 'string' && isName(u, MAX_ID_LENGTH)) out.add(u);
  }
  return out;
}

/** Decodes a stored record; anything malformed (a foreign writer) reads as defaults rather than failing. */
export function decodeSocial(v: Uint8Array | undefined): SocialRecord {
  if (!v || v.length === 0) return EMPTY;
  let o: Partial<Stored>;
  try {
    o = unpack(v) as Partial<Stored>;
  } catch {
    return EMPTY;
  }
  if (typeof o !== 'object' || o === null) return EMPTY;
  const p = (typeof o.p === 'object' && o.p !== null ? o.p : {}) as Record<string, unknown>;
  return {
    contacts: names(o.c, MAX_CONTACTS),
    blocked: names(o.b, MAX_BLOCKED),
    prefs: {
      readReceipts: typeof p.readReceipts === 'boolean' ? p.readReceipts : DEFAULT_PREFS.readReceipts,
      presence: p.presence === 'nobody' || p.presence === 'contacts' ? p.presence : DEFAULT_PREFS.presence,
      pushPreview: typeof p.pushPreview === 'boolean' ? p.pushPreview : DEFAULT_PREFS.pushPreview,
      mutedPush: p.mutedPush === 'silent' || p.mutedPush === 'suppress' ? p.mutedPush : DEFAULT_PREFS.mutedPush,
    },
  };
}

function encodeSocial(r: SocialRecord): Uint8Array {
  const p: Partial<Prefs> = {};
  if (r.prefs.readReceipts !== DEFAULT_PREFS.readReceipts) p.readReceipts = r.prefs.readReceipts;
  if (r.prefs.presence !== DEFAULT_PREFS.presence) p.presence = r.prefs.presence;
  if (r.prefs.pushPreview !== DEFAULT_PREFS.pushPreview) p.pushPreview = r.prefs.pushPreview;
  if (r.prefs.mutedPush !== DEFAULT_PREFS.mutedPush) p.mutedPush = r.prefs.mutedPush;
  const s: Stored = { c: [...r.contacts], b: [...r.blocked], ...(Object.keys(p).length > 0 && { p }) };
  return pack(s);
}

/** A mutable copy for a change function. */
interface Draft { contacts: Set<string>; blocked: Set<string>; prefs: Prefs }

/**
 * Contacts, blocks and preferences: one KV record per user, changed only by
 * compare-and-set, read through a per-cell cache that every cell drops when the
 * owner's record changes (Cell.invalidate). `refuses` is what every delivery path
 * asks before it lets one user reach another.
 */
export class Social {
  /** Bounded by entries and by the names they hold: a few full lists cannot crowd memory. */
  private readonly records = new ReadThrough<string, SocialRecord>(
    new TtlCache(CACHE_MAX, CACHE_TTL_MS, CACHE_MAX_NAMES, (r) => r.contacts.size + r.blocked.size),
  );

  constructor(readonly cell: Cell, readonly kv: KV) {}

  /** True when `recipient` blocked `sender`: the caller then answers exactly as for an unknown user. */
  async refuses(recipient: string, sender: string): Promise<boolean> {
    if (recipient === sender) return false;
    return (await this.record(recipient)).blocked.has(sender);
  }

  async prefs(user: string): Promise<Prefs> {
    return (await this.record(user)).prefs;
  }

  /** The record of `user` from the cache if it is there (no I/O). */
  cached(user: string): SocialRecord | undefined {
    return this.records.cache.get(user);
  }

  /** The record of `user` (defaults for a user who never changed anything), read through the cache. */
  record(user: string): Promise<SocialRecord> {
    return this.records.get(user, async () => (await this.read(user)).rec);
  }

  private async read(user: string): Promise<{ rec: SocialRecord; rev: number; deleted: boolean }> {
    const e = await this.kv.get(user);
    if (!e) return { rec: EMPTY, rev: 0, deleted: false };
    if (e.operation !== 'PUT') return { rec: EMPTY, rev: e.revision, deleted: true };
    return { rec: decodeSocial(e.value), rev: e.revision, deleted: false };
  }

  /** A `req` of area contacts or prefs (arguments already validated). */
  async handle(s: Session, op: RequestOp, args: unknown): Promise<unknown> {
    const me = s.user;
    switch (op) {
      case 'contacts.list': {
        // Fresh, not cached: a user listing right after a change on another device must see it.
        const { rec } = await this.read(me);
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
        const block = op === 'contacts.block';
        await this.modify(me, (d) => {
          const list = block ? d.blocked : d.contacts;
          if (list.has(user)) return false;
          const max = block ? MAX_BLOCKED : MAX_CONTACTS;
          if (list.size >= max) {
            throw new ProtocolError(block ? ErrorCode.TOO_MANY_BLOCKED : ErrorCode.TOO_MANY_CONTACTS, `a ${block ? 'block' : 'contact'} list may hold at most ${max} users`);
          }
          list.add(user);
          return true;
        });
        return undefined;
      }
      case 'contacts.remove':
      case 'contacts.unblock': {
        // Idempotent: removing what is not there succeeds, so a retry after a lost answer is harmless.
        const { user } = args as RequestArgs['contacts.remove'];
        await this.modify(me, (d) => (op === 'contacts.remove' ? d.contacts : d.blocked).delete(user));
        return undefined;
      }
      case 'prefs.get':
        return { ...(await this.read(me)).rec.prefs };
      case 'prefs.set': {
        const want = args as RequestArgs['prefs.set'];
        const rec = await this.modify(me, (d) => {
          let changed = false;
          if (want.readReceipts !== undefined && want.readReceipts !== d.prefs.readReceipts) {
            d.prefs.readReceipts = want.readReceipts;
            changed = true;
          }
          if (want.presence !== undefined && want.presence !== d.prefs.presence) {
            d.prefs.presence = want.presence;
            changed = true;
          }
          if (want.pushPreview !== undefined && want.pushPreview !== d.prefs.pushPreview) {
            d.prefs.pushPreview = want.pushPreview;
            changed = true;
          }
          if (want.mutedPush !== undefined && want.mutedPush !== d.prefs.mutedPush) {
            d.prefs.mutedPush = want.mutedPush;
            changed = true;
          }
          return changed;
        });
        return { ...rec.prefs };
      }
      default:
        throw new ProtocolError(ErrorCode.NOT_ALLOWED, `${op} is not a contacts or prefs operation`);
    }
  }

  /**
   * Read, change, compare-and-set; retried on conflict. `change` returns false when
   * there is nothing to write (and may throw a coded error). After a write this
   * cell's cache holds the new record at once, presence here reacts at once, and
   * every other cell is told to drop its copy.
   */
  private async modify(user: string, change: (d: Draft) => boolean): Promise<SocialRecord> {
    for (let attempt = 0; attempt < CAS_ATTEMPTS; attempt++) {
      const cur = await this.read(user);
      const d: Draft = { contacts: new Set(cur.rec.contacts), blocked: new Set(cur.rec.blocked), prefs: { ...cur.rec.prefs } };
      if (!change(d)) return cur.rec;
      const next: SocialRecord = d;
      try {
        const value = encodeSocial(next);
        if (cur.rev) await this.kv.update(user, value, cur.rev); // over a delete marker too
        else await this.kv.create(user, value);
      } catch (err) {
        if (isCasConflict(err)) continue;
        throw err;
      }
      this.records.set(user, next);
      this.cell.presence.socialChanged(user);
      this.cell.invalidate({ kind: 'social', key: user });
      return next;
    }
    throw new ProtocolError(ErrorCode.BUSY, 'the contact list is being changed too often; try again');
  }

  /** Another cell (or this one) changed the record of `user`. */
  invalidate(user: string): void {
    this.records.invalidate(user);
    this.cell.presence.socialChanged(user);
  }
}
