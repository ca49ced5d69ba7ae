import type { Socket } from 'node:net';
import type { WebSocket } from 'ws';
import { ChannelError, encodeFrame, encodeFrames, ErrorCode, FrameDecoder, FramingError, ProtocolError, type ErrorCode as Code } from '@gravitas/protocol';
import type { ClientSource } from './source.js';
import type { Transport, TransportHandlers } from '../core/transport.js';

/*
 * The two web transports of a session (docs/transports.md). The web listener
 * (web-listener.ts) accepts the connections and hands them here.
 */

/** WebSocket close code for "closed after a coded error": the reason is the code. */
export const WS_CLOSE_CODED = 4000;

/** One binary WebSocket message = one frame body, no length prefix. */
export class WsTransport implements Transport {
  readonly kind = 'ws';

  constructor(private readonly ws: WebSocket, private readonly socket: Socket, readonly source: ClientSource, private readonly onOversize: () => void) {
    socket.setNoDelay(true);
  }

  get bufferedBytes(): number {
    // What ws holds (while a send is queued behind another) plus the socket's buffer.
    return this.ws.bufferedAmount;
  }

  bind(h: TransportHandlers): void {
    this.ws.on('message', (data, isBinary) => {
      try {
        if (!isBinary) throw new ProtocolError(ErrorCode.DECODE_FAILED, 'text message: frames travel as binary messages');
        h.frame(data as Buffer);
      } catch (err) {
        h.error(err);
      }
    });
    // ws closes a message over maxPayload itself (1009, "message too big") and then reports it here.
    this.ws.on('error', (err: Error & { code?: string }) => {
      if (err.code === 'WS_ERR_UNSUPPORTED_MESSAGE_LENGTH') this.onOversize();
      h.close();
    });
    this.ws.on('close', () => h.close());
    this.socket.on('drain', () => h.drain());
  }

  sendFrame(body: Uint8Array): void {
    this.ws.send(body, { binary: true });
  }

  /** One WebSocket message per frame (the format), written to the socket together: corked, one writev. */
  sendFrames(bodies: readonly Uint8Array[]): void {
    this.socket.cork();
    for (const b of bodies) this.ws.send(b, { binary: true });
    this.socket.uncork();
  }

  pause(): void {
    this.ws.pause();
  }

  resume(): void {
    this.ws.resume();
  }

  setIdleTimeout(ms: number, onIdle: () => void): void {
    this.socket.setTimeout(ms, onIdle);
  }

  end(code?: Code): void {
    if (code) this.ws.close(WS_CLOSE_CODED, code);
    else this.ws.close(1000);
  }

  destroy(): void {
    this.ws.terminate();
  }

  onClosed(cb: () => void): void {
    this.ws.once('close', cb);
  }
}

/**
 * The server's half of an upstream request while it is attached to a stream:
 * flow control and the answer once the stream goes away under it.
 */
export interface Upstream {
  pause(): void;
  resume(): void;
  /** The stream ended while this request was still sending. */
  abort(code: Code): void;
}

/**
 * Chunked HTTP: one long `GET /gravitas/down` carries the server's frames
 * (length-prefixed, one per chunk); successive `POST /gravitas/up` requests
 * (stream id in the X-Gravitas-Stream header) carry the client's frames, whole
 * frames in each request whatever the chunking. Only one upstream request is
 * attached at a time.
 *
 * One request, one verdict: anyone who learns a stream id can POST to it, so a
 * request whose bytes fail — bad framing, a truncated frame at its end, a frame
 * that fails the channel's authentication (a wrong MAC, or a counter other than
 * the next: a replay or a gap) — is refused on its own and its partial frame
 * dropped. The session is untouched: SecureChannel.open() changes no state when
 * it throws (the receive counter moves only on success), and every request
 * starts at a frame boundary, so the real client's next frame opens as if the
 * bad request had never come. Frames that authenticate are the client's own,
 * and what they carry is judged by the session as on any transport.
 */
export class HttpStreamTransport implements Transport {
  readonly kind = 'http';
  private decoder: FrameDecoder;
  private h: TransportHandlers | undefined;
  private up: Upstream | undefined;
  private paused = false;
  private closed = false;
  private ended = false;
  /** Set once an upstream request has come for this stream (it no longer counts as pending). */
  claimed = false;
  private idleMs = 0;
  private onIdle: (() => void) | undefined;
  private lastActive = Date.now();
  private idleTimer: NodeJS.Timeout | undefined;
  private readonly closeCallbacks: Array<() => void> = [];

