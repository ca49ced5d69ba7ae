/**
 * The SDK's view of a transport: a connection that carries whole protocol frames
 * (bodies, without the 4-byte length prefix) both ways. TCP, WebSocket and chunked
 * HTTP all implement it, in Node and in the browser, so the session logic above
 * (handshake, sealing, outbox, resumption) is written once.
 */
export type TransportKind = 'tcp' | 'ws' | 'http';

/** The order the SDK tries transports in when one fails (docs/transports.md). */
export const TRANSPORT_ORDER: readonly TransportKind[] = ['tcp', 'ws', 'http'];

/** What a transport reports upward. Called at most once: onClose; never after it. */
export interface FrameHandlers {
  onFrame(body: Uint8Array): void;
  /** The connection ended; `err` if it failed (undefined for an orderly close). */
  onClose(err?: Error): void;
}

export interface FrameConnection {
  readonly kind: TransportKind;
  /** Sends one frame body. Never throws: a failed write surfaces as onClose(err). */
  send(body: Uint8Array): void;
  /** Bytes accepted by send() and not yet handed to the network. */
  readonly bufferedBytes: number;
  /** Orderly close: what was sent is flushed first. */
  close(): void;
  /** Immediate close. */
  destroy(): void;
}

/** Where one cell can be reached, per transport. A missing entry means not offered. */
export interface Endpoint {
  /** host:port of the cell's TCP listener. */
  tcp?: string;
  /** Base URL of the cell's web listener, e.g. http://127.0.0.1:7500 (WebSocket and chunked HTTP). */
  web?: string;
}

/**
 * Opens a connection of one kind to an endpoint; resolves once it can carry
 * frames (TCP connected, WebSocket open, HTTP downstream answered), rejects with
 * a ClientError (CONNECT_FAILED / CONNECT_TIMEOUT) otherwise.
 */
export type Dialer = (endpoint: Endpoint, handlers: FrameHandlers, timeoutMs: number) => Promise<FrameConnection>;

/*
 * Compatible additions (transports engineer): endpoint parsing and the registry
 * of default dialers. client.ts imports nothing node-only; the Node entry point
 * (index.ts) registers the Node dialers, a browser bundle registers its own, and
 * ClientOptions.dialers overrides either.
 */

/** Optional flow control of a connection (Node transports have it; the SDK uses it when present). */
export interface Pausable {
  pause(): void;
  resume(): void;
}

const defaults: Partial<Record<TransportKind, Dialer>> = {};

/** Sets the dialers clients use when their options name none (later calls override per kind). */
export function registerDialers(d: Partial<Record<TransportKind, Dialer>>): void {
  Object.assign(defaults, d);
}

export function defaultDialers(): Partial<Record<TransportKind, Dialer>> {
  return { ...defaults };
}

/**
 * An entry of ClientOptions.servers as an Endpoint: `host:port` is a TCP
 * listener; `ws://`, `wss://`, `http://` and `https://` URLs name a web listener
 * (the scheme does not restrict the transport: a web listener serves both).
 */
export function toEndpoint(s: string | Endpoint): Endpoint {
  if (typeof s !== 'string') return s;
  const m = /^(wss?|https?):\/\/(.+)$/.exec(s);
  if (!m) return { tcp: s };
  const secure = m[1] === 'wss' || m[1] === 'https';
  return { web: `${secure ? 'https' : 'http'}://${m[2]!.replace(/\/+$/, '')}` };
}

/** A readable name of an endpoint (for errors and `client.server`). */
export function endpointName(e: Endpoint): string {
  return e.tcp ?? e.web ?? '(no address)';
}

/** host:port → [host, port]; IPv6 hosts may be bracketed. */
export function splitHostPort(s: string): [string, string] {
  const i = s.lastIndexOf(':');
  if (i <= 0 || !/^\d+$/.test(s.slice(i + 1))) throw new TypeError(`"${s}" is not host:port`);
  return [s.slice(0, i).replace(/^\[|\]$/g, ''), s.slice(i + 1)];
}
