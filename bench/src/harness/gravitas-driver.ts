import { createPublicKey, verify as verifySignature, type KeyObject } from 'node:crypto';
import { connect as netConnect, type Socket } from 'node:net';
import {
  ClientHandshake, decodeServerHandshake, decodeServerMessage, DEFAULT_MAX_FRAME_BYTES, encodeFrame, ErrorCode, MAX_ID_LENGTH, MAX_TEXT_LENGTH, MAX_USERS_PER_REQUEST,
  nativeSuite, NO_RECONNECT_CODES, pack, RETRYABLE_SEND_CODES, TICKET_REFUSED_CODES, unpack, verifyHint,
  type DhKey, type DhSuite, type KeyPair, type RequestArgs, type RequestOp, type ResumptionState, type Response, type SecureChannel, type ServerMessage, type SignatureCheck,
} from '@gravitas/protocol';
import { parseTarget } from '../rawclient.js';
import { CAN_SPREAD_LOOPBACK, isLoopbackHost, loopbackSource } from './sources.js';
import {
  admitToOutbox, DriverError, OUTBOX_MAX, RecentIds,
  type DeviceEvents, type DeviceRef, type Driver, type DriverCapabilities, type DriverDevice, type Incoming,
} from './driver.js';

/*
 * The Gravitas driver: raw protocol sessions, one per device, speaking exactly what the SDK
 * (@gravitas/client) speaks — the same handshake (ClientHandshake, cookie challenge included),
 * resumption tickets, custody (outbox until `status`, retryable codes re-sent with the same id
 * after a backoff, everything without an outcome re-sent after a reconnect), acks of every `msg`
 * and `rcpt`, de-duplication of re-deliveries, and make-before-break moves on `move` hints — but
 * without the SDK's per-client machinery, because one generator process hosts ~15,000 devices.
 *
 * What keeps it cheap:
 * - Per idle device: one object, its ticket and (once it received something) a 2 KiB ring of
 *   (sender, id) hashes; per connection: the socket, a small Conn and two 32-byte keys. No timer
 *   per device: one driver-wide sweep does keepalive pings and dead-peer detection, one
 *   driver-wide timer does every retry backoff.
 * - Per message: no promise and no closure. Every socket reads into one shared buffer (`onread`,
 *   no stream chunks); frames are sealed and opened by the protocol's own SecureChannel
 *   (`sealFrame`: the length-prefixed frame in one buffer) and decoded and checked by its
 *   `decodeServerMessage` — one implementation of the wire for the SDK, the server and this.
 * - The acks (and anything else) caused by one incoming chunk leave in one write (cork/uncork).
 */

export interface GravitasDriverOptions {
  /** Cell addresses (host:port, TCP). A device starts on the one a hash of its name picks. */
  addresses: string[];
  /** The cluster's server public key (pinned). */
  serverPublicKey: Uint8Array;
  /** Registration token for a device's first handshake ('' for an open cluster; the default). */
  registration?: string;
  /**
   * Unique per generator and run: message ids are `idPrefix + ref.toString(36)`, so ids never
   * collide across generators or with an earlier run. `[A-Za-z0-9_-]`, at most 53 characters.
   */
  idPrefix: string;
  /** One handshake attempt (one cell), ms (default 10,000). */
  connectTimeoutMs?: number;
  /** A connection with no traffic for this long is pinged, one silent for twice as long is dropped (default 30,000; 0 = off). */
  keepaliveMs?: number;
  /** Follow `move` hints as the SDK does (default true). */
  followHints?: boolean;
  /** Recent (sender, id) pairs remembered per device to drop re-deliveries (default 256). */
  dedupWindow?: number;
  /**
   * Each device connects from its own loopback address 127.(generator+1).H.L (sources.ts), so that
   * a local target's per-source caps see thousands of clients, not one flood. Used only when every
   * address is a loopback one and the host can bind them (Linux); undefined: one address for all.
   */
  spreadSources?: { generator: number };
}

