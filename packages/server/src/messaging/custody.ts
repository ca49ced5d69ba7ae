import { randomBytes } from 'node:crypto';
import { ErrorCode, isSystemName, ProtocolError, SYSTEM_PREFIX, type ErrorCode as Code, type Read, type Send } from '@gravitas/protocol';
import type { CellContext } from '../core/context.js';
import { ANY_DEVICE, SYSTEM_DEVICE, type ChatItem, type Item, type ReceiptItem } from '../core/envelope.js';
import type { CustodyPort, DeviceLocation, DeviceRoster, DirectoryPort, Drains, MailboxPort, MessagingEvents, Notice, Settlement, SocialGraph, StoredRef } from '../core/ports.js';
import { DeliveryProofs } from '../core/proofs.js';
import type { DeviceSession } from '../core/session.js';
import { TtlCache } from '../infra/ttl-cache.js';
import type { Routing } from './routing.js';
import { CustodyPace, SWEEP_MS } from './pace.js';
import { MailboxWakes } from './wakes.js';

/** What custody works with besides the context (stores and services built at start, hence getters). */
export interface CustodyPorts {
  accounts: () => Pick<DeviceRoster, 'devices' | 'cachedDevices'>;
  social: () => Pick<SocialGraph, 'refuses' | 'refusesNow' | 'prefs'>;
  directory: () => Pick<DirectoryPort, 'lookup' | 'locate' | 'invalidate' | 'entries'>;
  mailbox: () => Pick<MailboxPort, 'store' | 'remove'>;
  routing: Pick<Routing, 'toDevice'>;
  drains: Pick<Drains, 'poke'>;
  proofs: Pick<DeliveryProofs, 'message'>;
  /** Told of every item stored for a device that is offline or silent (push listens). */
  events: Pick<MessagingEvents, 'stored'>;
}

/** One device an item must reach, and how far it got. */
interface Target {
  user: string;
  device: string;
  loc: DeviceLocation | undefined;
  retried: boolean;
  state: 'live' | 'storing' | 'done';
  /** It acknowledged while its mailbox copy was being written: that copy is deleted once written. */
  ackedWhileStoring: boolean;
}

/** An item under this cell's custody: it is settled when every target device acked it or holds it in its mailbox. */
interface Pending {
  key: string;
  item: Item;
  /** The sending device that gets the `status` (none for receipts the server generates). */
  sender: { user: string; device: string } | undefined;
  targets: Map<string, Target>;
  open: number;
  stored: number;
  deadline: number;
  failure: Code | undefined;
  /** Told the final status (items the server itself sends: campaign messages). */
  onSettled?: (st: Settlement) => void;
}

export type { Settlement };

/** Final statuses remembered to answer re-sends without routing them again. */
const SETTLED_MAX = 100_000;
const SETTLED_TTL_MS = 10 * 60_000;
/** Stored copies of items whose devices were online but silent: a late ack still deletes them. */
const LATE_MAX = 100_000;
const LATE_TTL_MS = 10 * 60_000;


const tkey = (user: string, device: string): string => `${user}/${device}`;
const NO_DEVICES: readonly string[] = [];

/** Ids of items the server creates (receipts, notices): time-ordered, unique, and in the system's `_` namespace no client id can enter. */
export function serverItemId(prefix: string): string {
  return `${SYSTEM_PREFIX}${prefix}${Date.now().toString(36)}${randomBytes(8).toString('base64url')}`;
}

/**
 * The custody protocol of one cell (docs/architecture.md, "Custody"). An item
 * accepted from a sender fans out to every registered device of the recipient and
 * to the sender's other devices. Online devices get it live (a call or one NATS
 * publish); offline ones, and online ones that do not acknowledge within the
 * custody window, get it in their mailbox (JetStream). The sender hears
 * `delivered` when every device acknowledged, `stored` when the rest are durable.
 * Until then the SDK keeps the message and re-sends it after a reconnect; a
 * re-send is matched to the pending or settled entry by (sender, device, id).
 */
