import type { IncomingMessage, ServerResponse } from 'node:http';
import { timingSafeEqual } from 'node:crypto';
import type { NatsConnection } from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { Kvm, type KV } from '@nats-io/kv';
import { decodeProfilePatch, ErrorCode, isName, pack, ProtocolError, unpack } from '@gravitas/protocol';
import type { NodeConfig } from '../config/index.js';
import { AdminErrorCode } from './admin.js';
import { connectNats, openAccountsBucket, untilReady } from '../infra/nats.js';
import { accountRecords, listDevices, readAccount, setSuspended } from '../session/accounts.js';
import { API_TIMEOUT_MS } from '../infra/jetstream.js';
import type { Invalidation } from '../core/envelope.js';
import { Names } from '../infra/subjects.js';
import { ProfileStore } from '../engage/profiles.js';
import { ensureWorkStream } from '../engage/jobs.js';
import { JetStreamArchive } from '../engage/archive.js';
import { campaignReport, userReport, type ReportSources } from '../engage/reports.js';
import { queryUnarchived } from '../engage/shipper.js';
import type { Campaign, Publisher, Role } from '../engage/campaign-types.js';
import {
  CampaignError, CampaignStore, decodeNewCampaign, decodeNewPublisher, openEngageBuckets, publicPublisher, PublisherStore, type CampaignAction,
} from '../engage/campaign-store.js';

/*
 * The engagement part of the admin HTTP API (docs/campaigns.md, "Admin API"):
 * publishers, campaigns and profiles under /admin/. Runs on the node's main
 * thread with its own NATS connection, opened on first use.
 *
 * Auth: `Authorization: Bearer <admin.token>` is root (role admin) — only when
 * admin.token is configured; `Bearer gk_<id>_<secret>` is a publisher with its
 * roles. Unlike the older /admin/cells, these routes are never open.
 *
 * Note: AdminErrorCode comes from admin.ts, which imports this module; it is only
 * read inside functions, never while the modules are being evaluated.
 */

/** Largest JSON body of most routes, and of a campaign (an explicit audience list is big). */
export const MAX_BODY_BYTES = 256 * 1024;
export const MAX_CAMPAIGN_BODY_BYTES = 960 * 1024;
/** How long a request waits for the NATS connection before UNAVAILABLE (the connection keeps trying). */
const CONNECT_WAIT_MS = 5000;
const DEFAULT_PAGE = 50;
const MAX_PAGE = 200;

/** A refusal with its HTTP status and stable code. */
export class AdminError extends Error {
  override name = 'AdminError';
  constructor(readonly status: number, readonly code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
  }
}

/** Who is calling: root (the admin token) or a publisher (its API key). */
export type Principal =
  | { kind: 'root'; roles: ReadonlySet<Role> }
  | { kind: 'publisher'; publisher: Publisher; roles: ReadonlySet<Role> };

/** What route handlers work with (the main thread's NATS-backed stores). */
export interface EngageContext {
  config: NodeConfig;
  names: Names;
  nc: NatsConnection;
  profiles: ProfileStore;
  publishers: PublisherStore;
  campaigns: CampaignStore;
  archive: JetStreamArchive;
  /** Cell heartbeats (membership): which nodes should answer a scatter-gather. */
  cells: KV;
  /** Accounts and their devices (cell/accounts.ts): operators suspend accounts here. */
  accounts: KV;
}

export interface RouteCall {
  ctx: EngageContext;
  who: Principal;
  /** The capture groups of the route's path pattern. */
  params: string[];
  query: URLSearchParams;
  /** The parsed JSON body (routes with `body`), else undefined. */
  body: unknown;
}

export interface Route {
  method: 'GET' | 'POST' | 'PUT';
  path: RegExp;
  /** The route takes a JSON body of at most this many bytes. */
  body?: number;
  run(call: RouteCall): Promise<{ status: number; body: unknown }>;
}

// ---- authorisation helpers (for report routes too) -------------------------------------

export const has = (who: Principal, role: Role): boolean => who.roles.has('admin') || who.roles.has(role);

/** Refuses (403) unless the caller has one of `roles` (admin has every role). */
export function need(who: Principal, ...roles: Role[]): void {
  if (!roles.some((r) => has(who, r))) throw new AdminError(403, AdminErrorCode.FORBIDDEN, `needs the role ${roles.join(' or ')}`);
}

/** Admins and auditors see every campaign; a publisher only its own. */
export const seesAll = (who: Principal): boolean => has(who, 'auditor');