/** What `counters()` reports: events of interest to the run's result, summed over every device. */
export interface GravitasDriverCounters {
  /** Sessions opened by resumption (one round trip) and by a full handshake. */
  resumed: number;
  fullHandshakes: number;
  /** Tickets refused (TICKET_*), each followed by a full handshake. */
  resumeRefused: number;
  /** Cookie challenges answered (the cell is under handshake load). */
  cookies: number;
  /** Handshake attempts on one cell that failed (another cell may have worked). */
  connectFailures: number;
  hintsFollowed: number;
  /** Hints not followed: unverifiable, expired, for the cell already on, or while a move was under way. */
  hintsIgnored: number;
  /** Hints whose cell could not be reached (the device stayed). */
  hintsFailed: number;
  /** Messages received again (custody re-deliveries) and not shown twice. */
  redeliveriesDropped: number;
  /** Account notices (a device added to or removed from an account: `msg` with `sys`, not a campaign): acked, not traffic. */
  notices: number;
  /** Sends answered with a retryable failure and sent again after a backoff. */
  retries: number;
  /** Sends re-sent after a (re)connect or a move because they had no outcome yet. */
  resent: number;
  outboxFull: number;
  /** `lost` events. */
  lost: number;
  keepalivePings: number;
  /** Connections dropped because the server stayed silent through a keepalive ping. */
  keepaliveTimeouts: number;
  /** Connections closed because a frame from the server could not be used. */
  clientErrors: number;
}

type CounterName = keyof GravitasDriverCounters;

/** Answers to a provisioning request worth asking again. */
const REQUEST_RETRYABLE = new Set<string>([...RETRYABLE_SEND_CODES, ErrorCode.RETRY_LATER, ErrorCode.CONFLICT]);
const REQUEST_ATTEMPTS = 8;
/** contacts.add requests in flight at once on a provisioning session. */
const PROVISION_CONCURRENCY = 32;
/** Retry backoff as the SDK's: 50 ms doubling to 5 s, jittered ×0.5–1. */
const RETRY_BASE_MS = 50;
const RETRY_MAX_MS = 5000;
/** A goodbye not answered by the server's close within this is cut. */
const GOODBYE_MS = 2000;
const ID_PREFIX = /^[A-Za-z0-9_-]+$/;
/** The longest ref a message id may carry: Number.MAX_SAFE_INTEGER in base 36. */
const MAX_REF_CHARS = Number.MAX_SAFE_INTEGER.toString(36).length;
/** Keepalive sweep slices: the sweep visits 1/SWEEP_SLICES of the open sessions per tick. */
const SWEEP_SLICES = 64;
/** The ping that proves a new session registered (the cell handles it after the registration), and keepalive pings. */
const REG_PING = 0;
/** The identity's public half is not used by a resumption. */
const EMPTY_KEY = new Uint8Array(32);
const NO_EVENTS: DeviceEvents = { message() {}, outcome() {}, presence() {}, lost() {} };

const key = (d: { user: string; device: string }): string => `${d.user}/${d.device}`;

/** FNV-1a: a stable cell for each device, whichever generator hosts it. */
function hash(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

/** Hint public keys imported so far (one per cluster a generator talks to). */
const hintKeys = new Map<string, KeyObject>();

/**
 * The signature check of hints done by OpenSSL: tweetnacl verifies at ~40–1,000/s and a reconnect
 * storm makes thousands of devices follow hints at once. The server signs canonically, and for
 * canonical signatures the two agree (decisions.md §15); the hint's other checks are the protocol's.
 */
const nativeCheck: SignatureCheck = (message, signature, publicKey) => {
  const id = Buffer.from(publicKey).toString('base64url');
  let key = hintKeys.get(id);
  if (!key) hintKeys.set(id, (key = createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: id }, format: 'jwk' })));
  return verifySignature(null, message, key, signature);
};

const MAX_FRAME = DEFAULT_MAX_FRAME_BYTES;
/** Every socket reads into this (net `onread`): frames are consumed before the next read. */
const READ_BUFFER = Buffer.allocUnsafe(64 * 1024);

