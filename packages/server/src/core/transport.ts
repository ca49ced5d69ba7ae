import type { ErrorCode } from '@gravitas/protocol';

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
  /** Several frames in order, handed to the kernel in one write where the transport can (a turn's output). */
  sendFrames(bodies: readonly Uint8Array[]): void;
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

/** The client a connection is charged to. */
export interface ClientSource {
  /** Canonical address: IPv4 dotted, IPv6 lower-case compressed (IPv4-mapped IPv6 becomes IPv4). */
  readonly ip: string;
  /** The address's network: IPv4 /24 (`a.b.c.0/24`), IPv6 /64 (`x:x:x:x::/64`). */
  readonly prefix: string;
  /** `peer`: the socket's own peer; `proxy`: reported by a trusted proxy. */
  readonly via: 'peer' | 'proxy';
}
