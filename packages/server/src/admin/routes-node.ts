import type { IncomingMessage, ServerResponse } from 'node:http';
import type { NodeConfig } from '../config/index.js';
import type { Supervisor } from '../supervisor/supervisor.js';
import { nodeAuthorized } from './auth.js';
import { AdminError, AdminErrorCode, bodyRefusal, sendError, sendJson } from './http.js';

/*
 * The node's own routes: /healthz (the process is alive), /readyz (every cell listens and is
 * connected to NATS), /metrics (Prometheus), /admin/cells (JSON, token-protected when
 * admin.token is set) and, with testHooks, POST /admin/cells/N/crash. None takes a body.
 * Every other /admin/ path is an engagement route (engage.ts).
 */

const NODE_ADMIN_PATH = /^\/admin\/cells(\/\d+\/crash)?$/;

/** Is `path` one of these routes (rather than an engagement route)? */
export const isNodePath = (path: string): boolean => !path.startsWith('/admin/') || NODE_ADMIN_PATH.test(path);

/** What can be refused from the head alone: a wrong token, or a body (none is taken here). */
export function nodeEarly(req: IncomingMessage, path: string, config: NodeConfig): AdminError | undefined {
  if (path.startsWith('/admin/') && !nodeAuthorized(req, config.admin.token)) return new AdminError(401, AdminErrorCode.UNAUTHORIZED, 'missing or wrong bearer token');
  return bodyRefusal(req, undefined, path);
}

const notGet = (res: ServerResponse): void => sendError(res, new AdminError(405, AdminErrorCode.METHOD_NOT_ALLOWED, 'use GET'));

/** Serves a request nodeEarly() let through. */
export async function serveNode(req: IncomingMessage, res: ServerResponse, path: string, config: NodeConfig, sup: Supervisor): Promise<void> {
  const get = req.method === 'GET' || req.method === 'HEAD';
  req.resume(); // a small body (nodeEarly() refused a large one) is read off and ignored
  if (path === '/healthz') {
    if (!get) return notGet(res);
    return sendJson(res, 200, { status: 'ok', node: config.nodeId });
  }
  if (path === '/readyz') {
    if (!get) return notGet(res);
    const ready = sup.ready();
    return sendJson(res, ready ? 200 : 503, { ready, cells: sup.statuses().map((c) => ({ cell: c.cellId, ready: c.ready })) });
  }
  if (path === '/metrics') {
    if (!get) return notGet(res);
    const m = await sup.metrics();
    res.writeHead(200, { 'content-type': m.contentType });
    res.end(m.body);
    return;
  }
  if (path === '/admin/cells') {
    if (!get) return notGet(res);
    return sendJson(res, 200, { node: config.nodeId, cells: sup.statuses() });
  }
  const crash = /^\/admin\/cells\/(\d+)\/crash$/.exec(path);
  if (crash && config.testHooks) {
    if (req.method !== 'POST') return sendError(res, new AdminError(405, AdminErrorCode.METHOD_NOT_ALLOWED, 'use POST'));
    if (!sup.send(Number(crash[1]), { type: 'crash' })) return sendError(res, new AdminError(404, AdminErrorCode.NOT_FOUND, 'no such running cell'));
    return sendJson(res, 202, { crashing: Number(crash[1]) });
  }
  return sendError(res, new AdminError(404, AdminErrorCode.NOT_FOUND, `no endpoint ${path}`));
}
