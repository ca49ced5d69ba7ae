import {
  Capability, checkFinish, decodeClientFrame, decodeClientHandshake, decodeClientMessage, ErrorCode, isSystemName, NO_CAPABILITIES, pack, ProtocolError, readHello, readResume, unpack, writeWelcome,
  type ClientMessage, type ErrorCode as Code, type Registration, type SecureChannel, type ServerMessage,
} from '@gravitas/protocol';
import type { CellContext } from '../core/context.js';
import { toClient, type ChatItem, type Item } from '../core/envelope.js';
import type { StoredRef } from '../core/ports.js';
import type { BudgetKind, Delivery, DeviceSession, DrainState } from '../core/session.js';
import type { Transport } from '../core/transport.js';
import type { SessionHost } from './host.js';
import { SessionLimits } from './limits.js';
import { DrainWindow } from './window.js';
import { FrameWriter } from './writer.js';

type State = 'handshake' | 'working' | 'confirming' | 'open' | 'closed';

type Command = { k: 'register' } | { k: 'client'; m: ClientMessage };

let sessionSeq = 0;

function proofKind(r: Registration | undefined): string {
  if (typeof r === 'string') return r === '' ? 'open' : 'token';
  return r && 'credential' in r ? 'credential' : 'link';
}


/**
 * The actor of one connected device. Frames are decoded as they arrive; the
 * commands they carry are queued (bounded) and processed one at a time, so a
 * sender's messages are routed in the order it sent them. A full inbox pauses the
 * transport: TCP backpressure instead of buffering. The session does not know
 * whether TCP, WebSocket or chunked HTTP carries its frames (transport.ts).
 */
export class Session implements DeviceSession {
  readonly id: string;
  /** A number unique within the cell (the gravitation sketch's key). */
  readonly slot: number;
  private state: State = 'handshake';
  private channel: SecureChannel | undefined;
  private expectedFinish: Uint8Array | undefined;
  private readonly inbox: Command[] = [];
  private running = false;
  private paused = false;
  /** When the connection began (performance.now()): a suspension broadcast after it refuses the session. */
  readonly startedAt = performance.now();
  private kind: 'full' | 'resume' = 'full';
  private handshakeTimer: NodeJS.Timeout | undefined;
  private readonly limits: SessionLimits;
  /**
   * Delivered but not yet acknowledged, by `from/id`. Bounded: the oldest is
   * forgotten, which only means its ack no longer counts (custody stores it, a
   * drain delivers it again, the client drops the duplicate).
   */
  readonly unacked = new Map<string, Delivery>();
  /** State of this device's mailbox drain (messaging/drain.ts). */
  readonly drain: DrainState = { running: false, again: false, next: 1, inFlight: 0, retryMs: 0, hinted: false };
  private readonly window: DrainWindow;
  private readonly writer: FrameWriter;
  user = '';
  device = '';
  /** The registration of the device's key (accounts.ts): a revocation names it. */
  rid = 0;
  epoch = 0;
  registered = false;
  registeredAt = 0;
  /** Told to move to another cell (a connect hint): not moved again meanwhile. */
  moving = false;
  private negotiated: ReadonlySet<string> = NO_CAPABILITIES;
  /** The capabilities the handshake negotiated (`Capability`, protocol caps.ts); none before the welcome. */
  get caps(): ReadonlySet<string> {
    return this.negotiated;
  }

  private readonly ctx: CellContext;

