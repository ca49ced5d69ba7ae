import { failureCode, RetryQueue, sendFrame, statusVerdict, type Retrying } from '@gravitas/client/internal';
import {
  Capability, ClientHandshake, ErrorCode, MAX_TEXT_LENGTH, nativeSuite, NO_RECONNECT_CODES, RETRYABLE_SEND_CODES, TICKET_REFUSED_CODES, verifyHint,
  type DhKey, type DhSuite, type KeyPair, type RequestArgs, type RequestOp, type ResumptionState,
} from '@gravitas/protocol';
import {
  admitToOutbox, DriverError, OUTBOX_MAX, RecentIds,
  type DeviceEvents, type DeviceRef, type DriverDevice, type Incoming,
} from './driver.js';
import { Conn, type ConnDevice, type CounterName, type Purpose, type Waiter } from './gravitas-conn.js';
import { nativeCheck } from './hint-check.js';

/*
 * One device of the Gravitas driver (gravitas-driver.ts): its sessions (connect, reconnect to the
 * cell it was on, make-before-break moves on hints), its outbox under the SDK's custody rules
 * (@gravitas/client/internal: statusVerdict, the driver's one RetryQueue), and de-duplication of
 * what it receives. The driver is seen through DeviceHost: what a device asks of it.
 */

/** What a device asks of its driver. */
export interface DeviceHost {
  readonly addresses: readonly string[];
  readonly serverPublicKey: Uint8Array;
  readonly registration: string;
  readonly idPrefix: string;
  readonly connectTimeoutMs: number;
  readonly followHints: boolean;
  readonly dedupWindow: number;
  readonly isClosed: boolean;
  count(k: CounterName): void;
  home(name: string): string;
  nextSource(): string | undefined;
  intern(s: string): string;
  hintKey(k: Uint8Array): Uint8Array;
  watch(c: Conn): void;
  unwatch(c: Conn): void;
  retryLater(dev: GravitasDevice, o: Out): void;
}

/** Answers to a provisioning request worth asking again. */
const REQUEST_RETRYABLE = new Set<string>([...RETRYABLE_SEND_CODES, ErrorCode.RETRY_LATER, ErrorCode.CONFLICT]);
const REQUEST_ATTEMPTS = 8;
/** A provisioning request asked again waits at most this long. */
const RETRY_MAX_MS = 5000;
/** The identity's public half is not used by a resumption. */
const EMPTY_KEY = new Uint8Array(32);

export const key = (d: { user: string; device: string }): string => `${d.user}/${d.device}`;

/** A send without an outcome yet. */
export class Out implements Retrying {
  attempts = 0;
  /** performance.now() when its retry is due; 0 when not waiting for one. */
  due = 0;
  constructor(
    readonly ref: number,
    readonly id: string,
    readonly to: string | undefined,
    readonly g: string | undefined,
    readonly text: string,
  ) {}
}

interface PingWaiter extends Waiter<void> {
  n: number;
}

export class GravitasDevice implements DriverDevice, ConnDevice {
  readonly name: string;
  /** The address this device connects from (undefined: the host's default). */
  readonly localAddress: string | undefined;
  /** The open session (registered), if any. */
  conn: Conn | undefined;
  /** A connection being opened (connect or move): drop() and disconnect() abort it. */
  private opening: Conn | undefined;
  private connecting: Promise<void> | undefined;
  /** The connection a move is leaving, and the code it closed with if it closed during the move. */
  private moving: Conn | undefined;
  private moveDone: Promise<void> | undefined;
  private movedFromCode: string | undefined;
  /** Bumped by drop() and disconnect(): attempts begun before are unwanted. */
  private epoch = 0;
  /** The cell to try first: where the device last was. */
  private addr: string;
  private cell: string | undefined;
  private hk: Uint8Array | undefined;
  ticket: ResumptionState | undefined;
  private out: Map<string, Out> | undefined;
  /** Ring of (sender, id) hash pairs of the messages shown last. */
  /** Re-deliveries to drop (allocated on the first message). */
  private recent: RecentIds | undefined;
  private pings: PingWaiter[] | undefined;
  private pingSeq = 0;

