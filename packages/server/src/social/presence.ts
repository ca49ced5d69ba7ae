import type { KV } from '@nats-io/kv';
import type { Subscription } from '@nats-io/transport-node';
import { pack, unpack, type Typing } from '@gravitas/protocol';
import type { CellContext } from '../core/context.js';
import type { Envelope } from '../core/envelope.js';
import type { DirectoryPort, GroupsPort, Liveness, PresencePort, SocialGraph, SocialRecord } from '../core/ports.js';
import type { DeviceSession } from '../core/session.js';
import { casModifyRev } from '../infra/kv.js';
import { Limiter } from '../infra/limiter.js';
import { TtlCache } from '../infra/ttl-cache.js';
import { decodePresRecord, decodeView, derive, EMPTY, sameView, viewKey, visible, withoutGone, type GoneAt, type PresRecord, type View } from './presence-record.js';
import { TypingRelay, typingState, type TypingState } from './typing.js';

export { decodePresRecord } from './presence-record.js';
export { TYPING_BURST, TYPING_RATE_PER_SEC } from './typing.js';

/*
 * Presence, last seen and typing (docs/social.md).
 *
 * The durable state of a user is one KV record: `{ d: { <device>: { c: cell, i: session,
 * e: epoch, a: 0|1, t: ms } }, l?: last seen ms }`, changed by compare-and-set by the
 * cell that hosts the device's session. Whoever writes a change publishes the user's
 * new view on the core subject `<prefix>.pres.<user>`; every cell that hosts a session
 * whose contact list names that user holds one subscription to it (ref-counted by
 * local watcher sessions) and forwards the view to the watchers the owner lets see it.
 * Typing indicators are never stored: one envelope per cell hosting the recipient
 * (typing.ts). The record and view codecs are in presence-record.ts.
 */

/** Distinct users one cell watches (one NATS subscription each). */
export const MAX_WATCHED = 100_000;
/** (watcher session, watched user) pairs on one cell. */
export const MAX_WATCH_PAIRS = 1_000_000;
/** KV reads (views, repairs) in flight at once, and queued behind them. */
const LOAD_CONCURRENCY = 64;
const LOAD_QUEUE = 2 * MAX_WATCHED;
/** A device-state write that fails is retried this many times, with backoff, then given up. */
const WRITE_ATTEMPTS = 8;
const RETRY_MAX_MS = 5000;
/** Cells seen dying, with the time: last seen of their users after a crash. */
const DIED_MAX = 10_000;
const DIED_TTL_MS = 3600_000;
/** What a viewer was last shown when the owner stopped letting it see: an `offline` without last seen. */
const HIDDEN = '-';
type Want = 'online' | 'away' | 'gone';

/** The presence side of one local session. */
interface Viewer {
  s: DeviceSession;
  /** Watched owner → what this session was last shown ('' nothing yet, HIDDEN, or a view key). */
  watching: Map<string, string>;
  rewatchSeq: number;
  rewatchFailures: number;
  /** Device state wanted and written; writes run one at a time, the last state wins. */
  want: Want;
  wrote: Want | undefined;
  writing: boolean;
  failures: number;
  retry: NodeJS.Timeout | undefined;
  typing: TypingState;
}

/** A user watched by sessions of this cell. */
interface Watched {
  owner: string;
  sub: Subscription;
  sessions: Set<DeviceSession>;
  view: View | undefined;
  /** The owner's contacts, blocks and preferences: who may see the view. Undefined while (re)loading. */
  rules: SocialRecord | undefined;
  rulesSeq: number;
}

/** What presence asks of the other features. */
export interface PresencePorts {
  social: Pick<SocialGraph, 'record' | 'refuses'>;
  directory: Pick<DirectoryPort, 'lookup'>;
  /** Cells membership has not given up on (a cell may ask before membership has started). */
  liveness: Pick<Liveness, 'isLive'>;
  groups: Pick<GroupsPort, 'typing'>;
}

export class PresenceHub implements PresencePort {
  private readonly viewers = new Map<DeviceSession, Viewer>();
  private readonly watched = new Map<string, Watched>();
  private pairs = 0;
  private readonly died = new TtlCache<string, number>(DIED_MAX, DIED_TTL_MS);
  private readonly repairing = new Set<string>();
  private readonly limiter = new Limiter(LOAD_CONCURRENCY, LOAD_QUEUE, 'presence');
  private sweeper: NodeJS.Timeout | undefined;
  private startedAt = Date.now();
  private stopped = false;
  private readonly typingRelay: TypingRelay;

  constructor(
    private readonly ctx: CellContext,
    private readonly ports: PresencePorts,
    readonly kv: KV,
  ) {
    this.typingRelay = new TypingRelay(ctx, ports);
  }

