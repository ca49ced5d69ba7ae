import type { JetStreamManager, MsgRequest, StoredMsg, StreamConfig } from '@nats-io/jetstream';
import { ErrorCode, ProtocolError } from '@gravitas/protocol';

/*
 * JetStream helpers shared by the mailboxes and the group logs: error codes we act
 * on, idempotent stream set-up, consistent "next message" reads, and scans with
 * deadlines.
 */

export const NS_PER_MS = 1_000_000;
/** Nats-Msg-Id de-duplication window of our streams. */
export const DUPLICATE_WINDOW_MS = 120_000;
/** JetStream API error codes we act on. */
export const JS_STREAM_FULL = 10047;
export const JS_MAX_PER_SUBJECT = 10077;
/** A JetStream step that takes longer than this is treated as stalled. */
const STEP_DEADLINE_MS = 5000;

/** A JetStream step that failed or stalled, with the code the client gets (retryable). */
export class StorageError extends ProtocolError {
  override name = 'StorageError';
}

export function jsCode(err: unknown): number | undefined {
  const e = err as { code?: unknown; api_error?: { err_code?: unknown } };
  if (typeof e?.api_error?.err_code === 'number') return e.api_error.err_code;
  return typeof e?.code === 'number' ? e.code : typeof e?.code === 'string' && /^\d+$/.test(e.code) ? Number(e.code) : undefined;
}

export function isNotFound(err: unknown): boolean {
  const e = err as { code?: unknown; message?: unknown };
  return e?.code === 404 || e?.code === '404' || jsCode(err) === 10037 || (typeof e?.message === 'string' && /not found|no message/i.test(e.message));
}

/**
 * Creates a stream, or brings an existing one to this config (ours win: an older
 * config's limits are replaced). Cells start together: a create racing another
 * cell's create of the same stream fails ("subjects overlap" on 2.9), so any
 * refusal is answered by looking for the stream.
 */
export async function ensureStream(jsm: JetStreamManager, cfg: Partial<StreamConfig> & { name: string }): Promise<void> {
  try {
    await jsm.streams.add(cfg);
  } catch (err) {
    const exists = await jsm.streams.info(cfg.name).then(
      () => true,
      () => false,
    );
    if (!exists) throw err; // e.g. another stream holds these subjects: a configuration error
    await jsm.streams.update(cfg.name, cfg);
  }
}

/**
 * The first message of `stream` on `subject` (wildcards allowed) at or after
 * `seq`, or null. Asked of the stream leader: a direct get may be answered by a
 * lagging replica and miss what was just stored.
 */
export async function nextOn(jsm: JetStreamManager, stream: string, subject: string, seq: number): Promise<StoredMsg | null> {
  // `next_by_subj` is in the server's STREAM.MSG.GET API (2.9+) but not in the client's type.
  const query = { next_by_subj: subject, seq: Math.max(1, seq) } as unknown as MsgRequest;
  return deadline(
    jsm.streams.getMessage(stream, query).catch((err) => {
      if (isNotFound(err)) return null;
      throw err;
    }),
    'reading a stream',
  );
}

/** The last message of `stream` on `subject`, or null (asked of the leader). */
export async function lastOn(jsm: JetStreamManager, stream: string, subject: string): Promise<StoredMsg | null> {
  return deadline(
    jsm.streams.getMessage(stream, { last_by_subj: subject }).catch((err) => {
      if (isNotFound(err)) return null;
      throw err;
    }),
    'reading a stream',
  );
}

export interface Scanned { seq: number; data: Uint8Array; storedAt: number }

/**
 * Messages of `stream` on `subject` (wildcards allowed) from `fromSeq` to the end,
 * one leader read per message with the next read already in flight while the
 * caller handles the current one. No consumers: creating one can hang for many
 * seconds after a NATS server is lost (2.9 may place it on the dead peer), and
 * a reader per drain would churn consumers anyway. Each read has a deadline; a
 * stall throws STORAGE_UNAVAILABLE and the caller retries.
 */
export async function* scan(jsm: JetStreamManager, stream: string, subject: string, fromSeq: number): AsyncGenerator<Scanned> {
  let pending = nextOn(jsm, stream, subject, fromSeq);
  for (;;) {
    const m = await pending;
    if (!m) return;
    pending = nextOn(jsm, stream, subject, m.seq + 1);
    // An abandoned read-ahead must not surface as an unhandled rejection.
    pending.catch(() => undefined);
    yield { seq: m.seq, data: m.data, storedAt: m.time.getTime() };
  }
}

export function deadline<T>(p: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const stalled = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new StorageError(ErrorCode.STORAGE_UNAVAILABLE, `timeout ${what}`)), STEP_DEADLINE_MS);
  });
  return Promise.race([p, stalled]).finally(() => clearTimeout(timer));
}