  constructor(private readonly host: SessionHost<Session>, readonly transport: Transport) {
    const cell = (this.ctx = host.ctx);
    this.slot = ++sessionSeq;
    this.id = `${cell.cellId}-${this.slot.toString(36)}`;
    this.limits = new SessionLimits(cell.config.limits);
    this.window = new DrainWindow(this.drain, () => this.transport.bufferedBytes, cell.config.limits.maxOutboundBytes / 2, () => this.state === 'closed');
    this.writer = new FrameWriter(transport, cell.turn, (frames, buffered) => {
      cell.metrics.framesOut.inc(frames);
      host.noteOutbound(buffered);
    });
    transport.setIdleTimeout(cell.config.limits.idleTimeoutMs, () => this.fail(new ProtocolError(ErrorCode.IDLE_TIMEOUT, 'no traffic within the idle timeout')));
    this.handshakeTimer = setTimeout(() => this.fail(new ProtocolError(ErrorCode.HANDSHAKE_TIMEOUT, 'handshake did not complete in time')), cell.config.limits.handshakeTimeoutMs);
    transport.bind({
      frame: (body) => this.onFrame(body),
      end: () => this.close(),
      drain: () => this.window.wake(),
      error: (err) => this.fail(err),
      close: () => this.close(),
    });
  }

  get isOpen(): boolean {
    return this.state === 'open';
  }

  private onFrame(body: Buffer): void {
    if (this.state === 'closed') return;
    this.ctx.metrics.framesIn.inc();
    switch (this.state) {
      case 'handshake':
        this.onFirstFlight(body);
        return;
      case 'working':
        throw new ProtocolError(ErrorCode.UNEXPECTED_MESSAGE, 'frame sent before the welcome');
      case 'confirming': {
        const m = decodeClientMessage(unpack(this.channel!.open(body)));
        if (m.t !== 'finish') throw new ProtocolError(ErrorCode.UNEXPECTED_MESSAGE, 'expected finish (key confirmation)');
        checkFinish(this.expectedFinish!, m.h);
        this.expectedFinish = undefined;
        clearTimeout(this.handshakeTimer);
        this.state = 'open';
        this.ctx.metrics.handshakes.inc({ kind: this.kind, result: 'ok' });
        this.ctx.metrics.handshakeSeconds.observe({ kind: this.kind }, (performance.now() - this.startedAt) / 1000);
        this.enqueue({ k: 'register' });
        return;
      }
      case 'open':
        // One message, or a batch: each bad message is reported on its own, the session and the others go on.
        for (const m of decodeClientFrame(this.channel!.open(body), this.negotiated.has(Capability.BATCH))) {
          if (m instanceof ProtocolError) {
            if (m.fatal) throw m;
            this.sendError(m.code, m.message);
          } else if (m.t === 'finish') throw new ProtocolError(ErrorCode.UNEXPECTED_MESSAGE, 'finish after the handshake');
          else this.enqueue({ k: 'client', m });
        }
    }
  }

  private onFirstFlight(body: Buffer): void {
    const hello = decodeClientHandshake(unpack(body));
    const cookie = this.host.guard.admit(this.transport.source.ip, hello.e, hello.cookie);
    if (cookie) {
      this.ctx.metrics.cookiesSent.inc();
      this.writePlain({ t: 'cookie', c: cookie });
      return;
    }
    this.kind = hello.t === 'hello' ? 'full' : 'resume';
    this.state = 'working';
    this.host.guard.begin();
    void this.completeHandshake(hello).finally(() => this.host.guard.end());
  }

  private async completeHandshake(hello: ReturnType<typeof decodeClientHandshake>): Promise<void> {
    const ctx = this.host.handshake;
    try {
      const pending = hello.t === 'hello' ? readHello(hello, ctx) : readResume(hello, ctx);
      if (pending.kind === 'full') {
        this.host.guard.recordEphemeral(pending.clientEphemeral);
        const a = await this.host.accounts.authenticate({ user: pending.user, device: pending.device, key: pending.clientStatic, registration: pending.registration, source: this.transport.source.ip });
        pending.rid = a.rid;
        if (a.added) this.ctx.metrics.registrations.inc({ proof: proofKind(pending.registration) });
      } else {
        // Spent either way; refused if the device was removed since the ticket was issued (read afresh: no cache).
        await Promise.all([this.host.tickets.spend(pending.ticket!.id), this.host.accounts.checkResume(pending.user, pending.device, pending.rid)]);
      }
      if (this.state === 'closed') return;
      this.rid = pending.rid;
      const res = writeWelcome(pending, { session: this.id, cell: this.ctx.cellId, node: this.ctx.config.nodeId, hk: this.host.hintPublicKey, ...(this.host.webAddress() && { wa: this.host.webAddress() }) }, ctx);
      this.user = pending.user;
      this.device = pending.device;
      this.channel = this.writer.channel = res.channel;
      this.negotiated = res.negotiated.caps;
      this.writer.batch = this.negotiated.has(Capability.BATCH);
      this.expectedFinish = res.expectedFinish;
      this.state = 'confirming';
      this.writePlain(res.welcome);
    } catch (err) {
      if (err instanceof ProtocolError) this.ctx.metrics.handshakes.inc({ kind: this.kind, result: err.code });
      this.fail(err);
    }
  }

