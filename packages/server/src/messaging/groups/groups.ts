import type { KV } from '@nats-io/kv';
import { ErrorCode, pack, ProtocolError, unpack, type ErrorCode as Code, type RequestOp, type Send, type Typing } from '@gravitas/protocol';
import type { Cell } from '../../cell/cell.js';
import type { DeviceLocation } from '../../cluster/directory.js';
import type { ChatItem, Envelope } from '../../core/envelope.js';
import { DeviceGroups, Feed, Reader } from './feed.js';
import { GroupAdmin, type InviteNotices } from './admin.js';
import { GroupLog, type LogEntry } from './log.js';
import { GroupRecords, storageError, type GroupMember, type GroupRecord } from './records.js';
import { isCasConflict } from '../../infra/nats.js';
import type { Session } from '../../session/session.js';
import { TtlCache } from '../../infra/ttl-cache.js';

/**
 * How often dirty cursors are looked at, and how long a device waits between two
 * cursor writes. Cursors are also written when a session ends; the periodic write
 * only bounds what a crashed cell makes devices receive twice (the SDK drops the
 * duplicates). docs/groups.md has the measured cost.
 */
const FLUSH_TICK_MS = 100;
const CURSOR_FLUSH_MS = 5000;
/**
 * Cursor writes per cell per tick, at most: 320/s. A message to a big group makes
 * all its member devices dirty at once; written in one burst they would hold up
 * the next fan-out (measured: p99 165 ms with 256 per tick, ~100 ms with 32).
 */
const FLUSH_PER_TICK = 32;
/** After a reader caught up, the feed reads to the end once more after this long: covers senders whose caches were stale. */
const SETTLE_MS = 3000;
/** Messages a feed keeps at most for slow followers (it trims to this when it holds twice as many). */
const FEED_KEEP = 256;
/** How often feeds drop what all their readers have passed. */
const TRIM_MS = 1000;
/** Catch-up reads running at once per device. */
const READS_PER_DEVICE = 4;
/** Log reads a feed issues at once when several messages were announced. */
const HINTS_PER_ROUND = 32;
const MAX_HINTS = 4096;
const EXTEND_RETRIES = 50;
/** A member with no online device is not looked up again for this long (1 s of staleness is settled by SETTLE_MS). */
const OFFLINE_TTL_MS = 1000;
const SETTLED_MAX = 100_000;
const SETTLED_TTL_MS = 10 * 60_000;
/** A repeated "typing on" to a group within this window is not fanned out again. */
const TYPING_REPEAT_MS = 1000;
const STOP_FLUSH_MS = 3000;
/** Margin for clocks of cells and JetStream servers when "since the device was registered" is turned into a log position. */
const CLOCK_SKEW_MS = 10_000;

type Status = { s: 'stored' | 'failed'; code?: Code };

/** A device's cursor record: `c` group → cursor, `s` the start of its history (ms). */
function decodeCursors(bytes: Uint8Array): { cursors: Record<string, number>; since: number } {
  const cursors: Record<string, number> = {};
  try {
    const o = unpack(bytes) as { c?: unknown; s?: unknown };
    if (o && typeof o.c === 'object' && o.c !== null) {
      for (const [g, v] of Object.entries(o.c as Record<string, unknown>)) if (typeof v === 'number' && Number.isFinite(v)) cursors[g] = v;
    }
    return { cursors, since: typeof o?.s === 'number' && Number.isFinite(o.s) ? o.s : 0 };
  } catch {
    return { cursors, since: 0 };
  }
}

const timer = (fn: () => void, ms: number): NodeJS.Timeout => {
  const t = setTimeout(fn, ms);
  t.unref();
  return t;
};

/**
 * Groups (docs/groups.md). Membership lives in KV records changed by
 * compare-and-set; every message is stored once in the group's log (JetStream)
 * and the sender hears `stored` when the log acknowledged it. Then the sending
 * cell tells each cell hosting an online member device (one `gdlv` per cell);
 * each cell reads the new messages from the log once (its feed) and hands them to
 * its member devices in log order, each device within a window of
 * unacknowledged messages. A device's acknowledged position per group (its
 * cursor) is written to KV, coalesced; a device that connects reads each log
 * from its cursor.
 */
