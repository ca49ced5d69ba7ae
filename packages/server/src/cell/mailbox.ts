import type { NatsConnection } from '@nats-io/transport-node';
import {
  DeliverPolicy, DiscardPolicy, jetstream, jetstreamManager, RetentionPolicy, StorageType,
  type JetStreamClient, type JetStreamManager, type MsgRequest, type StreamConfig,
} from '@nats-io/jetstream';
import { ErrorCode, pack, ProtocolError, unpack } from '@gravitas/protocol';
import type { MailboxConfig } from '../config.js';
import type { Names } from '../subjects.js';
import { decodeItem, type Item } from './envelope.js';

/** Where one stored item lives: enough to delete it once acknowledged. */
export interface StoredRef { stream: string; seq: number }

export interface StoredItem { item: Item; ref: StoredRef; storedAt: number }

const NS_PER_MS = 1_000_000;
/** JetStream's own expiry runs this long after ours, as a safety net: our sweep tells senders first. */
const HARD_EXPIRY_GRACE_MS = 24 * 3600_000;
const DUPLICATE_WINDOW_MS = 120_000;
/** JetStream API error codes we act on. */
const JS_MAX_PER_SUBJECT = 10077;
const JS_STREAM_FULL = 10047;
const JS_STREAM_CONFIG_DIFFERS = 10058;
/** How long a drain page waits for messages it knows are there (the server's pull expiry). */
const FETCH_EXPIRES_MS = 2000;

function jsCode(err: unknown): number | undefined {
  const e = err as { code?: unknown; api_error?: { err_code?: unknown } };
  if (typeof e?.api_error?.err_code === 'number') return e.api_error.err_code;
  return typeof e?.code === 'number' ? e.code : typeof e?.code === 'string' && /^\d+$/.test(e.code) ? Number(e.code) : undefined;
}

function isNotFound(err: unknown): boolean {
  const e = err as { code?: unknown; message?: unknown };
  return e?.code === 404 || e?.code === '404' || jsCode(err) === 10037 || (typeof e?.message === 'string' && /not found|no message/i.test(e.message));
}

/** A store that failed, with the code the sender gets. */
export class MailboxError extends ProtocolError {
  override name = 'MailboxError';
}

/**
 * Durable per-device mailboxes on JetStream. Users are spread over `partitions`
 * streams by a hash of their id; every stored item has its own subject
 * (`…mbox.<k>.<user>.<device>.<from>.<id>`) and each subject holds at most one
 * message with discard-new, so storing the same message twice is refused by the
 * stream even after the Nats-Msg-Id window has passed. A device drains its
 * subjects in stream order (which is send order, hence order per conversation),
 * and each acknowledged item is deleted.
 */
export class Mailbox {
  private readonly js: JetStreamClient;
  private jsm!: JetStreamManager;

  constructor(
    readonly nc: NatsConnection,
    readonly names: Names,
    readonly cfg: MailboxConfig,
  ) {
    this.js = jetstream(nc, { timeout: 5000 });
  }

  /** Creates the partition streams, or brings their limits up to date. Idempotent across cells. */
  async start(): Promise<void> {
    this.jsm = await jetstreamManager(this.nc, { timeout: 5000 });
    const all = [];
    for (let k = 0; k < this.cfg.partitions; k++) all.push(this.ensure(this.streamConfig(k)));
    await Promise.all(all);
  }

  streamConfig(k: number): Partial<StreamConfig> & { name: string } {
    return {
      name: this.names.mailboxStream(k),
      subjects: [this.names.mailboxStreamSubjects(k)],
      retention: RetentionPolicy.Limits,
      storage: StorageType.File,
      num_replicas: this.cfg.replicas,
      max_age: (this.cfg.retentionMs + HARD_EXPIRY_GRACE_MS) * NS_PER_MS,
      max_bytes: this.cfg.maxBytesPerPartition > 0 ? this.cfg.maxBytesPerPartition : -1,
      max_msgs_per_subject: 1,
      discard: DiscardPolicy.New,
      discard_new_per_subject: true,
      duplicate_window: DUPLICATE_WINDOW_MS * NS_PER_MS,
      // Direct gets may be answered by a lagging replica: a drain asking "anything
      // new?" must ask the leader, or it may miss what was just stored.
      allow_direct: false,
    };
  }

  private async ensure(cfg: Partial<StreamConfig> & { name: string }): Promise<void> {
    try {
      await this.jsm.streams.add(cfg);
    } catch (err) {
      if (jsCode(err) !== JS_STREAM_CONFIG_DIFFERS) throw err;
      // Another cell created it with other limits (an older config): ours win.
      await this.jsm.streams.update(cfg.name, cfg);
    }
  }

