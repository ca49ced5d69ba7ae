import { connect as netConnect, type Socket } from 'node:net';
import { ackFor } from '@gravitas/client/internal';
import {
  Capability, ClientHandshake, decodeServerFrame, decodeServerHandshake, DEFAULT_MAX_FRAME_BYTES, encodeFrame, ErrorCode, pack, ProtocolError, unpack,
  type RequestOp, type ResumptionState, type Response, type SecureChannel, type ServerMessage,
} from '@gravitas/protocol';
import { parseTarget } from '../rawclient.js';
import { DriverError } from './driver.js';

/*
 * One TCP connection of a Gravitas driver device (gravitas-driver.ts): the handshake (cookie
 * challenge, resumption), the registration ping, then sealed frames read from one shared buffer
 * and handed to the device, acked under the SDK's custody rules (ackFor, @gravitas/client/internal).
 * Its device is seen through ConnDevice: what a connection asks of it.
 */

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

export type CounterName = keyof GravitasDriverCounters;

/** What a connection asks of its device (gravitas-device.ts). */
export interface ConnDevice {
  readonly name: string;
  /** A provisioning session: no acks, no events, no moves. */
  readonly temp: boolean;
  readonly localAddress: string | undefined;
  readonly drv: { readonly connectTimeoutMs: number; count(k: CounterName): void };
  handshake(resume: ResumptionState | undefined): ClientHandshake;
  spent(t: ResumptionState): void;
  opened(c: Conn): boolean;
  closed(c: Conn, code: string): void;
  received(id: string, from: string, text: string, g: string | undefined, campaign: string | undefined): void;
  status(id: string, s: 'delivered' | 'stored' | 'failed', code: string | undefined): void;
  refused(id: string, code: string): void;
  presence(user: string): void;
  pong(n: number): void;
  hint(c: Conn, h: Uint8Array): void;
}

/** A goodbye not answered by the server's close within this is cut. */
const GOODBYE_MS = 2000;
/** The ping that proves a new session registered (the cell handles it after the registration), and keepalive pings. */
export const REG_PING = 0;
const MAX_FRAME = DEFAULT_MAX_FRAME_BYTES;
/** Every socket reads into this (net `onread`): frames are consumed before the next read. */
const READ_BUFFER = Buffer.allocUnsafe(64 * 1024);

/** A frame the driver cannot use: the connection ends with `lost('CLIENT_<code>')`. */
class BadFrame extends Error {
  constructor(readonly code: string) {
    super(code);
  }
}

const CONNECTING = 0;
const HELLO = 1;
const REGISTERING = 2;
const OPEN = 3;
const CLOSED = 4;

export type Purpose = 'connect' | 'move';

export interface Waiter<T> {
  resolve(v: T): void;
  reject(e: Error): void;
}

export interface Welcomed {
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
export class Conn {
  state = CONNECTING;
  readonly socket: ConnSocket;
  ch: SecureChannel | undefined;
  /** Whether the session negotiated `batch` (frames from the server may hold several messages). */
  private batch = false;
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
    readonly dev: ConnDevice,
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
    this.batch = r.negotiated.caps.has(Capability.BATCH);
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
    // With `batch` the server may pack a turn's messages for this connection into one frame.
    for (const m of decodeServerFrame(ch.open(body), this.batch)) {
      if (m instanceof ProtocolError) throw m;
      this.dispatch(m);
    }
  }

  private dispatch(m: ServerMessage): void {
    const dev = this.dev;
    switch (m.t) {
      case 'msg':
        // Notices of the system about the account itself (provisioning adds devices) are not the run's messages.
        if (m.sys !== undefined && m.sys !== 'campaign') dev.drv.count('notices');
        else dev.received(m.id, m.from, m.text, m.g, m.c);
        // On the connection it came by (that session holds it unacknowledged); provisioning
        // sessions leave everything in custody for the device's own sessions.
        if (!dev.temp) this.write(ackFor(m)!);
        return;
      case 'rcpt':
        if (!dev.temp) this.write(ackFor(m)!);
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