export class Groups {
  private readonly records: GroupRecords;
  private readonly log: GroupLog;
  private readonly admin: GroupAdmin;
  private readonly feeds = new Map<string, Feed>();
  private readonly devices = new Map<Session, DeviceGroups>();
  /** Final statuses of sent messages, to answer re-sends without storing them again. */
  private readonly settled = new TtlCache<string, Status>(SETTLED_MAX, SETTLED_TTL_MS);
  /** Messages whose log append is under way (`user/device/id`), and their count per sending device. */
  private readonly sending = new Set<string>();
  private readonly inFlight = new Map<string, number>();
  private readonly offline = new TtlCache<string, true>(100_000, OFFLINE_TTL_MS);
  private readonly typingSent = new TtlCache<string, true>(100_000, TYPING_REPEAT_MS);
  /** Feeds holding messages: trimmed once a second to what their readers still need. */
  private readonly stocked = new Set<Feed>();
  /** Groups whose record is being re-checked after a change (true: changed again meanwhile). */
  private readonly rechecks = new Map<string, boolean>();
  private flushTimer: NodeJS.Timeout | undefined;
  private trimTimer: NodeJS.Timeout | undefined;
  private stopped = false;

  constructor(readonly cell: Cell, readonly kv: KV) {
    this.records = new GroupRecords(kv);
    this.log = new GroupLog(cell.nc, cell.names, cell.config.mailbox, cell.config.replicas);
    this.admin = new GroupAdmin(cell, this.records, this.log);
  }

  private get window(): number {
    return this.cell.config.mailbox.drainWindow;
  }

  async start(): Promise<void> {
    await this.log.start();
    this.flushTimer = setInterval(() => this.flushDue(), FLUSH_TICK_MS);
    this.flushTimer.unref();
    this.trimTimer = setInterval(() => this.trimFeeds(), TRIM_MS);
    this.trimTimer.unref();
    void this.watchNats();
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    clearInterval(this.flushTimer);
    clearInterval(this.trimTimer);
    for (const f of this.feeds.values()) f.clearTimers();
    for (const d of this.devices.values()) d.releaseWindow();
    const all = [...this.devices.values()].map((d) => this.flush(d).catch((err) => this.cell.log('group cursor flush failed', err)));
    await Promise.race([Promise.all(all), new Promise((r) => timer(() => r(undefined), STOP_FLUSH_MS))]);
  }

  /** Core NATS drops what it buffered while disconnected: after a reconnect every feed reads to the end of its log. */
  private async watchNats(): Promise<void> {
    for await (const st of this.cell.nc.status()) {
      if (this.stopped) return;
      if (st.type !== 'reconnect') continue;
      for (const f of this.feeds.values()) {
        f.probe = true;
        void this.extend(f);
      }
    }
  }

  // ---- requests -------------------------------------------------------------------

  /** groups.* requests (group-admin.ts). */
  handle(s: Session, op: RequestOp, args: unknown): Promise<unknown> {
    return this.admin.handle(s, op, args);
  }

  /** Where invitees are told of their invitations (InviteNotices; by default nobody is told). */
  setInviteNotices(n: InviteNotices): void {
    this.admin.notices = n;
  }