/** A frame the driver cannot use: the connection ends with `lost('CLIENT_<code>')`. */
class BadFrame extends Error {
  constructor(readonly code: string) {
    super(code);
  }
}

// ---------- connections ----------

const CONNECTING = 0;
const HELLO = 1;
const REGISTERING = 2;
const OPEN = 3;
const CLOSED = 4;

type Purpose = 'connect' | 'move';

interface Waiter<T> {
  resolve(v: T): void;
  reject(e: Error): void;
}

interface Welcomed {
  resumed: boolean;
  cell: string;
  hk: Uint8Array | undefined;
  ticket: ResumptionState | undefined;
}

const CONN: unique symbol = Symbol('gravitas.conn');
type ConnSocket = Socket & { [CONN]: Conn };

// One set of listeners for every socket (no closure per connection): `this` is the socket.
function onSocketConnect(this: ConnSocket): void {
  this[CONN].onConnect();
}
function onSocketRead(this: ConnSocket, n: number, buf: Uint8Array): boolean {
  this[CONN].onRead(n, buf as Buffer);
  return true;
}
function onSocketError(this: ConnSocket, e: NodeJS.ErrnoException): void {
  this[CONN].endCode ??= e.code ?? 'SOCKET_ERROR';
}
function onSocketClose(this: ConnSocket): void {
  this[CONN].onClose();
}
function onHandshakeTimeout(c: Conn): void {
  c.fail('CONNECT_TIMEOUT');
}
function cutGoodbye(c: Conn): void {
  c.socket.destroy();
}

/** One TCP connection of a device: its handshake, then its sealed frames. */
class Conn {
  state = CONNECTING;
  readonly socket: ConnSocket;
  ch: SecureChannel | undefined;
  /** Bytes of a frame not yet whole. */
  private partial: Buffer | undefined;
  private hs: ClientHandshake | undefined;
  private attempt: Waiter<Conn> | undefined;
  private timer: NodeJS.Timeout | undefined;
  welcome: Welcomed | undefined;
  /** Why it ended: the server's bye or error code, the socket's error code, or ours. */
  endCode: string | undefined;
  /** Left on purpose (disconnect, drop, a move): its close is no loss. */
  left = false;
  /** A fatal problem was found: nothing more is read. */
  private dead = false;
  /** Keepalive sweeps since we last wrote, and since the server last sent anything. */
  idle = 0;
  quiet = 0;
  /** Its keepalive sweep slice. */
  slice = 0;
  /** A `move` that came before the device switched to this connection. */
  deferred: Uint8Array | undefined;
  private requests: Map<number, Waiter<unknown>> | undefined;
  private rid = 0;

  constructor(
    readonly dev: GravitasDevice,
    readonly addr: string,
    readonly purpose: Purpose,
    /** The device's epoch when the attempt began: a drop or disconnect since makes it unwanted. */
    readonly epoch: number,
    private resume: ResumptionState | undefined,
    attempt: Waiter<Conn>,
  ) {
    const drv = dev.drv;
    this.attempt = attempt;
    this.hs = dev.handshake(resume);
    const { host, port } = parseTarget(addr);
    const localAddress = dev.localAddress;
    this.socket = netConnect({ host, port, noDelay: true, onread: { buffer: READ_BUFFER, callback: onSocketRead }, ...(localAddress && { localAddress }) }) as ConnSocket;
    this.socket[CONN] = this;
    this.socket.on('connect', onSocketConnect);
    this.socket.on('error', onSocketError);
    this.socket.on('close', onSocketClose);
    this.timer = setTimeout(onHandshakeTimeout, drv.connectTimeoutMs, this);
  }

  onConnect(): void {
    if (this.dead || !this.hs) return;
    // Single use from the moment it is sent, whatever happens next (a refused connection never saw it).
    if (this.resume) this.dev.spent(this.resume);
    this.resume = undefined;
    this.state = HELLO;
    this.socket.write(encodeFrame(pack(this.hs.hello())));
  }

