import type { KV } from '@nats-io/kv';
import type { RequestOp, Send, Typing } from '@gravitas/protocol';
import type { CellContext } from '../../core/context.js';
import type { ChatItem } from '../../core/envelope.js';
import type { DeviceRoster, DirectoryPort, GroupsPort, InviteNotices, MessagingEvents, PresencePort, SocialGraph } from '../../core/ports.js';
import type { DeviceSession } from '../../core/session.js';
import { GroupAdmin } from './admin.js';
import { CursorStore, FLUSH_TICK_MS } from './cursors.js';
import type { Feed } from './feed.js';
import { Feeds } from './feeds.js';
import { MemberLocator } from './locate.js';
import { GroupLog, type LogStore } from './log.js';
import { DeviceReaders } from './readers.js';
import { GroupRecords } from './records.js';
import { GroupSender } from './sender.js';
import { GroupTyping } from './typing.js';

/** What groups use of the other features of the cell. */
export interface GroupPorts {
  /** Where members' devices are (fan-out, typing, forwarding a delivery whose device moved). */
  directory: Pick<DirectoryPort, 'lookup'>;
  /** Blocks and contacts: who refuses whose messages, who consents to be added. */
  social: Pick<SocialGraph, 'refuses' | 'record'>;
  /** Registered devices: whether an invitee exists, when a device was registered (its history start). */
  accounts: DeviceRoster;
  /** Told of every member's message (push to its offline devices) and of one a device missed. */
  events: Pick<MessagingEvents, 'groupMessage' | 'groupMissed'>;
  /** Shows typing to local members. */
  presence: Pick<PresencePort, 'onTyping'>;
  /** Tells an invitee of its invitation. */
  invites: InviteNotices;
}

/**
 * Groups (docs/groups.md). Membership lives in KV records changed by
 * compare-and-set (records.ts, changed by the requests of admin.ts); every
 * message is stored once in the group's log (log.ts) and the sender hears
 * `stored` when the log acknowledged it. Then the sending cell tells each cell
 * hosting an online member device (one `gdlv` per cell: sender.ts); each cell
 * reads the new messages from the log once (its feed: feeds.ts) and hands them
 * to its member devices in log order, each device within a window of
 * unacknowledged messages (readers.ts). A device's acknowledged position per
 * group (its cursor) is written to KV, coalesced (cursors.ts); a device that
 * connects reads each log from its cursor.
 */
export class Groups implements GroupsPort {
  private readonly records: GroupRecords;
  private readonly log: LogStore;
  private readonly admin: GroupAdmin;
  private readonly locator: MemberLocator;
  private readonly sender: GroupSender;
  private readonly typist: GroupTyping;
  private readonly feeds: Feeds;
  private readonly cursors: CursorStore;
  private readonly readers: DeviceReaders;
  /** Groups whose record is being re-checked after a change (true: changed again meanwhile). */
  private readonly rechecks = new Map<string, boolean>();
  private flushTimer: NodeJS.Timeout | undefined;
  private stopped = false;

  constructor(
    private readonly ctx: CellContext,
    private readonly ports: GroupPorts,
    kv: KV,
    /** The log, for tests that give a fake one (default: the group logs on JetStream). */
    log?: LogStore,
  ) {
    this.records = new GroupRecords(kv);
    this.log = log ?? new GroupLog(ctx.nc, ctx.names, ctx.config.mailbox, ctx.config.replicas);
    this.admin = new GroupAdmin(ctx, ports, this.records, this.log);
    this.locator = new MemberLocator(ports.directory);
    this.sender = new GroupSender(ctx, { social: ports.social, events: ports.events, locator: this.locator, deliverHere: (item, to) => this.onDelivery(item, to) }, this.records, this.log);
    this.typist = new GroupTyping(ctx, this.records, this.locator, ports.social, ports.presence);
    this.feeds = new Feeds(ctx, this.log, (r) => void this.readers.pump(r));
    this.cursors = new CursorStore(ctx, kv, ports.accounts);
    this.readers = new DeviceReaders(ctx, this.records, this.log, this.feeds, this.cursors, ports.social);
  }

  async start(): Promise<void> {
    await this.log.start();
    this.flushTimer = setInterval(() => this.readers.flushDue(), FLUSH_TICK_MS);
    this.flushTimer.unref();
    this.feeds.start();
    void this.watchNats();
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    clearInterval(this.flushTimer);
    this.feeds.stop();
    await this.readers.stop();
  }

