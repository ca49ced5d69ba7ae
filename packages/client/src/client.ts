import { EventEmitter } from 'node:events';
import { connect as netConnect, type Socket } from 'node:net';
import { randomBytes } from 'node:crypto';
import {
  ClientHandshake, decodeServerHandshake, decodeServerMessage, encodeFrame, ErrorCode, FrameDecoder, pack, ProtocolError, RemoteError, unpack,
  type KeyPair, type Msg, type ResumptionState, type SecureChannel, type ServerMessage, type WelcomePayload,
} from '@gravitas/protocol';
import { ClientError, ClientErrorCode, DeliveryError } from './errors.js';

export interface ClientOptions {
  /** Cell addresses (host:port); tried in turn. */
  servers: string[];
  /** The cluster's server public key (pinned). */
  serverPublicKey: Uint8Array;
  identity: KeyPair;
  user: string;
  device: string;
  /** Registration token to register this device on first use ('' for an open dev cluster). */
  registration?: string;
  /** A ticket from an earlier session, for a one-round-trip resumption. */
  resumption?: ResumptionState;
  /** Called with every new ticket, so the application can persist it. */
  onResumption?: (r: ResumptionState | undefined) => void;
  /** Acknowledge received messages automatically after the 'message' event (default true). */
  autoAck?: boolean;
  /** Reconnect after a lost connection (default true). */
  reconnect?: boolean;
  connectTimeoutMs?: number;
  /** Unconfirmed outgoing messages kept for re-sending (default 1024). */
  maxOutbox?: number;
  /** Ping interval that keeps an idle session under the server's idle timeout (default 30 s; 0 = off). */
  keepaliveMs?: number;
}

/** Ids of recently received messages remembered to drop re-deliveries. */
const SEEN_MAX = 10_000;

export interface SendResult { id: string; status: 'delivered' }

interface Outgoing { id: string; to: string; text: string; resolve: (r: SendResult) => void; reject: (e: Error) => void }

export interface ClientEvents {
  message: [Msg];
  connected: [WelcomePayload];
  disconnected: [Error | undefined];
  error: [Error];
}

const TICKET_CODES = new Set<string>([ErrorCode.TICKET_EXPIRED, ErrorCode.TICKET_INVALID, ErrorCode.TICKET_REPLAYED]);
const NO_RECONNECT = new Set<string>([ErrorCode.SESSION_REPLACED, ErrorCode.DEVICE_KEY_MISMATCH, ErrorCode.UNKNOWN_DEVICE, ErrorCode.REGISTRATION_DENIED]);

/**
 * The Node SDK: one secure connection to a cell, re-established after failures
 * (resuming with a ticket when it has one). Outgoing messages stay in an outbox
 * until the server reports their fate, and are re-sent with the same id after a
 * reconnect.
 */
export class GravitasClient extends EventEmitter<ClientEvents> {
  private socket: Socket | undefined;
  private channel: SecureChannel | undefined;
  private resumption: ResumptionState | undefined;
  private readonly outbox = new Map<string, Outgoing>();
  private closed = false;
  private attempt = 0;
  private serverIndex = 0;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private pingSeq = 0;
  private keepalive: NodeJS.Timeout | undefined;
  private readonly seen = new Map<string, true>();
  private readonly pings = new Map<number, () => void>();
  welcome: WelcomePayload | undefined;
  /** Address of the cell currently connected to. */
  server: string | undefined;

  constructor(readonly options: ClientOptions) {
    super();
    this.resumption = options.resumption;
  }

  get connected(): boolean {
    return this.channel !== undefined;
  }

  /** Connects (full handshake, or resumption when a ticket is held). Resolves when the session is open. */
  async connect(): Promise<WelcomePayload> {
    this.closed = false;
    let lastErr: unknown;
    const servers = this.options.servers;
    for (let i = 0; i < servers.length; i++) {
      const server = servers[(this.serverIndex + i) % servers.length]!;
      try {
        const w = await this.open(server);
        this.serverIndex = (this.serverIndex + i) % servers.length;
        return w;
      } catch (err) {
        lastErr = err;
        if (err instanceof RemoteError && NO_RECONNECT.has(err.code)) throw err;
      }
    }
    throw lastErr instanceof Error ? lastErr : new ClientError(ClientErrorCode.CONNECT_FAILED, 'no server could be reached');
  }

