import type { DeviceSession } from '../../core/session.js';
import type { LogEntry } from './log.js';

/*
 * The per-cell view of group logs, and the per-device readers over it.
 *
 * A group's log lives in a partition stream shared with other groups, so its
 * sequence numbers have gaps and a live delivery cannot tell by itself whether
 * an earlier message of the group went missing (core NATS is at most once;
 * directory and record caches can be a moment stale). So a cell never hands a
 * device a group message it has not seen in the log in order:
 *
 * - A Feed is the cell's verified window of one group's log: every message of
 *   the group with lo < seq ≤ hi is in `items`. Live deliveries are only hints
 *   (`wantTo`): the feed extends itself with direct gets (next message of the
 *   group after hi), pipelined when several hints are known. One direct get per
 *   message per cell, whatever the number of local members.
 * - A Reader is one device's position in one group (`next`: everything before
 *   it was given or does not concern the device). It reads the log itself
 *   ('read': catch-up after a connect, or when it fell behind the feed's window)
 *   and then follows the feed ('follow'). It gives messages in log order,
 *   within a per-device window of unacknowledged messages.
 * - The device's cursor for the group is the position before its oldest
 *   unacknowledged message (or before `next`): everything up to it was acked.
 */

/** A timer that does not hold the process open. */
export function timer(fn: () => void, ms: number): NodeJS.Timeout {
  const t = setTimeout(fn, ms);
  t.unref();
  return t;
}

/** The state of one group's log on this cell. */
export class Feed {
  readonly readers = new Set<Reader>();
  /** Verified window: every log message of the group with lo < seq ≤ hi is in items. -1: not positioned yet. */
  lo = -1;
  hi = -1;
  items: LogEntry[] = [];
  /** Highest sequence known to exist in the log (from live hints and readers' reads). */
  wantTo = 0;
  /** Sequences announced by live deliveries, above hi. */
  readonly live = new Set<number>();
  /** Read to the end of the log even without a hint (after a reconnect, settle probes). */
  probe = false;
  extending = false;
  again = false;
  retries = 0;
  probeAt = 0;
  probeTimer: NodeJS.Timeout | undefined;
  retryTimer: NodeJS.Timeout | undefined;

  constructor(readonly g: string, private readonly keep: number) {}

  get positioned(): boolean {
    return this.hi >= 0;
  }

  /** Places an empty window at `seq`: the feed knows nothing before, and reads on from seq + 1. */
  position(seq: number): void {
    this.lo = seq;
    this.hi = seq;
    this.items = [];
  }

  append(e: LogEntry): void {
    if (e.seq <= this.hi) return;
    this.items.push(e);
    this.hi = e.seq;
    for (const s of this.live) if (s <= this.hi) this.live.delete(s);
    if (this.items.length > this.keep * 2) {
      const drop = this.items.length - this.keep;
      this.lo = this.items[drop - 1]!.seq;
      this.items.splice(0, drop);
    }
  }

  /** Forgets messages every following reader is past (readers reading the log do not need them). */
  trim(): void {
    let min = Number.POSITIVE_INFINITY;
    for (const r of this.readers) if (r.mode === 'follow' && r.next < min) min = r.next;
    let drop = 0;
    while (drop < this.items.length && this.items[drop]!.seq < min) drop++;
    if (drop === 0) return;
    this.lo = this.items[drop - 1]!.seq;
    this.items.splice(0, drop);
  }

  /** The first message in the window with seq ≥ `seq`. */
  at(seq: number): LogEntry | undefined {
    const a = this.items;
    let l = 0;
    let h = a.length;
    while (l < h) {
      const m = (l + h) >>> 1;
      if (a[m]!.seq < seq) l = m + 1;
      else h = m;
    }
    return a[l];
  }

  /** Hinted sequences above hi, ascending. */
  hints(max: number): number[] {
    const out = [...this.live].filter((s) => s > this.hi).sort((a, b) => a - b);
    return out.length > max ? out.slice(0, max) : out;
  }

  clearTimers(): void {
    clearTimeout(this.probeTimer);
    clearTimeout(this.retryTimer);
    this.probeTimer = undefined;
    this.retryTimer = undefined;
  }
}

/** One device's position in one group. */
export class Reader {
  mode: 'read' | 'follow' = 'read';
  /** Every message of the group before `next` was given to the device or does not concern it. */
  next: number;
  /** Given, not yet acknowledged (insertion order is log order). */
  readonly unacked = new Set<number>();
  pumping = false;
  pumpAgain = false;
  reading = false;
  detached = false;
  retryTimer: NodeJS.Timeout | undefined;
  /** Set when the start is "messages stored since this time" (ms): resolved to a position before the first read. */
  since: number | undefined;

  constructor(
    readonly dev: DeviceGroups,
    readonly feed: Feed,
    /** The device gets messages after this log position (the user's join). */
    public joined: number,
    start: number,
  ) {
    this.next = Math.max(start, joined) + 1;
  }

  get g(): string {
    return this.feed.g;
  }

  /** Everything up to here was acknowledged (or does not concern the device). */
  cursor(): number {
    const first = this.unacked.values().next();
    return first.done ? this.next - 1 : first.value - 1;
  }
}

/** The group state of one registered session (one device). */
export class DeviceGroups {
  readonly readers = new Map<string, Reader>();
  /** Group messages given and not yet acknowledged, over all groups (the window). */
  inflight = 0;
  /** Readers that stopped for lack of window. */
  readonly blocked = new Set<Reader>();
  windowWaiters: Array<() => void> = [];
  /** Readers reading the log now, and those waiting for a turn. */
  reading = 0;
  readonly readQueue: Reader[] = [];
  /** Persisted cursors (as last read or written) and the KV revision they came with (0: none). */
  cursors: Record<string, number> = {};
  rev = 0;
  /**
   * When the device was registered (ms, less a clock-skew margin): in a group its
   * user joined earlier, a device without a cursor starts at messages stored
   * since then, as a new device gets no older 1:1 messages either.
   */
  since = 0;
  loaded = false;
  /** Cursors moved since the last write; a group was dropped from them; no write before this time. */
  dirty = false;
  pruned = false;
  flushAfter = 0;
  flushing: Promise<void> | undefined;
  syncing = false;
  syncAgain = false;
  closed = false;

  constructor(readonly s: DeviceSession) {}

  get user(): string {
    return this.s.user;
  }

  get device(): string {
    return this.s.device;
  }

  get cursorKey(): string {
    return `c.${this.s.user}.${this.s.device}`;
  }

  /** Current cursors of every group with a reader, merged over the persisted ones (never lower). */
  currentCursors(): { cursors: Record<string, number>; changed: boolean } {
    const out: Record<string, number> = { ...this.cursors };
    let changed = false;
    for (const [g, r] of this.readers) {
      const c = r.cursor();
      if (c > (out[g] ?? -1)) {
        out[g] = c;
        changed = true;
      }
    }
    return { cursors: out, changed };
  }

  releaseWindow(): void {
    const w = this.windowWaiters;
    this.windowWaiters = [];
    for (const f of w) f();
  }
}
