import { createServer, type Server, type Socket } from 'node:net';
import { encodeFrame, encodeFrames, ErrorCode, FrameDecoder, pack, ProtocolError, type ErrorCode as Code } from '@gravitas/protocol';
import type { NodeConfig } from '../config/index.js';
import { readProxyHeader } from './proxy-protocol.js';
import { isRefusal, REFUSAL_SLACK, type SourceCharge, type SourceLimits } from './source-limits.js';
import { sourceOf, type ClientSource, type SourceResolver } from './source.js';
import type { CellMetrics } from '../infra/metrics.js';
import type { Transport, TransportHandlers } from '../core/transport.js';

/*
 * Admission of a connection to a cell's TCP listener: find its source (the
 * peer, or — from a trusted proxy only — the client named by the PROXY header
 * that must open the connection), then check the cell's and the source's caps
 * before anything is decoded. A refusal is one plaintext error frame and a close.
 */

/** What the TCP admission needs from its cell. */
export interface TcpHost {
  readonly config: NodeConfig;
  readonly metrics: CellMetrics;
  readonly draining: boolean;
  readonly sources: SourceResolver;
  readonly sourceLimits: SourceLimits;
  canAccept(): boolean;
  /** Starts a session; `handshake` is the source's handshake slot, released when the session opens or closes. */
  adopt(t: Transport, handshake: SourceCharge): void;
}

/** Ends a TCP connection with a plaintext error frame; a peer that does not read loses it after 1 s. */
export function refuseTcp(host: TcpHost, socket: Socket, code: Code, message: string): void {
  if (socket.destroyed) return;
  host.metrics.protocolErrors.inc({ code });
  socket.end(encodeFrame(pack({ t: 'error', code, message })));
  setTimeout(() => socket.destroy(), 1000).unref();
}

export function acceptTcp(host: TcpHost, socket: Socket): void {
  socket.on('error', () => undefined); // a reset: 'close' follows, whoever owns the socket by then
  const peer = host.sources.peer(socket.remoteAddress);
  if (host.sources.isTrusted(peer.ip)) readPreamble(host, socket, peer);
  else admit(host, socket, peer);
}

/** Takes the cell's and the source's slots and starts the session, or refuses. */
function admit(host: TcpHost, socket: Socket, source: ClientSource): void {
  if (!host.canAccept()) return refuseTcp(host, socket, ErrorCode.BUSY, host.draining ? 'server is shutting down' : 'cell is at its connection limit');
  const conn = host.sourceLimits.take('connections', source);
  if (isRefusal(conn)) return refuseTcp(host, socket, ErrorCode.SOURCE_LIMIT, conn.message);
  const hs = host.sourceLimits.take('handshakes', source);
  if (isRefusal(hs)) {
    conn.release();
    return refuseTcp(host, socket, ErrorCode.SOURCE_LIMIT, hs.message);
  }
  socket.once('close', conn.release);
  host.adopt(new TcpTransport(socket, host.config.limits.maxFrameBytes, source), hs);
}

/**
 * A trusted proxy's connection: its PROXY header (v1 or v2) must come first, whole
 * within the handshake timeout. The bytes after it are the client's, handed on
 * unread to the session.
 */
function readPreamble(host: TcpHost, socket: Socket, peer: ClientSource): void {
  let buf: Buffer = Buffer.alloc(0);
  const done = (): void => {
    clearTimeout(timer);
    socket.off('data', onData);
    socket.off('end', onEnd);
    socket.off('close', done);
  };
  const bad = (err: ProtocolError): void => {
    done();
    refuseTcp(host, socket, err.code, err.message);
  };
  const timer = setTimeout(() => bad(new ProtocolError(ErrorCode.BAD_PROXY_HEADER, `no PROXY protocol header within ${host.config.limits.handshakeTimeoutMs} ms`)), host.config.limits.handshakeTimeoutMs);
  timer.unref();
  const onEnd = (): void => bad(new ProtocolError(ErrorCode.BAD_PROXY_HEADER, 'the connection ended before its PROXY protocol header'));
  const onData = (chunk: Buffer): void => {
    buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk]);
    let h: ReturnType<typeof readProxyHeader>;
    try {
      h = readProxyHeader(buf);
    } catch (err) {
      return bad(err as ProtocolError);
    }
    if (!h.done) return;
    done();
    // Hold the client's first bytes back until the session listens for them.
    socket.pause();
    if (h.used < buf.length) socket.unshift(buf.subarray(h.used));
    admit(host, socket, h.ip ? sourceOf(h.ip, 'proxy') : peer);
    socket.resume();
  };
  socket.on('data', onData);
  socket.on('end', onEnd);
  socket.once('close', done);
}

/** The original transport: a TCP socket carrying 4-byte length-prefixed frames. */
export class TcpTransport implements Transport {
  readonly kind = 'tcp';
  private readonly decoder: FrameDecoder;

  constructor(readonly socket: Socket, maxFrameBytes: number, readonly source: ClientSource) {
    this.decoder = new FrameDecoder(maxFrameBytes);
    socket.setNoDelay(true);
  }

  get bufferedBytes(): number {
    return this.socket.writableLength;
  }

  bind(h: TransportHandlers): void {
    const socket = this.socket;
    socket.on('data', (chunk) => {
      try {
        this.decoder.push(chunk, h.frame);
      } catch (err) {
        h.error(err);
      }
    });
    socket.on('end', () => {
      try {
        this.decoder.end();
      } catch (err) {
        return h.error(err);
      }
      h.end();
    });
    socket.on('drain', h.drain);
    socket.on('error', h.close);
    socket.on('close', h.close);
  }

  sendFrame(body: Uint8Array): void {
    this.socket.write(encodeFrame(body));
  }

  sendFrames(bodies: readonly Uint8Array[]): void {
    if (!this.socket.writable) return; // closed under us: what is left is custody's to store
    this.socket.write(encodeFrames(bodies));
  }

  pause(): void {
    this.socket.pause();
  }

  resume(): void {
    this.socket.resume();
  }

  setIdleTimeout(ms: number, onIdle: () => void): void {
    this.socket.setTimeout(ms, onIdle);
  }

  end(): void {
    this.socket.end();
  }

  destroy(): void {
    this.socket.destroy();
  }

  onClosed(cb: () => void): void {
    this.socket.once('close', cb);
  }
}

/** The cell's TCP listener: accepts, admits (acceptTcp) and keeps its port across generations of the cell. */
export class TcpListener {
  private readonly server: Server;

  constructor(private readonly host: TcpHost & { log(msg: string, err?: unknown): void }) {
    this.server = createServer({ allowHalfOpen: true, noDelay: true }, (socket) => acceptTcp(host, socket));
    // A hard bound on descriptors: beyond the cap plus room for coded refusals, Node closes at accept.
    this.server.maxConnections = host.config.limits.maxConnectionsPerCell + REFUSAL_SLACK;
  }

  /** Listens on `port` (0: any); resolves with the port taken. */
  listen(port: number, hostName: string): Promise<number> {
    const server = this.server;
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, hostName, () => {
        server.off('error', reject);
        server.on('error', (err) => this.host.log('listener error', err));
        const addr = server.address();
        resolve(typeof addr === 'object' && addr ? addr.port : 0);
      });
    });
  }

  get listening(): boolean {
    return this.server.listening;
  }

  close(): void {
    this.server.close();
  }
}