  onRead(n: number, buf: Buffer): void {
    if (this.dead) return;
    this.quiet = 0;
    let data = buf;
    let end = n;
    if (this.partial) {
      data = Buffer.concat([this.partial, buf.subarray(0, n)]);
      end = data.length;
      this.partial = undefined;
    }
    const s = this.socket;
    s.cork();
    try {
      let off = 0;
      while (end - off >= 4 && !this.dead) {
        const len = data.readUInt32BE(off);
        if (len > MAX_FRAME) throw new BadFrame(ErrorCode.FRAME_TOO_LARGE);
        if (end - off - 4 < len) break;
        const start = off + 4;
        off = start + len;
        if (this.ch) this.sealed(this.ch, data.subarray(start, off));
        else this.handshake(data.subarray(start, off));
      }
      // `buf` is shared by every socket: keep a copy of what is left.
      if (off < end && !this.dead) this.partial = Buffer.from(data.subarray(off, end));
    } catch (err) {
      this.broken(err);
    } finally {
      s.uncork();
    }
  }

  /** Never throws out of a socket callback: a frame we cannot use ends this connection only. */
  private broken(err: unknown): void {
    const code = (err as { code?: unknown }).code;
    if (this.state < REGISTERING) return this.fail(typeof code === 'string' ? code : ErrorCode.HANDSHAKE_FAILED);
    this.dev.drv.count('clientErrors');
    this.fail(err instanceof BadFrame || typeof code === 'string' ? `CLIENT_${code as string}` : 'CLIENT_ERROR');
  }

  private handshake(body: Buffer): void {
    const hs = this.hs;
    if (!hs) throw new BadFrame(ErrorCode.UNEXPECTED_MESSAGE);
    const m = decodeServerHandshake(unpack(body));
    if (m.t === 'error') return this.fail(m.code);
    if (m.t === 'cookie') {
      this.dev.drv.count('cookies');
      this.socket.write(encodeFrame(pack(hs.hello(m.c))));
      return;
    }
    const r = hs.complete(m);
    this.hs = undefined;
    this.ch = r.channel;
    const w = r.welcome;
    const t = r.resumption;
    // Copies: the ticket is a view of the whole welcome payload.
    this.welcome = { resumed: w.resumed, cell: w.cell, hk: w.hk, ticket: t && { ticket: new Uint8Array(t.ticket), secret: t.secret, expiresAt: t.expiresAt } };
    this.state = REGISTERING;
    // Key confirmation, then a ping the cell answers once the session is registered.
    this.write({ t: 'finish', h: r.finish.h });
    this.write({ t: 'ping', n: REG_PING });
  }

  /** A ChannelError or DecodeError carries the protocol's code (DECRYPT_FAILED, NONCE_GAP, BAD_MESSAGE…): the connection ends with it. */
  private sealed(ch: SecureChannel, body: Buffer): void {
    this.dispatch(decodeServerMessage(unpack(ch.open(body))));
  }

  private dispatch(m: ServerMessage): void {
    const dev = this.dev;
    switch (m.t) {
      case 'msg':
        // Notices of the system about the account itself (provisioning adds devices) are not the run's messages.
        if (m.sys !== undefined && m.sys !== 'campaign') {
          dev.drv.count('notices');
          if (!dev.temp) this.write({ t: 'ack', id: m.id, from: m.from });
          return;
        }
        return dev.received(this, m.id, m.from, m.text, m.g, m.c);
      case 'rcpt':
        // Provisioning sessions leave everything in custody for the device's own sessions.
        if (!dev.temp) this.write({ t: 'ack', id: m.id, from: m.by });
        return;
      case 'status':
        return dev.status(m.id, m.s, m.code);
      case 'pres':
        return dev.presence(m.user);
      case 'pong':
        if (m.n !== REG_PING) return dev.pong(m.n);
        if (this.state === REGISTERING) this.registered();
        return;
      case 'res':
        return this.answer(m);
      case 'move':
        return dev.hint(this, m.h);
      case 'error':
        if (this.state < OPEN) return this.fail(m.code);
        if (m.ref !== undefined) dev.refused(m.ref, m.code);
        // A fatal one is followed by the close: it says why.
        else this.endCode ??= m.code;
        return;
      case 'bye': {
        const code = m.code ?? 'BYE';
        if (this.state < OPEN) return this.fail(code);
        this.endCode ??= code;
        return;
      }
      default:
        return; // typing, relay, mutes: nothing a load generator does with them
    }
  }