export function canRead(who: Principal, c: Campaign): boolean {
  return seesAll(who) || (who.kind === 'publisher' && c.publisher === who.publisher.id);
}

/** The campaign `id` if the caller may see it; otherwise 404 exactly as for no campaign, so ids cannot be probed. */
export async function visibleCampaign(call: RouteCall, id: string): Promise<Campaign> {
  const c = await call.ctx.campaigns.get(id);
  if (!c || !canRead(call.who, c)) throw new AdminError(404, AdminErrorCode.NOT_FOUND, `no campaign ${id}`);
  return c;
}

// ---- routes ---------------------------------------------------------------------

const CAMPAIGN_ID = '([A-Za-z0-9_-]{1,64})';

function summary(c: Campaign): Record<string, unknown> {
  const { audience, content: _content, ...rest } = c;
  return { ...rest, audience: 'users' in audience ? { kind: 'users', count: audience.users.length } : { kind: 'where' } };
}

function pageQuery(q: URLSearchParams): { limit: number; before?: string; publisher?: string } {
  const limit = q.get('limit');
  if (limit !== null && !(/^\d{1,4}$/.test(limit) && Number(limit) >= 1 && Number(limit) <= MAX_PAGE)) {
    throw new AdminError(400, AdminErrorCode.BAD_REQUEST, `limit must be an integer in 1..${MAX_PAGE}`);
  }
  const before = q.get('before') ?? undefined;
  const publisher = q.get('publisher') ?? undefined;
  for (const [k, v] of [['before', before], ['publisher', publisher]] as const) {
    if (v !== undefined && !isName(v, 64)) throw new AdminError(400, AdminErrorCode.BAD_REQUEST, `${k} must be an id`);
  }
  return { limit: limit === null ? DEFAULT_PAGE : Number(limit), ...(before !== undefined && { before }), ...(publisher !== undefined && { publisher }) };
}

/** The owner of a new campaign: the calling publisher, or the one an admin names. */
async function owner(call: RouteCall, named: string | undefined): Promise<Publisher> {
  const { who } = call;
  if (who.kind === 'publisher' && (named === undefined || named === who.publisher.id)) return who.publisher;
  if (!who.roles.has('admin')) throw new AdminError(403, AdminErrorCode.FORBIDDEN, 'only an admin creates campaigns for another publisher');
  if (named === undefined) throw new AdminError(400, AdminErrorCode.BAD_REQUEST, 'field "publisher" is required with the admin token: name the publisher that owns the campaign');
  const p = await call.ctx.publishers.get(named);
  if (!p) throw new AdminError(400, AdminErrorCode.BAD_REQUEST, `field "publisher" names no publisher (${named})`);
  return p;
}