  start(): void {
    this.startedAt = Date.now();
    // A view read before a crash was noticed, or naming a cell that died before this
    // one started, still shows sessions there: re-check what the views name.
    this.sweeper = setInterval(() => {
      for (const w of this.watched.values()) if (w.view?.c.some((c) => this.gone({ c }))) this.repair(w.owner);
    }, this.ctx.config.membership.timeoutMs);
    this.sweeper.unref();
  }

  stop(): void {
    this.stopped = true;
    clearInterval(this.sweeper);
    for (const w of this.watched.values()) w.sub.unsubscribe();
    this.watched.clear();
    this.pairs = 0;
    this.ctx.metrics.presenceWatched.set(0);
  }

  /**
   * Whether a device entry's session is gone with its cell. Only cells membership
   * gave up on count. A cell this one has never heard of is either long dead or so
   * new that its first heartbeat has not arrived yet: it counts as gone only once
   * this cell has been up, and the entry has existed, longer than a heartbeat timeout.
   */
  private gone(x: { c: string; t?: number }): boolean {
    if (x.c === this.ctx.cellId || this.ports.liveness.isLive(x.c)) return false;
    if (this.died.get(x.c) !== undefined) return true;
    const { timeoutMs, heartbeatMs } = this.ctx.config.membership;
    const now = Date.now();
    return now - this.startedAt > timeoutMs + heartbeatMs && (x.t === undefined || now - x.t > timeoutMs + heartbeatMs);
  }

  /** When an entry's session ended with its cell, or undefined while the cell may be live. */
  private readonly goneAt: GoneAt = (x) => (this.gone(x) ? (this.died.get(x.c) ?? x.t) : undefined);

  // ---- the sessions of this cell ----------------------------------------------------

  /** A session registered: write its device state, watch its contacts and show it their presence. */
  online(s: DeviceSession): void {
    if (this.stopped || this.viewers.has(s)) return;
    const v: Viewer = {
      s, watching: new Map(), rewatchSeq: 0, rewatchFailures: 0,
      want: 'online', wrote: undefined, writing: false, failures: 0, retry: undefined,
      typing: typingState(),
    };
    this.viewers.set(s, v);
    this.sync(v);
    void this.rewatch(v);
  }

  /** A registered session ended. */
  offline(s: DeviceSession): void {
    const v = this.viewers.get(s);
    if (!v) return;
    this.viewers.delete(s);
    for (const o of [...v.watching.keys()]) this.unwatch(v, o);
    this.typingRelay.closed(v.typing, s.user);
    v.want = 'gone';
    this.sync(v);
  }

  set(s: DeviceSession, state: 'online' | 'away'): void {
    const v = this.viewers.get(s);
    if (!v) return;
    v.want = state;
    this.sync(v);
  }

  /** Writes the session's device state until it matches what is wanted; one write at a time, retried with backoff. */
  private sync(v: Viewer): void {
    if (v.writing || v.retry || v.want === v.wrote) return;
    v.writing = true;
    const want = v.want;
    this.writeDevice(v.s, want)
      .then(
        () => {
          v.wrote = want;
          v.failures = 0;
        },
        (err: unknown) => {
          if (++v.failures >= WRITE_ATTEMPTS) {
            this.ctx.log(`presence of ${v.s.user}/${v.s.device} not written (${want}), giving up`, err);
            v.wrote = want;
            v.failures = 0;
            return;
          }
          v.retry = setTimeout(() => {
            v.retry = undefined;
            this.sync(v);
          }, Math.min(RETRY_MAX_MS, 100 * 2 ** v.failures));
          v.retry.unref();
        },
      )
      .finally(() => {
        v.writing = false;
        this.sync(v);
      });
  }

  private async writeDevice(s: DeviceSession, want: Want): Promise<void> {
    const cell = this.ctx.cellId;
    const res = await this.modify(s.user, (r) => {
      const cur = r.d[s.device];
      if (want === 'gone') {
        if (cur?.i !== s.id) return false; // a newer session of the device owns the entry
        delete r.d[s.device];
        if (Object.keys(r.d).length === 0) r.l = Date.now();
        return true;
      }
      if (cur && cur.i !== s.id && cur.e > s.epoch) return false;
      const a = want === 'away' ? 1 : 0;
      if (cur?.i === s.id && cur.a === a) return false;
      r.d[s.device] = { c: cell, i: s.id, e: s.epoch, a, t: Date.now() };
      return true;
    });
    if (res.changed) this.announce(s.user, res.before, res.after, res.rev);
  }