  private async open(server: string): Promise<WelcomePayload> {
    const hadTicket = this.resumption !== undefined;
    try {
      return await this.handshake(server);
    } catch (err) {
      // handshake() has already dropped the ticket it sent, so test what we had before.
      if (err instanceof RemoteError && TICKET_CODES.has(err.code) && hadTicket) {
        this.setResumption(undefined); // a spent or stale ticket: fall back to a full handshake
        return this.handshake(server);
      }
      throw err;
    }
  }

  private setResumption(r: ResumptionState | undefined): void {
    this.resumption = r;
    this.options.onResumption?.(r);
  }

  private handshake(server: string): Promise<WelcomePayload> {
    const [host, portText] = splitHostPort(server);
    const o = this.options;
    const resume = this.resumption && this.resumption.expiresAt > Date.now() ? this.resumption : undefined;
    const hs = new ClientHandshake({
      serverPublicKey: o.serverPublicKey,
      identity: o.identity,
      user: o.user,
      device: o.device,
      ...(o.registration !== undefined && { registration: o.registration }),
      ...(resume && { resume }),
    });
    return new Promise((resolve, reject) => {
      const socket = netConnect({ host, port: Number(portText), noDelay: true });
      const decoder = new FrameDecoder();
      let channel: SecureChannel | undefined;
      let done = false;
      const timer = setTimeout(() => fail(new ClientError(ClientErrorCode.CONNECT_TIMEOUT, `handshake with ${server} timed out`)), o.connectTimeoutMs ?? 10_000);
      const fail = (err: Error): void => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        socket.destroy();
        reject(err);
      };
      socket.once('connect', () => {
        // Single use from the moment it is sent, whatever happens next; a server that
        // could not be reached never saw it, so it stays for the next one.
        if (resume) this.setResumption(undefined);
        socket.write(encodeFrame(pack(hs.hello())));
      });
      socket.on('error', (err) => (done ? this.onLost(socket, err) : fail(new ClientError(ClientErrorCode.CONNECT_FAILED, `cannot connect to ${server}: ${err.message}`, { cause: err }))));
      socket.on('close', () => (done ? this.onLost(socket) : fail(new ClientError(ClientErrorCode.CONNECT_FAILED, `${server} closed the connection during the handshake`))));
      socket.on('data', (chunk) => {
        try {
          decoder.push(chunk, (body) => {
            if (channel) return this.onFrame(channel, body);
            const m = decodeServerHandshake(unpack(body));
            if (m.t === 'error') throw new RemoteError(m.code, m.message);
            if (m.t === 'cookie') {
              socket.write(encodeFrame(pack(hs.hello(m.c))));
              return;
            }
            const r = hs.complete(m);
            channel = r.channel;
            socket.write(encodeFrame(channel.seal(pack(r.finish))));
            clearTimeout(timer);
            done = true;
            this.socket = socket;
            this.channel = channel;
            this.server = server;
            this.welcome = r.welcome;
            this.attempt = 0;
            if (r.resumption) this.setResumption(r.resumption);
            this.resendOutbox();
            this.startKeepalive();
            resolve(r.welcome);
            this.emit('connected', r.welcome);
          });
        } catch (err) {
          if (!done) return fail(err as Error);
          this.emit('error', err as Error);
          if (err instanceof ProtocolError && err.fatal) socket.destroy();
        }
      });
    });
  }

  private onFrame(channel: SecureChannel, body: Buffer): void {
    const m: ServerMessage = decodeServerMessage(unpack(channel.open(body)));
    switch (m.t) {
      case 'msg': {
        // A re-delivery (e.g. the sender re-sent after losing its status): ack it again, show it once.
        const key = `${m.from}/${m.id}`;
        if (!this.seen.has(key)) {
          if (this.seen.size >= SEEN_MAX) this.seen.delete(this.seen.keys().next().value!);
          this.seen.set(key, true);
          this.emit('message', m);
        }
        if (this.options.autoAck !== false) this.ack(m.id);
        return;
      }
      case 'status': {
        const out = this.outbox.get(m.id);
        if (!out) return;
        this.outbox.delete(m.id);
        if (m.s === 'delivered') out.resolve({ id: m.id, status: 'delivered' });
        else out.reject(new DeliveryError(m.code ?? ErrorCode.INTERNAL, m.id));
        return;
      }
      case 'pong':
        this.pings.get(m.n)?.();
        this.pings.delete(m.n);
        return;
      case 'error': {
        const err = new RemoteError(m.code, m.message, m.ref);
        const out = m.ref ? this.outbox.get(m.ref) : undefined;
        if (out) {
          this.outbox.delete(out.id);
          out.reject(err);
        } else this.emit('error', err);
        return;
      }
      case 'bye':
        if (m.code && NO_RECONNECT.has(m.code)) {
          this.closed = true;
          this.emit('error', new RemoteError(m.code, m.message ?? 'server closed the session'));
        }
        this.socket?.end();
    }
  }

  private startKeepalive(): void {
    clearInterval(this.keepalive);
    const every = this.options.keepaliveMs ?? 30_000;
    if (every <= 0) return;
    this.keepalive = setInterval(() => {
      if (this.channel) void this.ping();
    }, every);
    this.keepalive.unref();
  }

  private onLost(socket: Socket, err?: Error): void {
    if (socket !== this.socket) return;
    clearInterval(this.keepalive);
    this.pings.clear();
    this.socket = undefined;
    this.channel = undefined;
    this.emit('disconnected', err);
    if (this.closed || this.options.reconnect === false) return this.failOutbox();
    this.scheduleReconnect();
  }

  private scheduleReconnect(): void {
    const base = Math.min(5000, 100 * 2 ** this.attempt++);
    const delay = base / 2 + Math.random() * (base / 2);
    this.serverIndex = (this.serverIndex + 1) % this.options.servers.length;
    this.reconnectTimer = setTimeout(() => {
      if (this.closed) return;
      this.connect().catch((err: Error) => {
        if (err instanceof RemoteError && NO_RECONNECT.has(err.code)) {
          this.closed = true;
          this.emit('error', err);
          return this.failOutbox();
        }
        this.scheduleReconnect();
      });
    }, delay);
  }

  private write(m: object): void {
    if (!this.socket || !this.channel) throw new ClientError(ClientErrorCode.NOT_CONNECTED, 'not connected');
    this.socket.write(encodeFrame(this.channel.seal(pack(m))));
  }

  private resendOutbox(): void {
    for (const o of this.outbox.values()) this.write({ t: 'send', id: o.id, to: o.to, text: o.text });
  }

  private failOutbox(): void {
    for (const o of this.outbox.values()) o.reject(new ClientError(ClientErrorCode.CLOSED, 'client closed before the message was confirmed'));
    this.outbox.clear();
  }

  /** Sends a text message; resolves when every online recipient device acknowledged it. */
  send(to: string, text: string, id: string = newMessageId()): Promise<SendResult> {
    if (this.closed) return Promise.reject(new ClientError(ClientErrorCode.CLOSED, 'client is closed'));
    if (this.outbox.size >= (this.options.maxOutbox ?? 1024)) return Promise.reject(new ClientError(ClientErrorCode.OUTBOX_FULL, 'too many unconfirmed messages'));
    return new Promise((resolve, reject) => {
      this.outbox.set(id, { id, to, text, resolve, reject });
      // Not connected: it stays in the outbox and goes out after the reconnect.
      if (this.channel) this.write({ t: 'send', id, to, text });
    });
  }

  /** Acknowledges a received message (automatic unless autoAck is false). */
  ack(id: string): void {
    if (this.channel) this.write({ t: 'ack', id });
  }

  /** Round trip to the cell. */
  ping(): Promise<void> {
    const n = ++this.pingSeq;
    return new Promise((resolve) => {
      this.pings.set(n, resolve);
      this.write({ t: 'ping', n });
    });
  }

  /** Says goodbye and closes; unconfirmed messages are rejected with CLOSED. */
  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.reconnectTimer);
    clearInterval(this.keepalive);
    const socket = this.socket;
    if (socket && this.channel) {
      try {
        this.write({ t: 'bye' });
      } catch {
        // already gone
      }
      await new Promise<void>((r) => {
        socket.once('close', () => r());
        socket.end();
        setTimeout(() => {
          socket.destroy();
          r();
        }, 1000).unref();
      });
    }
    this.failOutbox();
  }
}

export function splitHostPort(s: string): [string, string] {
  const i = s.lastIndexOf(':');
  if (i <= 0 || !/^\d+$/.test(s.slice(i + 1))) throw new TypeError(`"${s}" is not host:port`);
  return [s.slice(0, i).replace(/^\[|\]$/g, ''), s.slice(i + 1)];
}

/** Time-ordered, collision-resistant message id (ms timestamp + 80 random bits). */
export function newMessageId(): string {
  return Date.now().toString(36).padStart(9, '0') + randomBytes(10).toString('base64url');
}
