import {
  DeliverPolicy, type JetStreamClient, type JetStreamManager, type MsgRequest, type StoredMsg, type StreamConfig,
} from '@nats-io/jetstream';
import { ErrorCode, ProtocolError } from '@gravitas/protocol';

/*
 * JetStream helpers shared by the mailboxes and the group logs: error codes we act
 * on, idempotent stream set-up, consistent "next message" reads, and paged scans
 * with deadlines.
 */

export const NS_PER_MS = 1_000_000;
/** Nats-Msg-Id de-duplication window of our streams. */
export const DUPLICATE_WINDOW_MS = 120_000;
/** JetStream API error codes we act on. */
export const JS_STREAM_FULL = 10047;
export const JS_MAX_PER_SUBJECT = 10077;
/** How long a page waits for messages it knows are there (the server's pull expiry). */
const FETCH_EXPIRES_MS = 2000;
/** A JetStream step that takes longer than this is treated as stalled. */
const STEP_DEADLINE_MS = FETCH_EXPIRES_MS + 3000;

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
 * Messages of `stream` (matching `filter`, if any) from `fromSeq` to the end,
 * through ordered consumers a page at a time. Every step has a deadline: during a
 * leader change a fetch can stall silently, and a stalled reader would hold a
 * mailbox or a catch-up hostage. A stall throws STORAGE_UNAVAILABLE; the caller
 * retries.
 */
export async function* scan(js: JetStreamClient, stream: string, filter: string | undefined, fromSeq: number, pageSize: number): AsyncGenerator<Scanned> {
  let next = fromSeq;
  for (;;) {
    const consumer = await deadline(
      js.consumers.get(stream, { ...(filter && { filter_subjects: filter }), deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: next }),
      'creating a stream reader',
    );
    const page = await deadline(consumer.fetch({ max_messages: pageSize, expires: FETCH_EXPIRES_MS }), 'fetching from a stream');
    const it = page[Symbol.asyncIterator]();
    let got = 0;
    try {
      for (;;) {
        const r = await deadline(it.next(), 'reading a stream page');
        if (r.done) break;
        const m = r.value;
        got++;
        next = m.seq + 1;
        yield { seq: m.seq, data: m.data, storedAt: Math.floor(m.info.timestampNanos / NS_PER_MS) };
        if (m.info.pending === 0) return;
      }
    } finally {
      page.stop();
    }
    if (got === 0) return;
  }
}

export function deadline<T>(p: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const stalled = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new StorageError(ErrorCode.STORAGE_UNAVAILABLE, `timeout ${what}`)), STEP_DEADLINE_MS);
  });
  return Promise.race([p, stalled]).finally(() => clearTimeout(timer));
}
