import { createServer } from 'node:http';
import { parseArgs } from 'node:util';
import { createAdapter } from '@socket.io/redis-adapter';
import { createClient } from 'redis';
import { Server, type Socket } from 'socket.io';

/*
 * The Socket.IO peer of issue 17: a minimal chat server as its docs would have one written.
 * Several of these processes share one Redis through @socket.io/redis-adapter (the adapter's
 * README set-up with the `redis` package). A client says who it is in the handshake's `auth`
 * (`{ user }`) and joins its room `user:<id>`; a 1:1 message is an emit to the recipient's room,
 * so it reaches the recipient wherever it is connected. WebSocket transport only (no long-poll
 * upgrade), `perMessageDeflate` off (Socket.IO's default), no `bufferutil`; defaults otherwise.
 * At most once: there is no acknowledgement to the sender (PEERS.md).
 *
 * Events (client → server): `m`(to, id, body) a message; `p`(ack) a ping.
 * Events (server → client): `ready` once joined; `m`(from, id, body).
 *
 * Usage: node socketio-server.js --port P --redis redis://127.0.0.1:R   (prints "socketio ready P")
 */

const { values } = parseArgs({ options: { port: { type: 'string' }, host: { type: 'string', default: '127.0.0.1' }, redis: { type: 'string' } }, strict: true });
if (values.port === undefined || values.redis === undefined) {
  process.stderr.write('usage: socketio-server --port P --redis URL [--host H]\n');
  process.exit(2);
}

const pub = createClient({ url: values.redis });
const sub = pub.duplicate();
pub.on('error', (e: Error) => process.stderr.write(`redis pub: ${e.message}\n`));
sub.on('error', (e: Error) => process.stderr.write(`redis sub: ${e.message}\n`));
await Promise.all([pub.connect(), sub.connect()]);

const http = createServer();
const io = new Server(http, { transports: ['websocket'], perMessageDeflate: false, adapter: createAdapter(pub, sub) });

io.on('connection', (socket: Socket) => {
  const user = (socket.handshake.auth as { user?: unknown }).user;
  if (typeof user !== 'string' || user === '') {
    socket.disconnect(true);
    return;
  }
  void socket.join(`user:${user}`);
  socket.on('m', (to: unknown, id: unknown, body: unknown) => {
    if (typeof to !== 'string') return;
    io.to(`user:${to}`).emit('m', user, id, body);
  });
  socket.on('p', (ack: unknown) => {
    if (typeof ack === 'function') (ack as () => void)();
  });
  socket.emit('ready');
});

http.listen(Number(values.port), values.host, () => process.stdout.write(`socketio ready ${values.port}\n`));

const stop = (): void => {
  void io.close();
  void Promise.allSettled([pub.quit(), sub.quit()]).then(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
};
process.once('SIGTERM', stop);
process.once('SIGINT', stop);