  /** The registration ping came back: the session is in the directory. */
  private registered(): void {
    this.state = OPEN;
    clearTimeout(this.timer);
    this.timer = undefined;
    const a = this.attempt;
    this.attempt = undefined;
    if (this.dev.opened(this)) a?.resolve(this);
    else a?.reject(new DriverError('ABORTED', `${this.dev.name}: connect abandoned by disconnect() or drop()`));
  }

  /** Writes one sealed message (dropped once the connection is closing). */
  write(m: object): void {
    const ch = this.ch;
    if (!ch || this.dead || this.socket.writableEnded) return;
    this.socket.write(ch.sealFrame(pack(m)));
    this.idle = 0;
  }

  request(op: RequestOp, a: object): Promise<unknown> {
    if (this.state !== OPEN || this.dead) return Promise.reject(new DriverError('NOT_CONNECTED', `${this.dev.name}: not connected`));
    const rid = ++this.rid;
    return new Promise((resolve, reject) => {
      (this.requests ??= new Map()).set(rid, { resolve, reject });
      this.write({ t: 'req', rid, op, a });
    });
  }

  private answer(m: Response): void {
    const w = this.requests?.get(m.rid);
    if (!w) return;
    this.requests!.delete(m.rid);
    if (m.ok) w.resolve(m.data);
    else w.reject(new DriverError(m.code, `${this.dev.name}: ${m.message}`));
  }

  /** Ends the connection now with `code` (its close reports it). */
  fail(code: string): void {
    if (this.dead) return;
    this.dead = true;
    this.endCode ??= code;
    this.socket.destroy();
  }

  /** The protocol's goodbye, then the close; resolves once closed. */
  goodbye(): Promise<void> {
    if (this.state === CLOSED) return Promise.resolve();
    this.left = true;
    const closed = new Promise<void>((r) => this.socket.once('close', () => r()));
    if (!this.dead && !this.socket.writableEnded) {
      this.write({ t: 'bye' });
      this.socket.end();
    }
    setTimeout(cutGoodbye, GOODBYE_MS, this).unref();
    return closed;
  }

  /** Abandons a connection that is still in its handshake (or unwanted): the attempt rejects with `code`. */
  abort(code: string): void {
    this.left = true;
    this.fail(code);
  }

  onClose(): void {
    if (this.state === CLOSED) return;
    this.state = CLOSED;
    this.dead = true;
    clearTimeout(this.timer);
    this.hs = undefined;
    this.partial = undefined;
    const code = this.endCode ?? 'CLOSED';
    const a = this.attempt;
    if (a) {
      this.attempt = undefined;
      this.dev.drv.count('connectFailures');
      a.reject(new DriverError(code, `${this.dev.name} at ${this.addr}: ${code} before the session was open`));
    }
    if (this.requests) {
      for (const w of this.requests.values()) w.reject(new DriverError(code, `${this.dev.name}: connection ended (${code}) before the answer`));
      this.requests = undefined;
    }
    this.dev.closed(this, code);
  }
}

// ---------- devices ----------

/** A send without an outcome yet. */
class Out {
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

class GravitasDevice implements DriverDevice {
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
    readonly drv: GravitasDriver,
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
    return new ClientHandshake({ serverPublicKey: d.serverPublicKey, identity, user: this.ref.user, device: this.ref.device, registration: d.registration, suite, ...(resume && { resume }) });
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
    if (o.to !== undefined) c.write({ t: 'send', id: o.id, to: o.to, text: o.text });
    else c.write({ t: 'send', id: o.id, g: o.g, text: o.text });
  }

