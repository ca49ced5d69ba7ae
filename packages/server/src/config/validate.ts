import { availableParallelism, hostname } from 'node:os';
import { randomBytes } from 'node:crypto';
import { isName, MAX_TICKET_LIFETIME_MS } from '@gravitas/protocol';
import { ConfigError } from '../infra/errors.js';
import { DEFAULT_ADMIN, validateAdmin } from './admin.js';
import { DEFAULT_CAMPAIGNS, DEFAULT_TRACKING, validateCampaigns, validateTracking } from './campaigns.js';
import { configCheck, hostName, isJson, key32, type ConfigCheck, type Json } from './check.js';
import { DEFAULT_GRAVITY, validateGravity } from './gravity.js';
import { DEFAULT_GROUPS, validateGroups } from './groups.js';
import { checkLimitBudgets, DEFAULT_LIMITS, validateLimits } from './limits.js';
import { DEFAULT_MAILBOX, validateMailbox } from './mailbox.js';
import { DEFAULT_NETWORK, validateNetwork } from './network.js';
import { PUSH_KEYS, validatePushConfig } from './push.js';
import { validateRegistration, validateRegistrationLink } from './registration.js';
import { RELAY_KEYS, validateRelayConfig } from './relay.js';
import type { NodeConfig } from './types.js';
import { DEFAULT_WEB, validateWeb } from './web.js';

const KNOWN_TOP = new Set(['nodeId', 'nats', 'prefix', 'cells', 'listen', 'web', 'network', 'advertiseHost', 'admin', 'dataDir', 'serverKey', 'ticketKeys', 'ticketLifetimeMs', 'registration', 'membership', 'replicas', 'mailbox', 'gravity', 'tracking', 'campaigns', 'push', 'relay', 'groups', 'limits', 'testHooks']);

const KNOWN_NESTED: Record<string, Set<string>> = {
  nats: new Set(['servers', 'token', 'user', 'pass']),
  listen: new Set(['host', 'basePort', 'webBasePort']),
  web: new Set(Object.keys(DEFAULT_WEB)),
  network: new Set(Object.keys(DEFAULT_NETWORK)),
  admin: new Set([...Object.keys(DEFAULT_ADMIN), 'token']),
  registration: new Set(['mode', 'token', 'credential', 'link']),
  membership: new Set(['heartbeatMs', 'timeoutMs']),
  mailbox: new Set(Object.keys(DEFAULT_MAILBOX)),
  gravity: new Set(Object.keys(DEFAULT_GRAVITY)),
  tracking: new Set(Object.keys(DEFAULT_TRACKING)),
  campaigns: new Set(Object.keys(DEFAULT_CAMPAIGNS)),
  push: PUSH_KEYS,
  relay: RELAY_KEYS,
  groups: new Set(Object.keys(DEFAULT_GROUPS)),
  limits: new Set(Object.keys(DEFAULT_LIMITS)),
};

/** Connection caps the start-up fd budget may lower when they were left at their defaults (fd-budget.ts). */
export const FD_CAP_SETTINGS = ['limits.maxConnectionsPerCell', 'web.maxConnections', 'admin.maxConnections'] as const;
export type FdCapSetting = (typeof FD_CAP_SETTINGS)[number];
const explicit = new WeakMap<NodeConfig, ReadonlySet<string>>();

/**
 * Was `setting` given (file, env, flag or override) rather than left at its default?
 * Known only for a config made by validateConfig; for a copy or a hand-made object every cap
 * counts as a default (lowering to fit is the safe mistake).
 */
export function isExplicit(cfg: NodeConfig, setting: FdCapSetting): boolean {
  return explicit.get(cfg)?.has(setting) ?? false;
}

const NATS_URL = /^(nats|tls):\/\/[^\s/]+$|^[^\s/:]+:\d+$/;

/** ticketKeys: a list of { id, key }, or `id:key,id:key` text (env, flags). */
function validateTicketKeys(c: ConfigCheck): Array<{ id: number; key: string }> {
  let ticketKeys = c.get('ticketKeys');
  if (typeof ticketKeys === 'string') {
    ticketKeys = ticketKeys.split(',').map((pair) => {
      const [id, key] = pair.split(':');
      return { id: Number(id), key };
    });
  }
  const tk: Array<{ id: number; key: string }> = [];
  if (!Array.isArray(ticketKeys) || ticketKeys.length < 1 || ticketKeys.length > 2) {
    c.fail('ticketKeys', 'must list 1 or 2 ticket keys ({ id, key }), current first (see `gravitas keygen`)');
  } else {
    ticketKeys.forEach((k: unknown, i) => {
      if (!isJson(k) || !Number.isInteger(k.id) || (k.id as number) < 0 || (k.id as number) > 255 || typeof k.key !== 'string' || key32(k.key)) {
        c.fail(`ticketKeys[${i}]`, 'must be { id: 0..255, key: 32 bytes base64url }');
      } else tk.push({ id: k.id as number, key: k.key });
    });
    if (tk.length === 2 && tk[0]!.id === tk[1]!.id) c.fail('ticketKeys', 'current and previous key need different ids');
  }
  return tk;
}

