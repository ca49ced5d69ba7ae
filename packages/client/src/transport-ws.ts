import WebSocket from 'ws';
import { DEFAULT_MAX_FRAME_BYTES, ErrorCode, ProtocolError, RemoteError, isErrorCode } from '@gravitas/protocol';
import { ClientError, ClientErrorCode } from './errors.js';
import type { Dialer, FrameConnection, FrameHandlers, Pausable } from './transport.js';

/*
 * WebSocket in Node (the `ws` package): one binary message = one frame body
 * (docs/transports.md). The server closes with 1009 when a message is over its
 * frame limit, and with 4000 + the error code as reason after a coded error.
 */

/** ws(s)://host:port/<base>/gravitas for a web base URL such as http://127.0.0.1:7600. */
export function wsUrl(web: string): string {
  const u = new URL('gravitas', web.endsWith('/') ? web : `${web}/`);
  u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:';
  return u.toString();
}

/** The error a close code stands for (undefined for an orderly close). */
function closeError(code: number, reason: string): Error | undefined {
  if (code === 1000 || code === 1005) return undefined;
  if (code === 1009) return new ProtocolError(ErrorCode.FRAME_TOO_LARGE, 'WebSocket closed: message too big');
  if (code === 4000 && isErrorCode(reason)) return new RemoteError(reason, `WebSocket closed after ${reason}`);
  return new ClientError(ClientErrorCode.CONNECT_FAILED, `WebSocket closed (${code}${reason ? ` ${reason}` : ''})`);
}

class WsConnection implements FrameConnection, Pausable {
  readonly kind = 'ws' as const;
  private done = false;

  constructor(private readonly ws: WebSocket, private readonly h: FrameHandlers) {
    ws.on('message', (data, isBinary) => {
      if (this.done) return;
      if (!isBinary) {
        this.finish(new ProtocolError(ErrorCode.DECODE_FAILED, 'text message from the server'));
        return ws.terminate();
      }
      h.onFrame(data as Buffer);
    });
    ws.on('close', (code, reason) => this.finish(closeError(code, reason.toString())));
    ws.on('error', (err) => this.finish(err));
  }

  private finish(err?: Error): void {
    if (this.done) return;
    this.done = true;
    this.h.onClose(err);
  }

  get bufferedBytes(): number {
    return this.ws.bufferedAmount;
  }

  send(body: Uint8Array): void {
    if (!this.done && this.ws.readyState === WebSocket.OPEN) this.ws.send(body, { binary: true });
  }

  close(): void {
    if (this.ws.readyState === WebSocket.OPEN) this.ws.close(1000);
    setTimeout(() => this.ws.terminate(), 1000).unref();
  }

  destroy(): void {
    this.ws.terminate();
  }

  pause(): void {
    this.ws.pause();
  }

  resume(): void {
    this.ws.resume();
  }
}

export const wsDialer: Dialer = (endpoint, handlers, timeoutMs) =>
  new Promise((resolve, reject) => {
    if (!endpoint.web) return reject(new ClientError(ClientErrorCode.CONNECT_FAILED, 'the cell offers no web address'));
    const url = wsUrl(endpoint.web);
    const ws = new WebSocket(url, { maxPayload: DEFAULT_MAX_FRAME_BYTES, perMessageDeflate: false, handshakeTimeout: timeoutMs });
    let settled = false;
    const fail = (err: ClientError): void => {
      if (settled) return;
      settled = true;
      ws.removeAllListeners();
      ws.on('error', () => undefined);
      ws.terminate();
      reject(err);
    };
    ws.on('unexpected-response', (_req, res) => fail(new ClientError(ClientErrorCode.CONNECT_FAILED, `${url} answered HTTP ${res.statusCode}`)));
    ws.on('error', (err: Error) =>
      fail(new ClientError(/timeout/i.test(err.message) ? ClientErrorCode.CONNECT_TIMEOUT : ClientErrorCode.CONNECT_FAILED, `cannot open ${url}: ${err.message}`, { cause: err })),
    );
    ws.on('close', () => fail(new ClientError(ClientErrorCode.CONNECT_FAILED, `${url} closed before it opened`)));
    ws.once('open', () => {
      if (settled) return;
      settled = true;
      ws.removeAllListeners();
      resolve(new WsConnection(ws, handlers));
    });
  });