  constructor(
    readonly drv: DeviceHost,
    private readonly ref: DeviceRef,
    private readonly ev: DeviceEvents,
    /** A provisioning session: no acks (what arrives stays in custody), no events, no moves. */
    readonly temp: boolean,
  ) {
    this.name = key(ref);
    this.addr = drv.home(this.name);
    this.localAddress = drv.nextSource();
  }

  get connected(): boolean {
    return this.conn !== undefined;
  }

  // ---- sessions ----

  connect(): Promise<void> {
    return this.open(false);
  }

  /** Connects; `full` forces a full handshake (provisioning registers the device). */
  open(full: boolean): Promise<void> {
    if (this.conn) return Promise.resolve();
    this.connecting ??= this.connectAll(full).finally(() => (this.connecting = undefined));
    return this.connecting;
  }

  /** The last cell first, then the others from the device's own, as the SDK does. */
  private async connectAll(full: boolean): Promise<void> {
    if (this.moveDone) await this.moveDone;
    if (this.conn) return;
    const epoch = this.epoch;
    const addrs = this.drv.addresses;
    const start = addrs.indexOf(this.drv.home(this.name));
    const order = [this.addr];
    for (let i = 0; i < addrs.length; i++) {
      const a = addrs[(start + i) % addrs.length]!;
      if (a !== this.addr) order.push(a);
    }
    let last: unknown;
    for (const addr of order) {
      if (epoch !== this.epoch) break;
      try {
        await this.attempt(addr, 'connect', full);
        return;
      } catch (err) {
        last = err;
        if (err instanceof DriverError && (NO_RECONNECT_CODES.has(err.driverCode) || err.driverCode === 'ABORTED')) throw err;
      }
    }
    if (epoch !== this.epoch) throw new DriverError('ABORTED', `${this.name}: connect abandoned by disconnect() or drop()`);
    throw last instanceof DriverError ? last : new DriverError('CONNECT_FAILED', `${this.name}: no cell could be reached`, { cause: last });
  }

  /** One cell: by resumption if the device holds a ticket, by a full handshake if the ticket is refused. */
  private async attempt(addr: string, purpose: Purpose, full: boolean): Promise<Conn> {
    const t = this.ticket;
    const ticket = !full && t && t.expiresAt > Date.now() ? t : undefined;
    try {
      return await this.dial(addr, purpose, ticket);
    } catch (err) {
      if (!ticket || !(err instanceof DriverError) || !TICKET_REFUSED_CODES.has(err.driverCode)) throw err;
      this.drv.count('resumeRefused');
      return this.dial(addr, purpose, undefined);
    }
  }

  private dial(addr: string, purpose: Purpose, ticket: ResumptionState | undefined): Promise<Conn> {
    return new Promise((resolve, reject) => {
      this.opening = new Conn(this, addr, purpose, this.epoch, ticket, { resolve, reject });
    });
  }

  /** The ClientHandshake of one attempt: the device's X25519 key is its secret (X25519 clamps), imported natively once per full handshake. */
  handshake(resume: ResumptionState | undefined): ClientHandshake {
    const d = this.drv;
    let identity: KeyPair;
    let suite: DhSuite = nativeSuite;
    if (resume) identity = { secretKey: this.ref.secret, publicKey: EMPTY_KEY };
    else {
      const stat: DhKey = nativeSuite.fromSecret(this.ref.secret);
      identity = { secretKey: this.ref.secret, publicKey: stat.publicKey };
      suite = { name: 'native', generate: () => nativeSuite.generate(), fromSecret: () => stat };
    }
    // `batch`: the server may send a turn's messages in one frame (gravitas-conn.ts reads both); this side sends one per frame.
    return new ClientHandshake({ serverPublicKey: d.serverPublicKey, identity, user: this.ref.user, device: this.ref.device, registration: d.registration, suite, offer: { capabilities: [Capability.AEAD_CHACHA20POLY1305, Capability.BATCH] }, ...(resume && { resume }) });
  }

  /** A ticket went out on the wire: never again. */
  spent(t: ResumptionState): void {
    if (this.ticket === t) this.ticket = undefined;
  }

