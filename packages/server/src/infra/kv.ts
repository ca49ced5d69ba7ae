import type { KV, KvEntry } from '@nats-io/kv';

/** JetStream "wrong last sequence": an optimistic-concurrency (create/update) conflict. */
export function isCasConflict(err: unknown): boolean {
  const e = err as { code?: unknown; message?: unknown };
  return e?.code === 10071 || (typeof e?.message === 'string' && e.message.includes('wrong last sequence'));
}

/** Compare-and-set attempts before a change gives up: enough for every contended key measured here. */
export const CAS_ATTEMPTS = 16;

/** What one attempt of a read-modify-write makes of the current value. */
export interface CasStep<R> {
  /** New bytes; `null` deletes the key; absent leaves it as it is (and ends the loop). */
  write?: Uint8Array | null;
  /** What `casModify` resolves to once this step's write (if any) went through. */
  result: R;
}

/** What casModify uses of a bucket (a KV, or a fake of one in unit tests). */
export type CasKv = Pick<KV, 'get' | 'create' | 'update' | 'delete'>;

export interface CasOptions {
  attempts?: number;
  /** Where the current entry is read from (default: `kv.get`, which reads the stream leader only if the bucket says so). */
  read?: (key: string) => Promise<KvEntry | null>;
  /** The error thrown after the last conflicting attempt (callers give it a stable code). */
  contended: () => Error;
  /** Waits after conflicting attempt `attempt` (0-based) before the next one; default: at once. */
  backoff?: (attempt: number) => Promise<void>;
}

/**
 * The one read-modify-write loop over a KV key: reads the entry, lets `step`
 * decide from its value (undefined when absent or deleted), writes with the
 * revision read (create when there was none, update over a delete marker), and
 * reads again on a conflict. Other errors end it at once. `step` must be pure:
 * it may run several times.
 */
export async function casModify<R>(kv: CasKv, key: string, step: (cur: Uint8Array | undefined, rev: number) => CasStep<R>, opts: CasOptions): Promise<R> {
  return (await casModifyRev(kv, key, step, opts)).result;
}

/**
 * `casModify` for callers that order or announce changes by revision: `step` is
 * also given the revision it read (0 when there was no entry, a delete marker's
 * own revision), and the answer carries the key's revision after the step (the
 * one written; the one read when nothing was written; 0 after a delete, whose
 * revision the KV client does not answer).
 */
export async function casModifyRev<R>(
  kv: CasKv,
  key: string,
  step: (cur: Uint8Array | undefined, rev: number) => CasStep<R>,
  opts: CasOptions,
): Promise<{ result: R; rev: number }> {
  const attempts = opts.attempts ?? CAS_ATTEMPTS;
  for (let i = 0; i < attempts; i++) {
    const e = await (opts.read ? opts.read(key) : kv.get(key));
    const live = e !== null && e.operation === 'PUT';
    const read = e?.revision ?? 0;
    const { write, result } = step(live ? e.value : undefined, read);
    if (write === undefined) return { result, rev: read };
    try {
      if (write === null) {
        if (live) await kv.delete(key, { previousSeq: e.revision });
        return { result, rev: live ? 0 : read };
      }
      return { result, rev: e ? await kv.update(key, write, e.revision) : await kv.create(key, write) };
    } catch (err) {
      if (!isCasConflict(err)) throw err;
      if (opts.backoff && i + 1 < attempts) await opts.backoff(i);
    }
  }
  throw opts.contended();
}
