/*
 * The client's connection: one secure session with a cell at a time, over the first
 * transport that works, re-established after a loss (resuming with a ticket when it has
 * one), kept alive by pings. What the session carries is the owner's business
 * (ConnectionOwner): the connection tells it when a session opens, hands it every
 * sealed frame, and says when the session is lost and when it is over for good.
 */
import {
  Capability, ClientHandshake, decodeServerHandshake, NO_CAPABILITIES, NO_RECONNECT_CODES, pack, ProtocolError, RemoteError, TICKET_REFUSED_CODES, unpack,
  type Bye, type ConnectHint, type ResumptionState, type SecureChannel, type WelcomePayload,
} from '@gravitas/protocol';
import { ClientError, ClientErrorCode } from './errors.js';
import {
  defaultDialers, endpointName, toEndpoint, TRANSPORT_ORDER, type Dialer, type Endpoint, type FrameConnection, type FrameHandlers, type TransportKind,
} from './transport.js';
import type { Emit } from './private.js';
import type { ClientOptions } from './types.js';
import { FrameWriter } from './writer.js';

/** What the connection asks of the client that owns it. */
export interface ConnectionOwner {
  readonly emit: Emit;
  /** A session opened: what waited for one goes out now (before 'connected' is emitted). */
  sessionOpened(): void;
  /** A sealed frame from the server, on `channel` (the current session's, or one a move left). */
  frame(channel: SecureChannel, body: Buffer): void;
  /** The session was lost: what waited on it is told so (before 'disconnected' is emitted). */
  sessionLost(): void;
  /** No session will come back (closed, reconnect off, or refused for good). */
  ended(): void;
  /** A keepalive round trip. */
  ping(): Promise<void>;
}

/** Where a verified connect hint points: the cell's TCP listener and, if named, its web listener. */
export function hintEndpoint(h: ConnectHint): Endpoint {
  return { tcp: h.addr, ...(h.web && { web: `http://${h.web}` }) };
}

const isFinal = (err: unknown): boolean => err instanceof RemoteError && NO_RECONNECT_CODES.has(err.code);

export class Connection {
  /** The current connection (the client's `socket`: tests reach in to pause or cut it). */
  socket: FrameConnection | undefined;
  channel: SecureChannel | undefined;
  /** Where the current connection goes, with the cell's web address learnt from the welcome. */
  private endpoint: Endpoint | undefined;
  /** The transport that last worked: tried first next time. */
  working: TransportKind | undefined;
  /** Resolves close()'s wait for the connection to end. */
  private gone: (() => void) | undefined;
  private readonly dialers: Partial<Record<TransportKind, Dialer>>;
  private resumption: ResumptionState | undefined;
  closed = false;
  /** Reconnect attempts since the last session opened (0: none under way). */
  attempt = 0;
  private serverIndex = 0;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private keepalive: NodeJS.Timeout | undefined;
  welcome: WelcomePayload | undefined;
  /** Address of the cell currently connected to. */
  server: string | undefined;
  /** A verified hint for the next connect (from followHint() while offline, or a move that could not finish). */
  hint: ConnectHint | undefined;
  /** The cell of a connection that was lost: the first reconnect tries it. */
  private rejoin: Endpoint | undefined;
  /** The capabilities the current session negotiated (docs/protocol.md 4.7). */
  caps: ReadonlySet<string> = NO_CAPABILITIES;
  /** What the current session sends, once per turn. */
  private writer: FrameWriter | undefined;
  /** Sessions (by channel) that negotiated batches: their frames may hold several messages. */
  private readonly batching = new WeakSet<SecureChannel>();

  constructor(
    private readonly options: ClientOptions,
    private readonly owner: ConnectionOwner,
  ) {
    this.resumption = options.resumption;
    this.dialers = { ...defaultDialers(), ...options.dialers };
  }

  /** A hinted cell first, then the cell of a lost connection, then the configured cells in turn. */
  async connect(): Promise<WelcomePayload> {
    this.closed = false;
    let lastErr: unknown;
    const hint = this.hint && this.hint.expiresAt > Date.now() ? this.hint : undefined;
    this.hint = undefined;
    if (hint) {
      try {
        return await this.open(hintEndpoint(hint));
      } catch (err) {
        if (isFinal(err)) throw err;
        this.owner.emit('hintIgnored', err as Error); // the hinted cell is gone: any other will do
      }
    }
    // After a lost connection, the cell it was on first (gravitation put it there), once.
    const last = this.rejoin;
    this.rejoin = undefined;
    if (last) {
      try {
        return await this.open(last);
      } catch (err) {
        if (isFinal(err)) throw err;
      }
    }
    const servers = this.options.servers;
    for (let i = 0; i < servers.length; i++) {
      const server = toEndpoint(servers[(this.serverIndex + i) % servers.length]!);
      try {
        const w = await this.open(server);
        this.serverIndex = (this.serverIndex + i) % servers.length;
        return w;
      } catch (err) {
        lastErr = err;
        if (isFinal(err)) throw err;
      }
    }
    throw lastErr instanceof Error ? lastErr : new ClientError(ClientErrorCode.CONNECT_FAILED, 'no server could be reached');
  }

