import { readFileSync } from 'node:fs';
import { ConfigError, ServerError, ServerErrorCode } from '../infra/errors.js';
import { isJson, type Json } from './check.js';
import type { NodeConfig } from './types.js';
import { validateConfig } from './validate.js';

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
