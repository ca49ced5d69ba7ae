import { createHash, randomBytes } from 'node:crypto';
import { Kvm, type KV } from '@nats-io/kv';
import {
  chatKey, ErrorCode, MUTE_LIMITS, ProtocolError, toBase64Url,
  type ChatRef, type PushTarget, type RequestArgs, type RequestOp,
} from '@gravitas/protocol';
import type { CellContext } from '../core/context.js';
import type { ChatItem, Item } from '../core/envelope.js';
import type { DeviceLocation, DeviceRoster, GroupsPort, HintSigner, MessagingEvents, PushPort, ReachEvents, SocialGraph } from '../core/ports.js';
import type { DeviceSession } from '../core/session.js';
import { TtlCache } from '../infra/ttl-cache.js';
import { Damper } from './damping.js';
import { isMuted, mutePage, MuteStore } from './mutes.js';
import { backoffMs, WebhookProvider, WebPushProvider, type Outcome, type PushProvider, type PushRequest } from './push-providers.js';
import { PushTargets, type Provider } from './push-targets.js';

/*
 * The push gateway of one cell (docs/push.md). Custody and group fan-out tell it
 * about messages for offline devices; it coalesces them per (device, chat) over a
 * window that rate damping widens, then reads the device's targets, the user's
 * mutes and preferences, and queues one HTTP request per target. The queue is
 * bounded (drop oldest), the requests in flight too, so nothing here can hold up
 * a session: a trigger is a map update and a timer.
 */

/** Messages to one device in one chat, waiting for their window to close. */
interface Window {
  key: string;
  user: string;
  device: string;
  chat: ChatRef;
  count: number;
  /** Latest sender, distinct senders (bounded), latest text and time. */
  from: string;
  senders: Set<string>;
  text: string;
  ts: number;
}

/** One coalesced push to one device: done when every target answered. */
interface Notice { user: string; device: string; left: number; delivered: boolean }

interface Job { notice: Notice; provider: PushProvider; req: PushRequest; attempt: number }

/** The JSON a device receives (docs/push.md, "Payload"). */
export interface PushPayload {
  v: 1;
  /** `message`: alert the user; `sync`: data only (a muted chat), nothing is shown. */
  kind: 'message' | 'sync';
  id: string;
  chat: ChatRef;
  from: string;
  count: number;
  senders: number;
  title?: string;
  /** Only when the user turned pushPreview on, and never for a muted chat. */
  text?: string;
  ts: number;
  /** base64url of a connect hint to the sender's cell (protocol.md §5.4). */
  hint: string;
}

const MAX_SENDERS = 64;
/** Web Push carries ~4 KB of plaintext; a preview is cut until the payload fits this. */
const MAX_PAYLOAD_BYTES = 3000;

/** What the gateway asks of the other features. */
export interface PushPorts {
  social: Pick<SocialGraph, 'prefs'>;
  /**
   * `groups.info` as the muting user would ask it: a group muted without a duration
   * is muted for longer the more members it has, and only a member may mute it
   * (an unknown group answers as one the user is not in).
   */
  groups: Pick<GroupsPort, 'handle'>;
  accounts: Pick<DeviceRoster, 'devices'>;
  /** Signs the connect hint a push carries (to this cell). */
  hints: Pick<HintSigner, 'signHintTo'>;
  /**
   * Told of an offline device that no push reached: none registered, push off, or
   * every target failed or was gone; the relay may wake it through a peer. The
   * device's hint would name this cell, and the relay starts from this cell, so no
   * signed hint is passed along (an Ed25519 sign and verify per offline delivery
   * in pure JS is what a load test found drowning cells).
   */
  events: ReachEvents;
}

export class PushGateway implements PushPort, Pick<MessagingEvents, 'stored' | 'groupMessage' | 'groupMissed'> {
  private targets: PushTargets | undefined;
  private mutes: MuteStore | undefined;
  private readonly providers: Partial<Record<Provider, PushProvider>> = {};
  private readonly damper: Damper;
  private readonly windows = new Map<string, Window>();
  private readonly timers = new Set<NodeJS.Timeout>();
  private readonly queue: Job[] = [];
  private inFlight = 0;
  private retrying = 0;
  private stopped = false;
  /** The device whose request changed the mutes already knows: `user/device` skips one sync. */
  private readonly syncSkip = new TtlCache<string, true>(10_000, 10_000);

