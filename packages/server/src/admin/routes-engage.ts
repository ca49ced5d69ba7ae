import { decodeProfilePatch, isName } from '@gravitas/protocol';
import type { Campaign, Publisher } from '../engage/campaign-types.js';
import { decodeNewCampaign, decodeNewPublisher, publicPublisher, type CampaignAction } from '../engage/campaign-store.js';
import { canRead, need, seesAll } from './auth.js';
import { AdminError, AdminErrorCode } from './http.js';
import { CAMPAIGN_ID, userParam, visibleCampaign, type Route, type RouteCall } from './route.js';

/* Publishers, campaigns and profiles (docs/campaigns.md, "Admin API"). */

/** Largest JSON body of most routes, and of a campaign (an explicit audience list is big). */
export const MAX_BODY_BYTES = 256 * 1024;
export const MAX_CAMPAIGN_BODY_BYTES = 960 * 1024;
const DEFAULT_PAGE = 50;
const MAX_PAGE = 200;

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

export const ENGAGE_ROUTES: readonly Route[] = [
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