  /**
   * Read, change, compare-and-set, retried on conflict. Entries on gone cells are
   * dropped on the way (their users' last seen becomes the time the cell died).
   */
  private async modify(user: string, change: (r: PresRecord) => boolean): Promise<{ before: PresRecord; after: PresRecord; rev: number; changed: boolean }> {
    const { result, rev } = await casModifyRev<{ before: PresRecord; after: PresRecord; changed: boolean }>(
      this.kv,
      user,
      (cur) => {
        const before = cur ? decodePresRecord(cur) : EMPTY;
        const { after, dropped } = withoutGone(before, this.goneAt);
        const changed = change(after) || dropped;
        if (!changed) return { result: { before, after: before, changed } };
        return { write: pack(after), result: { before, after, changed } };
      },
      { contended: () => new Error(`presence of ${user} is too contended`) },
    );
    return { ...result, rev };
  }

  /** A user's record changed: publish the new view if watchers would see a difference, and apply it here. */
  private announce(owner: string, before: PresRecord, after: PresRecord, rev: number): void {
    const old = derive(before, 0, this.goneAt);
    const view = derive(after, rev, this.goneAt);
    if (!sameView(old, view)) {
      this.ctx.nc.publish(this.ctx.names.presence(owner), pack({ s: view.s, ...(view.l !== undefined && { l: view.l }), c: view.c, r: view.r }));
    }
    const w = this.watched.get(owner);
    if (w) this.apply(w, view);
  }

  // ---- watching -------------------------------------------------------------------------

  /** (Re)computes what a session watches: its contacts, minus those it blocked. */
  private async rewatch(v: Viewer): Promise<void> {
    const seq = ++v.rewatchSeq;
    let rec: SocialRecord;
    try {
      rec = await this.ports.social.record(v.s.user);
    } catch (err) {
      if (this.viewers.get(v.s) === v && seq === v.rewatchSeq && ++v.rewatchFailures < 5) {
        setTimeout(() => void this.rewatch(v), 1000 * v.rewatchFailures).unref();
      } else this.ctx.log(`contacts of ${v.s.user} unavailable: presence not watched`, err);
      return;
    }
    if (this.stopped || this.viewers.get(v.s) !== v || seq !== v.rewatchSeq) return;
    v.rewatchFailures = 0;
    const want = new Set<string>();
    for (const c of rec.contacts) if (!rec.blocked.has(c) && c !== v.s.user) want.add(c);
    for (const o of [...v.watching.keys()]) if (!want.has(o)) this.unwatch(v, o);
    for (const o of want) {
      if (v.watching.has(o)) continue;
      if (!this.watch(v, o)) {
        this.ctx.metrics.presenceRefused.inc();
        this.ctx.log(`presence watch limit reached: ${v.s.user} watches ${v.watching.size} of ${want.size} contacts`);
        break;
      }
    }
  }

  private watch(v: Viewer, owner: string): boolean {
    if (this.pairs >= MAX_WATCH_PAIRS) return false;
    let w = this.watched.get(owner);
    if (!w) {
      if (this.watched.size >= MAX_WATCHED) return false;
      const sub = this.ctx.nc.subscribe(this.ctx.names.presence(owner), {
        callback: (err, msg) => {
          if (!err) this.onView(owner, msg.data);
        },
      });
      w = { owner, sub, sessions: new Set(), view: undefined, rules: undefined, rulesSeq: 0 };
      this.watched.set(owner, w);
      this.ctx.metrics.presenceWatched.set(this.watched.size);
      this.loadView(w, 0);
      this.loadRules(w, 0);
    }
    w.sessions.add(v.s);
    this.pairs++;
    v.watching.set(owner, '');
    this.show(w);
    return true;
  }

  private unwatch(v: Viewer, owner: string): void {
    v.watching.delete(owner);
    const w = this.watched.get(owner);
    if (!w?.sessions.delete(v.s)) return;
    this.pairs--;
    if (w.sessions.size > 0) return;
    w.sub.unsubscribe();
    this.watched.delete(owner);
    this.ctx.metrics.presenceWatched.set(this.watched.size);
  }

  /** Reads the owner's record (subscribed first, so no later change is missed; revisions order the two). */
  private loadView(w: Watched, attempt: number): void {
    this.limiter
      .run(async () => {
        if (this.watched.get(w.owner) !== w) return;
        const e = await this.kv.get(w.owner);
        const rec = e && e.operation === 'PUT' ? decodePresRecord(e.value) : EMPTY;
        if (this.watched.get(w.owner) !== w) return;
        this.apply(w, derive(rec, e?.revision ?? 0, this.goneAt));
        if (Object.values(rec.d).some((x) => this.gone(x))) this.repair(w.owner);
      })
      .catch((err: unknown) => {
        if (attempt < 3 && this.watched.get(w.owner) === w) setTimeout(() => this.loadView(w, attempt + 1), 500 * 2 ** attempt).unref();
        else this.ctx.log(`presence of ${w.owner} unavailable`, err);
      });
  }

