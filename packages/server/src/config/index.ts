import { readFileSync } from 'node:fs';
import { availableParallelism, hostname } from 'node:os';
import { randomBytes } from 'node:crypto';
import { fromBase64Url, isName, HARD_MAX_FRAME_BYTES, HTTP_UP_ROTATE_BYTES, HTTP_UP_ROTATE_FRAMES, MAX_TICKET_LIFETIME_MS, DEFAULT_MAX_FRAME_BYTES, MAX_HINT_LIFETIME_MS } from '@gravitas/protocol';
import { ConfigError, ServerError, ServerErrorCode, type ConfigIssue } from '../infra/errors.js';
import { budgetShares } from '../infra/rate.js';
import { parseCidr } from '../infra/addresses.js';
import { PUSH_KEYS, validatePushConfig, type PushConfig } from './push.js';
import { RELAY_KEYS, validateRelayConfig, type RelayConfig } from './relay.js';

/** The validated configuration of one node. docs/operations.md documents every field. */
export interface Limits {
  maxFrameBytes: number;
  maxConnectionsPerCell: number;
  handshakeTimeoutMs: number;
  maxHandshakesInFlight: number;
  /** Above this many handshakes per second on a cell, clients must first echo a cookie. */
  cookieThresholdPerSec: number;
  idleTimeoutMs: number;
  /** Messages a session may send (token bucket). */
  msgRatePerSec: number;
  msgBurst: number;
  /** Deliveries a session's messages may cause: a message costs its target devices (1:1) or its group's members. */
  fanoutRatePerSec: number;
  fanoutBurst: number;
  /** Read receipts a session may send. */
  readRatePerSec: number;
  readBurst: number;
  /** Requests (`req`) a session may make. */
  requestRatePerSec: number;
  requestBurst: number;
  /** Pings and presence changes a session may send. */
  controlRatePerSec: number;
  controlBurst: number;
  /** The same per account, all its devices together, cluster-wide (leased budgets, cell/budgets.ts). */
  accountMsgRatePerSec: number;
  accountFanoutRatePerSec: number;
  accountReadRatePerSec: number;
  accountRequestRatePerSec: number;
  maxInFlightPerSession: number;
  custodyWindowMs: number;
  maxOutboundBytes: number;
  maxInboxDepth: number;
  maxDevicesPerUser: number;
  maxGroupSize: number;
}

/** Durable mailboxes on JetStream; docs/operations.md says what production needs. */
export interface MailboxConfig {
  /** Streams the users are spread over (by a hash of the user id); fixed for the cluster's life. */
  partitions: number;
  /** Undelivered messages older than this expire and their senders get an `expired` receipt. */
  retentionMs: number;
  /**
   * Size cap of each partition stream (bytes); past it stores fail with MAILBOX_FULL.
   * 0: no per-stream cap, the JetStream server's max_file_store bounds them all. A cap
   * is reserved up front by JetStream, so caps × streams must fit in that store.
   */
  maxBytesPerPartition: number;
  /** How often the expiry sweep runs. */
  sweepIntervalMs: number;
  /** Mailbox messages in flight to one device during a drain (backpressure). */
  drainWindow: number;
}

/** Gravitation (docs/gravitation.md): sessions that talk to each other move onto one cell. */
export interface GravityConfig {
  /** Off: no exchanges and no hints; traffic is still counted for the locality metric. */
  enabled: boolean;
  /** Mean time between a cell's exchange attempts (each waits 0.5–1.5× this, jittered). */
  intervalMs: number;
  /** After an exchange, the same two cells do not exchange again for this long. */
  cooldownMs: number;
  /** Load tolerance: no cell takes sessions beyond (1 + epsilon) × the cluster mean. */
  epsilon: number;
  /** Sessions moved by one exchange (both directions together). */
  maxMovesPerExchange: number;
  /** Sessions one cell sends away per second at most (token bucket, burst = maxMovesPerExchange). */
  migrationsPerSec: number;
  /** Entries of the per-cell (session, cell) traffic sketch: fixed memory. */
  sketchSize: number;
  /** Traffic counts halve over this time, so placement follows who talks now. */
  halfLifeMs: number;
  /** A session is not moved within this time of connecting (or of its last move). */
  minDwellMs: number;
  /** A move must bring at least this much decayed traffic onto one cell. */
  minGain: number;
  /** Lifetime of the connect hints this cell signs. */
  hintTtlMs: number;
}

/** Campaign tracking tiers (docs/campaigns.md): the node's LMDB, shipped to the JetStream archive. */
export interface TrackingConfig {
  /** Records older than this leave the local tier (once archived). */
  maxAgeMs: number;
  /** Local tier budget in bytes of records; past it, with nothing archived to evict, intake answers RETRY_LATER. */
  maxBytes: number;
  /** Archive retention (JetStream max age of the tracking stream). */
  archiveMaxAgeMs: number;
  /** Records shipped to the archive per batch. */
  shipBatch: number;
  /** Feedback timestamps further than this from the server clock are refused (BAD_MESSAGE). */
  maxClockSkewMs: number;
}

/** Message campaigns (docs/campaigns.md). */
export interface CampaignConfig {
  /** Recipients per send job. */
  batchSize: number;
  /** Default and upper bound of a campaign's send rate (recipients per second, cluster-wide). */
  defaultRatePerSec: number;
  maxRatePerSec: number;
  /** Explicit audience lists at most this long. */
  maxListSize: number;
}

