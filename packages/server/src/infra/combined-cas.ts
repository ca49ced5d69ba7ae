import type { KV } from '@nats-io/kv';
import type { ProtocolError } from '@gravitas/protocol';
import { isCasConflict } from './kv.js';

/** What a change makes of a value: the new value, `null` to delete the key, `undefined` to leave it as it is. */
export type Change<V> = (cur: V | undefined) => V | null | undefined;
/** One change's view: the value it was applied to and what it made of it (`undefined`: no value). */
export interface Changed<V> {
  before: V | undefined;
  after: V | undefined;
}

interface Job<V> {
  change: Change<V>;
  resolve(r: Changed<V>): void;
  reject(e: unknown): void;
}

/** Compare-and-set attempts of one round before its changes fail with the conflict error. */
const ATTEMPTS = 16;
/** Changes applied in one round at most (the rest wait for the next). */
const MAX_BATCH = 512;

/**
 * Compare-and-set on the keys of one KV bucket, with the changes this cell makes
 * to one key at the same time combined: while a round for a key is under way,
 * further changes to it queue, and the next round applies them all, in order,
 * to one read of the value and writes once. 1,000 members accepting an
 * invitation to the same group at once then cost a handful of writes per cell
 * instead of a thousand competing compare-and-sets (each losing one retrying).
 * Cells still compete with each other by compare-and-set, each with one write
 * at a time per key.
 *
 * A change may throw: it fails alone, the others of its round go on. It may
 * run more than once (a lost compare-and-set re-reads and re-applies the
 * round), so it must depend only on the value it is given.
 */
export class CombinedCas<V> {
  private readonly queues = new Map<string, Array<Job<V>>>();

  constructor(
    private readonly kv: KV,
    private readonly codec: { decode(bytes: Uint8Array, key: string): V | undefined; encode(v: V): Uint8Array },
    /** The error of changes whose round lost every attempt. */
    private readonly conflict: (key: string) => ProtocolError,
    /** After a round: the value as stored now (to keep caches in step). */
    private readonly written?: (key: string, v: V | undefined) => void,
  ) {}

  change(key: string, change: Change<V>): Promise<Changed<V>> {
    return new Promise((resolve, reject) => {
      const job: Job<V> = { change, resolve, reject };
      const q = this.queues.get(key);
      if (q) {
        q.push(job);
        return;
      }
      this.queues.set(key, [job]);
      void this.run(key);
    });
  }

  private async run(key: string): Promise<void> {
    const q = this.queues.get(key)!;
    while (q.length > 0) await this.round(key, q.splice(0, MAX_BATCH));
    this.queues.delete(key);
  }

  /** Never throws: every job is settled. */
  private async round(key: string, jobs: Array<Job<V>>): Promise<void> {
    try {
      for (let attempt = 0; attempt < ATTEMPTS; attempt++) {
        const e = await this.kv.get(key);
        const stored = e && e.operation === 'PUT' ? this.codec.decode(e.value, key) : undefined;
        let cur = stored;
        const out: Array<Changed<V> | { error: unknown }> = [];
        for (const j of jobs) {
          try {
            const next = j.change(cur);
            if (next === undefined) out.push({ before: cur, after: cur });
            else {
              const after = next === null ? undefined : next;
              out.push({ before: cur, after });
              cur = after;
            }
          } catch (error) {
            out.push({ error });
          }
        }
        if (cur !== stored) {
          try {
            if (cur === undefined) await this.kv.delete(key, { previousSeq: e!.revision });
            else if (e) await this.kv.update(key, this.codec.encode(cur), e.revision); // over a delete marker too
            else await this.kv.create(key, this.codec.encode(cur));
          } catch (err) {
            if (isCasConflict(err)) continue;
            throw err;
          }
        }
        this.written?.(key, cur);
        jobs.forEach((j, i) => {
          const o = out[i]!;
          if ('error' in o) j.reject(o.error);
          else j.resolve(o);
        });
        return;
      }
      const err = this.conflict(key);
      for (const j of jobs) j.reject(err);
    } catch (err) {
      for (const j of jobs) j.reject(err);
    }
  }
}