  /**
   * Opens a session with one cell, trying its transports in turn: the one that
   * worked last first, then the configured order. A transport that cannot connect
   * (a ClientError: refused, timed out, cut during the handshake) gives way to the
   * next; a coded refusal by the server (RemoteError) ends the attempt on this cell.
   */
  async open(server: Endpoint): Promise<WelcomePayload> {
    const order = this.options.transports ?? TRANSPORT_ORDER;
    const kinds = (this.working && order.includes(this.working) ? [this.working, ...order.filter((k) => k !== this.working)] : [...order]).filter((k) =>
      k === 'tcp' ? server.tcp !== undefined : server.web !== undefined,
    );
    let lastErr: unknown = new ClientError(ClientErrorCode.CONNECT_FAILED, `${endpointName(server)}: no configured transport reaches it`);
    for (const kind of kinds) {
      try {
        return await this.openWith(server, kind);
      } catch (err) {
        lastErr = err;
        if (!(err instanceof ClientError)) throw err;
      }
    }
    throw lastErr;
  }

  private async openWith(server: Endpoint, kind: TransportKind): Promise<WelcomePayload> {
    const hadTicket = this.resumption !== undefined;
    try {
      return await this.handshake(server, kind);
    } catch (err) {
      // handshake() has already dropped the ticket it sent, so test what we had before.
      if (err instanceof RemoteError && TICKET_REFUSED_CODES.has(err.code) && hadTicket) {
        this.setResumption(undefined); // a spent or stale ticket: fall back to a full handshake
        return this.handshake(server, kind);
      }
      throw err;
    }
  }

  private setResumption(r: ResumptionState | undefined): void {
    this.resumption = r;
    this.options.onResumption?.(r);
  }

