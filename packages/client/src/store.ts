/*
 * Where the SDK keeps what must outlive a connection: the outbox (messages sent
 * but not yet confirmed), campaign feedback not yet taken by the server, and the
 * keys of recently received items (to show each one once). In memory by default; in LMDB when the application gives a storage
 * path, so that both survive a restart of the process (docs/sdk.md).
 */
import { mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join, resolve } from 'node:path';
import type { Database, RootDatabase } from 'lmdb';
import { fromBase64Url, toBase64Url } from '@gravitas/protocol';
import { SEEN_MAX, SeenWindow } from './custody.js';
import { ClientError, ClientErrorCode } from './errors.js';
import type { FeedbackRecord, OutboxRecord } from './types.js';

/**
 * The SDK's storage. A memory store answers at once (plain values); a durable
 * store answers with promises that resolve only once the change is on disk.
 */
export interface ClientStore {
  /** True when what is stored survives the process. */
  readonly durable: boolean;
  /** The outbox, oldest first (as it was put). */
  loadOutbox(): OutboxRecord[];
  /** Adds an outbox record; a durable store resolves once it is on disk (write-ahead: before the message is sent). */
  putOutbox(r: OutboxRecord): void | Promise<void>;
  /**
   * Removes a settled record. Not awaited: if the removal is lost in a crash the
   * message is sent again with the same id, and the server answers it again.
   */
  deleteOutbox(id: string): void;
  /** Queued feedback, oldest first (as it was put). */
  loadFeedback(): FeedbackRecord[];
  /** Adds a feedback event; a durable store resolves once it is on disk (before it is sent). */
  putFeedback(r: FeedbackRecord): void | Promise<void>;
  /** Removes feedback the server took (or refused for good). Not awaited: a survivor is sent again and answered `dup`. */
  deleteFeedback(eid: string): void;
  /**
   * Records the key of an incoming item; true if it was not recorded before. A
   * durable store resolves once the key is on disk. At most `maxSeen` keys are
   * kept, the oldest dropped first.
   */
  markSeen(key: string): boolean | Promise<boolean>;
  close(): Promise<void>;
}

/** Keys remembered by the memory store (the SDK's behaviour before storage paths). */
export const MEMORY_SEEN_MAX = SEEN_MAX;
/** Keys remembered by the LMDB store: about 50 MiB on disk at the longest keys (user and id of 64 characters). */
export const LMDB_SEEN_MAX = 100_000;

export interface StoreOptions {
  /** How many incoming keys to remember (defaults: MEMORY_SEEN_MAX, LMDB_SEEN_MAX). */
  maxSeen?: number;
}

/** Everything in memory: lost with the process. */
export class MemoryStore implements ClientStore {
  readonly durable = false;
  private readonly outbox = new Map<string, OutboxRecord>();
  private readonly feedback = new Map<string, FeedbackRecord>();
  private readonly seen: SeenWindow;

  constructor(o: StoreOptions = {}) {
    this.seen = new SeenWindow(o.maxSeen ?? MEMORY_SEEN_MAX);
  }

  loadOutbox(): OutboxRecord[] {
    return [...this.outbox.values()];
  }

  putOutbox(r: OutboxRecord): void {
    this.outbox.set(r.id, r);
  }

  deleteOutbox(id: string): void {
    this.outbox.delete(id);
  }

  loadFeedback(): FeedbackRecord[] {
    return [...this.feedback.values()];
  }

  putFeedback(r: FeedbackRecord): void {
    this.feedback.set(r.eid, r);
  }

  deleteFeedback(eid: string): void {
    this.feedback.delete(eid);
  }

  markSeen(key: string): boolean {
    return this.seen.markSeen(key);
  }

  async close(): Promise<void> {
    // nothing to release
  }
}

/** Paths open in this process: two clients on one outbox would both send it. */
const openPaths = new Set<string>();

/** Stored outbox value: the record and its place in the order of puts. */
interface StoredOutbox extends OutboxRecord { n: number }
/** Stored feedback value, likewise. */
/** The JSON form: the proof as base64url. */
interface StoredFeedback extends Omit<FeedbackRecord, 'rk'> { rk?: string; n: number }

/**
 * LMDB (lmdb-js) in `<path>/client.mdb`. Four sub-databases: `outbox` (id →
 * record), `feedback` (event id → record), `seen` (key → sequence number) and
 * `seenOrder` (sequence number → key, for evicting the oldest). Writes go through lmdb-js's batching: all the writes
 * of one event turn share one transaction and one disk flush, and each promise
 * resolves only after `flushed` (with overlappingSync, the default, a commit is
 * visible before it is on disk).
 */
export class LmdbStore implements ClientStore {
  readonly durable = true;
  private nextOutbox = 0;
  private nextFeedback = 0;
  private nextSeen = 0;
  private seenCount = 0;
  private closing: Promise<void> | undefined;

