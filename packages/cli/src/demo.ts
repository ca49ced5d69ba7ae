import { readFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/*
 * The demo chat page of `gravitas dev` (dev mode only): a small static server on
 * loopback for the page, the browser SDK bundle and /demo/config, which tells
 * the page where the cells' web listeners are and which server key to pin. It
 * serves a fixed set of files, nothing from the request path.
 */

/** What the page learns from GET /demo/config. */
export interface DemoConfig {
  /** Base URLs of the cells' web listeners (WebSocket and chunked HTTP). */
  web: string[];
  /** The dev cluster's server public key, base64url. */
  serverPublicKey: string;
}

export interface DemoServer {
  /** http://host:port/ of the page. */
  readonly url: string;
  close(): Promise<void>;
}

const DEMO_DIR = fileURLToPath(new URL('../demo/', import.meta.url));
// dist/index.js of @gravitas/client → dist/browser/ (built by packages/client/scripts/bundle.mjs).
const BUNDLE_DIR = join(dirname(createRequire(import.meta.url).resolve('@gravitas/client')), 'browser');

const FILES: Record<string, { path: string; type: string }> = {
  '/': { path: join(DEMO_DIR, 'index.html'), type: 'text/html; charset=utf-8' },
  '/demo.js': { path: join(DEMO_DIR, 'demo.js'), type: 'text/javascript; charset=utf-8' },
  '/gravitas.js': { path: join(BUNDLE_DIR, 'gravitas.js'), type: 'text/javascript; charset=utf-8' },
  '/gravitas.js.map': { path: join(BUNDLE_DIR, 'gravitas.js.map'), type: 'application/json' },
};

function reply(res: ServerResponse, status: number, type: string, body: string | Buffer): void {
  res.writeHead(status, { 'Content-Type': type, 'Content-Length': Buffer.byteLength(body), 'Cache-Control': 'no-store', 'X-Content-Type-Options': 'nosniff' });
  res.end(body);
}

async function handle(req: IncomingMessage, res: ServerResponse, config: () => DemoConfig): Promise<void> {
  if (req.method !== 'GET' && req.method !== 'HEAD') return reply(res, 405, 'text/plain', 'GET only\n');
  const path = new URL(req.url ?? '/', 'http://x').pathname;
  if (path === '/demo/config') return reply(res, 200, 'application/json', JSON.stringify(config()));
  const file = FILES[path === '/index.html' ? '/' : path];
  if (!file) return reply(res, 404, 'text/plain', 'not found\n');
  let body: Buffer;
  try {
    body = await readFile(file.path);
  } catch {
    const hint = path.startsWith('/gravitas.js') ? ' (the browser bundle is built by scripts/bootstrap.sh: run `npm start`, or `node packages/client/scripts/bundle.mjs` after `tsc -b`)' : '';
    return reply(res, 503, 'text/plain', `${path} is missing${hint}\n`);
  }
  reply(res, 200, file.type, body);
}

/** Starts the demo server; port 0 picks a free one. */
export function startDemoServer(o: { host: string; port: number; config: () => DemoConfig }): Promise<DemoServer> {
  const server = createServer((req, res) => {
    handle(req, res, o.config).catch((err: Error) => reply(res, 500, 'text/plain', `${err.message}\n`));
  });
  server.headersTimeout = 10_000;
  server.requestTimeout = 10_000;
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(o.port, o.host, () => {
      const { port } = server.address() as AddressInfo;
      resolve({
        url: `http://${o.host}:${port}/`,
        close: () =>
          new Promise<void>((r) => {
            server.closeAllConnections();
            server.close(() => r());
          }),
      });
    });
  });
}
