/// <reference lib="dom" />
import { DEFAULT_MAX_FRAME_BYTES, encodeFrame, FrameDecoder, HTTP_STREAM_HEADER, isErrorCode, RemoteError } from '@gravitas/protocol';
import { ClientError, ClientErrorCode } from '../errors.js';
import type { Dialer, Endpoint, FrameConnection, FrameHandlers } from '../transport.js';
import { webUrl } from './url.js';

/*
 * Chunked HTTP in a browser, for networks that let no WebSocket through
 * (docs/transports.md). Downstream: one long `GET /gravitas/down` whose body is
 * length-prefixed frames, the first carrying the stream id. Upstream: short
 * `POST /gravitas/up` requests with a Content-Length, since browsers cannot
 * stream a request body over HTTP/1.1, naming the stream in their
 * `X-Gravitas-Stream` header (never the URL: proxies log URLs). Frames queued
 * while a POST is in flight go together in the next one: whole frames, in order,
 * one request at a time (the server attaches one upstream request per stream).
 */

export const HTTP_DOWN_PATH = 'gravitas/down';
export const HTTP_UP_PATH = 'gravitas/up';
/** Upstream bytes waiting for a POST at most, by default; beyond it the connection fails. */
export const DEFAULT_MAX_UPSTREAM_BYTES = 1024 * 1024;
/** The stream id the downstream announces in its first frame: 16 random bytes, hex in the upstream's header. */
const SID_BYTES = 16;

export interface HttpDialerOptions {
  /** Frames larger than this close the connection (default: the protocol's 64 KiB). */
  maxFrameBytes?: number;
  /** Upstream bytes queued at most (default 1 MiB): a bounded queue, not an unbounded buffer. */
  maxUpstreamBytes?: number;
  /** For tests: the fetch to use (default: globalThis.fetch). */
  fetch?: typeof fetch;
}

const lost = (why: string, cause?: unknown): ClientError => new ClientError(ClientErrorCode.CONNECT_FAILED, `chunked HTTP: ${why}`, cause === undefined ? undefined : { cause });

/** A refusal of the web listener: its JSON body names a protocol error code (RemoteError), or nothing we know. */
async function refusal(res: Response, what: string): Promise<Error> {
  const text = await res.text().catch(() => '');
  try {
    const o = JSON.parse(text) as { code?: unknown; message?: unknown };
    if (isErrorCode(o.code)) return new RemoteError(o.code, `${what}: HTTP ${res.status} ${String(o.message ?? '')}`);
  } catch {
    // not JSON
  }
  return lost(`${what}: HTTP ${res.status}`);
}

class HttpFrameConnection implements FrameConnection {
  readonly kind = 'http' as const;
  private queue: Uint8Array[] = [];
  private queued = 0;
  private inFlight = 0;
  private closing = false;
  private ended = false;

  constructor(
    private readonly upUrl: string,
    private readonly sid: string,
    private readonly handlers: FrameHandlers,
    private readonly abort: AbortController,
    private readonly fetchFn: typeof fetch,
    private readonly maxUpstreamBytes: number,
  ) {}

  get bufferedBytes(): number {
    return this.queued + this.inFlight;
  }

  send(body: Uint8Array): void {
    if (this.ended || this.closing) return;
    const framed = encodeFrame(body);
    if (this.queued + framed.length > this.maxUpstreamBytes) return this.end(lost(`more than ${this.maxUpstreamBytes} bytes wait to go upstream`));
    this.queue.push(framed);
    this.queued += framed.length;
    this.pump();
  }

  /** Sends what is queued, then ends the downstream (the server closes the session). */
  close(): void {
    this.closing = true;
    if (this.queued === 0 && this.inFlight === 0) this.end();
  }

  destroy(): void {
    this.end();
  }