/** The web listener of each cell: WebSocket and chunked HTTP (docs/transports.md). */
export interface WebConfig {
  /** Off: cells have only their TCP listener. */
  enabled: boolean;
  /** Origins a browser may connect from ("*": any; the protocol authenticates, no cookies are used). */
  corsOrigins: string[];
  /** A request head (request line and headers) longer than this is refused (HEADERS_TOO_LARGE). */
  maxHeaderBytes: number;
  /** A request head must be complete within this time (REQUEST_TIMEOUT: slowloris). */
  headerTimeoutMs: number;
  /** Largest chunk of an upstream body (CHUNK_TOO_LARGE); at least limits.maxFrameBytes + 4. */
  maxChunkBytes: number;
  /** Chunks in one upstream request (TOO_MANY_CHUNKS); the SDK starts a new request well before. */
  maxChunksPerRequest: number;
  /** Body bytes of one upstream request (BODY_TOO_LARGE). */
  maxBodyBytes: number;
  /** Downstreams no upstream has claimed yet (beyond: STREAM_BUSY); each expires with the handshake timeout. */
  maxPendingStreams: number;
  /** Raw connections on a cell's web listener (beyond: 503 BUSY). Default: 2 × limits.maxConnectionsPerCell. */
  maxConnections: number;
}

/**
 * Where connections come from and how many one source may hold, per cell
 * (docs/security.md, "Connections per source"). A source is a client IP address; its prefix is
 * its /24 (IPv4) or /64 (IPv6).
 */
export interface NetworkConfig {
  /** CIDRs of proxies whose report of the client address is believed: PROXY protocol on TCP, X-Forwarded-For on the web listener. */
  trustedProxies: string[];
  /** Open connections (TCP and web together) per source, and per prefix. */
  maxConnectionsPerSource: number;
  maxConnectionsPerPrefix: number;
  /** Connections still in their handshake (session not open) per source, and per prefix. */
  maxHandshakesPerSource: number;
  maxHandshakesPerPrefix: number;
  /** Chunked-HTTP downstreams waiting for their first upstream per source, and per prefix. */
  maxPendingStreamsPerSource: number;
  maxPendingStreamsPerPrefix: number;
}

/** The admin HTTP server (admin.ts). */
export interface AdminConfig {
  host: string;
  port: number;
  token?: string;
  /** Open connections at most (beyond: closed at accept), and per client address. */
  maxConnections: number;
  maxConnectionsPerSource: number;
  /** A request head must be complete this long after the connection opened or the previous answer (408). */
  headerTimeoutMs: number;
  /** A whole request, body included, must arrive within this (408). */
  requestTimeoutMs: number;
  /** An idle kept-alive connection is closed after this. */
  keepAliveTimeoutMs: number;
}

/**
 * A credential from the operator's auth service (docs/security.md, "Credentials"):
 * a short-lived JWT naming the user (`sub`), the device (`device`) and the device's
 * public key (`cnf.jwk`), signed by a key of the JWKS given inline or at a URL.
 */
export interface CredentialConfig {
  /** `iss` every credential must carry. */
  issuer: string;
  /** `aud` every credential must carry. */
  audience: string;
  /** Signature algorithms accepted (an allow-list: the token never chooses). */
  algorithms: CredentialAlgorithm[];
  /** The verification keys, inline (a JWKS: { keys: [...] }) … */
  jwks?: { keys: Array<Record<string, unknown>> };
  /** … or fetched from this URL (cached; fetched again for an unknown `kid`, at most every 30 s). */
  jwksUrl?: string;
  /** Longest accepted lifetime (exp − iat) and age (now − iat) of a credential. */
  maxLifetimeMs: number;
  /** Clock skew allowed on exp, nbf and iat. */
  clockToleranceMs: number;
}

export const CREDENTIAL_ALGORITHMS = ['EdDSA', 'ES256', 'RS256'] as const;
export type CredentialAlgorithm = (typeof CREDENTIAL_ALGORITHMS)[number];

/** How devices join accounts (docs/security.md, "Registration"). */
export interface RegistrationConfig {
  /**
   * What lets a device join: `credential` (production) a credential from the operator's
   * auth service, for a new account or one more device; `token` (development) a shared
   * token creates new accounts only; `open` (development) anyone registers anything.
   * In every mode an account's existing device may approve a new one (`link`), and a
   * configured credential is accepted too.
   */
  mode: 'credential' | 'token' | 'open';
  token?: string;
  credential?: CredentialConfig;
  /** Device linking: an existing device approves a new device's key (`devices.link`). */
  link: { enabled: boolean; ttlMs: number };
}

/**
 * Group membership by consent (docs/groups.md#consent). `invite`: named users are
 * invited and join when they accept; `contacts`: only users who list the adder as
 * a contact can be added, and they join at once.
 */
export interface GroupsConfig {
  policy: 'invite' | 'contacts';
  /** Groups one user may be in (TOO_MANY_GROUPS when creating or accepting beyond). */
  maxPerUser: number;
  /** Pending invitations one user holds; beyond, the oldest is dropped. */
  maxInvitesPerUser: number;
  /** An invitation not accepted within this time lapses. */
  inviteTtlMs: number;
}

export interface NodeConfig {
  nodeId: string;
  nats: { servers: string[]; token?: string; user?: string; pass?: string };
  prefix: string;
  cells: number;
  /** TCP listener of cell i on basePort + i; web listener (if web.enabled) on webBasePort + i. 0: the OS picks. */
  listen: { host: string; basePort: number; webBasePort: number };
  web: WebConfig;
  network: NetworkConfig;
  advertiseHost: string;
  admin: AdminConfig;
  dataDir: string;
  /** The cluster's X25519 server key (secret half, base64url). */
  serverKey: string;
  /** Ticket keys, current first; the second, if any, is only accepted (rotation). */
  ticketKeys: Array<{ id: number; key: string }>;
  ticketLifetimeMs: number;
  registration: RegistrationConfig;
  membership: { heartbeatMs: number; timeoutMs: number };
  /** Copies of every JetStream stream and KV bucket in a NATS cluster (1 for one server; 3 in production). */
  replicas: number;
  mailbox: MailboxConfig;
  gravity: GravityConfig;
  tracking: TrackingConfig;
  campaigns: CampaignConfig;
  /** Push gateway and muting (docs/push.md). */
  push: PushConfig;
  /** Wake-ups relayed through peer devices (docs/relay.md). */
  relay: RelayConfig;
  groups: GroupsConfig;
  limits: Limits;
  testHooks: boolean;
}

