import { DeliverPolicy } from '@nats-io/jetstream';
import { pack, unpack } from '@gravitas/protocol';
import type { MailboxConfig } from '../../config/index.js';
import { decodeItem, type ChatItem } from '../../core/envelope.js';
import { API_TIMEOUT_MS, deadline, DUPLICATE_WINDOW_MS, lastOn, nextOn, NS_PER_MS, PartitionedStreams, publishFailure, scan, type StreamSettings } from '../../infra/jetstream.js';

/** One message of a group's log: its stream sequence (the item's `seq`) and the item. */
export interface LogEntry { seq: number; item: ChatItem }

/**
 * The group logs on JetStream: every group message is stored once, in the
 * partition stream `GROUP_<k>` chosen by a hash of the group id, under the
 * group's own subject. The stream sequence orders a group's messages (it is not
 * contiguous per group: partitions are shared). Members read the log through
 * their cursors; nothing is deleted on acknowledgement, messages age out after
 * `mailbox.retentionMs`.
 */
export class GroupLog extends PartitionedStreams<MailboxConfig> {
  protected streamConfig(k: number): StreamSettings {
    return {
      ...this.base(this.names.groupStream(k), this.names.groupStreamSubjects(k)),
      max_age: this.cfg.retentionMs * NS_PER_MS,
      // No byte cap of its own: JetStream reserves max_bytes up front, and the mailbox
      // partitions already reserve theirs. Bounded by max_age and the server's store.
      // JetStream refuses a duplicate window longer than max_age (short retentions in tests).
      duplicate_window: Math.min(DUPLICATE_WINDOW_MS, this.cfg.retentionMs) * NS_PER_MS,
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
      const ack = await this.js.publish(this.names.groupSubject(g), pack(stored), { msgID: `${g}.${item.from}.${item.id}`, timeout: API_TIMEOUT_MS });
      return { seq: ack.seq, duplicate: ack.duplicate };
    } catch (err) {
      throw publishFailure(err, 'group log');
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

/** What groups use of the log (a test gives a fake one). */
export type LogStore = Pick<GroupLog, 'start' | 'append' | 'next' | 'read' | 'positionAt' | 'position' | 'purge'>;