  /**
   * Stores `item` for one device; resolves once JetStream acknowledged it (or
   * already had it). Publishes are pipelined by the client: concurrent stores
   * share the connection's write batches.
   */
  async store(user: string, device: string, item: Item): Promise<StoredRef> {
    const subject = this.names.mailboxSubject(user, device, item.from, item.id);
    try {
      const ack = await this.js.publish(subject, pack(item), { msgID: `${user}.${device}.${item.from}.${item.id}`, timeout: 5000 });
      return { stream: ack.stream, seq: ack.seq };
    } catch (err) {
      const code = jsCode(err);
      if (code === JS_MAX_PER_SUBJECT) {
        // Stored before, beyond the duplicate window: find where.
        const k = this.names.partition(user);
        const m = await this.jsm.streams.getMessage(this.names.mailboxStream(k), { last_by_subj: subject }).catch(() => null);
        if (m) return { stream: this.names.mailboxStream(k), seq: m.seq };
      }
      if (code === JS_STREAM_FULL) throw new MailboxError(ErrorCode.MAILBOX_FULL, 'the mailbox partition is full', { cause: err });
      throw new MailboxError(ErrorCode.STORAGE_UNAVAILABLE, `cannot store in the mailbox: ${(err as Error).message}`, { cause: err });
    }
  }

  /** Deletes an acknowledged item. False if it was already gone. */
  async remove(ref: StoredRef): Promise<boolean> {
    try {
      return await this.jsm.streams.deleteMessage(ref.stream, ref.seq, false);
    } catch (err) {
      if (isNotFound(err)) return false;
      throw err;
    }
  }

  /** Empties one device's mailbox (the device was removed). */
  async purgeDevice(user: string, device: string): Promise<void> {
    await this.jsm.streams.purge(this.names.mailboxStream(this.names.partition(user)), { filter: this.names.mailboxFilter(user, device) });
  }

  /**
   * Reads one device's mailbox in stream order from `fromSeq`, a page at a time,
   * and stops at its end. The caller applies backpressure by not pulling the next
   * item until it has room for it.
   */
  async *read(user: string, device: string, fromSeq: number, pageSize: number): AsyncGenerator<StoredItem> {
    const stream = this.names.mailboxStream(this.names.partition(user));
    const filter = this.names.mailboxFilter(user, device);
    // One cheap read first: most devices reconnect to an empty mailbox, and a
    // consumer fetch on nothing would wait for its expiry.
    // `next_by_subj` is in the server's STREAM.MSG.GET API (2.9+) but not in the client's type.
    const query = { next_by_subj: filter, seq: Math.max(1, fromSeq) } as unknown as MsgRequest;
    const first = await this.jsm.streams.getMessage(stream, query).catch((err) => {
      if (isNotFound(err)) return null;
      throw err;
    });
    if (!first) return;
    for await (const m of this.scan(stream, filter, first.seq, pageSize)) {
      const item = decodeOrNull(m.data);
      if (item) yield { item, ref: { stream, seq: m.seq }, storedAt: m.storedAt };
    }
  }

  /**
   * Yields the items of partition `k` stored before `cutoff` (ms), oldest first,
   * and stops at the first younger one. The stream is in time order.
   */
  async *expired(k: number, cutoff: number, pageSize: number): AsyncGenerator<StoredItem> {
    const stream = this.names.mailboxStream(k);
    const info = await this.jsm.streams.info(stream);
    if (info.state.messages === 0) return;
    for await (const m of this.scan(stream, undefined, info.state.first_seq, pageSize)) {
      if (m.storedAt >= cutoff) return;
      const item = decodeOrNull(m.data);
      if (item) yield { item, ref: { stream, seq: m.seq }, storedAt: m.storedAt };
      else await this.remove({ stream, seq: m.seq }); // not ours: never let it block the sweep
    }
  }

  /**
   * Messages of `stream` (matching `filter`) from `fromSeq` to the end, through
   * ordered consumers a page at a time. Every step has a deadline: during a leader
   * change a fetch can stall silently, and a stalled drain would hold a device's
   * mailbox hostage. A stall throws STORAGE_UNAVAILABLE; the caller retries.
   */
  private async *scan(stream: string, filter: string | undefined, fromSeq: number, pageSize: number): AsyncGenerator<{ seq: number; data: Uint8Array; storedAt: number }> {
    let next = fromSeq;
    for (;;) {
      const consumer = await deadline(
        this.js.consumers.get(stream, { ...(filter && { filter_subjects: filter }), deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: next }),
        'creating a mailbox reader',
      );
      const page = await deadline(consumer.fetch({ max_messages: pageSize, expires: FETCH_EXPIRES_MS }), 'fetching from a mailbox');
      const it = page[Symbol.asyncIterator]();
      let got = 0;
      try {
        for (;;) {
          const r = await deadline(it.next(), 'reading a mailbox page');
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
}

/** A JetStream step that takes longer than this is treated as stalled. */
const STEP_DEADLINE_MS = FETCH_EXPIRES_MS + 3000;

function deadline<T>(p: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const stalled = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new MailboxError(ErrorCode.STORAGE_UNAVAILABLE, `timeout ${what}`)), STEP_DEADLINE_MS);
  });
  return Promise.race([p, stalled]).finally(() => clearTimeout(timer));
}

function decodeOrNull(data: Uint8Array): Item | null {
  try {
    return decodeItem(unpack(data));
  } catch {
    return null; // not ours: never let a foreign message stop a drain
  }
}
