import { request as httpRequest, type ClientRequest, type IncomingMessage, type RequestOptions } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { encodeFrame, FrameDecoder, HTTP_STREAM_HEADER, HTTP_UP_ROTATE_BYTES, HTTP_UP_ROTATE_FRAMES, isErrorCode, RemoteError } from '@gravitas/protocol';
import { ClientError, ClientErrorCode } from './errors.js';
import type { Dialer, FrameConnection, FrameHandlers, Pausable } from './transport.js';

/*
 * Chunked HTTP in Node (docs/transports.md). Downstream: one long
 * `GET /gravitas/down`, whose body is length-prefixed frames, the first one the
 * 16-byte stream id. Upstream: one long `POST /gravitas/up` naming the stream in
 * its `X-Gravitas-Stream` header (never the URL: proxies log URLs), with
 * `Transfer-Encoding: chunked`, one frame per chunk; each request ends at a frame boundary. The POST is ended and a new
 * one started (never two at once: the server takes one upstream per stream) after
 * UP_ROTATE_FRAMES frames or UP_ROTATE_BYTES bytes, well inside the server's caps
 * on chunks and body size. Both requests use their own connection (agent: false):
 * a pooled socket would be shared, and would outlive the stream.
 */

export const UP_ROTATE_FRAMES = HTTP_UP_ROTATE_FRAMES;
export const UP_ROTATE_BYTES = HTTP_UP_ROTATE_BYTES;
/** Frames queued while the upstream rotates, at most (bytes); beyond it the connection fails. */
export const UP_MAX_QUEUED_BYTES = 8 * 1024 * 1024;
const SID_BYTES = 16;

function send(url: URL, o: RequestOptions): ClientRequest {
  return (url.protocol === 'https:' ? httpsRequest : httpRequest)(url, { ...o, agent: false });
}

/** The coded error a refusal carries in its JSON body, or a ClientError. */
function refusal(res: IncomingMessage, body: string, what: string): Error {
  try {
    const o = JSON.parse(body) as { code?: unknown; message?: unknown };
    if (isErrorCode(o.code)) return new RemoteError(o.code, `${what}: HTTP ${res.statusCode} ${String(o.message ?? '')}`);
  } catch {
    // not JSON
  }
  return new ClientError(ClientErrorCode.CONNECT_FAILED, `${what}: HTTP ${res.statusCode}`);
}

function readBody(res: IncomingMessage, cb: (body: string) => void): void {
  let body = '';
  res.setEncoding('utf8');
  res.on('data', (c: string) => {
    if (body.length < 4096) body += c;
  });
  res.on('end', () => cb(body));
  res.on('error', () => cb(body));
}

class HttpConnection implements FrameConnection, Pausable {
  readonly kind = 'http' as const;
  private up: ClientRequest | undefined;
  private upFrames = 0;
  private upBytes = 0;
  /** The previous POST was ended and its answer is awaited: frames wait in `queue`. */
  private rotating = false;
  private queue: Buffer[] = [];
  private queued = 0;
  private closing = false;
  private done = false;

  constructor(
    private readonly upUrl: URL,
    private readonly sid: string,
    private readonly downReq: ClientRequest,
    private readonly down: IncomingMessage,
    private readonly h: FrameHandlers,
  ) {
    this.openUp();
  }

  /** A downstream frame after the stream id. */
  frame(body: Buffer): void {
    if (!this.done) this.h.onFrame(body);
  }

  private openUp(): void {
    const req = send(this.upUrl, { method: 'POST', headers: { 'content-type': 'application/octet-stream', 'transfer-encoding': 'chunked', [HTTP_STREAM_HEADER]: this.sid } });
    this.up = req;
    this.upFrames = this.upBytes = 0;
    req.flushHeaders();
    req.on('response', (res) =>
      readBody(res, (body) => {
        if (this.done) return;
        if (res.statusCode !== 204) return this.fail(refusal(res, body, 'upstream refused'));
        if (req !== this.up || !this.rotating) return;
        // The ended POST was taken whole: the next one carries what waited meanwhile.
        this.rotating = false;
        if (this.closing) return;
        this.openUp();
        const q = this.queue;
        this.queue = [];
        this.queued = 0;
        for (const f of q) this.write(f);
      }),
    );
    req.on('error', (err) => this.fail(new ClientError(ClientErrorCode.CONNECT_FAILED, `upstream failed: ${err.message}`, { cause: err })));
  }