  /** A connection registered. Returns false when it is unwanted (dropped or disconnected meanwhile). */
  opened(c: Conn): boolean {
    if (this.opening === c) this.opening = undefined;
    if (c.epoch !== this.epoch || this.drv.isClosed) {
      void c.goodbye();
      return false;
    }
    const w = c.welcome!;
    c.welcome = undefined;
    this.drv.count(w.resumed ? 'resumed' : 'fullHandshakes');
    if (w.ticket) this.ticket = w.ticket;
    this.cell = this.drv.intern(w.cell);
    if (w.hk) this.hk = this.drv.hintKey(w.hk);
    const old = this.conn;
    this.conn = c;
    this.addr = this.drv.intern(c.addr);
    if (!this.temp) this.drv.watch(c);
    if (c.purpose === 'move') {
      // Make-before-break: the old session goes once the new one is registered.
      this.moving = undefined;
      this.movedFromCode = undefined;
      if (old) {
        old.left = true;
        this.drv.unwatch(old);
        void old.goodbye();
      }
      this.drv.count('hintsFollowed');
      // What waits for a retry keeps waiting; the rest goes again on the new session (same ids).
      this.resend(false);
    } else this.resend(true);
    const m = c.deferred;
    c.deferred = undefined;
    if (m) this.hint(c, m);
    return true;
  }

  /** Every send without an outcome, again, same id. `all`: also those waiting for a retry (a new connection). */
  private resend(all: boolean): void {
    if (!this.out) return;
    for (const o of this.out.values()) {
      if (o.due !== 0) {
        if (!all) continue;
        o.due = 0;
      }
      this.drv.count('resent');
      this.write(o);
    }
  }

  closed(c: Conn, code: string): void {
    if (this.opening === c) this.opening = undefined;
    this.drv.unwatch(c);
    if (c !== this.conn) return;
    this.conn = undefined;
    this.failPings(code);
    if (c.left) return;
    // Replaced by the session a move is opening (SESSION_REPLACED), or lost meanwhile: the move decides.
    if (this.moving === c) {
      this.movedFromCode = code;
      return;
    }
    this.lose(code);
  }

  private lose(code: string): void {
    if (this.temp) return;
    this.drv.count('lost');
    this.ev.lost(code);
  }

  private failPings(code: string): void {
    const p = this.pings;
    if (!p) return;
    this.pings = undefined;
    for (const w of p) w.reject(new DriverError('NOT_CONNECTED', `${this.name}: connection ended (${code}) before the pong`));
  }

  disconnect(): Promise<void> {
    this.epoch++;
    this.opening?.abort('ABORTED');
    const c = this.conn;
    if (!c) return Promise.resolve();
    this.detach(c);
    return c.goodbye();
  }

  drop(): void {
    this.epoch++;
    this.opening?.abort('ABORTED');
    const c = this.conn;
    if (!c) return;
    this.detach(c);
    c.abort('DROPPED');
  }

  private detach(c: Conn): void {
    c.left = true;
    this.conn = undefined;
    this.moving = undefined;
    this.drv.unwatch(c);
    this.failPings('DISCONNECTED');
  }

  // ---- moves ----

  /** A `move` arrived on `c`. */
  hint(c: Conn, h: Uint8Array): void {
    if (this.temp || !this.drv.followHints) return;
    // On a connection not switched to yet: it is followed after the switch.
    if (c === this.opening) return void (c.deferred = h);
    if (c !== this.conn) return; // on a connection being left
    if (this.moving || this.opening) return this.drv.count('hintsIgnored');
    let addr: string;
    try {
      if (!this.hk) return this.drv.count('hintsIgnored');
      const v = verifyHint(h, this.hk, this.ref, Date.now(), nativeCheck);
      if (v.cell === this.cell) return this.drv.count('hintsIgnored');
      addr = v.addr;
    } catch {
      return this.drv.count('hintsIgnored');
    }
    this.moving = c;
    this.moveDone = this.attempt(addr, 'move', false).then(
      () => undefined,
      (err: unknown) => {
        if (!(err instanceof DriverError && err.driverCode === 'ABORTED')) this.drv.count('hintsFailed');
        const code = this.movedFromCode;
        const stayed = this.moving === c;
        this.moving = undefined;
        this.movedFromCode = undefined;
        // The session we meant to leave is gone too (the new one replaced it before failing).
        if (stayed && code !== undefined && !c.left) this.lose(code);
      },
    ).finally(() => (this.moveDone = undefined));
  }