export class Custody implements CustodyPort {
  private readonly pending = new Map<string, Pending>();
  private readonly settled = new TtlCache<string, { s: 'delivered' | 'stored' | 'failed'; code?: Code }>(SETTLED_MAX, SETTLED_TTL_MS);
  private readonly late = new TtlCache<string, StoredRef>(LATE_MAX, LATE_TTL_MS);
  /** Messages in flight per sending device (bounded by limits.maxInFlightPerSession). */
  private readonly inFlight = new Map<string, number>();
  private readonly wakes: MailboxWakes;
  private sweeper: NodeJS.Timeout | undefined;
  private readonly pace: CustodyPace;

  constructor(private readonly ctx: CellContext, private readonly ports: CustodyPorts) {
    this.wakes = new MailboxWakes(ctx, ports);
    this.pace = new CustodyPace(ctx.config.limits);
  }

  start(): void {
    this.sweeper = setInterval(() => this.sweep(), SWEEP_MS);
    this.sweeper.unref();
  }

  stop(): void {
    clearInterval(this.sweeper);
  }

  // ---- accepting --------------------------------------------------------------

  /**
   * A chat message from a session, to a user. When the device lists, the block list and
   * the recipient's location are cached — the common case — it runs to the hand-off
   * synchronously: no promise for the message.
   */
  submit(s: DeviceSession, m: Send & { to: string }): void | Promise<void> {
    const key = `${s.user}/${s.device}/${m.id}`;
    if (this.pending.has(key)) return; // a re-send of a message still in flight: its status will come
    const done = this.settled.get(key);
    if (done) return s.send({ t: 'status', id: m.id, ...done });
    const inFlight = this.inFlight.get(tkey(s.user, s.device)) ?? 0;
    if (inFlight >= this.ctx.config.limits.maxInFlightPerSession) return s.send({ t: 'status', id: m.id, s: 'failed', code: ErrorCode.TOO_MANY_IN_FLIGHT });
    if (this.shedsNow(s, m.id)) return;
    const accounts = this.ports.accounts();
    const recipients = accounts.cachedDevices(m.to);
    const own = m.to === s.user ? NO_DEVICES : accounts.cachedDevices(s.user);
    const refused = this.ports.social().refusesNow(m.to, s.user);
    if (recipients && own && refused !== undefined) return this.accept(s, m, key, recipients, own, refused);
    return this.readAndAccept(s, m, key);
  }

  private async readAndAccept(s: DeviceSession, m: Send & { to: string }, key: string): Promise<void> {
    const [recipients, own, refused] = await Promise.all([
      this.ports.accounts().devices(m.to),
      m.to === s.user ? NO_DEVICES : this.ports.accounts().devices(s.user),
      this.ports.social().refuses(m.to, s.user),
    ]);
    return this.accept(s, m, key, recipients, own, refused);
  }

  private accept(s: DeviceSession, m: Send & { to: string }, key: string, recipients: readonly string[], own: readonly string[], refused: boolean): void | Promise<void> {
    // Refusal and non-existence look the same to the sender: UNDELIVERABLE reveals nothing.
    if (refused || recipients.length === 0) return this.answer(s, key, m.id, { s: 'failed', code: ErrorCode.UNDELIVERABLE });
    const targets: Array<[string, string]> = [];
    for (const d of recipients) if (!(m.to === s.user && d === s.device)) targets.push([m.to, d]);
    for (const d of own) if (d !== s.device) targets.push([s.user, d]);
    if (targets.length === 0) return this.answer(s, key, m.id, { s: 'delivered' }); // a note to self, single device
    if (this.pending.has(key)) return; // re-sent while we were looking things up
    // What it costs is what it fans out to; not remembered as settled: the SDK sends it again later.
    const ok = s.spend('fanout', targets.length);
    if (typeof ok !== 'boolean') return ok.then((yes) => this.admit(s, m, key, targets, yes));
    return this.admit(s, m, key, targets, ok);
  }

  private admit(s: DeviceSession, m: Send & { to: string }, key: string, targets: Array<[string, string]>, ok: boolean): void | Promise<void> {
    if (!ok) return s.refused('fanout', m.id);
    if (this.pending.has(key)) return;
    // Asked again after any reads: the bound holds however many waited for a cold cache.
    if (this.shedsNow(s, m.id)) return;
    // Read again: an earlier message of this sender may have settled while we looked things up.
    const sender = tkey(s.user, s.device);
    this.inFlight.set(sender, (this.inFlight.get(sender) ?? 0) + 1);
    const item: ChatItem = { k: 'm', id: m.id, from: s.user, fd: s.device, to: m.to, text: m.text, ts: Date.now() };
    return this.take(key, item, { user: s.user, device: s.device }, targets);
  }