export const DEFAULT_LIMITS: Limits = {
  maxFrameBytes: DEFAULT_MAX_FRAME_BYTES,
  maxConnectionsPerCell: 15_000,
  handshakeTimeoutMs: 10_000,
  maxHandshakesInFlight: 512,
  cookieThresholdPerSec: 5_000,
  idleTimeoutMs: 120_000,
  msgRatePerSec: 200,
  msgBurst: 400,
  fanoutRatePerSec: 2_000,
  fanoutBurst: 4_096,
  readRatePerSec: 50,
  readBurst: 200,
  requestRatePerSec: 20,
  requestBurst: 100,
  controlRatePerSec: 10,
  controlBurst: 100,
  accountMsgRatePerSec: 400,
  accountFanoutRatePerSec: 4_000,
  accountReadRatePerSec: 100,
  accountRequestRatePerSec: 40,
  maxInFlightPerSession: 1024,
  custodyWindowMs: 3_000,
  maxOutboundBytes: 4 * 1024 * 1024,
  maxInboxDepth: 256,
  maxDevicesPerUser: 8,
  maxGroupSize: 1024,
};

export const DEFAULT_GROUPS: GroupsConfig = {
  policy: 'invite',
  maxPerUser: 512,
  maxInvitesPerUser: 256,
  inviteTtlMs: 7 * 24 * 3600_000,
};

export const DEFAULT_WEB: WebConfig = {
  enabled: true,
  corsOrigins: ['*'],
  maxHeaderBytes: 8192,
  headerTimeoutMs: 10_000,
  maxChunkBytes: 128 * 1024,
  maxChunksPerRequest: 100_000,
  maxBodyBytes: 64 * 1024 * 1024,
  maxPendingStreams: 1024,
  maxConnections: 2 * DEFAULT_LIMITS.maxConnectionsPerCell,
};

export const DEFAULT_NETWORK: NetworkConfig = {
  trustedProxies: [],
  // Carrier-grade NAT puts many users behind one address: generous per source, more per prefix.
  maxConnectionsPerSource: 256,
  maxConnectionsPerPrefix: 2048,
  maxHandshakesPerSource: 32,
  maxHandshakesPerPrefix: 256,
  maxPendingStreamsPerSource: 8,
  maxPendingStreamsPerPrefix: 64,
};

export const DEFAULT_ADMIN: Omit<AdminConfig, 'token'> = {
  host: '127.0.0.1',
  port: 7300,
  maxConnections: 64,
  maxConnectionsPerSource: 16,
  headerTimeoutMs: 5_000,
  requestTimeoutMs: 15_000,
  keepAliveTimeoutMs: 5_000,
};

export const DEFAULT_MAILBOX: MailboxConfig = {
  partitions: 4,
  retentionMs: 30 * 24 * 3600_000,
  maxBytesPerPartition: 0,
  sweepIntervalMs: 60_000,
  drainWindow: 256,
};

export const DEFAULT_GRAVITY: GravityConfig = {
  enabled: true,
  intervalMs: 5_000,
  cooldownMs: 30_000,
  epsilon: 0.1,
  maxMovesPerExchange: 64,
  migrationsPerSec: 50,
  sketchSize: 8192,
  halfLifeMs: 60_000,
  minDwellMs: 30_000,
  minGain: 2,
  hintTtlMs: 30_000,
};

export const DEFAULT_TRACKING: TrackingConfig = {
  maxAgeMs: 7 * 24 * 3600_000,
  maxBytes: 1024 ** 3,
  archiveMaxAgeMs: 400 * 24 * 3600_000,
  shipBatch: 512,
  maxClockSkewMs: 24 * 3600_000,
};

export const DEFAULT_CAMPAIGNS: CampaignConfig = {
  batchSize: 100,
  defaultRatePerSec: 1000,
  maxRatePerSec: 100_000,
  maxListSize: 100_000,
};

type Json = Record<string, unknown>;

