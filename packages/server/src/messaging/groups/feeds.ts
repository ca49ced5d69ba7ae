import type { CellContext } from '../../core/context.js';
import { Feed, timer, type Reader } from './feed.js';
import type { LogStore } from './log.js';

/** After a reader caught up, the feed reads to the end once more after this long: covers senders whose caches were stale. */
const SETTLE_MS = 3000;
/** Messages a feed keeps at most for slow followers (it trims to this when it holds twice as many). */
const FEED_KEEP = 256;
/** How often feeds drop what all their readers have passed. */
const TRIM_MS = 1000;
/** Log reads a feed issues at once when several messages were announced. */
const HINTS_PER_ROUND = 32;
const MAX_HINTS = 4096;
const EXTEND_RETRIES = 50;

/**
 * The cell's feeds (feed.ts): one per group with member devices here, extended
 * through the group's log as messages are announced (`gdlv`), and read to the
 * end once more when announcements may have been missed (a NATS reconnect, a
 * reader that just caught up). Following readers are pumped when a feed grows.
 */
export class Feeds {
  private readonly feeds = new Map<string, Feed>();
  /** Feeds holding messages: trimmed once a second to what their readers still need. */
  private readonly stocked = new Set<Feed>();
  private trimTimer: NodeJS.Timeout | undefined;
  private stopped = false;

  constructor(
    private readonly ctx: CellContext,
    private readonly log: LogStore,
    /** Gives a following reader what its feed verified (DeviceReaders.pump). */
    private readonly pump: (r: Reader) => void,
  ) {}

  start(): void {
    this.trimTimer = setInterval(() => this.trim(), TRIM_MS);
    this.trimTimer.unref();
  }

  stop(): void {
    this.stopped = true;
    clearInterval(this.trimTimer);
    for (const f of this.feeds.values()) f.clearTimers();
  }

  get(g: string): Feed | undefined {
    return this.feeds.get(g);
  }

  /** The group's feed, made when the first local reader attaches. */
  open(g: string): Feed {
    let feed = this.feeds.get(g);
    if (!feed) {
      this.feeds.set(g, (feed = new Feed(g, FEED_KEEP)));
      this.ctx.metrics.groupFeeds.set(this.feeds.size);
    }
    return feed;
  }

  /** Drops the feed once its last reader detached. */
  release(feed: Feed): void {
    if (feed.readers.size > 0 || this.feeds.get(feed.g) !== feed) return;
    feed.clearTimers();
    this.feeds.delete(feed.g);
    this.stocked.delete(feed);
    this.ctx.metrics.groupFeeds.set(this.feeds.size);
  }

  /** Core NATS dropped what it buffered while disconnected: every feed reads to the end of its log. */
  probeAll(): void {
    for (const f of this.feeds.values()) {
      f.probe = true;
      void this.extend(f);
    }
  }

  /** A reader follows the feed now: read on to what is wanted, and to the end once more when senders' caches have expired. */
  followed(feed: Feed): void {
    // Senders with a stale view (directory, offline or record caches) may not have told this cell
    // about messages stored since: read to the end once more when those caches have expired.
    this.scheduleProbe(feed, SETTLE_MS);
    if (feed.wantTo > feed.hi) void this.extend(feed);
  }

  /** Message `seq` of the feed's group was announced. */
  hint(feed: Feed, seq: number): void {
    if (seq <= feed.hi) return;
    if (feed.live.size >= MAX_HINTS) {
      feed.live.clear();
      feed.probe = true;
    } else feed.live.add(seq);
    if (seq > feed.wantTo) feed.wantTo = seq;
    void this.extend(feed);
  }

  /**
   * Extends the feed's window through the log up to what was announced (or to
   * the end when probing): one direct get per message, those for announced
   * messages issued together. A message between two announced ones (one this
   * cell was not told about) breaks the chain and is read on the next round.
   */
  async extend(feed: Feed): Promise<void> {
    if (feed.extending) {
      feed.again = true;
      return;
    }
    if (!feed.positioned || this.stopped || this.feeds.get(feed.g) !== feed) return;
    feed.extending = true;
    try {
      do {
        feed.again = false;
        while (feed.readers.size > 0 && (feed.wantTo > feed.hi || feed.probe) && !this.stopped) {
          const hints = feed.hints(HINTS_PER_ROUND);
          const froms = [feed.hi + 1, ...hints.map((h) => h + 1)];
          // Nothing is known after the last announced message: do not ask unless probing.
          if (!feed.probe && hints.length > 0 && hints[hints.length - 1]! >= feed.wantTo) froms.pop();
          const t0 = performance.now();
          const got = await Promise.all(froms.map((f) => this.log.next(feed.g, f)));
          this.ctx.metrics.groupLogReads.inc({ kind: 'verify' }, froms.length);
          let progressed = false;
          let end = false;
          for (let i = 0; i < froms.length && froms[i] === feed.hi + 1; i++) {
            const e = got[i];
            if (!e) {
              end = true;
              break;
            }
            feed.append(e);
            progressed = true;
          }
          if (progressed) {
            feed.retries = 0;
            this.stocked.add(feed);
            for (const r of feed.readers) if (r.mode === 'follow') this.pump(r);
            // The pumps run as microtasks (their block checks are cached): all done by the next macrotask.
            setImmediate(() => this.ctx.metrics.groupFanoutSeconds.observe((performance.now() - t0) / 1000));
          }
          if (end && feed.wantTo <= feed.hi) feed.probe = false;
          else if (end || !progressed) {
            // Announced but not readable yet (a replica behind the leader) or removed since: later.
            this.retryExtend(feed);
            break;
          }
        }
      } while (feed.again && !this.stopped);
    } catch (err) {
      this.ctx.log('group feed read failed', err);
      this.retryExtend(feed);
    } finally {
      feed.extending = false;
    }
  }

  private retryExtend(feed: Feed): void {
    if (feed.retryTimer || this.stopped) return;
    if (++feed.retries > EXTEND_RETRIES) {
      // Announced messages that never showed up (the group's log was purged): forget them.
      feed.retries = 0;
      feed.wantTo = feed.hi;
      feed.live.clear();
      feed.probe = false;
      return;
    }
    feed.retryTimer = timer(() => {
      feed.retryTimer = undefined;
      void this.extend(feed);
    }, Math.min(2000, 50 * feed.retries));
  }

  private trim(): void {
    for (const f of this.stocked) {
      f.trim();
      if (f.items.length === 0 || this.feeds.get(f.g) !== f) this.stocked.delete(f);
    }
  }

  /** Reads the feed to its end once more in `ms` (coalesced per feed). */
  private scheduleProbe(feed: Feed, ms: number): void {
    const at = Date.now() + ms;
    if (at <= feed.probeAt) return;
    feed.probeAt = at;
    if (feed.probeTimer) return;
    const fire = (): void => {
      feed.probeTimer = undefined;
      const left = feed.probeAt - Date.now();
      if (left > 5) {
        feed.probeTimer = timer(fire, left);
        return;
      }
      feed.probe = true;
      void this.extend(feed);
    };
    feed.probeTimer = timer(fire, ms);
  }
}