  /**
   * A read receipt from a session: a receipt item to the message's sender, under
   * custody — only with the delivery proof of that message to this user, so nobody
   * can mark as read what did not reach them, and no state per delivery is kept.
   */
  async read(s: DeviceSession, m: Read): Promise<void> {
    if (m.from === s.user || isSystemName(m.from)) return; // no receipts to oneself, nor to the system
    if (!DeliveryProofs.same(this.ports.proofs.message(m.from, m.id, s.user), m.rk)) {
      // No `ref`: it names the sender's own outbox message in an error frame, and this id is someone else's.
      return s.sendError(ErrorCode.NOT_ALLOWED, `read receipt for ${m.id} refused: it needs the delivery proof (rk) of a message delivered to you`);
    }
    const [mine, theirs, refused] = await Promise.all([this.ports.social().prefs(s.user), this.ports.social().prefs(m.from), this.ports.social().refuses(m.from, s.user)]);
    // Reciprocal, as users expect: whoever turns read receipts off neither sends nor gets them.
    if (!mine.readReceipts || !theirs.readReceipts || refused) return;
    await this.receipt(m.from, m.id, s.user, ANY_DEVICE, 'read');
  }

  /**
   * A message the server sends on someone's behalf (a campaign): custody as for a
   * user's message, to every device of `item.to`, and a promise of its settlement
   * instead of a `status` frame. Submitting the same id again while it is pending
   * or settled (10 min) answers with the same settlement, sending nothing twice.
   */
  submitSystem(item: ChatItem): Promise<Settlement> {
    const key = `${item.from}/${item.fd}/${item.id}/${item.to}`;
    const done = this.settled.get(key);
    if (done) return Promise.resolve(done.s === 'failed' ? { s: 'failed', code: done.code ?? ErrorCode.INTERNAL } : { s: done.s });
    const pending = this.pending.get(key);
    if (pending) {
      return new Promise((resolve) => {
        const before = pending.onSettled;
        pending.onSettled = (st) => {
          before?.(st);
          resolve(st);
        };
      });
    }
    return this.ports.accounts().devices(item.to).then((devices) => {
      if (devices.length === 0) return { s: 'failed', code: ErrorCode.UNDELIVERABLE };
      return new Promise<Settlement>((resolve) => {
        void this.take(key, item, undefined, devices.map((d) => [item.to, d]), resolve);
      });
    });
  }

  /**
   * A notice from the system (`from`, a reserved name) to the devices of `user` (all but
   * `except`), under custody like a message: a device that is offline finds it in its mailbox.
   */
  async notice(user: string, except: string | undefined, n: Notice): Promise<void> {
    const devices = (await this.ports.accounts().devices(user)).filter((d) => d !== except);
    if (devices.length === 0) return;
    const item: ChatItem = {
      k: 'm', id: serverItemId('n'), from: n.from, fd: SYSTEM_DEVICE, to: user, text: n.text, ts: Date.now(), sys: n.sys, about: n.about,
    };
    await this.take(`${item.from}/${item.fd}/${item.id}`, item, undefined, devices.map((d) => [user, d]));
  }

  /** Generates a receipt about message `ref` (sent by `to`) and takes custody of it. */
  async receipt(to: string, ref: string, by: string, byDevice: string, state: ReceiptItem['s']): Promise<void> {
    const item: ReceiptItem = { k: 'r', id: serverItemId(state[0]!), from: by, fd: byDevice, to, ref, s: state, ts: Date.now() };
    const devices = await this.ports.accounts().devices(to);
    if (devices.length === 0) return;
    await this.take(`${by}/${byDevice}/${item.id}`, item, undefined, devices.map((d) => [to, d]));
  }