  constructor(private readonly ctx: CellContext, private readonly ports: PushPorts) {
    const p = ctx.config.push;
    this.damper = new Damper({ baseMs: p.coalesceMs, thresholdPerMin: p.dampingThresholdPerMin, halfLifeMs: p.dampingHalfLifeMs, maxWindowMs: p.dampingMaxWindowMs, maxKeys: p.maxPending });
    if (p.vapidPublicKey && p.vapidPrivateKey && p.vapidSubject) {
      this.providers.webpush = new WebPushProvider({ publicKey: p.vapidPublicKey, privateKey: p.vapidPrivateKey, subject: p.vapidSubject }, p.ttlSeconds, p.timeoutMs);
    }
    if (p.webhookSecret) this.providers.webhook = new WebhookProvider(p.webhookSecret, p.timeoutMs);
  }

  private get cfg() {
    return this.ctx.config.push;
  }

  /** Opens the buckets of push targets and mutes (or takes the ones given: unit tests). */
  async start(buckets?: { push: KV; mutes: KV }): Promise<void> {
    const { nc, config, names } = this.ctx;
    const open = (kvm: Kvm, opts = { history: 1, replicas: config.replicas }) => Promise.all([kvm.create(names.pushBucket, opts), kvm.create(names.mutesBucket, opts)]);
    const [push, mutes] = buckets ? [buckets.push, buckets.mutes] : await open(new Kvm(nc));
    this.targets = new PushTargets(push);
    this.mutes = new MuteStore(mutes);
  }

  /** Drops what waits: a push is a best-effort nudge, the messages themselves are in the mailboxes. */
  stop(): void {
    this.stopped = true;
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    this.windows.clear();
    this.queue.length = 0;
    this.gauges();
  }

  private stores(): { targets: PushTargets; mutes: MuteStore } {
    if (!this.targets || !this.mutes) throw new ProtocolError(ErrorCode.STORAGE_UNAVAILABLE, 'push settings are not available yet');
    return { targets: this.targets, mutes: this.mutes };
  }

  private later(fn: () => void, ms: number): void {
    const t = setTimeout(() => {
      this.timers.delete(t);
      fn();
    }, ms);
    t.unref();
    this.timers.add(t);
  }

  private gauges(): void {
    const m = this.ctx.metrics;
    m.pushQueueDepth.set(this.queue.length);
    m.pushInFlight.set(this.inFlight);
    m.pushRetrying.set(this.retrying);
    m.pushWindows.set(this.windows.size);
  }

  // ---- triggers -----------------------------------------------------------------

  /** Custody stored `item` in the mailbox of an offline (or silent) device. */
  stored(user: string, device: string, item: Item): void {
    // Own messages copied to one's other devices, receipts and campaign messages announce nothing.
    if (item.k !== 'm' || item.from === user || item.c !== undefined || item.g !== undefined) return;
    this.note(user, device, { to: item.from }, item);
  }

  /** A group message was fanned out; `online` are the member's devices that got it live. */
  groupMessage(member: string, online: readonly DeviceLocation[], item: ChatItem): void {
    const g = item.g;
    if (g === undefined || member === item.from || this.stopped) return;
    this.ports.accounts.devices(member).then(
      (devices) => {
        for (const d of devices) if (!online.some((l) => l.device === d)) this.note(member, d, { g }, item);
      },
      (err: unknown) => this.ctx.log('push: device list unavailable', err),
    );
  }

  /**
   * A group message found no session of `user`/`device` on the cell its (cached)
   * location named, and the device is offline now: it gets the push that
   * `groupMessage` did not give it, since the sender's cell believed it online.
   */
  groupMissed(user: string, device: string, item: ChatItem): void {
    if (item.g === undefined || user === item.from || this.stopped) return;
    this.note(user, device, { g: item.g }, item);
  }

