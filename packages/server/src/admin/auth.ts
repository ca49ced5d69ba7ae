import type { IncomingMessage } from 'node:http';
import { timingSafeEqual } from 'node:crypto';
import type { Campaign, Publisher, Role } from '../engage/campaign-types.js';
import type { PublisherStore } from '../engage/campaign-store.js';
import { AdminError, AdminErrorCode } from './http.js';

/*
 * Who calls the admin server. The node routes (/admin/cells) take the admin token when one is
 * configured and are open otherwise; the engagement routes are never open: the admin token
 * is root (role admin), `gk_<id>_<secret>` a publisher with its roles.
 */

function safeEqual(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

/** The node routes: `Authorization: Bearer <admin.token>` exactly, or anything when no token is configured. */
export function nodeAuthorized(req: IncomingMessage, token: string | undefined): boolean {
  return !token || safeEqual(req.headers.authorization ?? '', `Bearer ${token}`);
}

/** Who is calling: root (the admin token) or a publisher (its API key). */
export type Principal =
  | { kind: 'root'; roles: ReadonlySet<Role> }
  | { kind: 'publisher'; publisher: Publisher; roles: ReadonlySet<Role> };

const NO_BEARER = 'send Authorization: Bearer <admin token or publisher API key>';
const bearer = (req: IncomingMessage): string | undefined => /^Bearer (\S+)$/.exec(req.headers.authorization ?? '')?.[1];
/** No admin.token configured: there is no root access to the engagement routes (publishers still work). */
const isAdminToken = (token: string, adminToken: string | undefined): boolean => adminToken !== undefined && safeEqual(token, adminToken);

/**
 * What the head alone tells about the caller of an engagement route: no bearer token, or one
 * that is neither the admin token nor shaped like a publisher key (whose check needs a KV lookup).
 */
export function bearerRefusal(req: IncomingMessage, adminToken: string | undefined): AdminError | undefined {
  const token = bearer(req);
  if (token === undefined) return new AdminError(401, AdminErrorCode.UNAUTHORIZED, NO_BEARER);
  if (!token.startsWith('gk_') && !isAdminToken(token, adminToken)) return new AdminError(401, AdminErrorCode.UNAUTHORIZED, 'wrong bearer token');
  return undefined;
}

/** The caller of an engagement route, or 401. */
export async function authenticate(req: IncomingMessage, publishers: PublisherStore, adminToken: string | undefined): Promise<Principal> {
  const token = bearer(req);
  if (token === undefined) throw new AdminError(401, AdminErrorCode.UNAUTHORIZED, NO_BEARER);
  if (token.startsWith('gk_')) {
    const p = await publishers.authenticate(token);
    if (!p) throw new AdminError(401, AdminErrorCode.UNAUTHORIZED, 'unknown or wrong API key');
    return { kind: 'publisher', publisher: p, roles: new Set(p.roles) };
  }
  if (isAdminToken(token, adminToken)) return { kind: 'root', roles: new Set<Role>(['admin']) };
  throw new AdminError(401, AdminErrorCode.UNAUTHORIZED, 'wrong bearer token');
}

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