  /**
   * Overload: whether the cell refuses new sends now (1:1 and group alike); if so the sender got
   * BUSY, before any work, and the SDK sends it again after a backoff.
   */
  shedsNow(s: DeviceSession, id: string): boolean {
    if (this.pace.admits(this.pending.size)) return false;
    this.ctx.metrics.shed.inc();
    s.send({ t: 'status', id, s: 'failed', code: ErrorCode.BUSY });
    return true;
  }

  /** Most messages held at once since the previous call (a scrape). */
  pendingPeak(): number {
    return this.pace.peak(this.pending.size);
  }

  private answer(s: DeviceSession, key: string, id: string, st: { s: 'delivered' | 'stored' | 'failed'; code?: Code }): void {
    this.settled.set(key, st);
    s.send({ t: 'status', id, ...st });
  }

  /**
   * Takes custody: locates every target device and hands the item on (live, or to the
   * mailbox). Synchronous when the directory cache answers for every user.
   */
  private take(key: string, item: Item, sender: Pending['sender'], targets: Array<[string, string]>, onSettled?: (st: Settlement) => void): void | Promise<void> {
    const p: Pending = { key, item, sender, targets: new Map(), open: targets.length, stored: 0, deadline: this.pace.now() + this.ctx.config.limits.custodyWindowMs, failure: undefined, ...(onSettled && { onSettled }) };
    const byUser = new Map<string, string[]>();
    for (const [user, device] of targets) {
      p.targets.set(tkey(user, device), { user, device, loc: undefined, retried: false, state: 'live', ackedWhileStoring: false });
      const ds = byUser.get(user);
      if (ds) ds.push(device);
      else byUser.set(user, [device]);
    }
    this.pending.set(key, p);
    this.pace.holding(this.pending.size);
    let reads: Array<Promise<void>> | undefined;
    for (const [user, devices] of byUser) {
      let located: DeviceLocation[] | Promise<DeviceLocation[]>;
      try {
        located = this.ports.directory().locate(user, devices);
      } catch {
        continue; // directory unreachable: the mailbox is the safe path
      }
      if (Array.isArray(located)) this.place(p, user, located);
      else (reads ??= []).push(located.then((locs) => this.place(p, user, locs), () => undefined));
    }
    if (!reads) return this.launch(p);
    return Promise.all(reads).then(() => this.launch(p));
  }

  private place(p: Pending, user: string, locs: readonly DeviceLocation[]): void {
    for (const loc of locs) {
      const t = p.targets.get(tkey(user, loc.device));
      if (t) t.loc = loc;
    }
  }

  /** Each located target gets the item live, the others go to the mailbox. */
  private launch(p: Pending): void {
    for (const t of p.targets.values()) {
      if (t.state !== 'live') continue; // the window passed while we looked (the sweep stored it)
      if (t.loc) this.dispatch(p, t);
      else this.store(p, t);
    }
  }

  // ---- live delivery ------------------------------------------------------------

  private dispatch(p: Pending, t: Target): void {
    const sender = p.sender && this.ctx.hub.session(p.sender.user, p.sender.device);
    if (!this.ports.routing.toDevice(p.item, t.user, t.device, t.loc!, sender)) this.notHere(p, t);
  }

  /**
   * The pending entry an ack or "not here" about item `key` (from/fd/id) by `user`
   * is for: a user's item, or a system item, which is also keyed by its recipient
   * (one campaign id goes to many users) — and only its recipient's devices answer.
   */
  private pendingFor(key: string, user: string): Pending | undefined {
    return this.pending.get(key) ?? this.pending.get(`${key}/${user}`);
  }

  /** "Not here" from a cell, for an item this cell holds. */
  notHereFor(key: string, user: string, device: string): void {
    const p = this.pendingFor(key, user);
    const t = p?.targets.get(tkey(user, device));
    if (p && t) this.notHere(p, t);
  }

  /** The device was not where the directory said (or cannot take it now): look once more, then store. */
  private notHere(p: Pending, t: Target): void {
    if (t.state !== 'live') return;
    if (t.retried) return this.store(p, t);
    t.retried = true;
    this.ports.directory().invalidate(t.user);
    this.ports
      .directory()
      .lookup(t.user, true)
      .then((locs) => {
        if (t.state !== 'live') return;
        const loc = locs.find((l) => l.device === t.device);
        if (loc && (loc.cell !== t.loc?.cell || loc.epoch !== t.loc?.epoch)) {
          t.loc = loc;
          this.dispatch(p, t);
        } else this.store(p, t);
      })
      .catch(() => this.store(p, t));
  }

