import { mkdirSync } from 'node:fs';
import { open, type Database, type Key, type RootDatabase } from 'lmdb';
import { ErrorCode, pack, ProtocolError } from '@gravitas/protocol';
import type { TrackingConfig } from '../config/index.js';
import type { TrackingRecord } from './records.js';

/*
 * The node's LMDB tracking tier (docs/campaigns.md "Tracking tiers"). One
 * environment per node at `<dataDir>/tracking`, opened by every cell thread of
 * the node: LMDB serialises writers across threads and processes, so each
 * change below is one atomic transaction whichever cell makes it.
 *
 * Tables (ordered-binary array keys; names never contain the bytes that
 * separate key elements):
 *   rec   [u, eid]           → Stored (the record, its archived mark, its byte cost)
 *   out   [at, u, eid]       → 1   unarchived records in time order: the outbox
 *   arc   [at, u, eid]       → 1   archived records in time order: eviction order
 *   usr   [u, c, at, eid]    → 1   every local record of a user (reports)
 *   ucmp  [c, at, u, eid]    → 1   unarchived records of a campaign (scatter-gather)
 *   meta  'acct'             → Accounting, updated in the same transaction as the records
 *
 * A record is identified by (user, eid): event ids come from devices, and one
 * user must not be able to shadow another user's event by reusing its id.
 */

/** The identity of a record in both tiers (LMDB key, Nats-Msg-Id, report de-duplication). */
export function recordId(r: { u: string; eid: string }): string {
  return `${r.u}/${r.eid}`;
}

/** The local tier is full of records not yet archived: the client sends again later. */
export class TrackingFullError extends ProtocolError {
  override name = 'TrackingFullError';
  constructor(message: string) {
    super(ErrorCode.RETRY_LATER, message);
  }
}

export type PutResult = 'stored' | 'duplicate';

export interface TrackingStats {
  records: number;
  /** Accounted bytes (see `cost`), bounded by tracking.maxBytes. */
  bytes: number;
  unarchived: number;
  /** `at` of the oldest record not yet archived. */
  oldestUnarchivedAt?: number;
}

/** Which unarchived records a report asks a node for. */
export type LocalQuery = { user: string } | { campaign: string };

/** Where a page of `unarchivedFor` stopped: the index key of its last record. */
export type Cursor = Array<string | number>;

export interface Page { records: TrackingRecord[]; next?: Cursor }

interface Stored { r: TrackingRecord; a: 0 | 1; n: number }
interface Accounting { records: number; bytes: number; unarchived: number }

const ACCT = 'acct';
/** Upper bound of a key range over one name prefix: sorts after the name and every key that extends it. */
const above = (name: string): string => `${name}\u001f`;
/** Records removed per eviction transaction: keeps the write lock short. */
const MAX_EVICT_PER_TXN = 1000;
/** LMDB's node header per entry. */
const ENTRY_OVERHEAD = 16;
/**
 * Data file bytes per raw byte once the store has filled, evicted and refilled:
 * B-tree pages of random keys are half to two-thirds full, and freed pages stay
 * in the file for reuse (measured 2.6 with typical records; see docs/operations.md).
 */
const FILE_FACTOR = 2.6;

/**
 * Bytes a record is charged: its encoding, its keys in the five tables and their
 * entry headers, times FILE_FACTOR, so that tracking.maxBytes bounds the data
 * file itself to about that size (PITFALLS: LMDB crashes on a full disk).
 */
function cost(r: TrackingRecord): number {
  const id = r.u.length + r.eid.length;
  const raw = pack(r).length + 4 /* mark and cost */ + 4 * id + 2 * r.c.length + 4 * 10 /* times */ + 5 * ENTRY_OVERHEAD;
  return Math.ceil(raw * FILE_FACTOR);
}

const emptyAcct = (): Accounting => ({ records: 0, bytes: 0, unarchived: 0 });

export class TrackingStore {
  private closing: Promise<void> | undefined;
  /** Told how many archived records an eviction dropped (metrics). */
  onEvict: (n: number) => void = () => undefined;

  private constructor(
    private readonly root: RootDatabase,
    private readonly rec: Database<Stored, Key>,
    private readonly out: Database<number, Key>,
    private readonly arc: Database<number, Key>,
    private readonly usr: Database<number, Key>,
    private readonly ucmp: Database<number, Key>,
    private readonly meta: Database<Accounting, string>,
    private readonly cfg: Pick<TrackingConfig, 'maxAgeMs' | 'maxBytes'>,
  ) {}