  get bufferedBytes(): number {
    return this.queued + (this.up?.writableLength ?? 0) + (this.up?.socket?.writableLength ?? 0);
  }

  send(body: Uint8Array): void {
    if (this.done || this.closing) return;
    this.write(encodeFrame(body));
  }

  private write(frame: Buffer): void {
    if (this.rotating || !this.up) {
      this.queued += frame.length;
      if (this.queued > UP_MAX_QUEUED_BYTES) return this.fail(new ClientError(ClientErrorCode.CONNECT_FAILED, 'upstream queue full'));
      this.queue.push(frame);
      return;
    }
    // Node writes each write of a chunked request as one chunk.
    this.up.write(frame);
    this.upFrames++;
    this.upBytes += frame.length;
    if (this.upFrames >= UP_ROTATE_FRAMES || this.upBytes >= UP_ROTATE_BYTES) {
      this.rotating = true;
      this.up.end();
    }
  }

  /** The server ended the downstream. */
  downEnded(err?: Error): void {
    this.finish(err);
  }

  private fail(err: Error): void {
    this.finish(err);
  }

  private finish(err?: Error): void {
    if (this.done) return;
    this.done = true;
    this.up?.destroy();
    this.downReq.destroy();
    this.h.onClose(err);
  }

  /** Ends the upstream (what was written goes first); the server then ends the downstream. */
  close(): void {
    if (this.done) return;
    this.closing = true;
    if (!this.rotating) this.up?.end();
    setTimeout(() => this.finish(), 1000).unref();
  }

  destroy(): void {
    this.finish();
  }

  pause(): void {
    this.down.pause();
  }

  resume(): void {
    this.down.resume();
  }
}

export const httpDialer: Dialer = (endpoint, handlers, timeoutMs) =>
  new Promise((resolve, reject) => {
    if (!endpoint.web) return reject(new ClientError(ClientErrorCode.CONNECT_FAILED, 'the cell offers no web address'));
    const base = endpoint.web.endsWith('/') ? endpoint.web : `${endpoint.web}/`;
    const downUrl = new URL('gravitas/down', base);
    const upUrl = new URL('gravitas/up', base);
    let conn: HttpConnection | undefined;
    let settled = false;
    const fail = (err: Error): void => {
      if (settled) return conn?.downEnded(err);
      settled = true;
      clearTimeout(timer);
      req.destroy();
      reject(err);
    };
    const req = send(downUrl, { method: 'GET', headers: { accept: 'application/octet-stream' } });
    const timer = setTimeout(() => fail(new ClientError(ClientErrorCode.CONNECT_TIMEOUT, `${downUrl} did not answer in ${timeoutMs} ms`)), timeoutMs);
    req.on('error', (err) => fail(new ClientError(ClientErrorCode.CONNECT_FAILED, `cannot reach ${downUrl}: ${err.message}`, { cause: err })));
    req.on('response', (res) => {
      if (res.statusCode !== 200) return readBody(res, (body) => fail(refusal(res, body, String(downUrl))));
      const decoder = new FrameDecoder();
      res.on('data', (chunk: Buffer) => {
        try {
          decoder.push(chunk, (body) => {
            if (conn) return conn.frame(body);
            if (body.length !== SID_BYTES) throw new ClientError(ClientErrorCode.CONNECT_FAILED, `${downUrl}: a stream id of ${body.length} bytes`);
            conn = new HttpConnection(upUrl, body.toString('hex'), req, res, handlers);
            settled = true;
            clearTimeout(timer);
            resolve(conn);
          });
        } catch (err) {
          fail(err as Error);
        }
      });
      res.on('end', () => (conn ? conn.downEnded() : fail(new ClientError(ClientErrorCode.CONNECT_FAILED, `${downUrl} ended before it named its stream`))));
      res.on('error', (err) => fail(err));
      res.on('close', () => (conn ? conn.downEnded() : fail(new ClientError(ClientErrorCode.CONNECT_FAILED, `${downUrl} closed before it named its stream`))));
    });
    req.end();
  });