  private constructor(
    private readonly root: RootDatabase,
    private readonly outbox: Database<StoredOutbox, string>,
    private readonly feedback: Database<StoredFeedback, string>,
    private readonly seen: Database<number, string>,
    private readonly seenOrder: Database<string, number>,
    private readonly maxSeen: number,
    private readonly path: string,
  ) {
    for (const { value } of outbox.getRange()) this.nextOutbox = Math.max(this.nextOutbox, value.n + 1);
    for (const { value } of feedback.getRange()) this.nextFeedback = Math.max(this.nextFeedback, value.n + 1);
    for (const k of seenOrder.getKeys({ reverse: true, limit: 1 })) this.nextSeen = k + 1;
    this.seenCount = seenOrder.getCount();
  }

  /** Opens (creating if needed) the store in directory `path`; throws ClientError STORAGE_FAILED. */
  static open(path: string, o: StoreOptions = {}): LmdbStore {
    const full = resolve(path);
    if (openPaths.has(full)) throw new ClientError(ClientErrorCode.STORAGE_FAILED, `the client store at ${path} is already open in this process (one client per storage path)`);
    let root: RootDatabase | undefined;
    try {
      // Loaded on first use, so that a client without a storage path never loads the native module.
      const lmdb = createRequire(import.meta.url)('lmdb') as typeof import('lmdb');
      mkdirSync(path, { recursive: true });
      root = lmdb.open({ path: join(path, 'client.mdb'), maxDbs: 8 });
      const store = new LmdbStore(
        root,
        root.openDB<StoredOutbox, string>({ name: 'outbox', encoding: 'json' }),
        root.openDB<StoredFeedback, string>({ name: 'feedback', encoding: 'json' }),
        root.openDB<number, string>({ name: 'seen', encoding: 'json' }),
        root.openDB<string, number>({ name: 'seenOrder', encoding: 'string' }),
        o.maxSeen ?? LMDB_SEEN_MAX,
        full,
      );
      openPaths.add(full);
      return store;
    } catch (err) {
      void root?.close().catch(() => undefined);
      throw new ClientError(ClientErrorCode.STORAGE_FAILED, `cannot open the client store at ${path}: ${(err as Error).message}`, { cause: err });
    }
  }

  loadOutbox(): OutboxRecord[] {
    const all = [...this.outbox.getRange()].map((e) => e.value).sort((a, b) => a.n - b.n);
    return all.map(({ id, target, text, createdAt }) => ({ id, target, text, createdAt }));
  }

  async putOutbox(r: OutboxRecord): Promise<void> {
    await this.outbox.put(r.id, { id: r.id, target: r.target, text: r.text, createdAt: r.createdAt, n: this.nextOutbox++ });
    await this.root.flushed;
  }

  deleteOutbox(id: string): void {
    // A record left behind is re-sent and answered again; lmdb-js throws at once for
    // some failures (a key it cannot hold) and rejects for others.
    try {
      this.outbox.remove(id).catch(() => undefined);
    } catch {
      // nothing was stored under it either
    }
  }

  loadFeedback(): FeedbackRecord[] {
    const all = [...this.feedback.getRange()].map((e) => e.value).sort((a, b) => a.n - b.n);
    // Records without a proof (from before proofs) are sent with an empty one and refused for good.
    return all.map(({ eid, c, ev, ts, rk }) => ({ eid, c, ev, ts, rk: typeof rk === 'string' ? fromBase64Url(rk) : new Uint8Array(0) }));
  }

  async putFeedback(r: FeedbackRecord): Promise<void> {
    await this.feedback.put(r.eid, { eid: r.eid, c: r.c, ev: r.ev, ts: r.ts, rk: toBase64Url(r.rk), n: this.nextFeedback++ });
    await this.root.flushed;
  }

  deleteFeedback(eid: string): void {
    try {
      this.feedback.remove(eid).catch(() => undefined);
    } catch {
      // nothing was stored under it either
    }
  }

  async markSeen(key: string): Promise<boolean> {
    // In a transaction callback reads see the batch's own writes: two deliveries of
    // one key in the same batch are told apart, and eviction finds the oldest. Its
    // writes settle with the transaction, which is awaited (hence `void` on each).
    const first = await this.seen.transaction(() => {
      if (this.seen.get(key) !== undefined) return false;
      const n = this.nextSeen++;
      void this.seen.put(key, n);
      void this.seenOrder.put(n, key);
      this.seenCount++;
      if (this.seenCount > this.maxSeen) {
        // Collected first: no removals under an open cursor.
        const oldest = [...this.seenOrder.getRange({ limit: this.seenCount - this.maxSeen })];
        for (const { key: n, value: k } of oldest) {
          void this.seenOrder.remove(n);
          void this.seen.remove(k);
          this.seenCount--;
        }
      }
      return true;
    });
    await this.root.flushed;
    return first;
  }

  /** Closes the environment once the writes under way are done. */
  close(): Promise<void> {
    this.closing ??= this.root.close().finally(() => openPaths.delete(this.path));
    return this.closing;
  }
}

/** The store for a client: LMDB at `path`, or memory without one. */
export function openStore(path: string | undefined, o: StoreOptions = {}): ClientStore {
  return path === undefined ? new MemoryStore(o) : LmdbStore.open(path, o);
}