const CORE_ROUTES: Route[] = [
  {
    method: 'POST',
    path: /^\/admin\/publishers$/,
    body: MAX_BODY_BYTES,
    async run(call) {
      need(call.who, 'admin');
      const { publisher, key } = await call.ctx.publishers.create(decodeNewPublisher(call.body));
      return { status: 201, body: { ...publicPublisher(publisher), key } };
    },
  },
  {
    method: 'GET',
    path: /^\/admin\/publishers$/,
    async run(call) {
      need(call.who, 'admin');
      return { status: 200, body: { publishers: (await call.ctx.publishers.list()).map(publicPublisher) } };
    },
  },
  {
    method: 'POST',
    path: /^\/admin\/campaigns$/,
    body: MAX_CAMPAIGN_BODY_BYTES,
    async run(call) {
      need(call.who, 'campaigns');
      const input = decodeNewCampaign(call.body, call.ctx.config.campaigns);
      const c = await call.ctx.campaigns.create(await owner(call, input.publisher), input);
      return { status: 201, body: { campaign: c } };
    },
  },
  {
    method: 'GET',
    path: /^\/admin\/campaigns$/,
    async run(call) {
      const { who } = call;
      const q = pageQuery(call.query);
      const pub = seesAll(who) ? q.publisher : who.kind === 'publisher' ? who.publisher.id : undefined;
      const visible = (c: Campaign): boolean => canRead(who, c) && (pub === undefined || c.publisher === pub);
      const page = await call.ctx.campaigns.list(visible, q.limit, q.before);
      return { status: 200, body: { campaigns: page.campaigns.map(summary), ...(page.next !== undefined && { next: page.next }) } };
    },
  },
  {
    method: 'GET',
    path: new RegExp(`^/admin/campaigns/${CAMPAIGN_ID}$`),
    async run(call) {
      const c = await visibleCampaign(call, call.params[0]!);
      return { status: 200, body: { campaign: c, progress: await call.ctx.campaigns.progress(c.id) } };
    },
  },
  {
    method: 'POST',
    path: new RegExp(`^/admin/campaigns/${CAMPAIGN_ID}/(start|pause|resume)$`),
    async run(call) {
      const c = await visibleCampaign(call, call.params[0]!);
      need(call.who, 'campaigns');
      const next = await call.ctx.campaigns.transition(c.id, call.params[1] as CampaignAction);
      return { status: 200, body: { campaign: next } };
    },
  },
  {
    method: 'PUT',
    path: /^\/admin\/profiles\/([^/]+)$/,
    body: MAX_BODY_BYTES,
    async run(call) {
      need(call.who, 'admin');
      const user = userParam(call.params[0]!);
      const b = call.body;
      if (typeof b !== 'object' || b === null || Array.isArray(b) || Object.keys(b).some((k) => k !== 'attrs')) {
        throw new AdminError(400, AdminErrorCode.BAD_REQUEST, 'the body must be {"attrs": {name: value or null, …}}');
      }
      const { version } = await call.ctx.profiles.set(user, decodeProfilePatch((b as Record<string, unknown>).attrs));
      return { status: 200, body: { user, version } };
    },
  },
  {
    method: 'GET',
    path: /^\/admin\/profiles\/([^/]+)$/,
    async run(call) {
      need(call.who, 'auditor');
      const user = userParam(call.params[0]!);
      const v = call.query.get('version');
      if (v !== null && !/^\d{1,15}$/.test(v)) throw new AdminError(400, AdminErrorCode.BAD_REQUEST, 'version must be a non-negative integer');
      const p = v === null ? await call.ctx.profiles.get(user) : await call.ctx.profiles.at(user, Number(v));
      return { status: 200, body: { user, ...p } };
    },
  },
];

function userParam(raw: string): string {
  let user: string;
  try {
    user = decodeURIComponent(raw);
  } catch {
    user = '';
  }
  if (!isName(user)) throw new AdminError(400, AdminErrorCode.BAD_REQUEST, 'the user in the path must be a name (A-Z a-z 0-9 _ -, at most 64)');
  return user;
}

// ---- report routes ----------------------------------------------------------------

/** Default and bounds of a campaign report's time bucket. */
const BUCKET_DEFAULT_MS = 3600_000;
const BUCKET_MIN_MS = 60_000;
/** How long a report waits for nodes' local records (it returns at once when every live node answered). */
const LOCAL_WAIT_MS = 1000;

/** Nodes with a live cell, from the membership bucket (entries expire with their heartbeats). */
async function liveNodes(cells: KV): Promise<number> {
  const nodes = new Set<string>();
  for await (const key of await cells.keys()) {
    const e = await cells.get(key).catch(() => null);
    if (!e || e.operation !== 'PUT') continue;
    try {
      const node = (unpack(e.value) as { node?: unknown }).node;
      if (typeof node === 'string') nodes.add(node);
    } catch {
      // a malformed heartbeat names no node
    }
  }
  return nodes.size;
}

function sources(call: RouteCall): ReportSources {
  const { ctx } = call;
  return {
    archive: ctx.archive,
    local: async (q) => queryUnarchived(ctx.nc, ctx.names, q, { maxWaitMs: LOCAL_WAIT_MS, expectNodes: Math.max(1, await liveNodes(ctx.cells)) }),
    campaign: (id) => ctx.campaigns.get(id),
    profileAt: (user, version) => ctx.profiles.at(user, version),
  };
}

/**
 * Reports (engage/reports.ts). Role `reports` reads its own campaigns' reports
 * (a user report lists only its campaigns); `auditor` and `admin` read all.
 * Another publisher's campaign is 404, as everywhere.
 */