  /** Core NATS drops what it buffered while disconnected: after a reconnect every feed reads to the end of its log. */
  private async watchNats(): Promise<void> {
    for await (const st of this.ctx.nc.status()) {
      if (this.stopped) return;
      if (st.type === 'reconnect') this.feeds.probeAll();
    }
  }

  // ---- requests and record changes ---------------------------------------------------

  /** groups.* requests (admin.ts). */
  handle(s: DeviceSession, op: RequestOp, args: unknown): Promise<unknown> {
    return this.admin.handle(s, op, args);
  }

  /** A group record or a user's group list changed somewhere: drop caches, re-sync affected devices here. */
  invalidate(key: string): void {
    this.records.invalidate(key);
    const feed = this.feeds.get(key);
    if (feed) void this.recheck(feed);
    this.readers.resyncUser(key);
  }

  /**
   * The record of a group followed here changed: re-sync the local devices whose
   * membership changed (left, or joined again). One read of the record per change
   * (rechecks of one group are coalesced), not a sync of every member device: a
   * big group's members accepting one by one would otherwise cost every cell a
   * sync of all its member devices per accept.
   */
  private async recheck(feed: Feed): Promise<void> {
    if (this.rechecks.has(feed.g)) {
      this.rechecks.set(feed.g, true);
      return;
    }
    this.rechecks.set(feed.g, false);
    try {
      do {
        this.rechecks.set(feed.g, false);
        const rec = await this.records.get(feed.g).catch(() => null);
        for (const r of [...feed.readers]) {
          const m = rec?.members.get(r.dev.user);
          if (rec === null || !m || m.j > r.joined) void this.readers.sync(r.dev); // unreadable: sync them all
        }
      } while (this.rechecks.get(feed.g) === true);
    } finally {
      this.rechecks.delete(feed.g);
    }
  }

  // ---- sending ------------------------------------------------------------------------

  send(s: DeviceSession, m: Send): Promise<void> {
    return this.sender.send(s, m);
  }

  typing(s: DeviceSession, m: Typing & { g: string }): Promise<void> {
    return this.typist.typing(s, m);
  }

  // ---- receiving ----------------------------------------------------------------------

  /**
   * A group message was stored and some of these devices are here. The cell's
   * feed of the group reads it from the log (with anything it may have missed)
   * and every local member device gets it in log order. A listed device that is
   * not here moved since the sender looked: the message is forwarded once, to
   * where the directory says it is now.
   */
  onDelivery(item: ChatItem, to: Array<[string, string]>): void {
    const g = item.g;
    const seq = item.seq;
    if (g === undefined || seq === undefined || !Number.isSafeInteger(seq) || seq < 1) return;
    const feed = this.feeds.get(g);
    if (feed) this.feeds.hint(feed, seq);
    for (const [u, d] of to) if (!this.ctx.hub.session(u, d)) this.forward(item, u, d);
  }

  private forward(item: ChatItem, user: string, device: string): void {
    this.ports.directory
      .lookup(user, true)
      .then((locs) => {
        const l = locs.find((x) => x.device === device);
        // Gone since the sender's cell looked it up (a cached location): the push it would have had as an offline member.
        if (!l) this.ports.events.groupMissed(user, device, item);
        else if (l.cell !== this.ctx.cellId) this.ctx.bus.publish(l.cell, { k: 'gdlv', m: item, to: [[user, device]] });
      })
      .catch(() => undefined);
  }

  // ---- devices ------------------------------------------------------------------------

  /** A session registered: load its cursors, attach a reader per group, each catches up from its cursor. */
  catchUp(s: DeviceSession): void {
    if (this.stopped) return;
    this.locator.online(s.user);
    this.readers.catchUp(s);
  }

  /** The session ended: write its cursors, drop its readers. */
  detached(s: DeviceSession): void {
    this.readers.detached(s);
  }

  /** The device acknowledged a group message: its cursor may move (written later, coalesced). */
  acked(s: DeviceSession, item: ChatItem): void {
    this.readers.acked(s, item);
  }

  /**
   * A device was removed from its account: its cursors go too, so a device
   * registered later under the same id starts afresh.
   */
  forgetDevice(user: string, device: string): Promise<void> {
    return this.cursors.forget(user, device);
  }
}
