import type { DrainState } from '../core/session.js';

/**
 * The drain window of a session: how many mailbox items may be written and not
 * yet acknowledged, and room on the connection. A drain waits here instead of
 * running a slow but reading device into SLOW_CONSUMER.
 */
export class DrainWindow {
  private waiters: Array<() => void> = [];

  constructor(
    private readonly drain: DrainState,
    /** Unsent bytes on the connection. */
    private readonly backlog: () => number,
    /** A drain waits while more than this is unsent (half the connection's limit). */
    private readonly maxBacklog: number,
    private readonly ended: () => boolean,
  ) {}

  /** Resolves when fewer than `window` items are unacknowledged and the backlog is small (or the session ended). */
  async wait(window: number): Promise<void> {
    while (!this.ended() && (this.drain.inFlight >= window || this.backlog() > this.maxBacklog)) {
      await new Promise<void>((resolve) => this.waiters.push(resolve));
    }
  }

  /** A mailbox item was acknowledged (or forgotten): its place is free. */
  release(): void {
    this.drain.inFlight--;
    this.wake();
  }

  /** Something changed (room on the connection, the session ended): waiters look again. */
  wake(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
  }
}
