import type { ConfigCheck } from './check.js';

/** Durable mailboxes on JetStream; docs/operations.md says what production needs. */
export interface MailboxConfig {
  /** Streams the users are spread over (by a hash of the user id); fixed for the cluster's life. */
  partitions: number;
  /** Undelivered messages older than this expire and their senders get an `expired` receipt. */
  retentionMs: number;
  /**
   * Size cap of each partition stream (bytes); past it stores fail with MAILBOX_FULL.
   * 0: no per-stream cap, the JetStream server's max_file_store bounds them all. A cap
   * is reserved up front by JetStream, so caps × streams must fit in that store.
   */
  maxBytesPerPartition: number;
  /** How often the expiry sweep runs. */
  sweepIntervalMs: number;
  /** Mailbox messages in flight to one device during a drain (backpressure). */
  drainWindow: number;
}

export const DEFAULT_MAILBOX: MailboxConfig = {
  partitions: 4,
  retentionMs: 30 * 24 * 3600_000,
  maxBytesPerPartition: 0,
  sweepIntervalMs: 60_000,
  drainWindow: 256,
};

export function validateMailbox(c: ConfigCheck): MailboxConfig {
  const M = DEFAULT_MAILBOX;
  return {
    partitions: c.int('mailbox.partitions', M.partitions, 1, 1024),
    retentionMs: c.int('mailbox.retentionMs', M.retentionMs, 1000, 365 * 24 * 3600_000),
    maxBytesPerPartition: c.int('mailbox.maxBytesPerPartition', M.maxBytesPerPartition, 0, 2 ** 50),
    sweepIntervalMs: c.int('mailbox.sweepIntervalMs', M.sweepIntervalMs, 100, 3_600_000),
    drainWindow: c.int('mailbox.drainWindow', M.drainWindow, 1, 10_000),
  };
}
