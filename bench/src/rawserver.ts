import { createServer, type Socket } from 'node:net';

/*
 * Child process for the idle-memory ceiling: a plain TCP server that accepts connections and
 * holds them, with the minimum a real server attaches (data/error listeners, no-delay). Prints
 * `ready <port>` on stdout. Exits when its stdin closes (the parent is gone) or on SIGTERM.
 */

const sockets = new Set<Socket>();
const server = createServer({ noDelay: true }, (s) => {
  sockets.add(s);
  s.on('data', () => undefined);
  s.on('error', () => undefined);
  s.on('close', () => sockets.delete(s));
});
server.listen(0, '127.0.0.1', () => {
  const a = server.address();
  process.stdout.write(`ready ${typeof a === 'object' && a ? a.port : 0}\n`);
});
const stop = (): void => {
  server.close();
  for (const s of sockets) s.destroy();
  process.exit(0);
};
process.stdin.on('end', stop);
process.stdin.on('close', stop);
process.stdin.resume();
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