  private enqueue(c: Command): void {
    this.inbox.push(c);
    if (this.inbox.length >= this.ctx.config.limits.maxInboxDepth && !this.paused) {
      this.paused = true;
      this.transport.pause();
    }
    if (!this.running) this.run();
  }

  /**
   * Handles queued commands in order. A command that completes synchronously (a cached
   * send, an ack, a ping) costs no promise; one that waits resumes the loop when done.
   */
  private run(): void {
    this.running = true;
    while (this.inbox.length > 0 && this.state === 'open') {
      const c = this.inbox.shift()!;
      if (this.paused && this.inbox.length < this.ctx.config.limits.maxInboxDepth / 2) {
        this.paused = false;
        this.transport.resume();
      }
      let r: void | Promise<void>;
      try {
        r = this.handle(c);
      } catch (err) {
        this.running = false;
        return this.fail(err);
      }
      if (r) {
        r.then(this.resumeRun, this.failRun);
        return;
      }
    }
    this.running = false;
  }

  private readonly resumeRun = (): void => {
    this.running = false;
    this.run();
  };

  private readonly failRun = (err: unknown): void => {
    this.running = false;
    this.fail(err);
  };

  private handle(c: Command): void | Promise<void> {
    if (c.k === 'register') return this.host.opened(this);
    const m = c.m;
    switch (m.t) {
      case 'send': {
        // Ids beginning with "_" are the system's (campaigns, notices): a client's can never meet one.
        if (isSystemName(m.id)) return this.send({ t: 'status', id: m.id, s: 'failed', code: ErrorCode.BAD_MESSAGE });
        // A promise only when the account's share must be topped up from KV.
        const ok = this.spend('msg', 1);
        if (typeof ok !== 'boolean') return ok.then((yes) => this.route(m, yes));
        return this.route(m, ok);
      }
      case 'ack': {
        const key = `${m.from}/${m.id}`;
        const d = this.unacked.get(key);
        if (d) {
          this.unacked.delete(key);
          if (d.via === 'mbox') this.window.release();
          this.host.acked(this, d);
        }
        return;
      }
      case 'read': {
        const ok = this.spend('read', 1);
        if (typeof ok !== 'boolean') return ok.then((yes) => (yes ? this.host.read(this, m) : this.refused('read', m.id)));
        return ok ? this.host.read(this, m) : this.refused('read', m.id);
      }
      case 'typing':
        return this.host.typing(this, m);
      case 'presence':
        if (!this.limits.take('control', 1, Date.now())) return this.refused('control');
        return this.host.presence(this, m.s);
      case 'req': {
        const ok = this.spend('req', 1);
        if (typeof ok !== 'boolean') return ok.then((yes) => this.request(m, yes));
        return this.request(m, ok);
      }
      case 'ping':
        // `ref` = the ping's number: the client's ping settles (refused) instead of waiting for a pong.
        if (!this.limits.take('control', 1, Date.now())) return this.refused('control', String(m.n));
        return this.send({ t: 'pong', n: m.n });
      case 'bye':
        return this.close();
      case 'finish': // refused in onFrame after the handshake: never queued
        return;
    }
  }

