import { isAttrName, isName, MAX_ID_LENGTH, MAX_TEXT_LENGTH, PROFILE_LIMITS } from '@gravitas/protocol';
import type { CampaignConfig } from '../config/index.js';
import { CampaignError, CampaignErrorCode, ROLES, type Audience, type Predicate, type Role } from './campaign-types.js';

/*
 * What the admin API accepts for publishers and campaigns (docs/campaigns.md,
 * "Admin API"), validated field by field: a bad body is BAD_REQUEST naming the
 * field, and nothing unknown is silently ignored. The records are kept by
 * campaign-store.ts.
 */

export const MAX_CAMPAIGN_NAME = 200;
export const MAX_PUBLISHER_NAME = 128;
/** A `where` predicate: nesting depth, conditions in all, members of one all/any, values of one `in`. */
export const PREDICATE_LIMITS = { maxDepth: 8, maxNodes: 256, maxBranches: 64, maxInValues: 1000 } as const;
/** startAt at most this far ahead (catches seconds given for milliseconds). */
const MAX_START_AHEAD_MS = 366 * 24 * 3600_000;

export type Obj = Record<string, unknown>;

function fail(field: string, why: string): never {
  throw new CampaignError(CampaignErrorCode.BAD_REQUEST, `field "${field}" ${why}`);
}
export function isObj(v: unknown): v is Obj {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
/** A JSON object with only the `allowed` fields (a misspelt optional field must not be silently ignored). */
function object(v: unknown, field: string, allowed: readonly string[]): Obj {
  if (!isObj(v)) fail(field, 'must be an object');
  for (const k of Object.keys(v)) if (!allowed.includes(k)) fail(field ? `${field}.${k.slice(0, 64)}` : k.slice(0, 64), 'is not a known field');
  return v;
}
function text(o: Obj, field: string, max: number, path = field): string {
  const v = o[field];
  if (typeof v !== 'string' || v.trim().length === 0 || v.length > max) fail(path, `must be a non-empty string of at most ${max} characters`);
  return v;
}
function ident(v: unknown, field: string, max = MAX_ID_LENGTH): string {
  if (typeof v !== 'string' || !isName(v, max)) fail(field, `must be a name (A-Z a-z 0-9 _ -, at most ${max})`);
  return v;
}
function intIn(v: unknown, field: string, min: number, max: number): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max) fail(field, `must be an integer in ${min}..${max}`);
  return v;
}

/** The attribute names a profile can hold (the protocol's rule, one source). */
function attrName(v: unknown, field: string): string {
  if (typeof v !== 'string' || !isAttrName(v)) {
    fail(field, `must be an attribute name ([A-Za-z_][A-Za-z0-9_.-]*, at most ${PROFILE_LIMITS.maxNameLength})`);
  }
  return v;
}
function scalar(v: unknown, field: string): string | number | boolean {
  if (typeof v === 'boolean' || (typeof v === 'number' && Number.isFinite(v)) || (typeof v === 'string' && v.length <= PROFILE_LIMITS.maxStringLength)) return v;
  fail(field, `must be a string (at most ${PROFILE_LIMITS.maxStringLength}), a finite number or a boolean`);
}

/**
 * Validates an audience predicate, bounded in depth and size before any
 * recursion or iteration, so a hostile body costs little to refuse.
 */