  status(id: string, s: 'delivered' | 'stored' | 'failed', code: string | undefined): void {
    const o = this.out?.get(id);
    if (!o) return; // settled already (a re-send's second status)
    if (s !== 'failed') return this.settle(o, true, undefined);
    if (code !== undefined && RETRYABLE_SEND_CODES.has(code)) {
      if (o.due === 0) this.drv.retryLater(this, o);
      return;
    }
    this.settle(o, false, code ?? ErrorCode.INTERNAL);
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

  received(c: Conn, id: string, from: string, text: string, g: string | undefined, campaign: string | undefined): void {
    if (this.temp) return;
    if (this.seenBefore(from, id)) this.drv.count('redeliveriesDropped');
    else {
      const m: Incoming = { from, group: g, campaign, body: text };
      this.ev.message(m);
    }
    // On the connection it came by: that session holds it unacknowledged.
    c.write({ t: 'ack', id, from });
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

// ---------- the driver ----------

export class GravitasDriver implements Driver {
  readonly name = 'gravitas';
  readonly capabilities: DriverCapabilities = { acceptance: true, ownDeviceCopies: true, offlineDelivery: { direct: true, groups: true } };
  readonly addresses: readonly string[];
  readonly serverPublicKey: Uint8Array;
  readonly registration: string;
  readonly idPrefix: string;
  readonly connectTimeoutMs: number;
  readonly followHints: boolean;
  readonly dedupWindow: number;
  /**
   * Open sessions of run devices, in SWEEP_SLICES slices: each sweep tick handles one slice, so a
   * generator's keepalive pings spread evenly over the period instead of leaving in one burst
   * (lockstep counters kept every connection in phase: a 16,000-ping stall of the generator and a
   * spike at the server every 15 s, seen in a 50k-user run).
   */
  private readonly live: Array<Set<Conn>> = Array.from({ length: SWEEP_SLICES }, () => new Set());
  private nextSlice = 0;
  private sweepSlice = 0;
  private readonly devices = new Set<GravitasDevice>();
  /** Tickets of provisioning sessions, for the device's first connect(). */
  private readonly tickets = new Map<string, ResumptionState>();
  private readonly c: GravitasDriverCounters = {
    resumed: 0, fullHandshakes: 0, resumeRefused: 0, cookies: 0, connectFailures: 0, hintsFollowed: 0, hintsIgnored: 0, hintsFailed: 0,
    redeliveriesDropped: 0, notices: 0, retries: 0, resent: 0, outboxFull: 0, lost: 0, keepalivePings: 0, keepaliveTimeouts: 0, clientErrors: 0,
  };
  private readonly strings = new Map<string, string>();
  private hk: Uint8Array | undefined;
  private readonly sweeper: NodeJS.Timeout | undefined;
  /** Sends waiting for their retry (device and message side by side), and the one timer for all. */
  private retryDevs: GravitasDevice[] = [];
  private retryOuts: Out[] = [];
  private retryTimer: NodeJS.Timeout | undefined;
  private retryAt = Infinity;
  private closing = false;
  private readonly spread: { generator: number } | undefined;
  private slots = 0;

  constructor(o: GravitasDriverOptions) {
    if (o.addresses.length === 0) throw new RangeError('GravitasDriver needs at least one address');
    if (o.serverPublicKey.length !== 32) throw new RangeError('serverPublicKey must be 32 bytes');
    if (!ID_PREFIX.test(o.idPrefix) || o.idPrefix.length + MAX_REF_CHARS > MAX_ID_LENGTH) {
      throw new RangeError(`idPrefix must be 1 to ${MAX_ID_LENGTH - MAX_REF_CHARS} characters of [A-Za-z0-9_-], got ${JSON.stringify(o.idPrefix)}`);
    }
    this.addresses = [...o.addresses];
    this.serverPublicKey = o.serverPublicKey;
    this.registration = o.registration ?? '';
    this.idPrefix = o.idPrefix;
    this.connectTimeoutMs = o.connectTimeoutMs ?? 10_000;
    this.followHints = o.followHints ?? true;
    this.dedupWindow = Math.max(1, Math.floor(o.dedupWindow ?? 256));
    this.spread = o.spreadSources && CAN_SPREAD_LOOPBACK && this.addresses.every((a) => isLoopbackHost(parseTarget(a).host)) ? o.spreadSources : undefined;
    const keepalive = o.keepaliveMs ?? 30_000;
    if (keepalive > 0) {
      this.sweeper = setInterval(() => this.sweep(), keepalive / 2 / SWEEP_SLICES);
      this.sweeper.unref();
    }
  }

  get isClosed(): boolean {
    return this.closing;
  }

  /** The local address for the next device (its own slot), or undefined when sources are not spread. */
  nextSource(): string | undefined {
    return this.spread && loopbackSource(this.spread.generator, this.slots++);
  }

  /** The device's own cell (a stable hash of user/device). */
  home(name: string): string {
    return this.addresses[hash(name) % this.addresses.length]!;
  }

  count(k: CounterName): void {
    this.c[k]++;
  }

  /** Totals since the driver was made (a copy). */
  counters(): Record<CounterName, number> {
    return { ...this.c };
  }

  /** One string per cell id and address for every device. */
  intern(s: string): string {
    let v = this.strings.get(s);
    if (v === undefined && this.strings.size < 4096) this.strings.set(s, (v = s));
    return v ?? s;
  }

  /** One copy of the cluster's hint key for every device. */
  hintKey(k: Uint8Array): Uint8Array {
    const cur = this.hk;
    if (cur && cur.length === k.length && Buffer.compare(cur, k) === 0) return cur;
    return (this.hk = new Uint8Array(k));
  }

  device(d: DeviceRef, events: DeviceEvents, _groups: readonly string[]): DriverDevice {
    if (this.closing) throw new DriverError('CLOSED', 'the driver is closed');
    const dev = new GravitasDevice(this, d, events, false);
    const k = key(d);
    const t = this.tickets.get(k);
    if (t) {
      this.tickets.delete(k);
      dev.ticket = t;
    }
    this.devices.add(dev);
    return dev;
  }

  async provision(d: DeviceRef, contacts: readonly string[]): Promise<void> {
    const dev = await this.session(d, true);
    try {
      const list = [...new Set(contacts)].filter((u) => u !== d.user);
      let next = 0;
      const worker = async (): Promise<void> => {
        while (next < list.length) await dev.request('contacts.add', { user: list[next++]! });
      };
      // Pipelined: the cell handles a session's requests one by one, the round trips overlap.
      await Promise.all(Array.from({ length: Math.min(PROVISION_CONCURRENCY, list.length) }, worker));
    } finally {
      await this.endSession(d, dev);
    }
  }

  async createGroup(creator: DeviceRef, name: string, members: readonly string[]): Promise<string> {
    const dev = await this.session(creator, false);
    try {
      const rest = [...new Set(members)].filter((u) => u !== creator.user);
      const first = rest.splice(0, MAX_USERS_PER_REQUEST - 1);
      const data = (await dev.request('groups.create', { name, members: first })) as { g?: unknown } | undefined;
      const g = data?.g;
      if (typeof g !== 'string') throw new DriverError(ErrorCode.BAD_MESSAGE, `${key(creator)}: groups.create answered without a group id`);
      while (rest.length > 0) await dev.request('groups.add', { g, users: rest.splice(0, MAX_USERS_PER_REQUEST) });
      return g;
    } finally {
      await this.endSession(creator, dev);
    }
  }

  /**
   * Accepts the invitations of `member`'s user to `groups` (membership is by consent, docs/groups.md):
   * one set-up session, the accepts pipelined (the cell takes them one by one; the round trips
   * overlap), each retried on retryable answers. A group joined already is fine.
   */
  async joinGroups(member: DeviceRef, groups: readonly string[]): Promise<void> {
    const dev = await this.session(member, false);
    try {
      let next = 0;
      const worker = async (): Promise<void> => {
        while (next < groups.length) {
          const g = groups[next++]!;
          await dev.request('groups.accept', { g }).catch(async (e: unknown) => {
            // No invitation (any more): fine if the user is a member already (a retried join); groups.info says.
            if ((e as DriverError).driverCode !== ErrorCode.NOT_FOUND) throw e;
            await dev.request('groups.info', { g });
          });
        }
      };
      await Promise.all(Array.from({ length: Math.min(PROVISION_CONCURRENCY, groups.length) }, worker));
    } finally {
      await this.endSession(member, dev);
    }
  }

  /** A set-up session as `d`, holding the ticket chain of provisioning. */
  private async session(d: DeviceRef, full: boolean): Promise<GravitasDevice> {
    if (this.closing) throw new DriverError('CLOSED', 'the driver is closed');
    const dev = new GravitasDevice(this, d, NO_EVENTS, true);
    const t = this.tickets.get(key(d));
    if (t) dev.ticket = t;
    this.tickets.delete(key(d));
    await dev.open(full);
    return dev;
  }

  private async endSession(d: DeviceRef, dev: GravitasDevice): Promise<void> {
    await dev.disconnect();
    // The first connect() of the run resumes with it (one round trip).
    if (dev.ticket) this.tickets.set(key(d), dev.ticket);
  }

  /** The server could not take custody now: the same id again after a backoff. */
  retryLater(dev: GravitasDevice, o: Out): void {
    this.count('retries');
    const n = Math.min(10, o.attempts++);
    o.due = performance.now() + Math.min(RETRY_MAX_MS, RETRY_BASE_MS * 2 ** n) * (0.5 + Math.random() / 2);
    this.retryDevs.push(dev);
    this.retryOuts.push(o);
    if (o.due < this.retryAt) this.armRetries(o.due);
  }

  private armRetries(at: number): void {
    clearTimeout(this.retryTimer);
    this.retryAt = at;
    this.retryTimer = setTimeout(() => this.runRetries(), Math.max(0, at - performance.now()));
    this.retryTimer.unref();
  }

  private runRetries(): void {
    this.retryTimer = undefined;
    this.retryAt = Infinity;
    const now = performance.now();
    const devs = this.retryDevs;
    const outs = this.retryOuts;
    this.retryDevs = [];
    this.retryOuts = [];
    let next = Infinity;
    for (let i = 0; i < outs.length; i++) {
      const o = outs[i]!;
      const dev = devs[i]!;
      // Settled, re-sent by a reconnect meanwhile, or listed twice: nothing to do.
      if (o.due === 0 || !dev.holds(o)) continue;
      if (o.due <= now + 1) {
        o.due = 0;
        dev.write(o); // not connected: it goes with the others at the next connect
      } else {
        this.retryDevs.push(dev);
        this.retryOuts.push(o);
        if (o.due < next) next = o.due;
      }
    }
    if (next < this.retryAt) this.armRetries(next);
  }

  watch(c: Conn): void {
    c.slice = this.nextSlice;
    this.nextSlice = (this.nextSlice + 1) % SWEEP_SLICES;
    this.live[c.slice]!.add(c);
  }

  unwatch(c: Conn): void {
    this.live[c.slice]!.delete(c);
  }

  /**
   * One slice per tick, so each connection is visited every keepaliveMs / 2: one we have not
   * written to for a keepalive period, or that has not heard from the server for one, is pinged;
   * one that heard nothing for two is cut.
   */
  private sweep(): void {
    const slice = this.live[this.sweepSlice]!;
    this.sweepSlice = (this.sweepSlice + 1) % SWEEP_SLICES;
    for (const c of slice) {
      c.idle++;
      c.quiet++;
      if (c.quiet >= 4) {
        this.count('keepaliveTimeouts');
        c.fail('KEEPALIVE_TIMEOUT');
      } else if (c.idle >= 2 || c.quiet >= 2) {
        this.count('keepalivePings');
        c.write({ t: 'ping', n: REG_PING });
      }
    }
  }

  async close(): Promise<void> {
    this.closing = true;
    clearInterval(this.sweeper);
    clearTimeout(this.retryTimer);
    this.retryDevs = [];
    this.retryOuts = [];
    const all = [...this.devices];
    this.devices.clear();
    this.tickets.clear();
    await Promise.allSettled(all.map((d) => d.disconnect()));
  }
}
