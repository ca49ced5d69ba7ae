import type { NatsConnection } from '@nats-io/transport-node';
import { DeliverPolicy, DiscardPolicy, jetstream, jetstreamManager, RetentionPolicy, StorageType, type JetStreamClient, type JetStreamManager, type StreamConfig } from '@nats-io/jetstream';
import { ErrorCode, pack, unpack } from '@gravitas/protocol';
import type { MailboxConfig } from '../config.js';
import type { Names } from '../subjects.js';
import { decodeItem, type ChatItem } from './envelope.js';
import { deadline, DUPLICATE_WINDOW_MS, ensureStream, JS_STREAM_FULL, jsCode, lastOn, nextOn, NS_PER_MS, scan, StorageError } from './jetstream.js';

/** One message of a group's log: its stream sequence (the item's `seq`) and the item. */
export interface LogEntry { seq: number; item: ChatItem }

const TIMEOUT_MS = 5000;

/** A group log operation that failed, with the code the sender gets. */
export class GroupLogError extends StorageError {
  override name = 'GroupLogError';
}

/**
 * The group logs on JetStream: every group message is stored once, in the
 * partition stream `GROUP_<k>` chosen by a hash of the group id, under the
 * group's own subject. The stream sequence orders a group's messages (it is not
 * contiguous per group: partitions are shared). Members read the log through
 * their cursors; nothing is deleted on acknowledgement, messages age out after
 * `mailbox.retentionMs`.
 */
export class GroupLog {
  private readonly js: JetStreamClient;
  private jsm!: JetStreamManager;

  constructor(
    readonly nc: NatsConnection,
    readonly names: Names,
    readonly cfg: MailboxConfig,
    /** Copies of each stream (NodeConfig.replicas). */
    readonly replicas: number,
  ) {
    this.js = jetstream(nc, { timeout: TIMEOUT_MS });
  }

  /** Creates the partition streams, or brings their limits up to date. Idempotent across cells. */
  async start(): Promise<void> {
    this.jsm = await jetstreamManager(this.nc, { timeout: TIMEOUT_MS });
    const all = [];
    for (let k = 0; k < this.cfg.partitions; k++) all.push(ensureStream(this.jsm, this.streamConfig(k)));
    await Promise.all(all);
  }

  streamConfig(k: number): Partial<StreamConfig> & { name: string } {
    return {
      name: this.names.groupStream(k),
      subjects: [this.names.groupStreamSubjects(k)],
      retention: RetentionPolicy.Limits,
      storage: StorageType.File,
      num_replicas: this.replicas,
      max_age: this.cfg.retentionMs * NS_PER_MS,
      // No byte cap of its own: JetStream reserves max_bytes up front, and the mailbox
      // partitions already reserve theirs. Bounded by max_age and the server's store;
      // when that is full, refusing new messages keeps custody of the old ones.
      discard: DiscardPolicy.New,
      // JetStream refuses a window longer than max_age (short retentions in tests).
      duplicate_window: Math.min(DUPLICATE_WINDOW_MS, this.cfg.retentionMs) * NS_PER_MS,
      allow_direct: false, // reads ask the leader: a lagging replica would hide new messages
    };
  }

  streamOf(g: string): string {
    return this.names.groupStream(this.names.partition(g));
  }

  /**
   * Appends a message to the group's log; resolves with its sequence once
   * JetStream acknowledged it. A re-send of the same message (same group, sender
   * and id) within the duplicate window resolves with the original sequence.
   * The publish goes out synchronously, so calls keep their order in the log.
   */
  async append(item: ChatItem): Promise<{ seq: number; duplicate: boolean }> {
    const g = item.g!;
    const stored = { k: 'm', id: item.id, from: item.from, fd: item.fd, to: item.to, text: item.text, ts: item.ts, g };
    try {
      const ack = await this.js.publish(this.names.groupSubject(g), pack(stored), { msgID: `${g}.${item.from}.${item.id}`, timeout: TIMEOUT_MS });
      return { seq: ack.seq, duplicate: ack.duplicate };
    } catch (err) {
      if (jsCode(err) === JS_STREAM_FULL) throw new GroupLogError(ErrorCode.MAILBOX_FULL, 'the group log partition is full', { cause: err });
      throw new GroupLogError(ErrorCode.STORAGE_UNAVAILABLE, `cannot store in the group log: ${(err as Error).message}`, { cause: err });
    }
  }

  private entry(g: string, seq: number, data: Uint8Array): LogEntry | undefined {
    try {
      const item = decodeItem(unpack(data));
      if (item.k !== 'm' || item.g !== g) return undefined;
      return { seq, item: { ...item, seq } };
    } catch {
      return undefined; // not ours: never let a foreign message stop a reader
    }
  }

  /** The first message of the group's log at or after `fromSeq` (null at the end). One read of the leader. */
  async next(g: string, fromSeq: number): Promise<LogEntry | null> {
    const stream = this.streamOf(g);
    let from = Math.max(1, fromSeq);
    for (;;) {
      const m = await nextOn(this.jsm, stream, this.names.groupSubject(g), from);
      if (!m) return null;
      const e = this.entry(g, m.seq, m.data);
      if (e) return e;
      from = m.seq + 1;
    }
  }

  /**
   * Reads the group's log in order from `fromSeq` to its end (leader reads, one
   * ahead): a device that is up to date costs one request. The caller applies
   * backpressure by not pulling the next entry until it has room for it.
   */
  async *read(g: string, fromSeq: number): AsyncGenerator<LogEntry> {
    const stream = this.streamOf(g);
    const subject = this.names.groupSubject(g);
    for await (const m of scan(this.jsm, stream, subject, fromSeq)) {
      const e = this.entry(g, m.seq, m.data);
      if (e) yield e;
    }
  }

  /**
   * A position in the group's log before every message stored at or after
   * `sinceMs` (and after every earlier one, as far as they can be told apart).
   * The last message is looked up first: a message stored after that has a
   * higher sequence whatever the time lookup finds.
   */
  async positionAt(g: string, sinceMs: number): Promise<number> {
    const stream = this.streamOf(g);
    const subject = this.names.groupSubject(g);
    const last = await lastOn(this.jsm, stream, subject);
    if (!last) return 0;
    if (last.time.getTime() < sinceMs) return last.seq;
    const consumer = await deadline(this.js.consumers.get(stream, { filter_subjects: subject, deliver_policy: DeliverPolicy.StartTime, opt_start_time: new Date(sinceMs).toISOString() }), 'creating a log reader');
    const page = await deadline(consumer.fetch({ max_messages: 1, expires: 2000 }), 'fetching from a log');
    try {
      for await (const m of page) return m.seq - 1;
    } finally {
      page.stop();
    }
    return last.seq;
  }

  /** The last sequence of the group's partition stream: every later message of the group has a higher one. */
  async position(g: string): Promise<number> {
    const info = await this.jsm.streams.info(this.streamOf(g));
    return info.state.last_seq;
  }

  /** Removes a deleted group's messages. */
  async purge(g: string): Promise<void> {
    await this.jsm.streams.purge(this.streamOf(g), { filter: this.names.groupSubject(g) });
  }
}