  private note(user: string, device: string, chat: ChatRef, item: ChatItem): void {
    if (this.stopped) return;
    const key = `${user}/${device}/${chatKey(chat)}`;
    const rate = this.damper.observe(key, Date.now());
    const open = this.windows.get(key);
    if (open) {
      open.count++;
      open.from = item.from;
      if (open.senders.size < MAX_SENDERS) open.senders.add(item.from);
      open.text = item.text;
      open.ts = item.ts;
      return;
    }
    if (this.windows.size >= this.cfg.maxPending) {
      this.ctx.metrics.pushDropped.inc({ provider: 'none' });
      return;
    }
    const w: Window = { key, user, device, chat, count: 1, from: item.from, senders: new Set([item.from]), text: item.text, ts: item.ts };
    this.windows.set(key, w);
    const ms = this.damper.window(rate);
    if (ms > this.cfg.coalesceMs) this.ctx.metrics.pushDamped.inc();
    this.later(() => this.flush(w), ms);
    this.gauges();
  }

  private flush(w: Window): void {
    if (this.windows.get(w.key) !== w) return;
    this.windows.delete(w.key);
    this.gauges();
    this.dispatch(w).catch((err: unknown) => {
      this.ctx.log('push: cannot prepare a push', err);
      this.ctx.metrics.pushFailed.inc({ provider: 'none' });
    });
  }

  /** A hint to this cell, where the message's sender is. */
  private hint(user: string, device: string, now: number): Uint8Array {
    return this.ports.hints.signHintTo(this.ctx.cellId, user, device, this.cfg.hintTtlMs, now)!;
  }

  private async dispatch(w: Window): Promise<void> {
    const now = Date.now();
    if (!this.cfg.enabled) return this.unreachable(w.user, w.device);
    const { targets, mutes } = this.stores();
    const [list, muted, prefs] = await Promise.all([targets.list(w.user, w.device), mutes.get(w.user), this.ports.social.prefs(w.user)]);
    const usable = list.filter((t) => this.providers[t.kind] !== undefined);
    const silent = isMuted(muted, w.chat, now);
    if (silent && prefs.mutedPush === 'suppress') {
      for (const t of usable) this.ctx.metrics.pushSuppressed.inc({ provider: t.kind });
      return;
    }
    if (usable.length === 0 || this.stopped) return this.unreachable(w.user, w.device);
    // Signed only now that a push will carry it.
    const payload = this.payload(w, this.hint(w.user, w.device, now), silent, prefs.pushPreview);
    const id = payload.id;
    const topic = createHash('sha256').update(chatKey(w.chat)).digest('base64url').slice(0, 32);
    const notice: Notice = { user: w.user, device: w.device, left: usable.length, delivered: false };
    for (const t of usable) {
      const provider = this.providers[t.kind]!;
      if (w.count > 1) this.ctx.metrics.pushCoalesced.inc({ provider: t.kind }, w.count - 1);
      // A webhook serves many devices: it is told whose push it is.
      const body = t.kind === 'webhook' ? JSON.stringify({ ...payload, user: w.user, device: w.device }) : JSON.stringify(payload);
      this.enqueue({ notice, provider, attempt: 1, req: { target: t, body, idempotencyKey: `${id}.${t.id}`, urgency: silent ? 'low' : 'normal', topic } });
    }
  }

  private payload(w: Window, hint: Uint8Array, silent: boolean, preview: boolean): PushPayload {
    const p: PushPayload = {
      v: 1, kind: silent ? 'sync' : 'message', id: randomBytes(12).toString('base64url'),
      chat: w.chat, from: w.from, count: w.count, senders: w.senders.size, ts: w.ts, hint: toBase64Url(hint),
    };
    if (silent) return p;
    p.title = w.count === 1 ? `New message from ${w.from}`
      : w.senders.size > 1 ? `${w.count} new messages from ${w.senders.size} people` : `${w.count} new messages from ${w.from}`;
    if (preview && this.cfg.previewChars > 0) {
      let text = [...w.text].slice(0, this.cfg.previewChars).join('');
      // Web Push carries ~4 KB; multi-byte text is cut further until it fits.
      while (text.length > 0 && Buffer.byteLength(JSON.stringify({ ...p, text })) > MAX_PAYLOAD_BYTES) text = [...text].slice(0, Math.floor([...text].length / 2)).join('');
      p.text = text;
    }
    return p;
  }

