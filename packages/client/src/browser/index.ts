/*
 * The browser SDK: what pages import from the bundle (dist/browser/gravitas.js,
 * built by scripts/bundle.mjs). The Node SDK's GravitasClient over the browser
 * dialers: WebSocket, falling back to chunked HTTP (fetch). Storage is memory
 * only: no storagePath in a browser (docs/sdk.md#browser).
 */
import { GravitasClient } from '../client.js';
import type { ClientOptions } from '../types.js';
import { registerDialers, type TransportKind } from '../transport.js';
import { browserHttpDialer } from './http.js';
import { webBase } from './url.js';
import { browserWebSocketDialer } from './websocket.js';

// Defaults for every client made in this bundle, including ones made with `new GravitasClient`.
registerDialers({ ws: browserWebSocketDialer(), http: browserHttpDialer() });

export type BrowserTransport = Exclude<TransportKind, 'tcp'>;

export interface BrowserClientOptions extends Omit<ClientOptions, 'servers' | 'storagePath' | 'transports'> {
  /** The cells' web listeners, tried in turn: `host:port` or an http(s) base URL. */
  web: string[];
  /** Transports to try, in order (default ['ws', 'http']). Browsers have no TCP. */
  transports?: BrowserTransport[];
}

/** A client of the cluster for a page: WebSocket first, chunked HTTP where WebSocket fails. */
export function createBrowserClient(opts: BrowserClientOptions): GravitasClient {
  const { web, transports, ...rest } = opts;
  if (web.length === 0) throw new TypeError('createBrowserClient: `web` names no cell');
  return new GravitasClient({ ...rest, servers: web.map((w) => ({ web: webBase(w) })), transports: transports ?? ['ws', 'http'] });
}

export { GravitasClient, newMessageId } from '../client.js';
export type { ClientEvents, ClientOptions, SendResult, Settled, Target } from '../types.js';
export { ClientError, ClientErrorCode, DeliveryError, RemoteError } from '../errors.js';
export type { Dialer, Endpoint, FrameConnection, FrameHandlers, TransportKind } from '../transport.js';
export { browserWebSocketDialer, webSocketUrl, type WebSocketDialerOptions } from './websocket.js';
export { browserHttpDialer, type HttpDialerOptions } from './http.js';
export { generateKeyPair, keyPairFromSecret, toBase64Url, fromBase64Url, type KeyPair, type Msg, type Receipt, type WelcomePayload } from '@gravitas/protocol';
