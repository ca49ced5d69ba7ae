import type { NatsConnection } from '@nats-io/transport-node';
import {
  DiscardPolicy, jetstream, jetstreamManager, RetentionPolicy, StorageType,
  type JetStreamClient, type JetStreamManager, type MsgRequest, type StoredMsg, type StreamConfig,
} from '@nats-io/jetstream';
import { ErrorCode, ProtocolError } from '@gravitas/protocol';
import type { Names } from './subjects.js';

/*
 * JetStream helpers shared by the mailboxes and the group logs: error codes we act
 * on, idempotent stream set-up, consistent "next message" reads, and scans with
 * deadlines.
 */

export const NS_PER_MS = 1_000_000;
/** Nats-Msg-Id de-duplication window of our streams. */
export const DUPLICATE_WINDOW_MS = 120_000;
/** JetStream API error codes we act on. */
const JS_STREAM_FULL = 10047;
export const JS_MAX_PER_SUBJECT = 10077;
/** A JetStream step that takes longer than this is treated as stalled. */
const STEP_DEADLINE_MS = 5000;
/** Timeout of our JetStream API requests and publishes. */
export const API_TIMEOUT_MS = 5000;

export type StreamSettings = Partial<StreamConfig> & { name: string };

/**
 * A set of partition streams (mailboxes, group logs): one JetStream client and
 * manager, and the settings every stream of ours shares. `start` creates the
 * partitions or brings them to the current config, idempotently across cells.
 */
export abstract class PartitionedStreams<C extends { readonly partitions: number } = { readonly partitions: number }> {
  protected readonly js: JetStreamClient;
  protected jsm!: JetStreamManager;

  constructor(
    readonly nc: NatsConnection,
    readonly names: Names,
    /** The settings its kind of stream is configured by (mailbox.*: partitions, retention, size). */
    readonly cfg: C,
    /** Copies of each stream (NodeConfig.replicas). */
    readonly replicas: number,
  ) {
    this.js = jetstream(nc, { timeout: API_TIMEOUT_MS });
  }

  /** The config of partition `k`: `base()` plus what this kind of stream needs. */
  protected abstract streamConfig(k: number): StreamSettings;

  async start(): Promise<void> {
    this.jsm = await jetstreamManager(this.nc, { timeout: API_TIMEOUT_MS });
    await Promise.all(Array.from({ length: this.cfg.partitions }, (_, k) => ensureStream(this.jsm, this.streamConfig(k))));
  }

  /**
   * File storage, limits retention, discard new (a full stream refuses new
   * messages, never drops acknowledged ones), and no direct gets: they may be
   * answered by a lagging replica, and our reads must see what was just stored.
   */
  protected base(name: string, subjects: string): StreamSettings {
    return {
      name,
      subjects: [subjects],
      retention: RetentionPolicy.Limits,
      storage: StorageType.File,
      num_replicas: this.replicas,
      discard: DiscardPolicy.New,
      allow_direct: false,
    };
  }
}

/** A failed publish as the sender's code: a full stream is MAILBOX_FULL, anything else is retryable. */
export function publishFailure(err: unknown, what: string): StorageError {
  if (isStreamFull(err)) return new StorageError(ErrorCode.MAILBOX_FULL, `the ${what} partition is full`, { cause: err });
  return new StorageError(ErrorCode.STORAGE_UNAVAILABLE, `cannot store in the ${what}: ${(err as Error).message}`, { cause: err });
}

/** A JetStream step that failed or stalled, with the code the client gets (retryable). */
export class StorageError extends ProtocolError {
  override name = 'StorageError';
}

/**
 * A stream over its max_bytes / max_msgs. nats-server 2.9 answers that with the
 * generic store failure (10077, "maximum bytes exceeded"), the code it also uses for
 * "maximum messages per subject exceeded": the text tells them apart.
 */
function isStreamFull(err: unknown): boolean {
  if (jsCode(err) === JS_STREAM_FULL) return true;
  const message = (err as { message?: unknown })?.message;
  return typeof message === 'string' && /maximum (bytes|messages) exceeded/i.test(message);
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
