/// <reference lib="dom" />
import { DEFAULT_MAX_FRAME_BYTES, isErrorCode, RemoteError } from '@gravitas/protocol';
import { ClientError, ClientErrorCode } from '../errors.js';
import type { Dialer, Endpoint, FrameConnection, FrameHandlers } from '../transport.js';
import { webUrl } from './url.js';

/*
 * WebSocket in a browser: one binary message is one frame body (no length
 * prefix; docs/transports.md). The browser API has no backpressure signal other
 * than bufferedAmount, which the SDK reads through bufferedBytes.
 */

/** Path of the WebSocket endpoint under a cell's web base URL. */
export const WS_PATH = 'gravitas';

/** ws(s)://host:port/<base path>/gravitas for a web address (host:port or an http(s) base URL). */
export function webSocketUrl(web: string): string {
  const u = webUrl(web, WS_PATH);
  u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:';
  return u.toString();
}

export interface WebSocketDialerOptions {
  /** Frames larger than this close the connection (default: the protocol's 64 KiB). */
  maxFrameBytes?: number;
  /** For tests: the constructor to use (default: globalThis.WebSocket). */
  WebSocket?: typeof WebSocket;
}

/** WebSocket close code of the web listener after a coded error; the reason is the code. */
const CLOSE_CODED = 4000;

function closeError(ev: CloseEvent): Error | undefined {
  if (ev.code === 1000) return undefined;
  if (ev.code === CLOSE_CODED && isErrorCode(ev.reason)) return new RemoteError(ev.reason, `WebSocket closed after ${ev.reason}`);
  return new ClientError(ClientErrorCode.CONNECT_FAILED, `WebSocket closed (${ev.code}${ev.reason ? ` ${ev.reason}` : ''})`);
}

class WebSocketFrameConnection implements FrameConnection {
  readonly kind = 'ws' as const;
  private ended = false;

  constructor(private readonly ws: WebSocket, private readonly handlers: FrameHandlers, private readonly maxFrameBytes: number) {
    ws.onmessage = (ev: MessageEvent) => this.onMessage(ev.data);
    ws.onerror = () => this.end(new ClientError(ClientErrorCode.CONNECT_FAILED, 'WebSocket failed'));
    ws.onclose = (ev: CloseEvent) => this.end(closeError(ev));
  }

  get bufferedBytes(): number {
    return this.ws.bufferedAmount;
  }

  send(body: Uint8Array): void {
    if (this.ended || this.ws.readyState !== WebSocket.OPEN) return; // onClose comes (or came)
    this.ws.send(body);
  }

  /** Data queued by send() goes out before the close frame (WebSocket API). */
  close(): void {
    if (this.ws.readyState === WebSocket.OPEN) this.ws.close(1000);
  }

  destroy(): void {
    this.ws.close();
    this.end();
  }

  private onMessage(data: unknown): void {
    if (this.ended) return;
    if (!(data instanceof ArrayBuffer)) return this.fail('a text message on the binary frame channel');
    if (data.byteLength > this.maxFrameBytes) return this.fail(`a frame of ${data.byteLength} bytes exceeds the limit of ${this.maxFrameBytes}`);
    this.handlers.onFrame(new Uint8Array(data));
  }

  private fail(why: string): void {
    this.ws.close(1002, 'protocol error');
    this.end(new ClientError(ClientErrorCode.CONNECT_FAILED, `WebSocket: ${why}`));
  }

  private end(err?: Error): void {
    if (this.ended) return;
    this.ended = true;
    this.ws.onmessage = this.ws.onerror = this.ws.onclose = null;
    this.handlers.onClose(err);
  }
}

/** A Dialer for the WebSocket endpoint of a cell's web listener. */
export function browserWebSocketDialer(opts: WebSocketDialerOptions = {}): Dialer {
  const Ctor = opts.WebSocket ?? globalThis.WebSocket;
  const maxFrameBytes = opts.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES;
  return (endpoint: Endpoint, handlers: FrameHandlers, timeoutMs: number) =>
    new Promise<FrameConnection>((resolve, reject) => {
      if (!endpoint.web) return reject(new ClientError(ClientErrorCode.CONNECT_FAILED, 'the cell offers no web address'));
      const url = webSocketUrl(endpoint.web);
      let ws: WebSocket;
      try {
        ws = new Ctor(url);
      } catch (err) {
        return reject(new ClientError(ClientErrorCode.CONNECT_FAILED, `cannot open ${url}: ${(err as Error).message}`, { cause: err }));
      }
      ws.binaryType = 'arraybuffer';
      const settle = (err?: ClientError): void => {
        clearTimeout(timer);
        ws.onopen = ws.onerror = ws.onclose = null;
        if (!err) return resolve(new WebSocketFrameConnection(ws, handlers, maxFrameBytes));
        ws.close();
        reject(err);
      };
      const timer = setTimeout(() => settle(new ClientError(ClientErrorCode.CONNECT_TIMEOUT, `WebSocket ${url} did not open in ${timeoutMs} ms`)), timeoutMs);
      ws.onopen = () => settle();
      // The browser hides why a WebSocket failed (no status, no message): say where.
      ws.onerror = () => settle(new ClientError(ClientErrorCode.CONNECT_FAILED, `cannot open WebSocket ${url}`));
      ws.onclose = (ev) => settle(new ClientError(ClientErrorCode.CONNECT_FAILED, `WebSocket ${url} closed before it opened (${ev.code})`));
    });
}
