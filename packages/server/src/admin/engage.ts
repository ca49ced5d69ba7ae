import type { IncomingMessage, ServerResponse } from 'node:http';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import { ErrorCode, pack, ProtocolError } from '@gravitas/protocol';
import type { NodeConfig } from '../config/index.js';
import { openAccountsBucket } from '../core/buckets.js';
import { connectNats, untilReady } from '../infra/nats.js';
import { API_TIMEOUT_MS } from '../infra/jetstream.js';
import type { Invalidation } from '../core/envelope.js';
import { Names } from '../infra/subjects.js';
import { ProfileStore } from '../engage/profiles.js';
import { ensureWorkStream } from '../engage/jobs.js';
import { JetStreamArchive } from '../engage/archive.js';
import { CampaignError, CampaignStore, openEngageBuckets, PublisherStore } from '../engage/campaign-store.js';
import { authenticate, bearerRefusal } from './auth.js';
import { AdminError, AdminErrorCode, bodyRefusal, readJson, sendJson } from './http.js';
import type { EngageContext, Route } from './route.js';
import { ACCOUNT_ROUTES } from './routes-accounts.js';
import { ENGAGE_ROUTES } from './routes-engage.js';
import { REPORT_ROUTES } from './routes-reports.js';

/*
 * The engagement part of the admin HTTP API (docs/campaigns.md, "Admin API"):
 * publishers, campaigns and profiles (routes-engage.ts), reports (routes-reports.ts) and
 * accounts (routes-accounts.ts) under /admin/. Runs on the node's main thread with its own
 * NATS connection, opened on first use. Auth (auth.ts): the admin token is root, a
 * publisher's API key the publisher with its roles; unlike /admin/cells, never open.
 */

/** How long a request waits for the NATS connection before UNAVAILABLE (the connection keeps trying). */
const CONNECT_WAIT_MS = 5000;

const ROUTES: readonly Route[] = [...ENGAGE_ROUTES, ...REPORT_ROUTES, ...ACCOUNT_ROUTES];
/** Answers of these routes are never cached. */
const NO_STORE = { 'cache-control': 'no-store' };

const CAMPAIGN_STATUS: Record<string, number> = { BAD_REQUEST: 400, NOT_FOUND: 404, CONFLICT: 409, PAYLOAD_TOO_LARGE: 413, UNAVAILABLE: 503 };

/** Any failure as status + stable code. Store and protocol codes map onto admin codes; NATS trouble is UNAVAILABLE. */
function classify(err: unknown): AdminError | undefined {
  if (err instanceof AdminError) return err;
  if (err instanceof CampaignError) return new AdminError(CAMPAIGN_STATUS[err.code] ?? 500, err.code, err.message);
  if (err instanceof ProtocolError) {
    switch (err.code) {
      case ErrorCode.BAD_MESSAGE:
        return new AdminError(400, AdminErrorCode.BAD_REQUEST, err.message);
      case ErrorCode.NOT_FOUND:
        return new AdminError(404, AdminErrorCode.NOT_FOUND, err.message);
      case ErrorCode.CONFLICT:
        return new AdminError(409, AdminErrorCode.CONFLICT, err.message);
      case ErrorCode.STORAGE_UNAVAILABLE:
      case ErrorCode.BUSY:
        return new AdminError(503, AdminErrorCode.UNAVAILABLE, err.message);
      default:
        return undefined;
    }
  }
  const e = err as Error;
  if (/timeout|no ?responders|closed|connection|jetstream|503/i.test(`${e?.name} ${e?.message}`)) return new AdminError(503, AdminErrorCode.UNAVAILABLE, `NATS is not answering now: ${e.message}`);
  return undefined;
}

export interface EngageApi {
  /**
   * What can be refused from the request head alone, before its body is read or NATS is asked:
   * no such route or method, no bearer token or one that is neither the admin token nor shaped
   * like a publisher key, a body where the route takes none, a Content-Length over its maximum.
   */
  early(req: IncomingMessage, url: URL): AdminError | undefined;
  /** Serves one request under /admin/ that admin.ts does not handle itself. */
  handle(req: IncomingMessage, res: ServerResponse, url: URL): Promise<void>;
  /** Closes the NATS connection, if one was opened. */
  close(): Promise<void>;
}