  /** (Re)reads who may see the owner; nothing is shown until it is known. */
  private loadRules(w: Watched, attempt: number): void {
    const seq = ++w.rulesSeq;
    w.rules = undefined;
    this.ports.social.record(w.owner).then(
      (rec) => {
        if (this.watched.get(w.owner) !== w || seq !== w.rulesSeq) return;
        w.rules = rec;
        this.show(w);
      },
      (err: unknown) => {
        if (this.watched.get(w.owner) !== w || seq !== w.rulesSeq) return;
        if (attempt < 3) setTimeout(() => this.watched.get(w.owner) === w && seq === w.rulesSeq && this.loadRules(w, attempt + 1), 500 * 2 ** attempt).unref();
        else this.ctx.log(`contacts of ${w.owner} unavailable: presence hidden`, err);
      },
    );
  }

  private onView(owner: string, data: Uint8Array): void {
    const w = this.watched.get(owner);
    if (!w) return;
    let view: View;
    try {
      view = decodeView(unpack(data));
    } catch {
      return; // a foreign or broken publisher: ignored
    }
    this.apply(w, view);
  }

  private apply(w: Watched, view: View): void {
    if (w.view && view.r <= w.view.r) return; // older than what we have
    w.view = view;
    this.show(w);
  }

  /** Brings every watcher of `w` up to date: the view if it may see it, a bare `offline` once it may no longer. */
  private show(w: Watched): void {
    const view = w.view;
    const rules = w.rules;
    if (!view || !rules) return;
    const key = viewKey(view);
    for (const s of w.sessions) {
      const v = this.viewers.get(s);
      const shown = v?.watching.get(w.owner);
      if (!v || shown === undefined) continue;
      if (visible(rules, s.user)) {
        if (shown === key) continue;
        v.watching.set(w.owner, key);
        s.send({ t: 'pres', user: w.owner, s: view.s, ...(view.l !== undefined && { last: view.l }) });
      } else if (shown !== '' && shown !== HIDDEN) {
        v.watching.set(w.owner, HIDDEN);
        s.send({ t: 'pres', user: w.owner, s: 'offline' });
      }
    }
  }

  /** The contacts, blocks or preferences of `user` changed (here or on another cell). */
  socialChanged(user: string): void {
    if (this.stopped) return;
    // As a watcher: its contact list may have changed.
    for (const s of this.ctx.hub.sessionsOf(user)) {
      const v = this.viewers.get(s);
      if (v) void this.rewatch(v);
    }
    // As a watched owner: who may see it may have changed.
    const w = this.watched.get(user);
    if (w) this.loadRules(w, 0);
  }

  // ---- crashed cells --------------------------------------------------------------------

  /** Membership gave up on `cell` (it left, or fell silent for membership.timeoutMs). */
  cellDied(cell: string): void {
    this.died.set(cell, Date.now());
    if (this.stopped) return;
    for (const w of this.watched.values()) if (w.view?.c.includes(cell)) this.repair(w.owner);
  }

  /**
   * Drops a user's entries on gone cells and publishes the result. Every cell that
   * watches the user may try; compare-and-set lets one write, the rest read it.
   */
  private repair(owner: string): void {
    if (this.repairing.has(owner)) return;
    this.repairing.add(owner);
    this.limiter
      .run(async () => {
        const res = await this.modify(owner, () => false);
        if (res.changed) return this.announce(owner, res.before, res.after, res.rev);
        const w = this.watched.get(owner);
        if (w) this.apply(w, derive(res.after, res.rev, this.goneAt));
      })
      .catch((err: unknown) => this.ctx.log(`presence repair of ${owner} failed`, err))
      .finally(() => this.repairing.delete(owner));
  }

  // ---- typing ---------------------------------------------------------------------------

  /**
   * A typing indicator from a session: ephemeral, never stored. Sent once to each
   * cell hosting a session of the recipient, unless the recipient blocked the sender.
   * Awaited by the session, so a sender's indicators keep their order.
   */
  async typing(s: DeviceSession, m: Typing): Promise<void> {
    const v = this.viewers.get(s);
    if (!v) return;
    await this.typingRelay.typing(v.typing, s, m);
  }

  /** A typing indicator for every local session of `e.to`. */
  onTyping(e: Extract<Envelope, { k: 'typ' }>): void {
    this.typingRelay.onTyping(e);
  }
}
