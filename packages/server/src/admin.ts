import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { timingSafeEqual } from 'node:crypto';
import type { Supervisor } from './supervisor.js';
import type { NodeConfig } from './config.js';
import { createEngageApi } from './admin-engage.js';

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
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
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
 */
export function startAdmin(config: NodeConfig, sup: Supervisor, log: (msg: string) => void = () => undefined): Promise<AdminServer> {
  const engage = createEngageApi(config, log);
  const server = createServer((req, res) => {
    void handle(req, res).catch((err: Error) => error(res, 500, AdminErrorCode.INTERNAL, err.message));
  });
  server.headersTimeout = 10_000;
  server.requestTimeout = 15_000;

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://admin');
    const path = url.pathname;
    const get = req.method === 'GET' || req.method === 'HEAD';
    if (path.startsWith('/admin/') && !CORE_ADMIN_PATH.test(path)) return engage.handle(req, res, url);
    req.resume(); // no endpoint here takes a body; drain whatever was sent
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
      if (!authorized(req, config.admin.token)) return error(res, 401, AdminErrorCode.UNAUTHORIZED, 'missing or wrong bearer token');
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