export function decodePredicate(v: unknown, field = 'where', depth = 1, budget = { nodes: 0 }): Predicate {
  if (depth > PREDICATE_LIMITS.maxDepth) fail(field, `nests deeper than ${PREDICATE_LIMITS.maxDepth} levels`);
  if (++budget.nodes > PREDICATE_LIMITS.maxNodes) fail(field, `makes the predicate hold more than ${PREDICATE_LIMITS.maxNodes} conditions`);
  if (!isObj(v)) fail(field, 'must be an object: {attr, op, value}, {all: [...]} or {any: [...]}');
  if ('all' in v || 'any' in v) {
    const kind = 'all' in v ? 'all' : 'any';
    object(v, field, [kind]);
    const list = v[kind];
    if (!Array.isArray(list) || list.length === 0 || list.length > PREDICATE_LIMITS.maxBranches) fail(`${field}.${kind}`, `must be a list of 1..${PREDICATE_LIMITS.maxBranches} predicates`);
    const parts = list.map((p, i) => decodePredicate(p, `${field}.${kind}[${i}]`, depth + 1, budget));
    return kind === 'all' ? { all: parts } : { any: parts };
  }
  const attr = attrName(v.attr, `${field}.attr`);
  switch (v.op) {
    case 'eq':
    case 'ne':
      object(v, field, ['attr', 'op', 'value']);
      return { attr, op: v.op, value: scalar(v.value, `${field}.value`) };
    case 'lt':
    case 'lte':
    case 'gt':
    case 'gte':
      object(v, field, ['attr', 'op', 'value']);
      if (typeof v.value !== 'number' || !Number.isFinite(v.value)) fail(`${field}.value`, `must be a finite number for ${v.op}`);
      return { attr, op: v.op, value: v.value };
    case 'in': {
      object(v, field, ['attr', 'op', 'values']);
      const values = v.values;
      if (!Array.isArray(values) || values.length === 0 || values.length > PREDICATE_LIMITS.maxInValues) fail(`${field}.values`, `must be a list of 1..${PREDICATE_LIMITS.maxInValues} values`);
      return { attr, op: 'in', values: values.map((x, i) => scalar(x, `${field}.values[${i}]`)) };
    }
    case 'exists':
      object(v, field, ['attr', 'op']);
      return { attr, op: 'exists' };
    default:
      fail(`${field}.op`, 'must be one of eq, ne, lt, lte, gt, gte, in, exists');
  }
}

export function decodeAudience(v: unknown, maxListSize: number): Audience {
  if (isObj(v) && 'where' in v) {
    object(v, 'audience', ['where']);
    return { where: decodePredicate(v.where, 'audience.where') };
  }
  const o = object(v, 'audience', ['users']);
  const users = o.users;
  if (!Array.isArray(users) || users.length === 0 || users.length > maxListSize) fail('audience.users', `must be a list of 1..${maxListSize} user names (or give audience.where)`);
  const out = new Set<string>();
  users.forEach((u, i) => out.add(ident(u, `audience.users[${i}]`)));
  return { users: [...out] };
}

/** What POST /admin/campaigns accepts. `publisher`: the owner, named by an admin. */
export interface NewCampaign {
  name: string;
  audience: Audience;
  content: { text: string; push: boolean };
  startAt?: number;
  ratePerSec: number;
  publisher?: string;
}

export function decodeNewCampaign(body: unknown, cfg: CampaignConfig, now = Date.now()): NewCampaign {
  const o = object(body, '', ['name', 'audience', 'content', 'startAt', 'ratePerSec', 'publisher']);
  const name = text(o, 'name', MAX_CAMPAIGN_NAME);
  const audience = decodeAudience(o.audience, cfg.maxListSize);
  const c = object(o.content, 'content', ['text', 'push']);
  if (c.push !== undefined && typeof c.push !== 'boolean') fail('content.push', 'must be a boolean');
  const content = { text: text(c, 'text', MAX_TEXT_LENGTH, 'content.text'), push: c.push === true };
  const ratePerSec = o.ratePerSec === undefined ? cfg.defaultRatePerSec : intIn(o.ratePerSec, 'ratePerSec', 1, cfg.maxRatePerSec);
  const startAt = o.startAt === undefined ? undefined : intIn(o.startAt, 'startAt', 0, now + MAX_START_AHEAD_MS);
  const publisher = o.publisher === undefined ? undefined : ident(o.publisher, 'publisher');
  return { name, audience, content, ratePerSec, ...(startAt !== undefined && { startAt }), ...(publisher !== undefined && { publisher }) };
}

export interface NewPublisher { name: string; roles: Role[]; sender?: string }

export function decodeNewPublisher(body: unknown): NewPublisher {
  const o = object(body, '', ['name', 'roles', 'sender']);
  const name = text(o, 'name', MAX_PUBLISHER_NAME);
  const roles = o.roles;
  if (!Array.isArray(roles) || roles.length === 0 || roles.length > ROLES.length || !roles.every((r) => (ROLES as readonly unknown[]).includes(r))) {
    fail('roles', `must be a list of roles from ${ROLES.join(', ')}`);
  }
  // One character is left for the system namespace's `_` (systemSender).
  const sender = o.sender === undefined ? undefined : ident(o.sender, 'sender', MAX_ID_LENGTH - 1);
  return { name, roles: [...new Set(roles as Role[])], ...(sender !== undefined && { sender }) };
}