  /** Runs the downstream: frames after the stream id, until the response ends. */
  async read(reader: ReadableStreamDefaultReader<Uint8Array>, decoder: FrameDecoder): Promise<void> {
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (this.ended) return;
        if (done) {
          decoder.end();
          return this.end();
        }
        decoder.push(value, (body) => {
          if (!this.ended) this.handlers.onFrame(body);
        });
      }
    } catch (err) {
      this.end(err instanceof ClientError ? err : lost('the downstream failed', err));
    }
  }

  private pump(): void {
    if (this.inFlight > 0 || this.queued === 0 || this.ended) return;
    const batch = concat(this.queue, this.queued);
    this.queue = [];
    this.inFlight = batch.length;
    this.queued = 0;
    // The stream header makes a cross-origin POST preflighted; the preflight is cached (600 s) per
    // URL, and the URL is the same for every stream of the cell, so it costs one OPTIONS per 10 min.
    this.fetchFn(this.upUrl, { method: 'POST', body: batch, headers: { [HTTP_STREAM_HEADER]: this.sid }, cache: 'no-store', credentials: 'omit', signal: this.abort.signal }).then(
      async (res) => {
        if (!res.ok) return this.end(await refusal(res, 'upstream'));
        await res.arrayBuffer().catch(() => undefined); // let the browser reuse the connection
        this.inFlight = 0;
        if (this.closing && this.queued === 0) return this.end();
        this.pump();
      },
      (err: unknown) => this.end(lost('upstream request failed', err)),
    );
  }

  private end(err?: Error): void {
    if (this.ended) return;
    this.ended = true;
    this.queue = [];
    this.queued = this.inFlight = 0;
    this.abort.abort(); // ends the downstream GET: the server sees its connection close
    this.handlers.onClose(err);
  }
}

/** One request body (a fresh ArrayBuffer, as fetch wants it). */
function concat(parts: Uint8Array[], total: number): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(total);
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

/** A Dialer for the chunked-HTTP endpoints of a cell's web listener. */
export function browserHttpDialer(opts: HttpDialerOptions = {}): Dialer {
  const fetchFn = opts.fetch ?? globalThis.fetch.bind(globalThis);
  const maxFrameBytes = opts.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES;
  const maxUpstreamBytes = opts.maxUpstreamBytes ?? DEFAULT_MAX_UPSTREAM_BYTES;
  return async (endpoint: Endpoint, handlers: FrameHandlers, timeoutMs: number): Promise<FrameConnection> => {
    if (!endpoint.web) throw new ClientError(ClientErrorCode.CONNECT_FAILED, 'the cell offers no web address');
    const downUrl = webUrl(endpoint.web, HTTP_DOWN_PATH);
    const abort = new AbortController();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      abort.abort();
    }, timeoutMs);
    const decoder = new FrameDecoder(maxFrameBytes);
    try {
      const res = await fetchFn(downUrl, { cache: 'no-store', credentials: 'omit', signal: abort.signal });
      if (!res.ok) throw await refusal(res, downUrl.toString());
      if (!res.body) throw lost(`${downUrl}: no response body`);
      const reader = res.body.getReader();
      // The first frame is the stream id; the server sends nothing else before our hello.
      let sid: string | undefined;
      while (sid === undefined) {
        const { done, value } = await reader.read();
        if (done) throw lost(`${downUrl} ended before it named its stream`);
        decoder.push(value, (body) => {
          if (sid !== undefined) throw lost('a frame before the first flight');
          if (body.length !== SID_BYTES) throw lost(`a stream id of ${body.length} bytes`);
          sid = Array.from(body, (b) => b.toString(16).padStart(2, '0')).join('');
        });
      }
      clearTimeout(timer);
      const up = webUrl(endpoint.web, HTTP_UP_PATH);
      const conn = new HttpFrameConnection(up.toString(), sid, handlers, abort, fetchFn, maxUpstreamBytes);
      void conn.read(reader, decoder);
      return conn;
    } catch (err) {
      clearTimeout(timer);
      abort.abort();
      if (timedOut) throw new ClientError(ClientErrorCode.CONNECT_TIMEOUT, `${downUrl} did not answer in ${timeoutMs} ms`);
      if (err instanceof ClientError || err instanceof RemoteError) throw err;
      throw lost(`cannot reach ${downUrl}: ${(err as Error).message}`, err);
    }
  };
}