  /** A message the budgets allowed (or not): to custody or the group; a failure fails this message only. */
  private route(m: Extract<ClientMessage, { t: 'send' }>, ok: boolean): void | Promise<void> {
    if (!ok) return this.refused('msg', m.id);
    this.ctx.metrics.messagesIn.inc();
    let r: void | Promise<void>;
    try {
      r = m.g !== undefined ? this.host.sendGroup(this, m) : this.host.send1to1(this, m as typeof m & { to: string });
    } catch (err) {
      return this.sendFailed(m.id, err);
    }
    if (r) return r.catch((err: unknown) => this.sendFailed(m.id, err));
  }

  /** NATS away or a store refused: this message failed (the SDK retries), the session lives on. */
  private sendFailed(id: string, err: unknown): void {
    const pe = err instanceof ProtocolError ? err : undefined;
    if (!pe) this.ctx.log('routing failed', err);
    this.send({ t: 'status', id, s: 'failed', code: pe?.code ?? ErrorCode.BUSY });
  }

  private request(m: Extract<ClientMessage, { t: 'req' }>, ok: boolean): void | Promise<void> {
    if (ok) return this.host.request(this, m);
    this.ctx.metrics.rateLimited.inc({ kind: 'req' });
    this.send({ t: 'res', rid: m.rid, ok: false, code: ErrorCode.RATE_LIMITED, message: 'too many requests; slow down' });
  }

  /**
   * Spends `n` units of `kind` from this session's bucket, then from its account's
   * cluster-wide budget: true/false at once unless the account's share on this
   * cell runs out and must be topped up from KV (one lease per chunk, budgets.ts).
   */
  spend(kind: BudgetKind, n: number): boolean | Promise<boolean> {
    const now = Date.now();
    if (!this.limits.take(kind, n, now)) return false;
    return this.host.budgets.take(this.user, kind, n, now);
  }

  /** A refusal for going over a limit: a status for a message, an error frame for a read, ping or presence (counted by kind). */
  refused(kind: Exclude<BudgetKind, 'req'> | 'control', id?: string): void {
    this.ctx.metrics.rateLimited.inc({ kind });
    if (kind === 'msg' || kind === 'fanout') this.send({ t: 'status', id: id!, s: 'failed', code: ErrorCode.RATE_LIMITED });
    else if (kind === 'read') this.sendError(ErrorCode.RATE_LIMITED, `too many read receipts; slow down (${id} not sent)`);
    else this.sendError(ErrorCode.RATE_LIMITED, 'too many pings or presence changes; slow down', id);
  }

  /**
   * Can the device take one more item? A device that stopped reading is cut with
   * SLOW_CONSUMER once its unread bytes pass limits.maxOutboundBytes: memory stays
   * bounded, and what it did not acknowledge goes to its mailbox.
   */
  private writable(): boolean {
    if (this.state !== 'open') return false;
    if (this.transport.bufferedBytes <= this.ctx.config.limits.maxOutboundBytes) return true;
    this.cutSlow();
    return false;
  }

  /** Ends a connection that does not read: one last error frame, then close. Nothing more is buffered for it. */
  private cutSlow(): void {
    if (this.state === 'closed') return;
    this.ctx.metrics.protocolErrors.inc({ code: ErrorCode.SLOW_CONSUMER });
    this.writer.last({ t: 'error', code: ErrorCode.SLOW_CONSUMER, message: 'the connection is not reading what it is sent' });
    this.close(ErrorCode.SLOW_CONSUMER);
  }

  /** Bytes written to this connection and not yet taken by the kernel, and this turn's not yet written. */
  get outboundBytes(): number {
    return this.writer.backlog;
  }