export function createEngageApi(config: NodeConfig, log: (msg: string) => void): EngageApi {
  const names = new Names(config.prefix, config.mailbox.partitions);
  let opening: Promise<EngageContext> | undefined;
  let closed = false;

  async function open(): Promise<EngageContext> {
    const nc = await connectNats(config.nats, `${config.nodeId}-admin`);
    try {
      const jsm = await jetstreamManager(nc, { timeout: API_TIMEOUT_MS });
      // Profiles changed here reach every cell's version cache like a cell's own change.
      const profiles = new ProfileStore(nc, names, config.replicas, (user) => nc.publish(names.invalidations, pack({ kind: 'profile', key: user } satisfies Invalidation)));
      const [b] = await untilReady(() => Promise.all([openEngageBuckets(nc, config), profiles.start(), ensureWorkStream(jsm, names, config.replicas)]), 'engagement buckets and streams');
      const maxRecord = (nc.info?.max_payload ?? 1024 * 1024) - 4096;
      const js = jetstream(nc, { timeout: API_TIMEOUT_MS });
      const archive = new JetStreamArchive(nc, names, config.tracking, config.replicas);
      await untilReady(() => archive.start(), 'tracking archive');
      const cells = await new Kvm(nc).open(names.cellsBucket);
      const accounts = await openAccountsBucket(nc, config);
      return { config, names, nc, profiles, publishers: new PublisherStore(b.publishers), campaigns: new CampaignStore(b.campaigns, js, names, maxRecord), archive, cells, accounts };
    } catch (err) {
      await nc.close().catch(() => undefined);
      throw err;
    }
  }

  /** The shared context, opened on first use; a failed opening is retried by the next request. */
  async function context(): Promise<EngageContext> {
    if (closed) throw new AdminError(503, AdminErrorCode.UNAVAILABLE, 'the node is shutting down');
    const p = (opening ??= open().catch((err: unknown) => {
      opening = undefined;
      log(`admin: cannot open the engagement API's NATS connection: ${(err as Error).message}`);
      throw err;
    }));
    let timer: NodeJS.Timeout | undefined;
    const wait = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new AdminError(503, AdminErrorCode.UNAVAILABLE, 'NATS is not reachable now; try again')), CONNECT_WAIT_MS);
    });
    try {
      return await Promise.race([p, wait]);
    } catch (err) {
      if (err instanceof AdminError) throw err;
      throw new AdminError(503, AdminErrorCode.UNAVAILABLE, `NATS is not reachable now: ${(err as Error).message}`, { cause: err });
    } finally {
      clearTimeout(timer);
    }
  }

  function routeOf(req: IncomingMessage, path: string): Route {
    const matching = ROUTES.filter((r) => r.path.test(path));
    if (matching.length === 0) throw new AdminError(404, AdminErrorCode.NOT_FOUND, `no endpoint ${path}`);
    const route = matching.find((r) => r.method === req.method);
    if (!route) throw new AdminError(405, AdminErrorCode.METHOD_NOT_ALLOWED, `use ${[...new Set(matching.map((r) => r.method))].join(' or ')}`);
    return route;
  }

  function early(req: IncomingMessage, url: URL): AdminError | undefined {
    let route: Route;
    try {
      route = routeOf(req, url.pathname);
    } catch (err) {
      return err as AdminError;
    }
    return bearerRefusal(req, config.admin.token) ?? bodyRefusal(req, route.body, `${req.method} ${url.pathname}`);
  }

  async function serve(req: IncomingMessage, res: ServerResponse, url: URL): Promise<void> {
    const path = url.pathname;
    const route = routeOf(req, path);
    const ctx = await context();
    const who = await authenticate(req, ctx.publishers, config.admin.token);
    // A route without a body ignores a small one (early() refused a larger one): read it off so the connection can be kept.
    if (route.body === undefined) req.resume();
    const body = route.body === undefined ? undefined : await readJson(req, route.body);
    const params = route.path.exec(path)!.slice(1);
    const out = await route.run({ ctx, who, params, query: url.searchParams, body });
    sendJson(res, out.status, out.body, NO_STORE);
  }

  return {
    early,
    async handle(req, res, url) {
      try {
        await serve(req, res, url);
      } catch (err) {
        const e = classify(err);
        if (!e) log(`admin: ${req.method} ${url.pathname} failed: ${(err as Error).stack ?? String(err)}`);
        const status = e?.status ?? 500;
        // A body not read to its end (too long, or refused before it) closes the connection (sendJson()).
        sendJson(res, status, { error: { code: e?.code ?? AdminErrorCode.INTERNAL, message: e?.message ?? 'internal error' } }, NO_STORE);
      }
    },
    async close() {
      closed = true;
      const p = opening;
      opening = undefined;
      if (!p) return;
      const ctx = await p.catch(() => undefined);
      if (!ctx) return;
      // A drain with NATS away would wait for a reconnect: bounded, then closed outright.
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([ctx.nc.drain().catch(() => undefined), new Promise((r) => (timer = setTimeout(r, 2000)))]);
      clearTimeout(timer);
      if (!ctx.nc.isClosed()) await ctx.nc.close().catch(() => undefined);
    },
  };
}

