import type { CellContext } from '../core/context.js';
import type { DirectoryPort, Drains } from '../core/ports.js';

/** Stores for one user within this delay share one wake-up lookup. */
const WAKE_DELAY_MS = 100;
/** A wake-up that could not reach every session is tried again this often, this many times. */
const WAKE_RETRY_MS = 500;
const WAKE_RETRIES = 60;

/** Wakes the drains of a user whose mailbox just got items (custody's stores, expiry receipts). */
export class MailboxWakes {
  /** Users whose mailbox just got items: one directory read each wakes their drains. */
  private readonly wakes = new Map<string, { running: boolean; again: boolean; attempt: number }>();

  constructor(
    private readonly ctx: CellContext,
    private readonly ports: { directory: () => Pick<DirectoryPort, 'entries'>; drains: Pick<Drains, 'poke'> },
  ) {}

  /**
   * After a store, look the user up again: a device that registered while we
   * decided it was offline may have drained already, so it is told to drain again.
   * A lookup that starts after the store's ack closes that race; stores for one
   * user within WAKE_DELAY_MS share one lookup (a burst to an offline user costs
   * one read, not one per message).
   */
  wake(user: string, attempt = 0): void {
    const w = this.wakes.get(user);
    if (w) {
      if (w.running) w.again = true; // started before this store: look once more after it
      return;
    }
    this.wakes.set(user, { running: false, again: false, attempt });
    setTimeout(() => this.runWake(user), WAKE_DELAY_MS).unref();
  }

  private runWake(user: string): void {
    const w = this.wakes.get(user)!;
    w.running = true;
    this.ports
      .directory()
      .entries(user)
      .then(
        (entries) => {
          for (const l of entries) if (l.live) this.ports.drains.poke(l, user);
          // A session on a cell that missed heartbeats (NATS hiccup) may still be
          // there: look again until the cell is back or long enough declared dead.
          return entries.some((l) => !l.live);
        },
        () => true, // NATS away: try again, or the item would wait for the device's next connect
      )
      .then((retry) => {
        this.wakes.delete(user);
        if (w.again) this.wake(user);
        else if (retry && w.attempt < WAKE_RETRIES) setTimeout(() => this.wake(user, w.attempt + 1), WAKE_RETRY_MS).unref();
      })
      .catch((err: unknown) => this.ctx.log('mailbox wake failed', err));
  }
}