  private track(d: Delivery): void {
    const key = `${d.item.from}/${d.item.id}`;
    const old = this.unacked.get(key);
    if (old?.via === 'mbox') {
      // Now also in flight live: the one ack must settle the live custody and delete
      // the mailbox copy, and the copy no longer holds a place in the drain window.
      this.window.release();
      if (d.via === 'live') d.ref = old.ref;
    }
    if (this.unacked.size >= this.ctx.config.limits.maxInFlightPerSession * 4 && !old) {
      const [oldKey, old] = this.unacked.entries().next().value!;
      this.unacked.delete(oldKey);
      if (old.via === 'mbox') this.window.release();
    }
    this.unacked.set(key, d);
    // The reader's delivery proof (proofs.ts), an HMAC per delivery: none on copies of its own messages, which it never marks read.
    this.send(toClient(d.item, d.item.k === 'm' && d.item.from !== this.user ? this.host.proofs.of(d.item, this.user) : undefined));
    this.ctx.metrics.messagesOut.inc();
  }

  /** Writes an item whose custody cell `origin` holds. False if the device cannot take it now. */
  deliverLive(item: Item, origin: string): boolean {
    if (!this.writable()) return false;
    this.track({ via: 'live', item, origin });
    return true;
  }

  /** Writes an item from this device's mailbox (the drain keeps within its window). */
  deliverStored(item: Item, ref: StoredRef): void {
    if (!this.writable()) return;
    this.drain.inFlight++;
    this.track({ via: 'mbox', item, ref });
  }

  /** Writes a group message (its log holds custody). False if the device cannot take it now. */
  deliverGroup(item: ChatItem): boolean {
    if (!this.writable()) return false;
    this.track({ via: 'group', item });
    return true;
  }

  /** Resolves when the drain window has room (window.ts). */
  windowFor(window: number): Promise<void> {
    return this.window.wait(window);
  }

  /**
   * Every server frame goes through here, so a peer that sends without reading cannot grow
   * our buffers either. Written with the rest of this turn's frames when the turn ends.
   */
  send(m: ServerMessage): void {
    if (this.state === 'closed' || !this.channel) return;
    if (!this.writer.write(m, this.ctx.config.limits.maxOutboundBytes)) this.cutSlow();
  }

  private writePlain(m: object): void {
    this.transport.sendFrame(pack(m));
    this.ctx.metrics.framesOut.inc();
  }

  sendError(code: Code, message: string, ref?: string): void {
    this.ctx.metrics.protocolErrors.inc({ code });
    const m = { t: 'error' as const, code, message, ...(ref !== undefined && { ref }) };
    if (this.state === 'open' || (this.state === 'confirming' && this.channel)) this.send(m);
    else this.writePlain(m);
  }

  /** Sends a coded error, then closes if the code is fatal or the handshake is not done. Unknown errors become INTERNAL. */
  fail(err: unknown): void {
    if (this.state === 'closed') return;
    const pe = err instanceof ProtocolError ? err : new ProtocolError(ErrorCode.INTERNAL, 'internal error');
    if (!(err instanceof ProtocolError)) this.ctx.log('session error', err);
    this.sendError(pe.code, pe.message);
    // Before the session is open nothing is worth keeping: any error ends it.
    if (pe.fatal || this.state !== 'open') this.close(pe.code);
  }

  /** Says goodbye with a reason (shutdown, replaced), then closes. */
  bye(code: Code, message: string): void {
    if (this.state === 'open') this.send({ t: 'bye', code, message });
    this.close();
  }

  /** `code`: the error that ended the session, for transports that can say it in their close (WebSocket). */
  close(code?: Code): void {
    if (this.state === 'closed') return;
    this.writer.flush(); // the last frames (a bye, an error, statuses) leave before the close
    const wasOpen = this.state === 'open';
    this.state = 'closed';
    clearTimeout(this.handshakeTimer);
    this.inbox.length = 0;
    this.window.wake();
    this.transport.end(code);
    // Give the last frame a moment to leave, then make sure the descriptor is freed.
    setTimeout(() => this.transport.destroy(), 1000).unref();
    this.host.closed(this, wasOpen);
  }
}
