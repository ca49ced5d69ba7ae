import { connect, type Socket } from 'node:net';
import { encodeFrame, FrameDecoder } from '@gravitas/protocol';
import { ClientError, ClientErrorCode } from './errors.js';
import { splitHostPort, type Dialer, type FrameConnection, type FrameHandlers, type Pausable } from './transport.js';

/* TCP in Node: 4-byte length-prefixed frames (docs/protocol.md §1). */

class TcpConnection implements FrameConnection, Pausable {
  readonly kind = 'tcp' as const;
  private done = false;

  constructor(readonly socket: Socket, private readonly h: FrameHandlers) {
    const decoder = new FrameDecoder();
    socket.on('data', (chunk) => {
      try {
        decoder.push(chunk, (body) => {
          if (!this.done) h.onFrame(body);
        });
      } catch (err) {
        this.finish(err as Error); // FRAME_TOO_LARGE: the stream cannot be read on
        socket.destroy();
      }
    });
    socket.on('error', (err) => this.finish(err));
    socket.on('close', () => this.finish());
  }

  private finish(err?: Error): void {
    if (this.done) return;
    this.done = true;
    this.h.onClose(err);
  }

  get bufferedBytes(): number {
    return this.socket.writableLength;
  }

  send(body: Uint8Array): void {
    if (!this.done) this.socket.write(encodeFrame(body));
  }

  close(): void {
    this.socket.end();
    setTimeout(() => this.socket.destroy(), 1000).unref();
  }

  destroy(): void {
    this.socket.destroy();
  }

  pause(): void {
    this.socket.pause();
  }

  resume(): void {
    this.socket.resume();
  }
}

export const tcpDialer: Dialer = (endpoint, handlers, timeoutMs) =>
  new Promise((resolve, reject) => {
    if (!endpoint.tcp) return reject(new ClientError(ClientErrorCode.CONNECT_FAILED, 'the cell offers no TCP address'));
    const addr = endpoint.tcp;
    const [host, port] = splitHostPort(addr);
    const socket = connect({ host, port: Number(port), noDelay: true });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new ClientError(ClientErrorCode.CONNECT_TIMEOUT, `cannot connect to ${addr}: timed out`));
    }, timeoutMs);
    const failed = (err: Error): void => {
      clearTimeout(timer);
      reject(new ClientError(ClientErrorCode.CONNECT_FAILED, `cannot connect to ${addr}: ${err.message}`, { cause: err }));
    };
    socket.once('error', failed);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.off('error', failed);
      resolve(new TcpConnection(socket, handlers));
    });
  });