  /** Opens (creating if needed) the environment in directory `dir`. */
  static open(dir: string, cfg: Pick<TrackingConfig, 'maxAgeMs' | 'maxBytes'>): TrackingStore {
    mkdirSync(dir, { recursive: true });
    // No noSync / useWritemap (PITFALLS: both risk corruption); durability is `flushed()`.
    const root = open({ path: dir, maxDbs: 8 });
    try {
      const table = (name: string): Database<number, Key> => root.openDB<number, Key>({ name, encoding: 'msgpack' });
      return new TrackingStore(
        root,
        root.openDB<Stored, Key>({ name: 'rec', encoding: 'msgpack' }),
        table('out'),
        table('arc'),
        table('usr'),
        table('ucmp'),
        root.openDB<Accounting, string>({ name: 'meta', encoding: 'msgpack' }),
        cfg,
      );
    } catch (err) {
      void root.close().catch(() => undefined);
      throw err;
    }
  }

  /**
   * Stores a record once per (user, eid): a second put, from any cell, is a
   * `duplicate`. Makes room by evicting the oldest archived records; with no
   * archived record left to evict, throws TrackingFullError (RETRY_LATER).
   * Resolves at commit: call `flushed()` before telling anyone it is durable.
   */
  async put(r: TrackingRecord): Promise<PutResult> {
    const n = cost(r);
    if (n > this.cfg.maxBytes) throw new TrackingFullError('the record is larger than the tracking store');
    const result = await this.rec.transaction((): PutResult | 'full' => {
      const key = [r.u, r.eid];
      if (this.rec.get(key) !== undefined) return 'duplicate';
      const acct = this.acct();
      if (acct.bytes + n > this.cfg.maxBytes) {
        const gone = this.evictArchived(acct, Number.NEGATIVE_INFINITY, this.cfg.maxBytes - n);
        this.onEvict(gone);
        if (acct.bytes + n > this.cfg.maxBytes) {
          if (gone > 0) void this.meta.put(ACCT, acct); // what was evicted stays evicted
          return 'full';
        }
      }
      void this.rec.put(key, { r, a: 0, n });
      void this.out.put([r.at, r.u, r.eid], 1);
      void this.usr.put([r.u, r.c, r.at, r.eid], 1);
      void this.ucmp.put([r.c, r.at, r.u, r.eid], 1);
      acct.records++;
      acct.bytes += n;
      acct.unarchived++;
      void this.meta.put(ACCT, acct);
      return 'stored';
    });
    if (result === 'full') throw new TrackingFullError('the tracking store is full until the archive catches up: send it again later');
    return result;
  }

  /** Resolves once everything committed so far is on disk (overlappingSync: commit comes first). */
  async flushed(): Promise<void> {
    await this.root.flushed;
  }

  /** Up to `limit` records not yet archived, oldest `at` first (the shipper's outbox). */
  unarchived(limit: number): TrackingRecord[] {
    const out: TrackingRecord[] = [];
    for (const { key } of this.out.getRange({ limit })) {
      const [, u, eid] = key as [number, string, string];
      const s = this.rec.get([u, eid]);
      if (s) out.push(s.r);
    }
    return out;
  }

  /** Marks records archived (acknowledged by the archive); returns how many changed. */
  markArchived(ids: Iterable<{ u: string; eid: string }>): Promise<number> {
    const list = [...ids];
    return this.rec.transaction(() => {
      const acct = this.acct();
      let changed = 0;
      for (const { u, eid } of list) {
        const s = this.rec.get([u, eid]);
        if (!s || s.a === 1) continue;
        const { r } = s;
        void this.rec.put([u, eid], { ...s, a: 1 });
        void this.out.remove([r.at, u, eid]);
        void this.ucmp.remove([r.c, r.at, u, eid]);
        void this.arc.put([r.at, u, eid], 1);
        acct.unarchived--;
        changed++;
      }
      if (changed > 0) void this.meta.put(ACCT, acct);
      return changed;
    });
  }

  /**
   * Drops archived records older than tracking.maxAgeMs and, while over
   * tracking.maxBytes, the oldest archived ones; at most MAX_EVICT_PER_TXN per
   * call (returns how many went: call again while it returns that many).
   * Unarchived records are never evicted.
   */
  async evict(now: number): Promise<number> {
    // Most rounds have nothing to do: decide on a read, not an (empty, flushed) write transaction.
    const cutoff = now - this.cfg.maxAgeMs;
    let oldest: number | undefined;
    for (const k of this.arc.getKeys({ limit: 1 })) oldest = (k as [number])[0];
    if (oldest === undefined || (oldest >= cutoff && (this.meta.get(ACCT)?.bytes ?? 0) <= this.cfg.maxBytes)) return 0;
    return this.rec.transaction(() => {
      const acct = this.acct();
      const gone = this.evictArchived(acct, cutoff, this.cfg.maxBytes);
      if (gone > 0) void this.meta.put(ACCT, acct);
      this.onEvict(gone);
      return gone;
    });
  }