  private handshake(server: Endpoint, kind: TransportKind): Promise<WelcomePayload> {
    const o = this.options;
    const name = endpointName(server);
    const dial = this.dialers[kind];
    if (!dial) return Promise.reject(new ClientError(ClientErrorCode.CONNECT_FAILED, `no ${kind} dialer in this build`));
    const resume = this.resumption && this.resumption.expiresAt > Date.now() ? this.resumption : undefined;
    const hs = new ClientHandshake({
      serverPublicKey: o.serverPublicKey,
      identity: o.identity,
      user: o.user,
      device: o.device,
      ...(o.registration !== undefined && { registration: o.registration }),
      ...(resume && { resume }),
      ...(o.capabilities && { offer: { capabilities: o.capabilities } }),
    });
    const timeoutMs = o.connectTimeoutMs ?? 10_000;
    return new Promise((resolve, reject) => {
      let conn: FrameConnection | undefined;
      let channel: SecureChannel | undefined;
      let done = false;
      const timer = setTimeout(() => fail(new ClientError(ClientErrorCode.CONNECT_TIMEOUT, `handshake with ${name} (${kind}) timed out`)), timeoutMs);
      const fail = (err: Error): void => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        conn?.destroy();
        reject(err);
      };
      const handlers: FrameHandlers = {
        onFrame: (body) => {
          try {
            if (channel) return this.owner.frame(channel, body as Buffer);
            const m = decodeServerHandshake(unpack(body));
            if (m.t === 'error') throw new RemoteError(m.code, m.message);
            if (m.t === 'cookie') return conn!.send(pack(hs.hello(m.c)));
            const r = hs.complete(m);
            channel = r.channel;
            conn!.send(channel.seal(pack(r.finish)));
            clearTimeout(timer);
            done = true;
            this.writer?.flush(); // what the session this one replaces (a move) still had to send
            this.writer = new FrameWriter(conn!, channel, r.negotiated.caps.has(Capability.BATCH));
            if (this.writer.batch) this.batching.add(channel);
            this.caps = r.negotiated.caps;
            this.socket = conn;
            this.channel = channel;
            this.server = name;
            // The welcome names the cell's web listener: a later rejoin can use it if TCP fails.
            this.endpoint = { ...server, ...(!server.web && r.welcome.wa && { web: `http://${r.welcome.wa}` }) };
            this.working = kind;
            this.welcome = r.welcome;
            this.attempt = 0;
            if (r.resumption) this.setResumption(r.resumption);
            this.owner.sessionOpened();
            this.startKeepalive();
            resolve(r.welcome);
            this.owner.emit('connected', r.welcome);
            this.owner.emit('transport', kind);
          } catch (err) {
            if (!done) return fail(err as Error);
            this.owner.emit('error', err as Error);
            if (err instanceof ProtocolError && err.fatal) conn?.destroy();
          }
        },
        onClose: (err) => (done ? this.onLost(conn!, err) : fail(new ClientError(ClientErrorCode.CONNECT_FAILED, `${name} (${kind}) closed the connection during the handshake${err ? `: ${err.message}` : ''}`, { cause: err }))),
      };
      dial(server, handlers, timeoutMs).then(
        (c) => {
          if (done) return c.destroy(); // timed out meanwhile
          conn = c;
          // Single use from the moment it is sent, whatever happens next; a server that
          // could not be reached never saw it, so it stays for the next one.
          if (resume) this.setResumption(undefined);
          c.send(pack(hs.hello()));
        },
        (err: Error) => fail(err instanceof ClientError || err instanceof RemoteError ? err : new ClientError(ClientErrorCode.CONNECT_FAILED, `cannot connect to ${name} (${kind}): ${err.message}`, { cause: err })),
      );
    });
  }

  private startKeepalive(): void {
    clearInterval(this.keepalive);
    const every = this.options.keepaliveMs ?? 30_000;
    if (every <= 0) return;
    this.keepalive = setInterval(() => {
      if (this.channel) this.owner.ping().catch(() => undefined); // a lost connection is handled by onLost
    }, every);
    this.keepalive.unref();
  }

  private onLost(socket: FrameConnection, err?: Error): void {
    if (socket !== this.socket) return;
    this.gone?.();
    this.gone = undefined;
    clearInterval(this.keepalive);
    this.owner.sessionLost();
    this.writer?.drop();
    this.writer = undefined;
    this.socket = undefined;
    this.channel = undefined;
    this.caps = NO_CAPABILITIES;
    this.rejoin = this.endpoint;
    this.owner.emit('disconnected', err);
    if (this.closed || this.options.reconnect === false) return this.owner.ended();
    this.scheduleReconnect();
  }

  private scheduleReconnect(): void {
    const base = Math.min(5000, 100 * 2 ** this.attempt++);
    const delay = base / 2 + Math.random() * (base / 2);
    this.serverIndex = (this.serverIndex + 1) % this.options.servers.length;
    this.reconnectTimer = setTimeout(() => {
      if (this.closed || this.channel) return; // closed, or a move connected us meanwhile
      this.connect().catch((err: Error) => {
        if (isFinal(err)) {
          this.closed = true;
          this.owner.emit('error', err);
          return this.owner.ended();
        }
        this.scheduleReconnect();
      });
    }, delay);
  }

  /** Sends one message on the current session (with `batch`: in this turn's frame); throws NOT_CONNECTED without one. */
  write(m: object): void {
    if (!this.socket || !this.channel || !this.writer) throw new ClientError(ClientErrorCode.NOT_CONNECTED, 'not connected');
    this.writer.write(m);
  }

  /** Whether frames on `channel` may be batches (its session negotiated `batch`). */
  batches(channel: SecureChannel): boolean {
    return this.batching.has(channel);
  }

  /** A session a move replaced: goodbye, then the close (cut after a second). */
  retire(socket: FrameConnection, channel: SecureChannel): void {
    try {
      socket.send(channel.seal(pack({ t: 'bye' })));
    } catch {
      // already gone
    }
    socket.close();
    setTimeout(() => socket.destroy(), 1000).unref();
  }

  /** The server's `bye` on `channel`: ignored from a session a move left; a final code ends reconnecting. */
  bye(channel: SecureChannel, { code, message }: Bye): void {
    // The cell we just left says goodbye (we replaced that session by moving): nothing to do.
    if (channel !== this.channel) return;
    if (code && NO_RECONNECT_CODES.has(code)) {
      this.closed = true;
      this.owner.emit('error', new RemoteError(code, message ?? 'server closed the session'));
    }
    this.socket?.close();
  }

  /** Says goodbye and waits (at most a second) for the connection to end; no reconnect follows. */
  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.reconnectTimer);
    clearInterval(this.keepalive);
    const socket = this.socket;
    if (socket && this.channel) {
      try {
        this.write({ t: 'bye' });
        this.writer?.flush();
      } catch {
        // already gone
      }
      await new Promise<void>((r) => {
        this.gone = r;
        socket.close();
        setTimeout(() => {
          socket.destroy();
          r();
        }, 1000).unref();
      });
    }
  }
}
