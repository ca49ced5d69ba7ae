import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { Counter, Gauge } from 'prom-client';
import type { Supervisor } from '../supervisor/supervisor.js';
import type { NodeConfig } from '../config/index.js';
import { createEngageApi } from './engage.js';
import { AdminError, AdminErrorCode, sendError } from './http.js';
import { isNodePath, nodeEarly, serveNode } from './routes-node.js';
import { SourceResolver } from '../transport/source.js';
import { isRefusal, SourceTable } from '../transport/source-limits.js';

export interface AdminServer {
  readonly server: Server;
  /** Stops listening, then closes the engagement API's NATS connection. */
  close(): Promise<void>;
}

/**
 * Admin HTTP: the node's routes (routes-node.ts: /healthz, /readyz, /metrics,
 * /admin/cells) and the engagement routes under /admin/ (engage.ts, always
 * authenticated), over the plumbing of http.ts.
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
      void handle(req, res).catch((err: Error) => sendError(res, new AdminError(500, AdminErrorCode.INTERNAL, err.message)));
    },
  );
  server.maxConnections = A.maxConnections;
  const refused = new Counter({
    name: 'gravitas_admin_connections_refused_total',
    help: 'Connections to the admin port closed at accept: over admin.maxConnections (total) or admin.maxConnectionsPerSource (source)',
    labelNames: ['reason'] as const,
    registers: [sup.registry],
  });
  // The same per-source table as the client listeners (transport/source-limits.ts); a prefix may hold them all.
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
    if (e) return sendError(res, e);
    res.writeContinue();
    server.emit('request', req, res);
  });

  /** What can be refused from the head alone, before any body byte is read or NATS is asked. */
  function early(req: IncomingMessage, url: URL): AdminError | undefined {
    return isNodePath(url.pathname) ? nodeEarly(req, url.pathname, config) : engage.early(req, url);
  }

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://admin');
    const e = early(req, url);
    if (e) return sendError(res, e);
    if (!isNodePath(url.pathname)) return engage.handle(req, res, url);
    return serveNode(req, res, url.pathname, config, sup);
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
