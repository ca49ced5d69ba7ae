import { pack, unpack } from '@gravitas/protocol';
import type { MailboxConfig } from '../config/index.js';
import { decodeItem, type Item } from '../core/envelope.js';
import {
  API_TIMEOUT_MS, DUPLICATE_WINDOW_MS, isNotFound, JS_MAX_PER_SUBJECT, jsCode, lastOn, NS_PER_MS, PartitionedStreams, publishFailure, scan, type StreamSettings,
} from '../infra/jetstream.js';

import type { MailboxPort, StoredItem, StoredRef } from '../core/ports.js';

export type { StoredItem, StoredRef };

/** JetStream's own expiry runs this long after ours, as a safety net: our sweep tells senders first. */
const HARD_EXPIRY_GRACE_MS = 24 * 3600_000;

/**
 * Durable per-device mailboxes on JetStream. Users are spread over `partitions`
 * streams by a hash of their id; every stored item has its own subject
 * (`…mbox.<k>.<user>.<device>.<from>.<id>`) and each subject holds at most one
 * message with discard-new, so storing the same message twice is refused by the
 * stream even after the Nats-Msg-Id window has passed. A device drains its
 * subjects in stream order (which is send order, hence order per conversation),
 * and each acknowledged item is deleted.
 */
export class Mailbox extends PartitionedStreams<MailboxConfig> implements MailboxPort {
  protected streamConfig(k: number): StreamSettings {
    return {
      ...this.base(this.names.mailboxStream(k), this.names.mailboxStreamSubjects(k)),
      max_age: (this.cfg.retentionMs + HARD_EXPIRY_GRACE_MS) * NS_PER_MS,
      max_bytes: this.cfg.maxBytesPerPartition > 0 ? this.cfg.maxBytesPerPartition : -1,
      max_msgs_per_subject: 1,
      discard_new_per_subject: true,
      duplicate_window: DUPLICATE_WINDOW_MS * NS_PER_MS,
    };
  }

  /**
   * Stores `item` for one device; resolves once JetStream acknowledged it (or
   * already had it). Publishes are pipelined by the client: concurrent stores
   * share the connection's write batches.
   */
  async store(user: string, device: string, item: Item): Promise<StoredRef> {
    const subject = this.names.mailboxSubject(user, device, item.from, item.id);
    try {
      const ack = await this.js.publish(subject, pack(item), { msgID: `${user}.${device}.${item.from}.${item.id}`, timeout: API_TIMEOUT_MS });
      return { stream: ack.stream, seq: ack.seq };
    } catch (err) {
      const code = jsCode(err);
      if (code === JS_MAX_PER_SUBJECT) {
        // Stored before, beyond the duplicate window: find where.
        const k = this.names.partition(user);
        const m = await lastOn(this.jsm, this.names.mailboxStream(k), subject).catch(() => null);
        if (m) return { stream: this.names.mailboxStream(k), seq: m.seq };
      }
      throw publishFailure(err, 'mailbox');
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
  async *read(user: string, device: string, fromSeq: number): AsyncGenerator<StoredItem> {
    const stream = this.names.mailboxStream(this.names.partition(user));
    const filter = this.names.mailboxFilter(user, device);
    for await (const m of scan(this.jsm, stream, filter, fromSeq)) {
      const item = decodeOrNull(m.data);
      if (item) yield { item, ref: { stream, seq: m.seq }, storedAt: m.storedAt };
    }
  }

  /**
   * Yields the items of partition `k` stored before `cutoff` (ms), oldest first,
   * and stops at the first younger one. The stream is in time order.
   */
  async *expired(k: number, cutoff: number): AsyncGenerator<StoredItem> {
    const stream = this.names.mailboxStream(k);
    for await (const m of scan(this.jsm, stream, this.names.mailboxStreamSubjects(k), 1)) {
      if (m.storedAt >= cutoff) return;
      const item = decodeOrNull(m.data);
      if (item) yield { item, ref: { stream, seq: m.seq }, storedAt: m.storedAt };
      else await this.remove({ stream, seq: m.seq }); // not ours: never let it block the sweep
    }
  }
}

function decodeOrNull(data: Uint8Array): Item | null {
  try {
    return decodeItem(unpack(data));
  } catch {
    return null; // not ours: never let a foreign message stop a drain
  }
}
