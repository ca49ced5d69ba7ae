import type { CellContext } from '../../core/context.js';
import type { ChatItem } from '../../core/envelope.js';
import type { SocialGraph } from '../../core/ports.js';
import type { DeviceSession } from '../../core/session.js';
import type { CursorStore } from './cursors.js';
import { DeviceGroups, Reader, timer, type Feed } from './feed.js';
import type { Feeds } from './feeds.js';
import type { LogEntry, LogStore } from './log.js';
import type { GroupMember, GroupRecords } from './records.js';

/** Catch-up reads running at once per device. */
const READS_PER_DEVICE = 4;
const STOP_FLUSH_MS = 3000;

/**
 * The member devices on this cell and their readers (feed.ts): a reader per
 * group of the device's user, kept in line with the group records; each reads
 * the log from the device's cursor (catch-up), then follows the cell's feed,
 * and gives the device its messages in log order within a window of
 * unacknowledged messages. Acknowledgements move the cursors (written by
 * CursorStore).
 */
export class DeviceReaders {
  private readonly devices = new Map<DeviceSession, DeviceGroups>();
  private stopped = false;

  constructor(
    private readonly ctx: CellContext,
    private readonly records: GroupRecords,
    private readonly log: LogStore,
    private readonly feeds: Feeds,
    private readonly cursors: CursorStore,
    private readonly social: Pick<SocialGraph, 'refuses'>,
  ) {}

  private get window(): number {
    return this.ctx.config.mailbox.drainWindow;
  }

  /** Writes the cursors of devices that moved (a bounded number per call). */
  flushDue(): void {
    this.cursors.flushDue(this.devices.values());
  }

  /** Stops reading, and writes every device's cursors (waiting STOP_FLUSH_MS at most). */
  async stop(): Promise<void> {
    this.stopped = true;
    for (const d of this.devices.values()) d.releaseWindow();
    const all = [...this.devices.values()].map((d) => this.cursors.flush(d).catch((err) => this.ctx.log('group cursor flush failed', err)));
    await Promise.race([Promise.all(all), new Promise((r) => timer(() => r(undefined), STOP_FLUSH_MS))]);
  }

  /** A session registered: load its cursors, attach a reader per group, each catches up from its cursor. */
  catchUp(s: DeviceSession): void {
    if (this.stopped) return;
    const dev = new DeviceGroups(s);
    this.devices.set(s, dev);
    void this.sync(dev);
  }

  /** The session ended: write its cursors, drop its readers. */
  detached(s: DeviceSession): void {
    const dev = this.devices.get(s);
    if (!dev) return;
    this.devices.delete(s);
    if (dev.loaded) void this.cursors.flush(dev).catch((err) => this.ctx.log('group cursor flush failed', err));
    dev.closed = true;
    for (const r of [...dev.readers.values()]) this.detachReader(r);
    dev.releaseWindow();
  }

  /** The device acknowledged a group message: its cursor may move (written later, coalesced). */
  acked(s: DeviceSession, item: ChatItem): void {
    const dev = this.devices.get(s);
    if (!dev || item.g === undefined || item.seq === undefined) return;
    const r = dev.readers.get(item.g);
    if (!r || !r.unacked.delete(item.seq)) return;
    dev.inflight--;
    dev.dirty = true;
    if (dev.inflight < this.window) {
      dev.releaseWindow();
      const blocked = [...dev.blocked];
      dev.blocked.clear();
      for (const b of blocked) void this.pump(b);
    }
  }

  /** The user's group list changed: re-sync its devices here. */
  resyncUser(user: string): void {
    for (const s of this.ctx.hub.sessionsOf(user)) {
      const dev = this.devices.get(s);
      if (dev) void this.sync(dev);
    }
  }