  /** A device acknowledged an item this cell holds (or held). */
  acked(key: string, user: string, device: string): void {
    const p = this.pendingFor(key, user);
    const t = p?.targets.get(tkey(user, device));
    if (p && t) {
      if (t.state === 'live') {
        t.state = 'done';
        p.open--;
        return this.settleIfDone(p);
      }
      if (t.state === 'storing') {
        t.ackedWhileStoring = true;
        return;
      }
    }
    // Acknowledged after the window: the stored copy is now redundant (a system item's key has its recipient too).
    for (const lk of [`${key}/${user}/${device}`, `${key}/${user}/${user}/${device}`]) {
      const ref = this.late.get(lk);
      if (!ref) continue;
      this.late.delete(lk);
      this.ports.mailbox().remove(ref).catch((err) => this.ctx.log('late-ack delete failed', err));
      break;
    }
  }

  // ---- storing ------------------------------------------------------------------

  private store(p: Pending, t: Target): void {
    if (t.state !== 'live') return;
    t.state = 'storing';
    this.ports
      .mailbox()
      .store(t.user, t.device, p.item)
      .then(
        (ref) => {
          t.state = 'done';
          p.open--;
          this.ctx.metrics.mailboxStores.inc();
          if (t.ackedWhileStoring) {
            this.ports.mailbox().remove(ref).catch(() => undefined); // redundant already
          } else {
            p.stored++;
            this.ports.events.stored(t.user, t.device, p.item); // offline or silent: announce it (push listens)
            // Delivered live too: a late ack deletes the copy; otherwise wake the device's drain.
            if (t.loc) this.late.set(`${p.key}/${t.user}/${t.device}`, ref);
            this.wake(t.user);
          }
          this.settleIfDone(p);
        },
        (err: unknown) => {
          t.state = 'done';
          p.open--;
          if (!t.ackedWhileStoring) {
            this.ctx.log('mailbox store failed', err);
            p.failure = err instanceof ProtocolError ? err.code : ErrorCode.STORAGE_UNAVAILABLE;
          }
          this.settleIfDone(p);
        },
      );
  }

  /** The user's mailbox has items: wake its sessions wherever they are (wakes.ts). */
  wake(user: string): void {
    this.wakes.wake(user);
  }

  // ---- settling -----------------------------------------------------------------

  private settleIfDone(p: Pending): void {
    if (p.open > 0 || this.pending.get(p.key) !== p) return;
    this.pending.delete(p.key);
    if (p.onSettled) {
      const st: Settlement = p.failure ? { s: 'failed', code: p.failure } : { s: p.stored > 0 ? 'stored' : 'delivered' };
      if (!p.failure) this.settled.set(p.key, st);
      p.onSettled(st);
    }
    if (!p.sender) return;
    const key = tkey(p.sender.user, p.sender.device);
    const n = (this.inFlight.get(key) ?? 1) - 1;
    if (n > 0) this.inFlight.set(key, n);
    else this.inFlight.delete(key);
    // A failed store is only final if nothing else holds the message; the SDK retries STORAGE_UNAVAILABLE.
    const st = p.failure ? { s: 'failed' as const, code: p.failure } : { s: p.stored > 0 ? ('stored' as const) : ('delivered' as const) };
    if (!p.failure) this.settled.set(p.key, st);
    this.ctx.hub.session(p.sender.user, p.sender.device)?.send({ t: 'status', id: p.item.id, ...st });
  }

  /** Live targets past the window (custody's clock, pace.ts) go to the mailbox. Pending entries are in deadline order. */
  private sweep(): void {
    this.pace.swept(this.pending.size);
    const now = this.pace.now();
    for (const p of this.pending.values()) {
      if (p.deadline === Number.POSITIVE_INFINITY) continue; // already swept, its stores are under way
      if (p.deadline > now) break;
      p.deadline = Number.POSITIVE_INFINITY;
      for (const t of p.targets.values()) if (t.state === 'live') this.store(p, t);
    }
  }
}
