import { randomBytes } from 'node:crypto';
import { createServer as createHttpServer, STATUS_CODES, type IncomingMessage, type Server as HttpServer } from 'node:http';
import { createServer, type Server, type Socket } from 'node:net';
import { WebSocketServer } from 'ws';
import { ChannelError, ErrorCode, FramingError, HTTP_STREAM_HEADER, type ErrorCode as Code } from '@gravitas/protocol';
import type { NodeConfig } from '../config/index.js';
import { isRefusal, REFUSAL_SLACK, type SourceCharge, type SourceLimits, type SourceRefusal } from './source-limits.js';
import type { ClientSource, SourceResolver } from './source.js';
import { ChunkedDecoder, DEFAULT_CHUNK_LINE_BYTES, DEFAULT_TRAILER_BYTES, HttpError } from './chunked.js';
import { LengthReader, parseHead, type RequestHead } from './http-head.js';
import type { CellMetrics } from '../infra/metrics.js';
import type { Transport } from '../core/transport.js';
import { HttpStreamTransport, WsTransport, type Upstream } from './web-transports.js';

/*
 * The web listener of a cell: one port serving WebSocket and chunked HTTP
 * (docs/transports.md, docs/decisions.md §14). It reads every request head
 * itself, within a byte and a time budget, and then
 *   - POST /gravitas/up: reads the body itself (chunked.ts or Content-Length),
 *     because Node's parser neither shows chunk boundaries nor bounds them;
 *   - GET /gravitas/down, OPTIONS, errors: answers on the raw socket;
 *   - a WebSocket upgrade of /gravitas: hands the socket, with the bytes read so
 *     far, to a Node http.Server whose 'upgrade' goes to `ws`.
 * An upstream request may be followed by another on the same connection
 * (keep-alive); everything else closes its connection when done.
 *
 * Sources (net/source.ts): a raw connection from an untrusted peer is charged
 * to the peer's address at accept. From a trusted proxy, each WebSocket or
 * downstream request is charged to the client its X-Forwarded-For names (the
 * proxy's own sockets are the proxy's to bound).
 */

export const PATH_WS = '/gravitas';
export const PATH_DOWN = '/gravitas/down';
export const PATH_UP = '/gravitas/up';
/** The stream id's header (the protocol's HTTP_STREAM_HEADER); the downstream also sends the id as its first frame. */
export const STREAM_HEADER = HTTP_STREAM_HEADER;
const STREAM_HEADER_LC = STREAM_HEADER.toLowerCase();

/** What the listener needs from its cell. */
export interface WebHost {
  readonly config: NodeConfig;
  readonly metrics: CellMetrics;
  readonly draining: boolean;
  readonly sources: SourceResolver;
  readonly sourceLimits: SourceLimits;
  log(msg: string, err?: unknown): void;
  /** Room for one more session connection. */
  canAccept(): boolean;
  /** Starts a session on an accepted transport; `handshake`: its source's slot until the session opens. */
  adopt(t: Transport, handshake: SourceCharge): void;
}

/** What the listener knows of a raw connection from its accept. */
interface Peer {
  source: ClientSource;
  trusted: boolean;
  /** A connection slot is held for this socket (at accept, or once a proxied request named its client). */
  charged: boolean;
}

/** A WebSocket request that passed the checks, waiting for the http.Server's 'upgrade'. */
interface PendingUpgrade {
  source: ClientSource;
  handshake: SourceCharge;
}

const SID_RE = /^[0-9a-f]{32}$/;

export class WebListener {
  private readonly server: Server;
  private readonly http: HttpServer;
  private readonly wss: WebSocketServer;
  /** Open streams by id; bounded by the cell's connection limit. */
  private readonly streams = new Map<string, HttpStreamTransport>();
  /** Streams no upstream request has claimed yet, with their source's slot: bounded by web.maxPendingStreams. */
  private readonly pending = new Map<string, SourceCharge>();
  private readonly peers = new WeakMap<Socket, Peer>();
  private readonly upgrades = new WeakMap<Socket, PendingUpgrade>();
  /** Connections waiting for a request head (closed at drain). */
  private readonly idle = new Set<Socket>();
  private connections = 0;
  port = 0;

