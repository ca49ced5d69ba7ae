import type { Socket } from 'node:net';
import { encodeFrame, FrameDecoder, type ErrorCode } from '@gravitas/protocol';
import type { ClientSource } from '../net/source.js';

/*
 * What a Session needs from a connection, whatever carries it: whole frame bodies
 * in and out, a measure of unsent bytes (SLOW_CONSUMER and the drain window),
 * pause/resume (the inbox's backpressure) and closing. TCP, WebSocket and chunked
 * HTTP (web-transports.ts) implement it; docs/transports.md has the wire formats.
 */

export type TransportKind = 'tcp' | 'ws' | 'http';

export interface TransportHandlers {
  /** One whole frame body, valid only during the call. An exception thrown here goes to `error`. */
  frame(body: Buffer): void;
  /** The peer finished sending, at a frame boundary. */
  end(): void;
  /** Unsent bytes were handed to the network: a writer waiting for room may go on. */
  drain(): void;
  /** A coded failure (framing, an HTTP cap) or an exception from `frame`: the session fails with it. */
  error(err: unknown): void;
  /** The connection is gone (reset, closed, destroyed). May follow any of the others. */
  close(): void;
}

export interface Transport {
  readonly kind: TransportKind;
  /**
   * The client this connection is charged to (net/source.ts): the peer, or the client a trusted
   * proxy reported. Per-source caps count it; handshake cookies are bound to its address.
   */
  readonly source: ClientSource;
  /** Bytes accepted by sendFrame and not yet taken by the kernel. */
  readonly bufferedBytes: number;
  /** Starts delivering events; called once, by the session. */
  bind(h: TransportHandlers): void;
  sendFrame(body: Uint8Array): void;
  /** Stop reading from the peer (TCP backpressure reaches it); resume undoes it. */
  pause(): void;
  resume(): void;
  /** Calls `onIdle` after `ms` without traffic in either direction. */
  setIdleTimeout(ms: number, onIdle: () => void): void;
  /** Orderly close once what was sent is flushed; `code` is the error that ended it, if any. */
  end(code?: ErrorCode): void;
  destroy(): void;
  /** Calls `cb` once the connection is gone (the cell counts connections by it). */
  onClosed(cb: () => void): void;
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