  /** Every local record of `user` (of one campaign), in campaign then time order; at most `limit`. */
  forUser(user: string, o: { campaign?: string; limit?: number } = {}): TrackingRecord[] {
    const range = o.campaign === undefined ? { start: [user], end: [above(user)] } : { start: [user, o.campaign], end: [user, above(o.campaign)] };
    const out: TrackingRecord[] = [];
    for (const { key } of this.usr.getRange({ ...range, ...(o.limit !== undefined && { limit: o.limit }) })) {
      const [u, , , eid] = key as [string, string, number, string];
      const s = this.rec.get([u, eid]);
      if (s) out.push(s.r);
    }
    return out;
  }

  /**
   * A page of the records not yet archived for one user or one campaign (what a
   * report cannot find in the archive yet). `after`: the previous page's `next`.
   */
  unarchivedFor(q: LocalQuery, o: { after?: Cursor; limit: number }): Page {
    // A cursor from another query could start the range before this prefix: refuse it.
    if (o.after && o.after[0] !== ('user' in q ? q.user : q.campaign)) throw new TypeError('the cursor belongs to another query');
    const records: TrackingRecord[] = [];
    let last: Cursor | undefined;
    let more = false;
    if ('user' in q) {
      // A user's records are few: walk them and keep the unarchived ones, at most
      // 10 × limit entries per page so that one query's work stays bounded.
      const start: Key = o.after ?? [q.user];
      let scanned = 0;
      for (const { key } of this.usr.getRange({ start, end: [above(q.user)], exclusiveStart: o.after !== undefined })) {
        const [u, , , eid] = key as [string, string, number, string];
        const s = this.rec.get([u, eid]);
        last = key as Cursor;
        if (s && s.a === 0) records.push(s.r);
        if (records.length >= o.limit || ++scanned >= 10 * o.limit) {
          more = true;
          break;
        }
      }
    } else {
      const start: Key = o.after ?? [q.campaign];
      let scanned = 0;
      for (const { key } of this.ucmp.getRange({ start, end: [above(q.campaign)], exclusiveStart: o.after !== undefined, limit: o.limit })) {
        const [, , u, eid] = key as [string, number, string, string];
        const s = this.rec.get([u, eid]);
        last = key as Cursor;
        scanned++;
        if (s && s.a === 0) records.push(s.r);
      }
      more = scanned >= o.limit;
    }
    return { records, ...(more && last && { next: last }) };
  }

  /** Whether the record (user, eid) is stored here, and if so whether it is archived. */
  lookup(u: string, eid: string): { record: TrackingRecord; archived: boolean } | undefined {
    const s = this.rec.get([u, eid]);
    return s && { record: s.r, archived: s.a === 1 };
  }

  stats(): TrackingStats {
    const acct = this.meta.get(ACCT) ?? emptyAcct();
    let oldest: number | undefined;
    for (const k of this.out.getKeys({ limit: 1 })) oldest = (k as [number])[0];
    return { ...acct, ...(oldest !== undefined && { oldestUnarchivedAt: oldest }) };
  }

  /** Closes this thread's handle once its writes are done (other cells keep theirs). */
  close(): Promise<void> {
    this.closing ??= this.root.close();
    return this.closing;
  }

  // ---- inside a write transaction ----------------------------------------------
  // (A put or remove in a transaction callback is part of that transaction: its promise
  // settles with the transaction's, which callers await; hence `void` on each.)

  private acct(): Accounting {
    return { ...emptyAcct(), ...this.meta.get(ACCT) };
  }

  /**
   * Removes archived records, oldest first, while older than `cutoff` or while
   * the accounted bytes exceed `budget`. Keys are collected before any removal:
   * no writes under an open cursor.
   */
  private evictArchived(acct: Accounting, cutoff: number, budget: number): number {
    const oldest = [...this.arc.getKeys({ limit: MAX_EVICT_PER_TXN })] as Array<[number, string, string]>;
    let gone = 0;
    for (const [at, u, eid] of oldest) {
      if (at >= cutoff && acct.bytes <= budget) break;
      const s = this.rec.get([u, eid]);
      void this.arc.remove([at, u, eid]);
      if (s) {
        void this.rec.remove([u, eid]);
        void this.usr.remove([u, s.r.c, at, eid]);
        acct.records--;
        acct.bytes -= s.n;
      }
      gone++;
    }
    return gone;
  }
}