/** Validates a merged raw configuration, coercing strings from env/flags. Throws ConfigError listing every problem. */
export function validateConfig(raw: Json): NodeConfig {
  const c = configCheck(raw);
  for (const k of Object.keys(raw)) if (!KNOWN_TOP.has(k)) c.fail(k, 'unknown setting');
  // Sections too: a misspelt limit would otherwise silently keep its default.
  for (const [section, known] of Object.entries(KNOWN_NESTED)) c.section(section, known);

  const servers = c.strings('nats.servers', ['nats://127.0.0.1:4222'], (ss) => ss.length > 0 && ss.every((s) => NATS_URL.test(s)), 'must be a list of nats://host:port URLs (or host:port)', []);
  const ticketKeys = validateTicketKeys(c);
  // The sections, in the order their issues are listed.
  const registration = validateRegistration(c);
  const limits = validateLimits(c);
  const groups = validateGroups(c);
  const web = validateWeb(c, limits);
  const network = validateNetwork(c);
  const admin = validateAdmin(c);
  const mailbox = validateMailbox(c);
  const gravity = validateGravity(c);
  const tracking = validateTracking(c);
  const campaigns = validateCampaigns(c);

  const listenHost = c.string('listen.host', '127.0.0.1', hostName)!;
  const basePort = c.int('listen.basePort', 7400, 0, 65535);
  const prefix = c.string('prefix', 'gravitas', (s) => (isName(s, 32) ? undefined : 'may only contain A-Z a-z 0-9 _ - (at most 32)'))!;
  const cfg: NodeConfig = {
    nodeId: c.string('nodeId', `${hostname().replace(/[^A-Za-z0-9_-]/g, '-').slice(0, 24)}-${randomBytes(3).toString('hex')}`, (s) => (isName(s, 48) ? undefined : 'may only contain A-Z a-z 0-9 _ - (at most 48)'))!,
    nats: { servers },
    prefix,
    cells: c.int('cells', availableParallelism(), 1, 256),
    listen: { host: listenHost, basePort, webBasePort: c.int('listen.webBasePort', basePort === 0 ? 0 : 7600, 0, 65535) },
    web,
    network,
    advertiseHost: c.string('advertiseHost', listenHost === '0.0.0.0' || listenHost === '::' ? hostname() : listenHost, hostName)!,
    admin,
    dataDir: c.string('dataDir', './data')!,
    serverKey: c.string('serverKey', undefined, key32) ?? (c.get('serverKey') === undefined ? c.fail('serverKey', 'is required (see `gravitas keygen`)') ?? '' : ''),
    ticketKeys,
    ticketLifetimeMs: c.int('ticketLifetimeMs', 24 * 3600_000, 60_000, MAX_TICKET_LIFETIME_MS),
    registration: { ...registration, link: validateRegistrationLink(c) },
    membership: { heartbeatMs: c.int('membership.heartbeatMs', 1000, 100, 60_000), timeoutMs: c.int('membership.timeoutMs', 5000, 300, 600_000) },
    replicas: c.int('replicas', 1, 1, 5),
    mailbox,
    gravity,
    tracking,
    campaigns,
    push: validatePushConfig(c),
    relay: validateRelayConfig(c),
    groups,
    limits,
    testHooks: c.bool('testHooks', false),
  };
  const natsToken = c.string('nats.token', undefined);
  if (natsToken) cfg.nats.token = natsToken;
  const natsUser = c.string('nats.user', undefined);
  const natsPass = c.string('nats.pass', undefined);
  if (natsUser) cfg.nats.user = natsUser;
  if (natsPass) cfg.nats.pass = natsPass;
  const adminToken = c.string('admin.token', undefined);
  if (adminToken) cfg.admin.token = adminToken;

  if (cfg.listen.basePort !== 0 && cfg.listen.basePort + cfg.cells - 1 > 65535) c.fail('listen.basePort', `base port + cells exceeds 65535`);
  if (web.enabled && cfg.listen.webBasePort !== 0) {
    const { webBasePort } = cfg.listen;
    if (webBasePort + cfg.cells - 1 > 65535) c.fail('listen.webBasePort', 'web base port + cells exceeds 65535');
    else if (basePort !== 0 && webBasePort < basePort + cfg.cells && basePort < webBasePort + cfg.cells) c.fail('listen.webBasePort', 'the web ports overlap the TCP ports (basePort .. basePort + cells - 1)');
  }
  if (cfg.membership.timeoutMs < 2 * cfg.membership.heartbeatMs) c.fail('membership.timeoutMs', 'must be at least twice membership.heartbeatMs');
  checkLimitBudgets(c, limits);
  if (c.issues.length > 0) throw new ConfigError([...c.issues]);
  explicit.set(cfg, new Set(FD_CAP_SETTINGS.filter((p) => c.get(p) !== undefined)));
  return cfg;
}