  /** Brings a device's readers in line with the groups its user is in. */
  async sync(dev: DeviceGroups): Promise<void> {
    if (dev.syncing) {
      dev.syncAgain = true;
      return;
    }
    dev.syncing = true;
    try {
      do {
        dev.syncAgain = false;
        if (!dev.loaded) await this.cursors.load(dev);
        if (dev.closed) return;
        const mine = await this.groupsOf(dev.user);
        if (dev.closed) return;
        for (const [g, r] of dev.readers) if (!mine.has(g)) this.detachReader(r);
        for (const g of Object.keys(dev.cursors)) {
          if (mine.has(g)) continue;
          delete dev.cursors[g]; // left the group (perhaps while this device was offline)
          dev.pruned = true;
          dev.dirty = true;
        }
        for (const [g, m] of mine) {
          const r = dev.readers.get(g);
          if (!r) this.attach(dev, g, m);
          else if (m.j > r.joined) {
            // Left and joined again: nothing from in between.
            r.joined = m.j;
            if (r.next <= m.j) r.next = m.j + 1;
          }
        }
      } while (dev.syncAgain && !dev.closed);
    } catch (err) {
      if (!dev.closed && !this.stopped) {
        this.ctx.log('group sync failed', err);
        timer(() => void this.sync(dev), 2000);
      }
    } finally {
      dev.syncing = false;
    }
  }

  /** Groups `user` is a member of (by their records), with its membership. */
  private async groupsOf(user: string): Promise<Map<string, GroupMember>> {
    const ids = await this.records.groupsOf(user);
    const recs = await Promise.all(ids.map((g) => this.records.get(g)));
    const mine = new Map<string, GroupMember>();
    for (const r of recs) {
      const m = r?.members.get(user);
      if (r && m) mine.set(r.id, m);
    }
    return mine;
  }

  private attach(dev: DeviceGroups, g: string, m: GroupMember): void {
    const feed = this.feeds.open(g);
    const saved = dev.cursors[g];
    const r = new Reader(dev, feed, m.j, saved ?? m.j);
    // Joined before this device existed: its history starts when the device was registered.
    if (saved === undefined && m.t < dev.since) r.since = dev.since;
    dev.readers.set(g, r);
    feed.readers.add(r);
    this.startRead(r);
  }

  private detachReader(r: Reader): void {
    r.detached = true;
    clearTimeout(r.retryTimer);
    const dev = r.dev;
    if (dev.readers.get(r.g) === r) dev.readers.delete(r.g);
    dev.blocked.delete(r);
    dev.inflight -= r.unacked.size;
    r.unacked.clear();
    r.feed.readers.delete(r);
    this.feeds.release(r.feed);
    dev.releaseWindow();
  }

  private active(r: Reader): boolean {
    return !r.detached && !r.dev.closed && !this.stopped && r.dev.s.isOpen;
  }

  /** Starts a catch-up read (at most READS_PER_DEVICE at once per device; the rest queue). */
  private startRead(r: Reader): void {
    r.mode = 'read';
    if (r.reading || !this.active(r)) return;
    const dev = r.dev;
    if (dev.reading >= READS_PER_DEVICE) {
      if (!dev.readQueue.includes(r)) dev.readQueue.push(r);
      return;
    }
    r.reading = true;
    dev.reading++;
    void this.runRead(r).finally(() => {
      r.reading = false;
      dev.reading--;
      const next = dev.readQueue.shift();
      if (next && next.mode === 'read') this.startRead(next);
    });
  }