  constructor(private readonly host: WebHost) {
    const { web, limits } = host.config;
    this.server = createServer({ noDelay: true }, (socket) => this.accept(socket));
    // A hard bound on descriptors: beyond the cap plus room for coded refusals, Node closes at accept.
    this.server.maxConnections = web.maxConnections + REFUSAL_SLACK;
    this.server.on('error', (err) => host.log('web listener error', err));
    // Only WebSocket upgrades get here, their head already checked by readHead.
    this.http = createHttpServer({ maxHeaderSize: web.maxHeaderBytes, headersTimeout: web.headerTimeoutMs, requestTimeout: web.headerTimeoutMs });
    this.http.on('request', (_req, res) => {
      res.writeHead(400, { 'content-type': 'application/json', connection: 'close' });
      res.end(JSON.stringify({ code: ErrorCode.HTTP_BAD_REQUEST, message: 'expected a WebSocket upgrade' }));
    });
    this.http.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => this.upgrade(req, socket, head));
    this.http.on('clientError', (_err, socket: Socket) => this.refuse(socket, 400, ErrorCode.HTTP_BAD_REQUEST, 'malformed request'));
    this.wss = new WebSocketServer({ noServer: true, maxPayload: limits.maxFrameBytes, perMessageDeflate: false, clientTracking: false });
  }

  listen(port: number, hostName: string): Promise<number> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, hostName, () => {
        this.server.off('error', reject);
        const a = this.server.address();
        this.port = typeof a === 'object' && a ? a.port : 0;
        resolve(this.port);
      });
    });
  }

  get listening(): boolean {
    return this.server.listening;
  }

  /** Stops accepting; connections without a session are closed (sessions are ended by the cell). */
  close(): void {
    this.server.close();
    for (const s of this.idle) s.destroy();
    this.idle.clear();
  }

  private accept(socket: Socket): void {
    socket.on('error', () => undefined); // a reset: 'close' follows, whoever owns the socket now
    // Raw connections are bounded too: each web session uses one or two, plus keep-alive ones.
    if (this.connections >= this.host.config.web.maxConnections) {
      return this.refuse(socket, 503, ErrorCode.BUSY, 'cell is at its connection limit');
    }
    const source = this.host.sources.peer(socket.remoteAddress);
    const trusted = this.host.sources.isTrusted(source.ip);
    if (!trusted) {
      const conn = this.host.sourceLimits.take('connections', source);
      if (isRefusal(conn)) return this.refuseSource(socket, conn);
      socket.once('close', conn.release);
    }
    this.peers.set(socket, { source, trusted, charged: !trusted });
    this.connections++;
    socket.once('close', () => this.connections--);
    this.readHead(socket, Buffer.alloc(0), false);
  }

  /** The client of a request: the peer, or from a trusted proxy the one its X-Forwarded-For names. */
  private sourceOf(socket: Socket, req: RequestHead): ClientSource {
    const p = this.peers.get(socket)!;
    return p.trusted ? this.host.sources.forwarded(p.source, req.headers.get('x-forwarded-for')) : p.source;
  }

  /**
   * Slots for a request that starts a session (WebSocket, downstream): a connection slot
   * if a proxied request has none yet, and a handshake slot. Both go with the socket.
   */
  private admitSession(socket: Socket, source: ClientSource): SourceCharge | SourceRefusal {
    const p = this.peers.get(socket)!;
    let conn: SourceCharge | undefined;
    if (!p.charged) {
      const c = this.host.sourceLimits.take('connections', source);
      if (isRefusal(c)) return c;
      conn = c;
      p.charged = true;
      socket.once('close', c.release);
    }
    const hs = this.host.sourceLimits.take('handshakes', source);
    if (isRefusal(hs)) {
      conn?.release();
      return hs;
    }
    socket.once('close', hs.release); // if the session never starts; the cell releases it when it opens
    return hs;
  }

  private refuseSource(socket: Socket, r: SourceRefusal, req?: RequestHead): void {
    this.refuse(socket, 429, ErrorCode.SOURCE_LIMIT, r.message, req);
  }

  /** Reads one request head within web.maxHeaderBytes and web.headerTimeoutMs, then routes it. */
  private readHead(socket: Socket, initial: Buffer, reused: boolean): void {
    const { maxHeaderBytes, headerTimeoutMs } = this.host.config.web;
    let buf = initial;
    this.idle.add(socket);
    const cleanup = (): void => {
      clearTimeout(timer);
      this.idle.delete(socket);
      socket.off('data', onData);
      socket.off('end', onGone);
      socket.off('close', onGone);
    };
    const timer = setTimeout(() => {
      cleanup();
      // An idle keep-alive connection just goes; a head begun and not finished is slowloris.
      if (reused && buf.length === 0) socket.destroy();
      else this.refuse(socket, 408, ErrorCode.REQUEST_TIMEOUT, `request head not complete within ${headerTimeoutMs} ms`);
    }, headerTimeoutMs);
    timer.unref();
    const onGone = (): void => {
      cleanup();
      socket.destroy();
    };
    const check = (): void => {
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0 ? buf.length > maxHeaderBytes : end + 4 > maxHeaderBytes) {
        cleanup();
        return this.refuse(socket, 431, ErrorCode.HEADERS_TOO_LARGE, `request head larger than ${maxHeaderBytes} bytes`);
      }
      if (end < 0) return;
      cleanup();
      let req: RequestHead;
      try {
        req = parseHead(buf.subarray(0, end));
      } catch (err) {
        const he = err as HttpError;
        return this.refuse(socket, he.status, he.code, he.message);
      }
      this.route(socket, req, buf, buf.subarray(end + 4));
    };
    const onData = (chunk: Buffer): void => {
      buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk]);
      check();
    };
    socket.on('data', onData);
    socket.on('end', onGone);
    socket.on('close', onGone);
    if (buf.length > 0) check();
  }

  private route(socket: Socket, req: RequestHead, all: Buffer, rest: Buffer): void {
    const { path, method } = req;
    if (method === 'OPTIONS' && (path === PATH_WS || path === PATH_DOWN || path === PATH_UP)) return this.preflight(socket, req, rest);
    if (path === PATH_UP) {
      if (method === 'POST') return this.upstream(socket, req, rest);
      return this.refuse(socket, 405, ErrorCode.HTTP_METHOD_NOT_ALLOWED, `${method} is not allowed on ${path}`, req, { allow: 'POST, OPTIONS' });
    }
    if (path === PATH_DOWN) {
      if (method === 'GET') return this.downstream(socket, req, rest);
      return this.refuse(socket, 405, ErrorCode.HTTP_METHOD_NOT_ALLOWED, `${method} is not allowed on ${path}`, req, { allow: 'GET, OPTIONS' });
    }
    if (path === PATH_WS) {
      if (method !== 'GET') return this.refuse(socket, 405, ErrorCode.HTTP_METHOD_NOT_ALLOWED, `${method} is not allowed on ${path}`, req, { allow: 'GET, OPTIONS' });
      if (req.headers.get('upgrade')?.toLowerCase() !== 'websocket') return this.refuse(socket, 400, ErrorCode.HTTP_BAD_REQUEST, 'expected a WebSocket upgrade', req);
      // Browsers do not apply CORS to WebSockets: the server checks the origin itself.
      const origin = req.headers.get('origin');
      if (origin !== undefined && !this.originAllowed(origin)) return this.refuse(socket, 403, ErrorCode.NOT_ALLOWED, 'origin not allowed', req);
      const source = this.sourceOf(socket, req);
      const handshake = this.admitSession(socket, source);
      if (isRefusal(handshake)) return this.refuseSource(socket, handshake, req);
      this.upgrades.set(socket, { source, handshake });
      // Hand over, unread: the http.Server parses the same head again and emits 'upgrade'.
      socket.pause();
      socket.unshift(all);
      this.http.emit('connection', socket);
      socket.resume();
      return;
    }
    this.refuse(socket, 404, ErrorCode.HTTP_NOT_FOUND, `no such path: ${path}`, req);
  }

  private originAllowed(origin: string): boolean {
    const list = this.host.config.web.corsOrigins;
    return list.includes('*') || list.includes(origin);
  }

  /** CORS response headers for a request (none for an origin not allowed: the browser then refuses). */
  private cors(req: RequestHead | undefined): string {
    const origin = req?.headers.get('origin');
    const list = this.host.config.web.corsOrigins;
    let allow: string | undefined;
    if (origin === undefined) allow = list.includes('*') ? '*' : undefined;
    else if (this.originAllowed(origin)) allow = list.includes('*') ? '*' : origin;
    if (!allow) return '';
    return `Access-Control-Allow-Origin: ${allow}\r\nAccess-Control-Expose-Headers: ${STREAM_HEADER}\r\nVary: Origin\r\n`;
  }

  private preflight(socket: Socket, req: RequestHead, rest: Buffer): void {
    const extra = this.cors(req)
      ? `Access-Control-Allow-Methods: GET, POST, OPTIONS\r\nAccess-Control-Allow-Headers: content-type, ${STREAM_HEADER_LC}\r\nAccess-Control-Max-Age: 600\r\n`
      : '';
    const close = this.wantsClose(req);
    socket.write(`HTTP/1.1 204 No Content\r\n${this.cors(req)}${extra}Cache-Control: no-store\r\n${close ? 'Connection: close\r\n' : ''}\r\n`);
    if (close) return this.endSoon(socket);
    this.readHead(socket, rest, true);
  }

  private wantsClose(req: RequestHead): boolean {
    const c = req.headers.get('connection')?.toLowerCase() ?? '';
    return req.minor === 0 ? !c.includes('keep-alive') : c.includes('close');
  }

  /** Answers with a coded JSON error and closes the connection. */
  private refuse(socket: Socket, status: number, code: Code, message: string, req?: RequestHead, headers: Record<string, string> = {}): void {
    if (socket.destroyed) return;
    this.host.metrics.protocolErrors.inc({ code });
    const body = JSON.stringify({ code, message });
    let head = `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? 'Error'}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nCache-Control: no-store\r\n${this.cors(req)}`;
    for (const [k, v] of Object.entries(headers)) head += `${k}: ${v}\r\n`;
    socket.write(`${head}Connection: close\r\n\r\n${body}`);
    this.endSoon(socket);
  }

  private endSoon(socket: Socket): void {
    socket.end();
    // A peer that does not read must not hold the descriptor.
    setTimeout(() => socket.destroy(), 1000).unref();
  }

  // ---- chunked HTTP -------------------------------------------------------------

  private downstream(socket: Socket, req: RequestHead, rest: Buffer): void {
    if (rest.length > 0 || req.headers.has('content-length') || req.headers.has('transfer-encoding')) {
      return this.refuse(socket, 400, ErrorCode.HTTP_BAD_REQUEST, 'the downstream request takes no body', req);
    }
    if (this.host.draining) return this.refuse(socket, 503, ErrorCode.SHUTTING_DOWN, 'server is shutting down', req);
    if (!this.host.canAccept()) return this.refuse(socket, 503, ErrorCode.BUSY, 'cell is at its connection limit', req);
    if (this.pending.size >= this.host.config.web.maxPendingStreams) return this.refuse(socket, 503, ErrorCode.STREAM_BUSY, 'too many streams wait for their upstream', req);
    const source = this.sourceOf(socket, req);
    // One source cannot hold the cell's downstream slots: its own pending streams are capped first.
    const waiting = this.host.sourceLimits.take('streams', source);
    if (isRefusal(waiting)) return this.refuseSource(socket, waiting, req);
    const handshake = this.admitSession(socket, source);
    if (isRefusal(handshake)) {
      waiting.release();
      return this.refuseSource(socket, handshake, req);
    }
    const id = randomBytes(16);
    const sid = id.toString('hex');
    const stream = new HttpStreamTransport(sid, socket, this.host.config.limits.maxFrameBytes, source);
    this.streams.set(sid, stream);
    this.pending.set(sid, waiting);
    stream.onClosed(() => {
      this.streams.delete(sid);
      this.claimed(sid);
    });
    socket.write(
      'HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\nCache-Control: no-store\r\n' +
        `X-Accel-Buffering: no\r\n${STREAM_HEADER}: ${sid}\r\n${this.cors(req)}Connection: close\r\n\r\n`,
    );
    // The id also comes as the first frame: it reaches the client even through a proxy that drops headers.
    stream.sendPreamble(id);
    this.host.adopt(stream, handshake);
  }

  /** The stream is no longer pending (an upstream claimed it, or it closed): its source's slot is free. */
  private claimed(sid: string): void {
    this.pending.get(sid)?.release();
    this.pending.delete(sid);
  }

  private upstream(socket: Socket, req: RequestHead, rest: Buffer): void {
    const { web, limits } = this.host.config;
    const sid = req.headers.get(STREAM_HEADER_LC) ?? '';
    if (!sid && req.query.has('sid')) return this.refuse(socket, 400, ErrorCode.HTTP_BAD_REQUEST, `the stream id goes in the ${STREAM_HEADER} request header, not in the URL`, req);
    const stream = SID_RE.test(sid) ? this.streams.get(sid) : undefined;
    if (!stream || stream.isEnded) return this.refuse(socket, 404, ErrorCode.STREAM_UNKNOWN, 'no such stream on this cell', req);
    const te = req.headers.get('transfer-encoding');
    const cl = req.headers.get('content-length');
    let reader: ChunkedDecoder | LengthReader;
    if (te !== undefined) {
      if (cl !== undefined) return this.refuse(socket, 400, ErrorCode.HTTP_BAD_REQUEST, 'both Transfer-Encoding and Content-Length', req);
      if (te.toLowerCase() !== 'chunked') return this.refuse(socket, 400, ErrorCode.HTTP_BAD_REQUEST, 'only the chunked transfer coding is accepted', req);
      reader = new ChunkedDecoder({ maxChunkBytes: web.maxChunkBytes, maxChunks: web.maxChunksPerRequest, maxBodyBytes: web.maxBodyBytes, maxLineBytes: DEFAULT_CHUNK_LINE_BYTES, maxTrailerBytes: DEFAULT_TRAILER_BYTES });
    } else if (cl !== undefined) {
      if (!/^\d{1,15}$/.test(cl)) return this.refuse(socket, 400, ErrorCode.HTTP_BAD_REQUEST, 'malformed Content-Length', req);
      if (Number(cl) > web.maxBodyBytes) return this.refuse(socket, 413, ErrorCode.BODY_TOO_LARGE, `request body larger than ${web.maxBodyBytes} bytes`, req);
      reader = new LengthReader(Number(cl));
    } else {
      return this.refuse(socket, 411, ErrorCode.HTTP_BAD_REQUEST, 'the upstream needs a chunked body or a Content-Length', req);
    }
    let over = false;
    const finish = (): void => {
      over = true;
      socket.off('data', feed);
      socket.off('end', aborted);
      socket.off('close', aborted);
      socket.setTimeout(0);
      stream.detach(up);
    };
    const up: Upstream = {
      pause: () => socket.pause(),
      resume: () => socket.resume(),
      abort: (code) => {
        if (over) return;
        finish();
        this.refuse(socket, 410, code, 'the stream has ended', req);
      },
    };
    // A failure of this request's bytes (a cap, bad framing, frames that fail authentication, an
    // abort) refuses this request alone: the session is untouched (docs/transports.md, "One request,
    // one verdict"). Whoever sent it learns why; a real client's SDK then ends its own stream.
    const fail = (err: HttpError | FramingError | ChannelError): void => {
      if (over) return;
      finish();
      stream.discardPartial();
      this.refuse(socket, err instanceof HttpError ? err.status : err.code === ErrorCode.FRAME_TOO_LARGE ? 413 : 400, err.code, err.message, req);
    };
    const aborted = (): void => {
      if (over) return;
      finish();
      stream.discardPartial();
      socket.destroy();
    };
    const feed = (buf: Buffer): void => {
      let used: number;
      try {
        used = reader.push(buf, (d) => stream.ingest(d));
        if (reader.done && !over) stream.endOfRequest();
      } catch (err) {
        return fail(err as HttpError | FramingError | ChannelError);
      }
      if (over || !reader.done) return;
      finish();
      const close = this.wantsClose(req);
      socket.write(`HTTP/1.1 204 No Content\r\n${this.cors(req)}Cache-Control: no-store\r\n${close ? 'Connection: close\r\n' : ''}\r\n`);
      if (close) return this.endSoon(socket);
      socket.resume(); // it may have been paused by the stream's backpressure
      this.readHead(socket, buf.subarray(used), true);
    };
    if (!stream.attach(up)) return this.refuse(socket, 409, ErrorCode.STREAM_BUSY, 'another upstream request is running for this stream', req);
    this.claimed(sid);
    if (req.headers.get('expect')?.toLowerCase() === '100-continue') socket.write('HTTP/1.1 100 Continue\r\n\r\n');
    socket.setTimeout(limits.idleTimeoutMs, () => fail(new HttpError(408, ErrorCode.REQUEST_TIMEOUT, `upstream request silent for ${limits.idleTimeoutMs} ms`)));
    socket.on('data', feed);
    socket.on('end', aborted);
    socket.on('close', aborted);
    feed(rest);
  }

  // ---- WebSocket ----------------------------------------------------------------

  private upgrade(req: IncomingMessage, socket: Socket, head: Buffer): void {
    const admitted = this.upgrades.get(socket);
    this.upgrades.delete(socket);
    // Slots taken in route() go with the socket: a refusal here closes it, and its close frees them.
    if (!admitted) return this.refuse(socket, 400, ErrorCode.HTTP_BAD_REQUEST, 'malformed request');
    if (this.host.draining) return this.refuse(socket, 503, ErrorCode.SHUTTING_DOWN, 'server is shutting down');
    if (!this.host.canAccept()) return this.refuse(socket, 503, ErrorCode.BUSY, 'cell is at its connection limit');
    this.wss.handleUpgrade(req, socket, head, (ws) => {
      this.host.adopt(new WsTransport(ws, socket, admitted.source, () => this.host.metrics.protocolErrors.inc({ code: ErrorCode.FRAME_TOO_LARGE })), admitted.handshake);
    });
  }
}