  private unreachable(user: string, device: string): void {
    this.ctx.metrics.pushUnreachable.inc();
    try {
      this.ports.events.unreachable(user, device);
    } catch (err) {
      this.ctx.log('push: unreachable hook failed', err);
    }
  }

  // ---- the queue ----------------------------------------------------------------

  private enqueue(job: Job): void {
    if (this.stopped) return this.done(job.notice, false);
    if (this.queue.length >= this.cfg.queueSize) {
      // Drop oldest: the newest push announces the most; the dropped one's messages wait in the mailbox.
      const old = this.queue.shift()!;
      this.ctx.metrics.pushDropped.inc({ provider: old.provider.name });
      this.done(old.notice, false);
    }
    this.queue.push(job);
    this.pump();
  }

  private pump(): void {
    while (this.inFlight < this.cfg.concurrency && this.queue.length > 0) {
      const job = this.queue.shift()!;
      this.inFlight++;
      job.provider
        .send(job.req)
        .catch((err: unknown): Outcome => ({ kind: 'retry', why: String(err) }))
        .then((o) => this.settle(job, o))
        .catch((err: unknown) => this.ctx.log('push: settling failed', err))
        .finally(() => {
          this.inFlight--;
          this.pump();
        });
    }
    this.gauges();
  }

  private settle(job: Job, o: Outcome): void {
    const provider = job.provider.name;
    const m = this.ctx.metrics;
    switch (o.kind) {
      case 'ok':
        m.pushSent.inc({ provider });
        return this.done(job.notice, true);
      case 'gone':
        m.pushGone.inc({ provider });
        this.targets?.remove(job.notice.user, job.notice.device, job.req.target.id).catch((err: unknown) => this.ctx.log('push: cannot remove a gone target', err));
        return this.done(job.notice, false);
      case 'retry':
        // Retries wait outside the queue but count against its bound.
        if (job.attempt < this.cfg.maxAttempts && !this.stopped && this.queue.length + this.retrying < this.cfg.queueSize) {
          m.pushRetries.inc({ provider });
          this.retrying++;
          const wait = Math.min(this.cfg.retryMaxMs, Math.max(o.afterMs ?? 0, backoffMs(job.attempt, this.cfg.retryBaseMs, this.cfg.retryMaxMs)));
          this.later(() => {
            this.retrying--;
            this.enqueue({ ...job, attempt: job.attempt + 1 });
          }, wait);
          this.gauges();
          return;
        }
        m.pushFailed.inc({ provider });
        return this.done(job.notice, false);
      case 'fail':
        m.pushFailed.inc({ provider });
        return this.done(job.notice, false);
    }
  }

  private done(n: Notice, delivered: boolean): void {
    if (delivered) n.delivered = true;
    if (--n.left === 0 && !n.delivered) this.unreachable(n.user, n.device);
  }

  // ---- requests -----------------------------------------------------------------

