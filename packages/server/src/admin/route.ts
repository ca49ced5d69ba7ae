import type { NatsConnection } from '@nats-io/transport-node';
import type { KV } from '@nats-io/kv';
import { isName } from '@gravitas/protocol';
import type { NodeConfig } from '../config/index.js';
import type { Names } from '../infra/subjects.js';
import type { ProfileStore } from '../engage/profiles.js';
import type { JetStreamArchive } from '../engage/archive.js';
import type { Campaign } from '../engage/campaign-types.js';
import type { CampaignStore, PublisherStore } from '../engage/campaign-store.js';
import { canRead, type Principal } from './auth.js';
import { AdminError, AdminErrorCode } from './http.js';

/* What an engagement route is (engage.ts serves them), and what the route modules share. */

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
  /** Accounts and their devices (session/accounts.ts): operators suspend accounts here. */
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

/** The campaign `id` if the caller may see it; otherwise 404 exactly as for no campaign, so ids cannot be probed. */
export async function visibleCampaign(call: RouteCall, id: string): Promise<Campaign> {
  const c = await call.ctx.campaigns.get(id);
  if (!c || !canRead(call.who, c)) throw new AdminError(404, AdminErrorCode.NOT_FOUND, `no campaign ${id}`);
  return c;
}

export const CAMPAIGN_ID = '([A-Za-z0-9_-]{1,64})';

/** The user named in a route's path (URL-encoded), or 400. */
export function userParam(raw: string): string {
  let user: string;
  try {
    user = decodeURIComponent(raw);
  } catch {
    user = '';
  }
  if (!isName(user)) throw new AdminError(400, AdminErrorCode.BAD_REQUEST, 'the user in the path must be a name (A-Z a-z 0-9 _ -, at most 64)');
  return user;
}