function reportRoutes(): Route[] {
  return [
    {
      method: 'GET',
      path: /^\/admin\/reports\/users\/([^/]+)\/campaigns$/,
      async run(call) {
        need(call.who, 'reports', 'auditor');
        const user = userParam(call.params[0]!);
        const profiles = call.query.get('profiles');
        if (profiles !== null && profiles !== '0' && profiles !== '1') throw new AdminError(400, AdminErrorCode.BAD_REQUEST, 'profiles must be 0 or 1');
        const who = call.who;
        const report = await userReport(sources(call), user, {
          // A campaign whose record is gone is shown only to those who see everything.
          visible: (c) => (c ? canRead(who, c) : seesAll(who)),
          withProfiles: profiles === '1',
        });
        return { status: 200, body: report };
      },
    },
    {
      method: 'GET',
      path: new RegExp(`^/admin/reports/campaigns/${CAMPAIGN_ID}$`),
      async run(call) {
        need(call.who, 'reports', 'auditor');
        const c = await visibleCampaign(call, call.params[0]!);
        const b = call.query.get('bucket');
        if (b !== null && !(/^\d{1,12}$/.test(b) && Number(b) >= BUCKET_MIN_MS)) throw new AdminError(400, AdminErrorCode.BAD_REQUEST, `bucket must be a whole number of milliseconds ≥ ${BUCKET_MIN_MS}`);
        const report = await campaignReport(sources(call), c.id, b === null ? BUCKET_DEFAULT_MS : Number(b));
        return { status: 200, body: { ...report, name: c.name, state: c.state, progress: await call.ctx.campaigns.progress(c.id) } };
      },
    },
  ];
}
/**
 * Accounts (docs/security.md, "Suspending an account"): the operator only (the admin
 * token, not a publisher's key, whatever its roles). A suspension ends every session
 * of the account and refuses its devices on every cell; messages to it are undeliverable.
 */
function accountRoutes(): Route[] {
  const operator = (who: Principal): void => {
    if (who.kind !== 'root') throw new AdminError(403, AdminErrorCode.FORBIDDEN, 'only the operator (the admin token) manages accounts');
  };
  const invalidate = (ctx: EngageContext, i: Invalidation): void => ctx.nc.publish(ctx.names.invalidations, pack(i));
  const suspension = (on: boolean): Route => ({
    method: 'POST',
    path: new RegExp(`^/admin/accounts/([^/]+)/${on ? 'suspend' : 'unsuspend'}$`),
    async run(call) {
      operator(call.who);
      const user = userParam(call.params[0]!);
      if (!(await setSuspended(accountRecords(call.ctx.accounts), user, on))) throw new AdminError(404, AdminErrorCode.NOT_FOUND, `no account ${user}`);
      // Written first: from now on no handshake gets in; then every live session is told, and caches dropped.
      if (on) invalidate(call.ctx, { kind: 'revoked', key: user });
      invalidate(call.ctx, { kind: 'devices', key: user });
      return { status: 200, body: { user, suspended: on } };
    },
  });
  return [
    {
      method: 'GET',
      path: /^\/admin\/accounts\/([^/]+)$/,
      async run(call) {
        operator(call.who);
        const user = userParam(call.params[0]!);
        const r = await readAccount(call.ctx.accounts, user);
        if (r.d.size === 0 && r.s === undefined) throw new AdminError(404, AdminErrorCode.NOT_FOUND, `no account ${user}`);
        return { status: 200, body: { user, devices: listDevices(r), ...(r.s !== undefined && { suspendedAt: r.s }) } };
      },
    },
    suspension(true),
    suspension(false),
  ];
}

const ROUTES: readonly Route[] = [...CORE_ROUTES, ...reportRoutes(), ...accountRoutes()];

// ---- plumbing -----------------------------------------------------------------------

function reply(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  // An answer before the body was read (a refusal) closes the connection: Node would otherwise read the rest to its end.
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), 'cache-control': 'no-store', ...(!res.req.complete && { connection: 'close' }) });
  res.end(text);
}

/** A route that takes no body ignores one this small (clients send `{}` to action routes); a larger one is 413. */
export const IGNORED_BODY_BYTES = 1024;

/**
 * Refusal of a body a route does not take (`cap` undefined) or that is over its maximum, from the
 * head alone; a chunked body's size is unknown, so a route without a body refuses it too.
 */
export function bodyRefusal(req: IncomingMessage, cap: number | undefined, what: string): AdminError | undefined {
  const chunked = req.headers['transfer-encoding'] !== undefined;
  const declared = Number(req.headers['content-length'] ?? 0);
  if (cap === undefined && (chunked || declared > IGNORED_BODY_BYTES)) return new AdminError(413, AdminErrorCode.PAYLOAD_TOO_LARGE, `${what} takes no body`);
  if (cap !== undefined && declared > cap) return new AdminError(413, AdminErrorCode.PAYLOAD_TOO_LARGE, `the body may have at most ${cap} bytes`);
  return undefined;
}