function isJson(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Deep-merge plain objects; arrays and scalars from `b` replace those of `a`. */
function merge(a: Json, b: Json): Json {
  const out: Json = { ...a };
  for (const [k, v] of Object.entries(b)) {
    if (v === undefined) continue;
    out[k] = isJson(v) && isJson(out[k]) ? merge(out[k] as Json, v) : v;
  }
  return out;
}

function setPath(o: Json, path: string, v: unknown): void {
  const parts = path.split('.');
  let cur = o;
  for (const p of parts.slice(0, -1)) {
    if (!isJson(cur[p])) cur[p] = {};
    cur = cur[p] as Json;
  }
  cur[parts[parts.length - 1]!] = v;
}

/** Environment variables and the config path each sets. Values are strings, coerced by validation. */
export const ENV_VARS: Record<string, string> = {
  GRAVITAS_NODE_ID: 'nodeId',
  GRAVITAS_NATS_SERVERS: 'nats.servers',
  GRAVITAS_NATS_TOKEN: 'nats.token',
  GRAVITAS_PREFIX: 'prefix',
  GRAVITAS_CELLS: 'cells',
  GRAVITAS_LISTEN_HOST: 'listen.host',
  GRAVITAS_BASE_PORT: 'listen.basePort',
  GRAVITAS_WEB_BASE_PORT: 'listen.webBasePort',
  GRAVITAS_WEB: 'web.enabled',
  GRAVITAS_CORS_ORIGINS: 'web.corsOrigins',
  GRAVITAS_ADVERTISE_HOST: 'advertiseHost',
  GRAVITAS_ADMIN_HOST: 'admin.host',
  GRAVITAS_ADMIN_PORT: 'admin.port',
  GRAVITAS_ADMIN_TOKEN: 'admin.token',
  GRAVITAS_TRUSTED_PROXIES: 'network.trustedProxies',
  GRAVITAS_DATA_DIR: 'dataDir',
  GRAVITAS_SERVER_KEY: 'serverKey',
  GRAVITAS_TICKET_KEYS: 'ticketKeys',
  GRAVITAS_REGISTRATION_MODE: 'registration.mode',
  GRAVITAS_REGISTRATION_TOKEN: 'registration.token',
  GRAVITAS_CREDENTIAL_ISSUER: 'registration.credential.issuer',
  GRAVITAS_CREDENTIAL_AUDIENCE: 'registration.credential.audience',
  GRAVITAS_CREDENTIAL_JWKS_URL: 'registration.credential.jwksUrl',
  GRAVITAS_MAILBOX_PARTITIONS: 'mailbox.partitions',
  GRAVITAS_REPLICAS: 'replicas',
  GRAVITAS_GRAVITY: 'gravity.enabled',
};

/** Command-line flags and the config path each sets. */
export const FLAGS: Record<string, string> = {
  'node-id': 'nodeId',
  nats: 'nats.servers',
  prefix: 'prefix',
  cells: 'cells',
  host: 'listen.host',
  port: 'listen.basePort',
  'web-port': 'listen.webBasePort',
  web: 'web.enabled',
  'cors-origins': 'web.corsOrigins',
  advertise: 'advertiseHost',
  'admin-host': 'admin.host',
  'admin-port': 'admin.port',
  'trusted-proxies': 'network.trustedProxies',
  'data-dir': 'dataDir',
  'server-key': 'serverKey',
  'ticket-keys': 'ticketKeys',
  registration: 'registration.mode',
  replicas: 'replicas',
  gravity: 'gravity.enabled',
  'registration-token': 'registration.token',
  'credential-issuer': 'registration.credential.issuer',
  'credential-audience': 'registration.credential.audience',
  'credential-jwks-url': 'registration.credential.jwksUrl',
};

export interface ConfigSources {
  file?: string;
  env?: NodeJS.ProcessEnv;
  /** Parsed flags, keyed by flag name without dashes. */
  flags?: Record<string, string>;
  /** Programmatic overrides (tests, `gravitas dev`). Highest precedence. */
  overrides?: Json;
}

/** Loads file < env < flags < overrides, then validates. Throws ConfigError listing every problem. */
export function loadConfig(src: ConfigSources = {}): NodeConfig {
  let raw: Json = {};
  if (src.file) {
    let text: string;
    try {
      text = readFileSync(src.file, 'utf8');
    } catch (err) {
      throw new ServerError(ServerErrorCode.CONFIG_UNREADABLE, `cannot read config file ${src.file}: ${(err as Error).message}`, { cause: err });
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch (err) {
      throw new ConfigError([{ path: src.file, message: `not valid JSON: ${(err as Error).message}` }]);
    }
    if (!isJson(parsed)) throw new ConfigError([{ path: src.file, message: 'must contain a JSON object' }]);
    raw = parsed;
  }
  const env: Json = {};
  for (const [name, path] of Object.entries(ENV_VARS)) {
    const v = src.env?.[name];
    if (v !== undefined && v !== '') setPath(env, path, v);
  }
  const flags: Json = {};
  for (const [name, v] of Object.entries(src.flags ?? {})) {
    const path = FLAGS[name];
    if (!path) throw new ConfigError([{ path: `--${name}`, message: 'unknown flag' }]);
    setPath(flags, path, v);
  }
  return validateConfig(merge(merge(merge(raw, env), flags), src.overrides ?? {}));
}

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

const CREDENTIAL_KEYS = new Set(['issuer', 'audience', 'algorithms', 'jwks', 'jwksUrl', 'maxLifetimeMs', 'clockToleranceMs']);

/** registration.credential: undefined when absent or broken (every problem goes to `fail`). */
function validateCredential(v: unknown, fail: (path: string, message: string) => undefined): CredentialConfig | undefined {
  if (v === undefined) return undefined;
  const at = (k: string): string => `registration.credential.${k}`;
  if (!isJson(v)) return fail('registration.credential', 'must be an object { issuer, audience, jwks or jwksUrl, … }');
  let ok = true;
  const bad = (path: string, message: string): undefined => {
    ok = false;
    return fail(path, message);
  };
  for (const k of Object.keys(v)) if (!CREDENTIAL_KEYS.has(k)) bad(at(k), 'unknown setting');
  const text = (k: string, def?: string): string | undefined => {
    const x = v[k];
    if (x === undefined) return def;
    if (typeof x !== 'string' || x.length === 0 || x.length > 1024) return bad(at(k), 'must be a non-empty string');
    return x;
  };
  const ms = (k: string, def: number, min: number, max: number): number => {
    let x = v[k];
    if (x === undefined) return def;
    if (typeof x === 'string' && /^\d+$/.test(x)) x = Number(x);
    if (typeof x !== 'number' || !Number.isInteger(x) || x < min || x > max) return bad(at(k), `must be an integer between ${min} and ${max}`) ?? def;
    return x;
  };
  const issuer = text('issuer') ?? bad(at('issuer'), 'is required: the `iss` your auth service puts in credentials');
  const audience = text('audience', 'gravitas');
  let algorithms = v.algorithms ?? [...CREDENTIAL_ALGORITHMS];
  if (typeof algorithms === 'string') algorithms = algorithms.split(',').map((a) => a.trim());
  if (!Array.isArray(algorithms) || algorithms.length === 0 || !algorithms.every((a) => (CREDENTIAL_ALGORITHMS as readonly unknown[]).includes(a))) {
    bad(at('algorithms'), `must be a non-empty list of ${CREDENTIAL_ALGORITHMS.join(', ')}`);
  }
  const jwksUrl = text('jwksUrl');
  if (jwksUrl !== undefined) {
    let u: URL | undefined;
    try {
      u = new URL(jwksUrl);
    } catch {
      bad(at('jwksUrl'), 'must be an absolute URL');
    }
    // Plain http would let anyone on the path swap the keys: only for a service on this host.
    if (u && u.protocol !== 'https:' && !(u.protocol === 'http:' && /^(127\.\d+\.\d+\.\d+|localhost|\[::1\])$/.test(u.hostname))) bad(at('jwksUrl'), 'must be an https URL (http only on loopback)');
  }
  const jwks = v.jwks;
  if (jwks !== undefined && !(isJson(jwks) && Array.isArray(jwks.keys) && jwks.keys.length > 0 && jwks.keys.every((k) => isJson(k) && typeof k.kty === 'string'))) {
    bad(at('jwks'), 'must be a JWKS: { "keys": [ { "kty": …, "kid": …, … } ] }');
  }
  if ((jwks === undefined) === (jwksUrl === undefined)) bad('registration.credential', 'needs exactly one of jwks (inline keys) and jwksUrl');
  const maxLifetimeMs = ms('maxLifetimeMs', 15 * 60_000, 10_000, 24 * 3600_000);
  const clockToleranceMs = ms('clockToleranceMs', 30_000, 0, 5 * 60_000);
  if (!ok || issuer === undefined || audience === undefined) return undefined;
  return {
    issuer, audience, algorithms: algorithms as CredentialAlgorithm[], maxLifetimeMs, clockToleranceMs,
    ...(jwks !== undefined && { jwks: jwks as CredentialConfig['jwks'] & object }), ...(jwksUrl !== undefined && { jwksUrl }),
  };
}

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

/** Validates a merged raw configuration, coercing strings from env/flags. */
export function validateConfig(raw: Json): NodeConfig {
  const issues: ConfigIssue[] = [];
  const fail = (path: string, message: string): undefined => {
    issues.push({ path, message });
    return undefined;
  };
  const get = (path: string): unknown => path.split('.').reduce<unknown>((o, k) => (isJson(o) ? o[k] : undefined), raw);

  for (const k of Object.keys(raw)) if (!KNOWN_TOP.has(k)) fail(k, 'unknown setting');
  // Sections too: a misspelt limit would otherwise silently keep its default.
  for (const [section, known] of Object.entries(KNOWN_NESTED)) {
    const v = raw[section];
    if (v === undefined) continue;
    if (!isJson(v)) fail(section, 'must be an object');
    else for (const k of Object.keys(v)) if (!known.has(k)) fail(`${section}.${k}`, 'unknown setting');
  }

  const int = (path: string, def: number, min: number, max: number): number => {
    let v = get(path);
    if (v === undefined) return def;
    if (typeof v === 'string' && /^-?\d+$/.test(v.trim())) v = Number(v);
    if (typeof v !== 'number' || !Number.isInteger(v)) return fail(path, `must be an integer, got ${JSON.stringify(v)}`) ?? def;
    if (v < min || v > max) return fail(path, `must be between ${min} and ${max}, got ${v}`) ?? def;
    return v;
  };
  const string = (path: string, def: string | undefined, check?: (s: string) => string | undefined): string | undefined => {
    const v = get(path);
    if (v === undefined) return def;
    if (typeof v !== 'string' || v.length === 0) return fail(path, 'must be a non-empty string');
    const why = check?.(v);
    return why ? fail(path, why) : v;
  };
  const num = (path: string, def: number, min: number, max: number): number => {
    let v = get(path);
    if (v === undefined) return def;
    if (typeof v === 'string' && v.trim() !== '') v = Number(v);
    if (typeof v !== 'number' || !Number.isFinite(v)) return fail(path, `must be a number, got ${JSON.stringify(v)}`) ?? def;
    if (v < min || v > max) return fail(path, `must be between ${min} and ${max}, got ${v}`) ?? def;
    return v;
  };
  const bool = (path: string, def: boolean): boolean => {
    const v = get(path);
    if (v === undefined) return def;
    if (v === true || v === 'true' || v === '1') return true;
    if (v === false || v === 'false' || v === '0') return false;
    return fail(path, 'must be true or false') ?? def;
  };
  const key32 = (s: string): string | undefined => {
    try {
      fromBase64Url(s, 32);
      return undefined;
    } catch {
      return 'must be 32 bytes in base64url (see `gravitas keygen`)';
    }
  };
  const host = (s: string): string | undefined => (/^[A-Za-z0-9.:_-]+$/.test(s) ? undefined : 'must be a host name or IP address');

  let servers = get('nats.servers');
  if (typeof servers === 'string') servers = servers.split(',').map((s) => s.trim()).filter(Boolean);
  if (servers === undefined) servers = ['nats://127.0.0.1:4222'];
  if (!Array.isArray(servers) || servers.length === 0 || !servers.every((s) => typeof s === 'string' && /^(nats|tls):\/\/[^\s/]+$|^[^\s/:]+:\d+$/.test(s))) {
    fail('nats.servers', 'must be a list of nats://host:port URLs (or host:port)');
    servers = [];
  }

  let ticketKeys = get('ticketKeys');
  if (typeof ticketKeys === 'string') {
    ticketKeys = ticketKeys.split(',').map((pair) => {
      const [id, key] = pair.split(':');
      return { id: Number(id), key };
    });
  }
  const tk: Array<{ id: number; key: string }> = [];
  if (!Array.isArray(ticketKeys) || ticketKeys.length < 1 || ticketKeys.length > 2) {
    fail('ticketKeys', 'must list 1 or 2 ticket keys ({ id, key }), current first (see `gravitas keygen`)');
  } else {
    ticketKeys.forEach((k: unknown, i) => {
      if (!isJson(k) || !Number.isInteger(k.id) || (k.id as number) < 0 || (k.id as number) > 255 || typeof k.key !== 'string' || key32(k.key)) {
        fail(`ticketKeys[${i}]`, 'must be { id: 0..255, key: 32 bytes base64url }');
      } else tk.push({ id: k.id as number, key: k.key });
    });
    if (tk.length === 2 && tk[0]!.id === tk[1]!.id) fail('ticketKeys', 'current and previous key need different ids');
  }

  const mode = string('registration.mode', 'credential');
  if (mode !== 'open' && mode !== 'token' && mode !== 'credential') fail('registration.mode', 'must be "credential", "token" (development) or "open" (development)');
  const regToken = string('registration.token', undefined);
  if (mode === 'token' && !regToken) fail('registration.token', 'is required when registration.mode is "token" (a development setting: use "credential" in production)');
  if (regToken !== undefined && regToken.length < 16) fail('registration.token', 'must be at least 16 characters');
  const credential = validateCredential(get('registration.credential'), fail);
  if (mode === 'credential' && !credential && get('registration.credential') === undefined) {
    fail('registration.credential', 'is required when registration.mode is "credential" ({ issuer, jwks or jwksUrl }; docs/security.md), or choose a development mode ("token", "open")');
  }
  const link = get('registration.link');
  if (link !== undefined && !isJson(link)) fail('registration.link', 'must be an object { enabled, ttlMs }');
  else if (link !== undefined) for (const k of Object.keys(link)) if (k !== 'enabled' && k !== 'ttlMs') fail(`registration.link.${k}`, 'unknown setting');

  const L = DEFAULT_LIMITS;
  const limits: Limits = {
    maxFrameBytes: int('limits.maxFrameBytes', L.maxFrameBytes, 1024, HARD_MAX_FRAME_BYTES),
    maxConnectionsPerCell: int('limits.maxConnectionsPerCell', L.maxConnectionsPerCell, 1, 1_000_000),
    handshakeTimeoutMs: int('limits.handshakeTimeoutMs', L.handshakeTimeoutMs, 100, 120_000),
    maxHandshakesInFlight: int('limits.maxHandshakesInFlight', L.maxHandshakesInFlight, 1, 100_000),
    cookieThresholdPerSec: int('limits.cookieThresholdPerSec', L.cookieThresholdPerSec, 0, 1_000_000),
    idleTimeoutMs: int('limits.idleTimeoutMs', L.idleTimeoutMs, 1000, 3_600_000),
    msgRatePerSec: int('limits.msgRatePerSec', L.msgRatePerSec, 1, 1_000_000),
    msgBurst: int('limits.msgBurst', L.msgBurst, 1, 1_000_000),
    fanoutRatePerSec: int('limits.fanoutRatePerSec', L.fanoutRatePerSec, 1, 10_000_000),
    fanoutBurst: int('limits.fanoutBurst', L.fanoutBurst, 1, 10_000_000),
    readRatePerSec: int('limits.readRatePerSec', L.readRatePerSec, 1, 1_000_000),
    readBurst: int('limits.readBurst', L.readBurst, 1, 1_000_000),
    requestRatePerSec: int('limits.requestRatePerSec', L.requestRatePerSec, 1, 1_000_000),
    requestBurst: int('limits.requestBurst', L.requestBurst, 1, 1_000_000),
    controlRatePerSec: int('limits.controlRatePerSec', L.controlRatePerSec, 1, 1_000_000),
    controlBurst: int('limits.controlBurst', L.controlBurst, 1, 1_000_000),
    accountMsgRatePerSec: int('limits.accountMsgRatePerSec', L.accountMsgRatePerSec, 1, 10_000_000),
    accountFanoutRatePerSec: int('limits.accountFanoutRatePerSec', L.accountFanoutRatePerSec, 1, 100_000_000),
    accountReadRatePerSec: int('limits.accountReadRatePerSec', L.accountReadRatePerSec, 1, 10_000_000),
    accountRequestRatePerSec: int('limits.accountRequestRatePerSec', L.accountRequestRatePerSec, 1, 10_000_000),
    maxInFlightPerSession: int('limits.maxInFlightPerSession', L.maxInFlightPerSession, 1, 100_000),
    custodyWindowMs: int('limits.custodyWindowMs', L.custodyWindowMs, 100, 600_000),
    maxOutboundBytes: int('limits.maxOutboundBytes', L.maxOutboundBytes, 64 * 1024, 1024 ** 3),
    maxInboxDepth: int('limits.maxInboxDepth', L.maxInboxDepth, 1, 100_000),
    maxDevicesPerUser: int('limits.maxDevicesPerUser', L.maxDevicesPerUser, 1, 64),
    maxGroupSize: int('limits.maxGroupSize', L.maxGroupSize, 2, 100_000),
  };
  const GR = DEFAULT_GROUPS;
  const policy = get('groups.policy') ?? GR.policy;
  if (policy !== 'invite' && policy !== 'contacts') fail('groups.policy', `must be "invite" or "contacts", got ${JSON.stringify(policy)}`);
  const groups: GroupsConfig = {
    policy: policy === 'contacts' ? 'contacts' : 'invite',
    maxPerUser: int('groups.maxPerUser', GR.maxPerUser, 1, 100_000),
    maxInvitesPerUser: int('groups.maxInvitesPerUser', GR.maxInvitesPerUser, 1, 4096),
    inviteTtlMs: int('groups.inviteTtlMs', GR.inviteTtlMs, 1000, 365 * 24 * 3600_000),
  };
  const W = DEFAULT_WEB;
  let origins = get('web.corsOrigins');
  if (typeof origins === 'string') origins = origins.split(',').map((s) => s.trim()).filter(Boolean);
  if (origins === undefined) origins = W.corsOrigins;
  if (!Array.isArray(origins) || origins.length === 0 || !origins.every((o) => typeof o === 'string' && (o === '*' || /^https?:\/\/[A-Za-z0-9.:[\]-]+$/.test(o)))) {
    fail('web.corsOrigins', 'must be a list of origins (http(s)://host[:port]) or "*"');
    origins = W.corsOrigins;
  }
  const web: WebConfig = {
    enabled: bool('web.enabled', W.enabled),
    corsOrigins: origins as string[],
    maxHeaderBytes: int('web.maxHeaderBytes', W.maxHeaderBytes, 1024, 1024 * 1024),
    headerTimeoutMs: int('web.headerTimeoutMs', W.headerTimeoutMs, 100, 120_000),
    maxChunkBytes: int('web.maxChunkBytes', W.maxChunkBytes, 1028, 16 * 1024 * 1024),
    // Floors above what the SDK sends per upstream request (it starts a new one before), with room for re-chunking proxies.
    maxChunksPerRequest: int('web.maxChunksPerRequest', W.maxChunksPerRequest, 4 * HTTP_UP_ROTATE_FRAMES, 100_000_000),
    maxBodyBytes: int('web.maxBodyBytes', W.maxBodyBytes, 2 * HTTP_UP_ROTATE_BYTES, 2 ** 40),
    maxPendingStreams: int('web.maxPendingStreams', W.maxPendingStreams, 1, 1_000_000),
    maxConnections: int('web.maxConnections', 2 * limits.maxConnectionsPerCell, 1, 2_000_000),
  };
  if (web.maxChunkBytes < limits.maxFrameBytes + 4) fail('web.maxChunkBytes', `must be at least limits.maxFrameBytes + 4 (${limits.maxFrameBytes + 4}): the SDK sends one frame per chunk`);
  const N = DEFAULT_NETWORK;
  let proxies = get('network.trustedProxies');
  if (typeof proxies === 'string') proxies = proxies.split(',').map((s) => s.trim()).filter(Boolean);
  if (proxies === undefined) proxies = N.trustedProxies;
  if (!Array.isArray(proxies) || proxies.length > 1024 || !proxies.every((c) => typeof c === 'string')) {
    fail('network.trustedProxies', 'must be a list of CIDRs (e.g. ["10.0.0.0/8", "fd00::/8"]; comma-separated in env/flag), at most 1024');
    proxies = [];
  } else {
    for (const c of proxies as string[]) {
      const p = parseCidr(c);
      if (typeof p === 'string') fail('network.trustedProxies', p);
      // Trusting every address would let any client name any source (and so escape its caps).
      else if (p.prefix === 0) fail('network.trustedProxies', `"${c}" trusts every address: list the proxies' own addresses or networks`);
    }
  }
  const network: NetworkConfig = {
    trustedProxies: proxies as string[],
    maxConnectionsPerSource: int('network.maxConnectionsPerSource', N.maxConnectionsPerSource, 1, 1_000_000),
    maxConnectionsPerPrefix: int('network.maxConnectionsPerPrefix', N.maxConnectionsPerPrefix, 1, 1_000_000),
    maxHandshakesPerSource: int('network.maxHandshakesPerSource', N.maxHandshakesPerSource, 1, 100_000),
    maxHandshakesPerPrefix: int('network.maxHandshakesPerPrefix', N.maxHandshakesPerPrefix, 1, 100_000),
    maxPendingStreamsPerSource: int('network.maxPendingStreamsPerSource', N.maxPendingStreamsPerSource, 1, 1_000_000),
    maxPendingStreamsPerPrefix: int('network.maxPendingStreamsPerPrefix', N.maxPendingStreamsPerPrefix, 1, 1_000_000),
  };
  for (const k of ['Connections', 'Handshakes', 'PendingStreams'] as const) {
    if (network[`max${k}PerPrefix`] < network[`max${k}PerSource`]) fail(`network.max${k}PerPrefix`, `must be at least network.max${k}PerSource (${network[`max${k}PerSource`]}): a prefix holds its sources`);
  }
  const A = DEFAULT_ADMIN;
  const admin: AdminConfig = {
    host: string('admin.host', A.host, host)!,
    port: int('admin.port', A.port, 0, 65535),
    maxConnections: int('admin.maxConnections', A.maxConnections, 1, 100_000),
    maxConnectionsPerSource: int('admin.maxConnectionsPerSource', A.maxConnectionsPerSource, 1, 100_000),
    headerTimeoutMs: int('admin.headerTimeoutMs', A.headerTimeoutMs, 100, 120_000),
    requestTimeoutMs: int('admin.requestTimeoutMs', A.requestTimeoutMs, 100, 600_000),
    keepAliveTimeoutMs: int('admin.keepAliveTimeoutMs', A.keepAliveTimeoutMs, 100, 600_000),
  };
  if (admin.maxConnectionsPerSource > admin.maxConnections) fail('admin.maxConnectionsPerSource', `must not exceed admin.maxConnections (${admin.maxConnections})`);
  if (admin.requestTimeoutMs < admin.headerTimeoutMs) fail('admin.requestTimeoutMs', `must be at least admin.headerTimeoutMs (${admin.headerTimeoutMs}): the head is part of the request`);
  const M = DEFAULT_MAILBOX;
  const mailbox: MailboxConfig = {
    partitions: int('mailbox.partitions', M.partitions, 1, 1024),
    retentionMs: int('mailbox.retentionMs', M.retentionMs, 1000, 365 * 24 * 3600_000),
    maxBytesPerPartition: int('mailbox.maxBytesPerPartition', M.maxBytesPerPartition, 0, 2 ** 50),
    sweepIntervalMs: int('mailbox.sweepIntervalMs', M.sweepIntervalMs, 100, 3_600_000),
    drainWindow: int('mailbox.drainWindow', M.drainWindow, 1, 10_000),
  };

  const G = DEFAULT_GRAVITY;
  const gravity: GravityConfig = {
    enabled: bool('gravity.enabled', G.enabled),
    intervalMs: int('gravity.intervalMs', G.intervalMs, 100, 3_600_000),
    cooldownMs: int('gravity.cooldownMs', G.cooldownMs, 0, 3_600_000),
    epsilon: num('gravity.epsilon', G.epsilon, 0.01, 10),
    maxMovesPerExchange: int('gravity.maxMovesPerExchange', G.maxMovesPerExchange, 1, 10_000),
    migrationsPerSec: int('gravity.migrationsPerSec', G.migrationsPerSec, 1, 100_000),
    sketchSize: int('gravity.sketchSize', G.sketchSize, 16, 1_000_000),
    halfLifeMs: int('gravity.halfLifeMs', G.halfLifeMs, 100, 7 * 24 * 3600_000),
    minDwellMs: int('gravity.minDwellMs', G.minDwellMs, 0, 24 * 3600_000),
    minGain: num('gravity.minGain', G.minGain, 0, 1e9),
    hintTtlMs: int('gravity.hintTtlMs', G.hintTtlMs, 1000, MAX_HINT_LIFETIME_MS),
  };

  const T = DEFAULT_TRACKING;
  const tracking: TrackingConfig = {
    maxAgeMs: int('tracking.maxAgeMs', T.maxAgeMs, 1000, 10 * 365 * 24 * 3600_000),
    maxBytes: int('tracking.maxBytes', T.maxBytes, 64 * 1024, 2 ** 46),
    archiveMaxAgeMs: int('tracking.archiveMaxAgeMs', T.archiveMaxAgeMs, 1000, 100 * 365 * 24 * 3600_000),
    shipBatch: int('tracking.shipBatch', T.shipBatch, 1, 10_000),
    maxClockSkewMs: int('tracking.maxClockSkewMs', T.maxClockSkewMs, 1000, 365 * 24 * 3600_000),
  };
  const C = DEFAULT_CAMPAIGNS;
  const campaigns: CampaignConfig = {
    batchSize: int('campaigns.batchSize', C.batchSize, 1, 1000),
    defaultRatePerSec: int('campaigns.defaultRatePerSec', C.defaultRatePerSec, 1, 1_000_000),
    maxRatePerSec: int('campaigns.maxRatePerSec', C.maxRatePerSec, 1, 1_000_000),
    maxListSize: int('campaigns.maxListSize', C.maxListSize, 1, 10_000_000),
  };
  if (campaigns.defaultRatePerSec > campaigns.maxRatePerSec) fail('campaigns.defaultRatePerSec', 'must not exceed campaigns.maxRatePerSec');

  const listenHost = string('listen.host', '127.0.0.1', host)!;
  const basePort = int('listen.basePort', 7400, 0, 65535);
  const prefix = string('prefix', 'gravitas', (s) => (isName(s, 32) ? undefined : 'may only contain A-Z a-z 0-9 _ - (at most 32)'))!;
  const cfg: NodeConfig = {
    nodeId: string('nodeId', `${hostname().replace(/[^A-Za-z0-9_-]/g, '-').slice(0, 24)}-${randomBytes(3).toString('hex')}`, (s) => (isName(s, 48) ? undefined : 'may only contain A-Z a-z 0-9 _ - (at most 48)'))!,
    nats: { servers: servers as string[] },
    prefix,
    cells: int('cells', availableParallelism(), 1, 256),
    listen: { host: listenHost, basePort, webBasePort: int('listen.webBasePort', basePort === 0 ? 0 : 7600, 0, 65535) },
    web,
    network,
    advertiseHost: string('advertiseHost', listenHost === '0.0.0.0' || listenHost === '::' ? hostname() : listenHost, host)!,
    admin,
    dataDir: string('dataDir', './data')!,
    serverKey: string('serverKey', undefined, key32) ?? (get('serverKey') === undefined ? fail('serverKey', 'is required (see `gravitas keygen`)') ?? '' : ''),
    ticketKeys: tk,
    ticketLifetimeMs: int('ticketLifetimeMs', 24 * 3600_000, 60_000, MAX_TICKET_LIFETIME_MS),
    registration: {
      mode: mode === 'open' || mode === 'token' ? mode : 'credential',
      ...(credential && { credential }),
      link: { enabled: bool('registration.link.enabled', true), ttlMs: int('registration.link.ttlMs', 10 * 60_000, 30_000, 3_600_000) },
    },
    membership: { heartbeatMs: int('membership.heartbeatMs', 1000, 100, 60_000), timeoutMs: int('membership.timeoutMs', 5000, 300, 600_000) },
    replicas: int('replicas', 1, 1, 5),
    mailbox,
    gravity,
    tracking,
    campaigns,
    push: validatePushConfig({ int, string, bool, fail, get }),
    relay: validateRelayConfig({ int, bool }),
    groups,
    limits,
    testHooks: bool('testHooks', false),
  };
  const natsToken = string('nats.token', undefined);
  if (natsToken) cfg.nats.token = natsToken;
  const natsUser = string('nats.user', undefined);
  const natsPass = string('nats.pass', undefined);
  if (natsUser) cfg.nats.user = natsUser;
  if (natsPass) cfg.nats.pass = natsPass;
  const adminToken = string('admin.token', undefined);
  if (adminToken) cfg.admin.token = adminToken;
  if (regToken) cfg.registration.token = regToken;
  if (cfg.listen.basePort !== 0 && cfg.listen.basePort + cfg.cells - 1 > 65535) fail('listen.basePort', `base port + cells exceeds 65535`);
  if (web.enabled && cfg.listen.webBasePort !== 0) {
    const { basePort, webBasePort } = cfg.listen;
    if (webBasePort + cfg.cells - 1 > 65535) fail('listen.webBasePort', 'web base port + cells exceeds 65535');
    else if (basePort !== 0 && webBasePort < basePort + cfg.cells && basePort < webBasePort + cfg.cells) fail('listen.webBasePort', 'the web ports overlap the TCP ports (basePort .. basePort + cells - 1)');
  }
  if (cfg.membership.timeoutMs < 2 * cfg.membership.heartbeatMs) fail('membership.timeoutMs', 'must be at least twice membership.heartbeatMs');
  // A message costs at most a full group (or every device of two accounts): one must always fit the burst.
  const biggest = Math.max(limits.maxGroupSize, 2 * limits.maxDevicesPerUser);
  if (limits.fanoutBurst < biggest) fail('limits.fanoutBurst', `must be at least ${biggest} (limits.maxGroupSize, or two accounts' devices): one message must be able to pass`);
  // Likewise what one cell may spend of an account's budget in a window (cell/budgets.ts).
  const { oneCell } = budgetShares(limits.accountFanoutRatePerSec, limits.maxDevicesPerUser);
  if (oneCell < biggest) fail('limits.accountFanoutRatePerSec', `is too low: one cell may spend ${oneCell} of an account's budget in a window, less than one message to ${biggest} devices (limits.maxGroupSize) costs`);
  if (issues.length > 0) throw new ConfigError(issues);
  explicit.set(cfg, new Set(FD_CAP_SETTINGS.filter((p) => get(p) !== undefined)));
  return cfg;
}