  /** A group record or a user's group list changed somewhere: drop caches, re-sync affected devices here. */
  invalidate(key: string): void {
    this.records.invalidate(key);
    const feed = this.feeds.get(key);
    if (feed) void this.recheck(feed);
    for (const s of this.cell.sessionsOf(key)) {
      const dev = this.devices.get(s);
      if (dev) void this.sync(dev);
    }
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
          if (rec === null || !m || m.j > r.joined) void this.sync(r.dev); // unreadable: sync them all
        }
      } while (this.rechecks.get(feed.g) === true);
    } finally {
      this.rechecks.delete(feed.g);
    }
  }

  // ---- sending --------------------------------------------------------------------

  /**
   * A message to a group: appended to the group's log (custody), `stored` to the
   * sender, then fanned out. Returns once the append is under way, so the
   * session's next message goes to the log after this one.
   */
  async send(s: Session, m: Send): Promise<void> {
    const g = m.g!;
    const key = `${s.user}/${s.device}/${m.id}`;
    if (this.sending.has(key)) return; // a re-send of a message being stored: its status will come
    const done = this.settled.get(key);
    if (done) return s.send({ t: 'status', id: m.id, ...done });
    const sender = `${s.user}/${s.device}`;
    const n = this.inFlight.get(sender) ?? 0;
    if (n >= this.cell.config.limits.maxInFlightPerSession) return s.send({ t: 'status', id: m.id, s: 'failed', code: ErrorCode.TOO_MANY_IN_FLIGHT });
    let rec: GroupRecord | undefined;
    try {
      rec = await this.records.get(g);
      // Not a member by a cached record: make sure with a fresh read (it may have just been added).
      if (!rec?.members.has(s.user)) rec = await this.records.get(g, true);
    } catch (err) {
      throw storageError(err);
    }
    if (!rec?.members.has(s.user)) return s.send({ t: 'status', id: m.id, s: 'failed', code: ErrorCode.NOT_A_MEMBER });
    if (this.sending.has(key)) return;
    // A group message costs what it fans out to (a 1,024-member burst would hold a cell up for seconds).
    let ok = s.spend('fanout', rec.members.size);
    if (typeof ok !== 'boolean') ok = await ok;
    if (!ok) return s.refused('fanout', m.id);
    if (this.sending.has(key)) return;
    this.sending.add(key);
    this.inFlight.set(sender, (this.inFlight.get(sender) ?? 0) + 1);
    const item: ChatItem = { k: 'm', id: m.id, from: s.user, fd: s.device, to: g, text: m.text, ts: Date.now(), g };
    const members = rec;
    this.log
      .append(item)
      .then(
        ({ seq }) => {
          this.cell.metrics.groupMessages.inc();
          this.finish(s, key, m.id, { s: 'stored' }, true);
          void this.fanOut(members, { ...item, seq }, s.device).catch((err) => this.cell.log('group fan-out failed', err));
        },
        (err: unknown) => {
          const code = err instanceof ProtocolError ? err.code : ErrorCode.STORAGE_UNAVAILABLE;
          if (code === ErrorCode.STORAGE_UNAVAILABLE) this.cell.log('group log append failed', err);
          this.finish(s, key, m.id, { s: 'failed', code }, code !== ErrorCode.STORAGE_UNAVAILABLE);
        },
      )
      .finally(() => {
        this.sending.delete(key);
        const left = (this.inFlight.get(sender) ?? 1) - 1;
        if (left > 0) this.inFlight.set(sender, left);
        else this.inFlight.delete(sender);
      });
  }

  private finish(s: Session, key: string, id: string, st: Status, remember: boolean): void {
    if (remember) this.settled.set(key, st);
    // The sending session, or the one that replaced it on this cell.
    (s.isOpen ? s : this.cell.session(s.user, s.device))?.send({ t: 'status', id, ...st });
  }

  /** Online member devices, by cell: one `gdlv` per cell. Members who block the sender are skipped. */
  private async fanOut(rec: GroupRecord, item: ChatItem, senderDevice: string): Promise<void> {
    const byCell = new Map<string, Array<[string, string]>>();
    await Promise.all(
      [...rec.members.keys()].map(async (u) => {
        if (u !== item.from && (await this.cell.social.refuses(u, item.from).catch(() => false))) return;
        const locs = await this.locate(u);
        this.cell.push.groupMessage(u, locs, item); // its offline devices get a push
        for (const l of locs) {
          if (u === item.from && l.device === senderDevice) continue;
          let to = byCell.get(l.cell);
          if (!to) byCell.set(l.cell, (to = []));
          to.push([u, l.device]);
        }
      }),
    );
    for (const [cell, to] of byCell) {
      if (cell === this.cell.cellId) this.onDelivery(item, to);
      else this.cell.publish(cell, { k: 'gdlv', m: item, to });
    }
  }

  /** Online devices of a member; a member found offline is not looked up again for a second. */
  private async locate(user: string): Promise<DeviceLocation[]> {
    if (this.offline.get(user)) return [];
    try {
      const locs = await this.cell.directory.lookup(user);
      if (locs.length === 0) this.offline.set(user, true);
      return locs;
    } catch {
      return []; // directory unreachable: the log has the message, readers catch up
    }
  }

  /** Typing in a group: one `typ` envelope per online member (other than the typist) and cell. */
  async typing(s: Session, m: Typing & { g: string }): Promise<void> {
    const tkey = `${s.user}/${s.device}/${m.g}`;
    if (m.on && this.typingSent.get(tkey)) return;
    if (m.on) this.typingSent.set(tkey, true);
    else this.typingSent.delete(tkey);
    const rec = await this.records.get(m.g).catch(() => undefined);
    if (!rec?.members.has(s.user)) return;
    await Promise.all(
      [...rec.members.keys()].map(async (u) => {
        if (u === s.user || (await this.cell.social.refuses(u, s.user).catch(() => false))) return;
        const cells = new Set((await this.locate(u)).map((l) => l.cell));
        for (const cell of cells) {
          const env: Extract<Envelope, { k: 'typ' }> = { k: 'typ', from: s.user, to: u, on: m.on, g: m.g };
          if (cell === this.cell.cellId) this.cell.presence.onTyping(env);
          else this.cell.publish(cell, env);
        }
      }),
    );
  }

  // ---- receiving ------------------------------------------------------------------

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
    if (feed) this.hint(feed, seq);
    for (const [u, d] of to) if (!this.cell.session(u, d)) this.forward(item, u, d);
  }

  private forward(item: ChatItem, user: string, device: string): void {
    this.cell.directory
      .lookup(user, true)
      .then((locs) => {
        const l = locs.find((x) => x.device === device);
        // Gone since the sender's cell looked it up (a cached location): the push it would have had as an offline member.
        if (!l) this.cell.push.groupMissed(user, device, item);
        else if (l.cell !== this.cell.cellId) this.cell.publish(l.cell, { k: 'gdlv', m: item, to: [[user, device]] });
      })
      .catch(() => undefined);
  }

  private hint(feed: Feed, seq: number): void {
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
  private async extend(feed: Feed): Promise<void> {
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
          this.cell.metrics.groupLogReads.inc({ kind: 'verify' }, froms.length);
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
            for (const r of feed.readers) if (r.mode === 'follow') void this.pump(r);
            // The pumps run as microtasks (their block checks are cached): all done by the next macrotask.
            setImmediate(() => this.cell.metrics.groupFanoutSeconds.observe((performance.now() - t0) / 1000));
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
      this.cell.log('group feed read failed', err);
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

  private trimFeeds(): void {
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

  // ---- devices and readers ----------------------------------------------------------

  /** A session registered: load its cursors, attach a reader per group, each catches up from its cursor. */
  catchUp(s: Session): void {
    if (this.stopped) return;
    const dev = new DeviceGroups(s);
    this.devices.set(s, dev);
    this.offline.delete(s.user);
    void this.sync(dev);
  }

  /** The session ended: write its cursors, drop its readers. */
  detached(s: Session): void {
    const dev = this.devices.get(s);
    if (!dev) return;
    this.devices.delete(s);
    if (dev.loaded) void this.flush(dev).catch((err) => this.cell.log('group cursor flush failed', err));
    dev.closed = true;
    for (const r of [...dev.readers.values()]) this.detachReader(r);
    dev.releaseWindow();
  }

  /**
   * A device was removed from its account: its cursors go too, so a device
   * registered later under the same id starts afresh (hook for Cell.devices).
   */
  async forgetDevice(user: string, device: string): Promise<void> {
    await this.kv.purge(`c.${user}.${device}`);
  }

  /** The device acknowledged a group message: its cursor may move (written later, coalesced). */
  acked(s: Session, item: ChatItem): void {
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

  /** Brings a device's readers in line with the groups its user is in. */
  private async sync(dev: DeviceGroups): Promise<void> {
    if (dev.syncing) {
      dev.syncAgain = true;
      return;
    }
    dev.syncing = true;
    try {
      do {
        dev.syncAgain = false;
        if (!dev.loaded) await this.load(dev);
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
        this.cell.log('group sync failed', err);
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

  /**
   * Reads the device's cursors. A device with no cursor record connects for the
   * first time: its record is created with the time the device was registered
   * (less a clock-skew margin), the start of its history in groups its user
   * joined before.
   */
  private async load(dev: DeviceGroups): Promise<void> {
    const e = await this.kv.get(dev.cursorKey);
    if (e && e.operation === 'PUT') {
      ({ cursors: dev.cursors, since: dev.since } = decodeCursors(e.value));
      dev.rev = e.revision;
    } else {
      const registered = (await this.cell.accounts.deviceList(dev.user)).find((d) => d.device === dev.device)?.registeredAt ?? Date.now();
      const since = Math.min(registered, Date.now()) - CLOCK_SKEW_MS;
      try {
        const value = pack({ c: {}, s: since });
        dev.rev = e ? await this.kv.update(dev.cursorKey, value, e.revision) : await this.kv.create(dev.cursorKey, value);
        dev.cursors = {};
        dev.since = since;
      } catch (err) {
        if (!isCasConflict(err)) throw err;
        const again = await this.kv.get(dev.cursorKey); // another session of this device was first
        ({ cursors: dev.cursors, since: dev.since } = again && again.operation === 'PUT' ? decodeCursors(again.value) : { cursors: {}, since });
        dev.rev = again?.revision ?? 0;
      }
    }
    dev.loaded = true;
  }

  private attach(dev: DeviceGroups, g: string, m: GroupMember): void {
    let feed = this.feeds.get(g);
    if (!feed) {
      this.feeds.set(g, (feed = new Feed(g, FEED_KEEP)));
      this.cell.metrics.groupFeeds.set(this.feeds.size);
    }
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
    const feed = r.feed;
    feed.readers.delete(r);
    if (feed.readers.size === 0 && this.feeds.get(feed.g) === feed) {
      feed.clearTimers();
      this.feeds.delete(feed.g);
      this.stocked.delete(feed);
      this.cell.metrics.groupFeeds.set(this.feeds.size);
    }
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
    const feed = r.feed;
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
          this.cell.metrics.groupLogReads.inc({ kind: 'catchup' });
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
      this.cell.log('group catch-up failed', err);
      r.retryTimer = timer(() => this.startRead(r), 1000);
    }
  }

  private follow(r: Reader): void {
    r.mode = 'follow';
    // Senders with a stale view (directory, offline or record caches) may not have told this cell
    // about messages stored since: read to the end once more when those caches have expired.
    this.scheduleProbe(r.feed, SETTLE_MS);
    if (r.feed.wantTo > r.feed.hi) void this.extend(r.feed);
    void this.pump(r);
  }

  /** Follows the feed: gives the device what the feed verified, in order, within the window. */
  private async pump(r: Reader): Promise<void> {
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
        this.cell.log('group delivery failed', err);
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
    return !(await this.cell.social.refuses(r.dev.user, it.from));
  }

  private async room(dev: DeviceGroups): Promise<void> {
    while (dev.inflight >= this.window && !dev.closed && !this.stopped) await new Promise<void>((res) => dev.windowWaiters.push(res));
  }

  private give(r: Reader, e: LogEntry, path: 'live' | 'catchup'): boolean {
    if (!r.dev.s.deliverGroup(e.item)) return false;
    r.unacked.add(e.seq);
    r.dev.inflight++;
    this.cell.metrics.groupDeliveries.inc({ path });
    return true;
  }

  // ---- cursors --------------------------------------------------------------------

  /** Writes the cursors of devices that moved, each at most every CURSOR_FLUSH_MS, a bounded number per tick. */
  private flushDue(): void {
    const now = Date.now();
    let n = 0;
    for (const dev of this.devices.values()) {
      if (!dev.dirty || !dev.loaded || dev.flushing || now < dev.flushAfter) continue;
      void this.flush(dev).catch((err) => {
        dev.dirty = true;
        this.cell.log('group cursor flush failed', err);
      });
      if (++n >= FLUSH_PER_TICK) return;
    }
  }

  /** Writes the device's cursors as they are now (chained after a write under way). */
  private flush(dev: DeviceGroups): Promise<void> {
    dev.dirty = false;
    const { cursors, changed } = dev.currentCursors();
    if (!changed && !dev.pruned) return dev.flushing ?? Promise.resolve();
    dev.pruned = false;
    dev.flushAfter = Date.now() + CURSOR_FLUSH_MS * (1 + Math.random() / 2);
    const prev = dev.flushing ?? Promise.resolve();
    const p = prev.catch(() => undefined).then(() => this.writeCursors(dev, cursors));
    dev.flushing = p;
    void p.finally(() => {
      if (dev.flushing === p) dev.flushing = undefined;
    }).catch(() => undefined);
    return p;
  }

  private async writeCursors(dev: DeviceGroups, cursors: Record<string, number>): Promise<void> {
    for (let attempt = 0; attempt < 4; attempt++) {
      try {
        const value = pack({ c: cursors, s: dev.since });
        dev.rev = dev.rev ? await this.kv.update(dev.cursorKey, value, dev.rev) : await this.kv.create(dev.cursorKey, value);
        for (const [g, c] of Object.entries(cursors)) if (c > (dev.cursors[g] ?? -1)) dev.cursors[g] = c;
        this.cell.metrics.groupCursorWrites.inc();
        return;
      } catch (err) {
        if (!isCasConflict(err)) throw err;
        // Another session of this device wrote meanwhile: keep the higher of both.
        const e = await this.kv.get(dev.cursorKey);
        const theirs = e && e.operation === 'PUT' ? decodeCursors(e.value).cursors : {};
        for (const [g, c] of Object.entries(theirs)) if (c > (cursors[g] ?? -1)) cursors[g] = c;
        dev.rev = e?.revision ?? 0;
      }
    }
    throw new ProtocolError(ErrorCode.CONFLICT, `cursors of ${dev.user}/${dev.device} are too contended`);
  }
}