/** Reads a JSON body of at most `cap` bytes (listeners, not an async iterator: leaving one early would destroy the socket before the answer). */
function readJson(req: IncomingMessage, cap: number): Promise<unknown> {
  const type = req.headers['content-type'] ?? '';
  if (!/^application\/json\s*(;.*)?$/i.test(type)) {
    return Promise.reject(new AdminError(415, AdminErrorCode.UNSUPPORTED_MEDIA_TYPE, 'the body must be JSON with Content-Type: application/json'));
  }
  const declared = Number(req.headers['content-length'] ?? 0);
  const tooLarge = (): AdminError => new AdminError(413, AdminErrorCode.PAYLOAD_TOO_LARGE, `the body may have at most ${cap} bytes`);
  if (declared > cap) return Promise.reject(tooLarge());
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const done = (err: Error | undefined, v?: unknown): void => {
      req.off('data', onData).off('end', onEnd).off('error', onError);
      if (err) reject(err);
      else resolve(v);
    };
    const onData = (c: Buffer): void => {
      size += c.length;
      if (size > cap) {
        req.pause();
        done(tooLarge());
      } else chunks.push(c);
    };
    const onEnd = (): void => {
      try {
        done(undefined, JSON.parse(Buffer.concat(chunks).toString('utf8')));
      } catch (err) {
        done(new AdminError(400, AdminErrorCode.BAD_REQUEST, `the body is not valid JSON: ${(err as Error).message}`));
      }
    };
    const onError = (err: Error): void => done(err);
    req.on('data', onData).on('end', onEnd).on('error', onError);
  });
}

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
    }
    return undefined;
  }
  const e = err as Error;
  if (/timeout|no ?responders|closed|connection|jetstream|503/i.test(`${e?.name} ${e?.message}`)) return new AdminError(503, AdminErrorCode.UNAVAILABLE, `NATS is not answering now: ${e.message}`);
  return undefined;
}

function safeEqual(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
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
    const nc = await connectNats(config, `${config.nodeId}-admin`);
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

  async function authenticate(req: IncomingMessage, ctx: EngageContext): Promise<Principal> {
    const m = /^Bearer (\S+)$/.exec(req.headers.authorization ?? '');
    if (!m) throw new AdminError(401, AdminErrorCode.UNAUTHORIZED, 'send Authorization: Bearer <admin token or publisher API key>');
    const token = m[1]!;
    if (token.startsWith('gk_')) {
      const p = await ctx.publishers.authenticate(token);
      if (!p) throw new AdminError(401, AdminErrorCode.UNAUTHORIZED, 'unknown or wrong API key');
      return { kind: 'publisher', publisher: p, roles: new Set(p.roles) };
    }
    // No admin.token configured: there is no root access here (publishers still work).
    if (config.admin.token !== undefined && safeEqual(token, config.admin.token)) return { kind: 'root', roles: new Set<Role>(['admin']) };
    throw new AdminError(401, AdminErrorCode.UNAUTHORIZED, 'wrong bearer token');
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
    const m = /^Bearer (\S+)$/.exec(req.headers.authorization ?? '');
    if (!m) return new AdminError(401, AdminErrorCode.UNAUTHORIZED, 'send Authorization: Bearer <admin token or publisher API key>');
    // A publisher key needs a KV lookup (after the head); anything else is the admin token or wrong.
    if (!m[1]!.startsWith('gk_') && !(config.admin.token !== undefined && safeEqual(m[1]!, config.admin.token))) return new AdminError(401, AdminErrorCode.UNAUTHORIZED, 'wrong bearer token');
    return bodyRefusal(req, route.body, `${req.method} ${url.pathname}`);
  }

  async function serve(req: IncomingMessage, res: ServerResponse, url: URL): Promise<void> {
    const path = url.pathname;
    const route = routeOf(req, path);
    const ctx = await context();
    const who = await authenticate(req, ctx);
    // A route without a body ignores a small one (early() refused a larger one): read it off so the connection can be kept.
    if (route.body === undefined) req.resume();
    const body = route.body === undefined ? undefined : await readJson(req, route.body);
    const params = route.path.exec(path)!.slice(1);
    const out = await route.run({ ctx, who, params, query: url.searchParams, body });
    reply(res, out.status, out.body);
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
        // A body not read to its end (too long, or refused before it) closes the connection (reply()).
        reply(res, status, { error: { code: e?.code ?? AdminErrorCode.INTERNAL, message: e?.message ?? 'internal error' } });
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