  constructor(readonly sid: string, private readonly down: Socket, private readonly maxFrameBytes: number, readonly source: ClientSource) {
    this.decoder = new FrameDecoder(maxFrameBytes);
    down.setNoDelay(true);
    down.on('drain', () => this.h?.drain());
    down.on('close', () => this.finish());
    down.on('error', () => this.finish());
    // Nothing may follow the GET on its connection: the client only reads it.
    down.on('data', () => this.fail(new ProtocolError(ErrorCode.HTTP_BAD_REQUEST, 'bytes sent on the downstream connection')));
    down.on('end', () => this.finish());
  }

  get bufferedBytes(): number {
    return this.down.writableLength;
  }

  get hasUpstream(): boolean {
    return this.up !== undefined;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Its session ended it (the last chunk is written) or it closed: it takes no more upstream requests. */
  get isEnded(): boolean {
    return this.ended || this.closed;
  }

  bind(h: TransportHandlers): void {
    this.h = h;
  }

  /** Writes the first chunk: the stream id as a frame, which the client transport consumes. */
  sendPreamble(sidBytes: Uint8Array): void {
    this.writeChunk(encodeFrame(sidBytes));
  }

  sendFrame(body: Uint8Array): void {
    this.writeChunk(encodeFrame(body));
  }

  /** One chunk holding every frame (the client reads frames across chunk boundaries anyway). */
  sendFrames(bodies: readonly Uint8Array[]): void {
    this.writeChunk(encodeFrames(bodies));
  }

  /** One HTTP chunk: size line, data, CRLF, in one write. */
  private writeChunk(data: Uint8Array): void {
    if (this.ended || this.closed) return;
    this.touch();
    const down = this.down;
    down.cork();
    down.write(`${data.length.toString(16)}\r\n`);
    down.write(data);
    down.write('\r\n');
    down.uncork();
  }

  /** An upstream request for this stream begins; false if one is already attached. */
  attach(up: Upstream): boolean {
    if (this.up || this.closed) return false;
    this.up = up;
    this.claimed = true;
    if (this.paused) up.pause();
    return true;
  }

  detach(up: Upstream): void {
    if (this.up === up) this.up = undefined;
  }

  /**
   * Body bytes of the attached upstream request. Throws a FramingError or ChannelError that
   * refuses this request alone (the caller answers it); other failures end the session.
   */
  ingest(data: Uint8Array): void {
    if (this.closed || !this.h) return;
    this.touch();
    try {
      this.decoder.push(data, this.h.frame);
    } catch (err) {
      if (err instanceof FramingError || err instanceof ChannelError) throw err;
      this.h.error(err);
    }
  }

  /** The attached request's body is complete: it must have ended at a frame boundary. */
  endOfRequest(): void {
    if (this.decoder.pending > 0) throw new FramingError(ErrorCode.FRAME_TRUNCATED, `the upstream request ended inside a frame (${this.decoder.pending} bytes): each request carries whole frames`);
  }

  /** The attached request was refused or cut: what it left of a frame is dropped, the next starts afresh. */
  discardPartial(): void {
    if (this.decoder.pending > 0) this.decoder = new FrameDecoder(this.maxFrameBytes);
  }

  /** The downstream connection misbehaved (bytes after its GET): the session fails with `err`. */
  private fail(err: unknown): void {
    if (this.closed) return;
    if (this.h) this.h.error(err);
    else this.destroy();
  }

  pause(): void {
    this.paused = true;
    this.up?.pause();
  }

  resume(): void {
    this.paused = false;
    this.up?.resume();
  }

  setIdleTimeout(ms: number, onIdle: () => void): void {
    this.idleMs = ms;
    this.onIdle = onIdle;
    this.armIdle();
  }

  private touch(): void {
    this.lastActive = Date.now();
  }

  /** One timer per stream, re-armed lazily: activity only stamps a time. */
  private armIdle(): void {
    clearTimeout(this.idleTimer);
    if (this.closed || this.idleMs <= 0) return;
    const due = this.lastActive + this.idleMs - Date.now();
    this.idleTimer = setTimeout(() => {
      if (Date.now() - this.lastActive >= this.idleMs) this.onIdle?.();
      else this.armIdle();
    }, Math.max(due, 10));
    this.idleTimer.unref();
  }

  end(code?: Code): void {
    if (this.ended || this.closed) return;
    this.ended = true;
    // The last chunk ends the response; the connection then closes (the header said so).
    this.down.end('0\r\n\r\n');
    if (this.up) this.up.abort(code ?? ErrorCode.STREAM_UNKNOWN);
  }

  destroy(): void {
    this.down.destroy();
    this.finish();
  }

  onClosed(cb: () => void): void {
    if (this.closed) cb();
    else this.closeCallbacks.push(cb);
  }

  private finish(): void {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.idleTimer);
    if (this.up) this.up.abort(ErrorCode.STREAM_UNKNOWN);
    this.up = undefined;
    this.h?.close();
    for (const cb of this.closeCallbacks.splice(0)) cb();
  }
}
