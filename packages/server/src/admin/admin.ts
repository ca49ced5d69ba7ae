import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { timingSafeEqual } from 'node:crypto';
import type { Socket } from 'node:net';
import { Counter, Gauge } from 'prom-client';
import type { Supervisor } from '../supervisor/supervisor.js';
import type { NodeConfig } from '../config/index.js';
import { AdminError, bodyRefusal, createEngageApi } from './engage.js';
import { SourceResolver } from '../transport/source.js';
import { isRefusal, SourceTable } from '../transport/source-limits.js';

/** Stable codes of admin HTTP errors. */
export const AdminErrorCode = {
  NOT_FOUND: 'NOT_FOUND',
  METHOD_NOT_ALLOWED: 'METHOD_NOT_ALLOWED',
  UNAUTHORIZED: 'UNAUTHORIZED',
  BAD_REQUEST: 'BAD_REQUEST',
  INTERNAL: 'INTERNAL',
  // engagement routes (admin-engage.ts)
  FORBIDDEN: 'FORBIDDEN',
  CONFLICT: 'CONFLICT',
  PAYLOAD_TOO_LARGE: 'PAYLOAD_TOO_LARGE',
  UNSUPPORTED_MEDIA_TYPE: 'UNSUPPORTED_MEDIA_TYPE',
  UNAVAILABLE: 'UNAVAILABLE',
} as const;

/** Paths admin.ts serves itself; every other /admin/ path goes to the engagement router. */
const CORE_ADMIN_PATH = /^\/admin\/cells(\/\d+\/crash)?$/;

export interface AdminServer {
  readonly server: Server;
  /** Stops listening, then closes the engagement API's NATS connection. */
  close(): Promise<void>;
}

function json(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  // An answer before the body was read closes the connection: Node would otherwise read the rest to its end.
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), ...(!res.req.complete && { connection: 'close' }) });
  res.end(text);
}

function error(res: ServerResponse, status: number, code: string, message: string): void {
  json(res, status, { error: { code, message } });
}

function authorized(req: IncomingMessage, token: string | undefined): boolean {
  if (!token) return true;
  const got = Buffer.from(req.headers.authorization ?? '');
  const want = Buffer.from(`Bearer ${token}`);
  return got.length === want.length && timingSafeEqual(got, want);
}

/**
 * Admin HTTP: /healthz (the process is alive), /readyz (every cell listens and is
 * connected to NATS), /metrics (Prometheus), /admin/cells (JSON, token-protected
 * when admin.token is set), and the engagement routes under /admin/
 * (admin-engage.ts, always authenticated).
 *
 * Bounded like the client listeners (docs/operations.md, "Admin HTTP"): at most
 * admin.maxConnections open (Node closes more at accept) and
 * admin.maxConnectionsPerSource per client address; a head must be complete
 * within admin.headerTimeoutMs of the connection (or of the previous answer), a
 * request within admin.requestTimeoutMs, and an idle kept-alive connection goes
 * after admin.keepAliveTimeoutMs — checked every second at most, not on Node's 30 s
 * sweep. A request is judged on its head before its body is read: a wrong or
 * missing token, a chunked body or one over 1 KiB where none is taken, a
 * Content-Length over the route's maximum are answered at once and the connection
 * closed, the body unread (with `Expect: 100-continue` the client is told before
 * it sends it).
 */