  // ---- sending ----

  send(ref: number, to: string, body: string): void {
    this.submit(ref, to, undefined, body);
  }

  sendToGroup(ref: number, group: string, body: string): void {
    this.submit(ref, undefined, group, body);
  }

  private submit(ref: number, to: string | undefined, g: string | undefined, text: string): void {
    const out = (this.out ??= new Map());
    const id = admitToOutbox(out, this.drv.idPrefix, ref, this.ev, text.length > MAX_TEXT_LENGTH ? ErrorCode.BAD_MESSAGE : undefined);
    if (id === undefined) {
      if (out.size >= OUTBOX_MAX) this.drv.count('outboxFull');
      return;
    }
    const o = new Out(ref, id, to, g, text);
    out.set(id, o);
    this.write(o);
  }

  /** Sends `o` on the open session, if any (it waits in the outbox otherwise). */
  write(o: Out): void {
    const c = this.conn;
    if (!c) return;
    c.write(sendFrame(o.id, o.to, o.g, o.text));
  }

  status(id: string, s: 'delivered' | 'stored' | 'failed', code: string | undefined): void {
    const o = this.out?.get(id);
    if (!o) return; // settled already (a re-send's second status)
    const v = statusVerdict(s, code);
    if (v === 'retry') {
      if (!RetryQueue.waiting(o)) this.drv.retryLater(this, o);
      return;
    }
    if (v === 'failed') this.settle(o, false, failureCode(code));
    else this.settle(o, true, undefined);
  }

  /** An `error` naming a message we sent: it is refused. */
  refused(id: string, code: string): void {
    const o = this.out?.get(id);
    if (o) this.settle(o, false, code);
  }

  private settle(o: Out, ok: boolean, code: string | undefined): void {
    this.out!.delete(o.id);
    o.due = 0;
    if (ok) this.ev.outcome(o.ref, true);
    else this.ev.outcome(o.ref, false, code);
  }

  /** Still waiting for its outcome (the retry timer's check). */
  holds(o: Out): boolean {
    return this.out?.get(o.id) === o;
  }

  // ---- receiving ----

  /** A message arrived (its connection acks it once this returns). */
  received(id: string, from: string, text: string, g: string | undefined, campaign: string | undefined): void {
    if (this.temp) return;
    if (this.seenBefore(from, id)) this.drv.count('redeliveriesDropped');
    else {
      const m: Incoming = { from, group: g, campaign, body: text };
      this.ev.message(m);
    }
  }

  private seenBefore(from: string, id: string): boolean {
    return (this.recent ??= new RecentIds(this.drv.dedupWindow)).seenBefore(from, id);
  }

  presence(user: string): void {
    if (!this.temp) this.ev.presence(user);
  }

  // ---- the rest of the contract ----

  setPresence(state: 'online' | 'away'): void {
    this.conn?.write({ t: 'presence', s: state });
  }

  ping(): Promise<void> {
    const c = this.conn;
    if (!c) return Promise.reject(new DriverError('NOT_CONNECTED', `${this.name}: not connected`));
    const n = ++this.pingSeq;
    return new Promise((resolve, reject) => {
      (this.pings ??= []).push({ n, resolve, reject });
      c.write({ t: 'ping', n });
    });
  }

  pong(n: number): void {
    const p = this.pings;
    if (!p) return;
    const i = p.findIndex((w) => w.n === n);
    if (i < 0) return;
    const w = p[i]!;
    p.splice(i, 1);
    w.resolve();
  }

  /** A request on the open session, asked again (same arguments) after an answer that means "not now". */
  async request<K extends RequestOp>(op: K, a: RequestArgs[K]): Promise<unknown> {
    for (let attempt = 0; ; attempt++) {
      const c = this.conn;
      if (!c) throw new DriverError('NOT_CONNECTED', `${this.name}: not connected`);
      try {
        return await c.request(op, a);
      } catch (err) {
        if (!(err instanceof DriverError) || !REQUEST_RETRYABLE.has(err.driverCode) || attempt + 1 >= REQUEST_ATTEMPTS) throw err;
      }
      await new Promise((r) => setTimeout(r, Math.min(RETRY_MAX_MS, 100 * 2 ** attempt) * (0.5 + Math.random() / 2)));
    }
  }
}