  /** `push.*` and `mute.*` requests (arguments already validated by the protocol). */
  async handle(s: DeviceSession, op: RequestOp, args: unknown): Promise<unknown> {
    const { targets, mutes } = this.stores();
    const now = Date.now();
    switch (op) {
      case 'push.register': {
        const t = args as PushTarget;
        const field = t.kind === 'webpush' ? 'endpoint' : 'url';
        if (!this.cfg.allowHttp && new URL(t.kind === 'webpush' ? t.endpoint : t.url).protocol !== 'https:') {
          throw new ProtocolError(ErrorCode.BAD_MESSAGE, `field "${field}" must be an https URL`);
        }
        if (!this.providers[t.kind]) throw new ProtocolError(ErrorCode.NOT_ALLOWED, `${t.kind} pushes are not configured on this cluster`);
        return { id: await targets.register(s.user, s.device, t, this.cfg.maxTargetsPerDevice, now) };
      }
      case 'push.unregister':
        return { removed: await targets.remove(s.user, s.device, (args as RequestArgs['push.unregister']).id) };
      case 'push.list': {
        const list = await targets.list(s.user, s.device);
        return {
          targets: list.map((t) => ({ id: t.id, kind: t.kind, url: t.url, at: t.at })),
          // What a browser passes as applicationServerKey to subscribe.
          ...(this.cfg.vapidPublicKey && { vapidPublicKey: this.cfg.vapidPublicKey }),
        };
      }
      case 'mute.set': {
        const a = args as RequestArgs['mute.set'];
        const chat: ChatRef = a.g !== undefined ? { g: a.g } : { to: a.to! };
        const until = await this.muteUntil(s, a, chat, now);
        await mutes.change(s.user, chat, until, now);
        this.changed(s);
        return { mute: until === 0 ? chat : { ...chat, until } };
      }
      case 'mute.clear': {
        const a = args as RequestArgs['mute.clear'];
        await mutes.change(s.user, a.g !== undefined ? { g: a.g } : { to: a.to! }, undefined, now);
        this.changed(s);
        return undefined;
      }
      case 'mute.list':
        return mutePage(await mutes.get(s.user), now, (args as RequestArgs['mute.list']).from);
      default:
        throw new ProtocolError(ErrorCode.NOT_ALLOWED, `${op} is not a push or mute operation`);
    }
  }

  /** When a mute ends (0: when cleared). A group muted without a duration: base × members, capped. */
  private async muteUntil(s: DeviceSession, a: RequestArgs['mute.set'], chat: ChatRef, now: number): Promise<number> {
    if (a.always) return 0;
    if (a.forMs !== undefined) return now + a.forMs;
    if (a.until !== undefined) {
      if (a.until <= now || a.until > now + MUTE_LIMITS.maxMs) throw new ProtocolError(ErrorCode.BAD_MESSAGE, 'field "until" must be in the future, within 366 days');
      return a.until;
    }
    if (chat.g === undefined) return 0;
    // groups.info checks membership and counts the members. A group that does not exist is
    // answered as one the user is not in (same code, same text): mute.set is no oracle of group ids.
    const info = (await this.ports.groups.handle(s, 'groups.info', { g: chat.g }).catch((err: unknown) => {
      if (err instanceof ProtocolError && (err.code === ErrorCode.NOT_FOUND || err.code === ErrorCode.NOT_A_MEMBER)) {
        throw new ProtocolError(ErrorCode.NOT_A_MEMBER, 'you are not a member of this group');
      }
      throw err;
    })) as { members: string[]; count?: number };
    const members = info.count ?? info.members.length;
    return now + Math.min(this.cfg.groupMuteCapMs, this.cfg.groupMuteBaseMs * members);
  }

  /** Tells every cell; each tells the user's sessions it hosts (but the requesting one) to list their mutes again. */
  private changed(s: DeviceSession): void {
    this.syncSkip.set(`${s.user}/${s.device}`, true);
    this.ctx.bus.invalidate({ kind: 'mutes', key: s.user });
  }

  /**
   * The mutes of `user` changed (an invalidation from any cell): a notice to its
   * sessions here, never the list (1,000 mutes with long names exceed a frame);
   * the SDK lists them again, page by page.
   */
  mutesChanged(user: string): void {
    for (const s of this.ctx.hub.sessionsOf(user)) {
      const k = `${user}/${s.device}`;
      if (this.syncSkip.get(k)) {
        this.syncSkip.delete(k);
        continue;
      }
      if (s.isOpen) s.send({ t: 'mutes' });
    }
  }

  /** A device left its account: its targets go too. */
  async forgetDevice(user: string, device: string): Promise<void> {
    await this.targets?.forgetDevice(user, device);
  }
}