  /**
   * Reads the log from the reader's position to its end and gives what concerns
   * the device, in order, within its window; then follows the feed. Live
   * deliveries meanwhile only move the feed: this read reaches them, or the feed
   * hands them over once the reader follows it.
   */
  private async runRead(r: Reader): Promise<void> {
    const feed: Feed = r.feed;
    try {
      if (r.since !== undefined) {
        const p = await this.log.positionAt(feed.g, r.since);
        if (!this.active(r)) return;
        if (p + 1 > r.next) r.next = p + 1;
        r.since = undefined;
      }
      if (feed.positioned && r.next - 1 >= feed.lo && r.next - 1 <= feed.hi) {
        // The cell already follows this group past the device's cursor: no read of the log needed.
        this.follow(r);
        return;
      }
      for (;;) {
        // What the feed knew when this pass started: the pass reads everything up to there.
        const lo0 = feed.positioned ? feed.lo : -1;
        let seen = 0;
        for await (const e of this.log.read(feed.g, r.next)) {
          if (!this.active(r)) return;
          this.ctx.metrics.groupLogReads.inc({ kind: 'catchup' });
          if (e.seq < r.next) continue;
          seen = e.seq;
          if (await this.concerns(r, e)) {
            await this.room(r.dev);
            if (!this.active(r)) return;
            if (!this.give(r, e, 'catchup')) return;
          }
          r.next = e.seq + 1;
          r.dev.dirty = true;
        }
        if (!this.active(r)) return;
        if (r.next <= lo0) r.next = lo0 + 1; // nothing of the group in between: the pass would have seen it
        if (!feed.positioned) feed.position(r.next - 1);
        else if (seen > feed.wantTo) feed.wantTo = seen; // the feed is behind what this pass saw: its followers need it
        if (r.next - 1 >= feed.lo) {
          this.follow(r);
          return;
        }
        // The feed's window moved past this reader during the pass: read on.
      }
    } catch (err) {
      if (!this.active(r)) return;
      this.ctx.log('group catch-up failed', err);
      r.retryTimer = timer(() => this.startRead(r), 1000);
    }
  }

  private follow(r: Reader): void {
    r.mode = 'follow';
    this.feeds.followed(r.feed);
    void this.pump(r);
  }

  /** Follows the feed: gives the device what the feed verified, in order, within the window. */
  async pump(r: Reader): Promise<void> {
    if (r.pumping) {
      r.pumpAgain = true;
      return;
    }
    r.pumping = true;
    try {
      do {
        r.pumpAgain = false;
        const feed = r.feed;
        while (r.mode === 'follow' && this.active(r)) {
          if (r.next - 1 < feed.lo) {
            this.startRead(r); // fell behind the feed's window: read the log itself
            return;
          }
          if (r.next > feed.hi) break;
          const e = feed.at(r.next);
          if (!e) {
            r.next = feed.hi + 1;
            break;
          }
          if (await this.concerns(r, e)) {
            if (!this.active(r) || r.mode !== 'follow') return;
            if (r.dev.inflight >= this.window) {
              r.dev.blocked.add(r);
              break;
            }
            if (!this.give(r, e, 'live')) return;
          }
          r.next = e.seq + 1;
          r.dev.dirty = true;
        }
      } while (r.pumpAgain);
    } catch (err) {
      if (this.active(r)) {
        this.ctx.log('group delivery failed', err);
        r.retryTimer = timer(() => void this.pump(r), 1000);
      }
    } finally {
      r.pumping = false;
    }
  }

  /** Whether a log message is for this device: after its user joined, not its own, not from someone its user blocks. */
  private async concerns(r: Reader, e: LogEntry): Promise<boolean> {
    if (e.seq <= r.joined) return false;
    const it = e.item;
    if (it.from === r.dev.user) return it.fd !== r.dev.device;
    return !(await this.social.refuses(r.dev.user, it.from));
  }

  private async room(dev: DeviceGroups): Promise<void> {
    while (dev.inflight >= this.window && !dev.closed && !this.stopped) await new Promise<void>((res) => dev.windowWaiters.push(res));
  }

  private give(r: Reader, e: LogEntry, path: 'live' | 'catchup'): boolean {
    if (!r.dev.s.deliverGroup(e.item)) return false;
    r.unacked.add(e.seq);
    r.dev.inflight++;
    this.ctx.metrics.groupDeliveries.inc({ path });
    return true;
  }
}