export function startAdmin(config: NodeConfig, sup: Supervisor, log: (msg: string) => void = () => undefined): Promise<AdminServer> {
  const engage = createEngageApi(config, log);
  const A = config.admin;
  const server = createServer(
    {
      headersTimeout: A.headerTimeoutMs,
      requestTimeout: A.requestTimeoutMs,
      keepAliveTimeout: A.keepAliveTimeoutMs,
      // Node checks the two timeouts above on a sweep; the default sweep is every 30 s.
      connectionsCheckingInterval: Math.max(100, Math.min(1000, Math.floor(A.headerTimeoutMs / 4))),
      maxHeaderSize: 16 * 1024,
    },
    (req, res) => {
      void handle(req, res).catch((err: Error) => error(res, 500, AdminErrorCode.INTERNAL, err.message));
    },
  );
  server.maxConnections = A.maxConnections;
  const refused = new Counter({
    name: 'gravitas_admin_connections_refused_total',
    help: 'Connections to the admin port closed at accept: over admin.maxConnections (total) or admin.maxConnectionsPerSource (source)',
    labelNames: ['reason'] as const,
    registers: [sup.registry],
  });
  // The same per-source table as the client listeners (net/source-limits.ts); a prefix may hold them all.
  const sources = new SourceResolver([]);
  const perSource = new SourceTable('connections', { perSource: A.maxConnectionsPerSource, perPrefix: A.maxConnections });
  let open = 0;
  new Gauge({ name: 'gravitas_admin_connections', help: 'Open connections to the admin port', registers: [sup.registry], collect() {
    this.set(open);
  } });
  server.on('drop', () => refused.inc({ reason: 'total' }));
  server.on('connection', (socket: Socket) => {
    const slot = perSource.acquire(sources.peer(socket.remoteAddress));
    if (isRefusal(slot)) {
      refused.inc({ reason: 'source' });
      socket.destroy();
      return;
    }
    open++;
    socket.once('close', () => {
      open--;
      slot.release();
    });
  });
  // Expect: 100-continue — say no before the body is sent, or let it come.
  server.on('checkContinue', (req: IncomingMessage, res: ServerResponse) => {
    const e = early(req, new URL(req.url ?? '/', 'http://admin'));
    if (e) return error(res, e.status, e.code, e.message);
    res.writeContinue();
    server.emit('request', req, res);
  });

  /** What can be refused from the head alone, before any body byte is read or NATS is asked. */
  function early(req: IncomingMessage, url: URL): AdminError | undefined {
    const path = url.pathname;
    if (path.startsWith('/admin/') && !CORE_ADMIN_PATH.test(path)) return engage.early(req, url);
    if (path.startsWith('/admin/') && !authorized(req, config.admin.token)) return new AdminError(401, AdminErrorCode.UNAUTHORIZED, 'missing or wrong bearer token');
    // No endpoint here takes a body.
    return bodyRefusal(req, undefined, path);
  }

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://admin');
    const path = url.pathname;
    const get = req.method === 'GET' || req.method === 'HEAD';
    const e = early(req, url);
    if (e) return error(res, e.status, e.code, e.message);
    if (path.startsWith('/admin/') && !CORE_ADMIN_PATH.test(path)) return engage.handle(req, res, url);
    req.resume(); // a small body (early() refused a large one) is read off and ignored
    if (path === '/healthz') {
      if (!get) return error(res, 405, AdminErrorCode.METHOD_NOT_ALLOWED, 'use GET');
      return json(res, 200, { status: 'ok', node: config.nodeId });
    }
    if (path === '/readyz') {
      if (!get) return error(res, 405, AdminErrorCode.METHOD_NOT_ALLOWED, 'use GET');
      const ready = sup.ready();
      return json(res, ready ? 200 : 503, { ready, cells: sup.statuses().map((c) => ({ cell: c.cellId, ready: c.ready })) });
    }
    if (path === '/metrics') {
      if (!get) return error(res, 405, AdminErrorCode.METHOD_NOT_ALLOWED, 'use GET');
      const m = await sup.metrics();
      res.writeHead(200, { 'content-type': m.contentType });
      res.end(m.body);
      return;
    }
    if (path.startsWith('/admin/')) {
      if (path === '/admin/cells') {
        if (!get) return error(res, 405, AdminErrorCode.METHOD_NOT_ALLOWED, 'use GET');
        return json(res, 200, { node: config.nodeId, cells: sup.statuses() });
      }
      const crash = /^\/admin\/cells\/(\d+)\/crash$/.exec(path);
      if (crash && config.testHooks) {
        if (req.method !== 'POST') return error(res, 405, AdminErrorCode.METHOD_NOT_ALLOWED, 'use POST');
        if (!sup.send(Number(crash[1]), { type: 'crash' })) return error(res, 404, AdminErrorCode.NOT_FOUND, 'no such running cell');
        return json(res, 202, { crashing: Number(crash[1]) });
      }
    }
    return error(res, 404, AdminErrorCode.NOT_FOUND, `no endpoint ${path}`);
  }

  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(config.admin.port, config.admin.host, () => {
      server.off('error', reject);
      resolve({
        server,
        async close() {
          await new Promise<void>((r) => server.close(() => r()));
          await engage.close();
        },
      });
    });
  });
}
