import { isJson, type ConfigCheck } from './check.js';

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

const CREDENTIAL_KEYS = new Set(['issuer', 'audience', 'algorithms', 'jwks', 'jwksUrl', 'maxLifetimeMs', 'clockToleranceMs']);

/** registration.credential: undefined when absent or broken (every problem is an issue). */
function validateCredential(c: ConfigCheck): CredentialConfig | undefined {
  const at = (k: string): string => `registration.credential.${k}`;
  const before = c.issues.length;
  const v = c.section('registration.credential', CREDENTIAL_KEYS, 'must be an object { issuer, audience, jwks or jwksUrl, … }');
  if (v === undefined) return undefined;
  const text = (k: string, def?: string): string | undefined => c.string(at(k), def, (s) => (s.length > 1024 ? 'must be a non-empty string' : undefined));
  const ms = (k: string, def: number, min: number, max: number): number => {
    const message = `must be an integer between ${min} and ${max}`;
    const x = c.get(at(k));
    // Text only as plain digits here (no sign, no spaces), unlike int()'s env-friendly reading.
    return typeof x === 'string' && !/^\d+$/.test(x) ? (c.fail(at(k), message) ?? def) : c.int(at(k), def, min, max, message);
  };
  const issuer = text('issuer') ?? c.fail(at('issuer'), 'is required: the `iss` your auth service puts in credentials');
  const audience = text('audience', 'gravitas');
  let algorithms = v.algorithms ?? [...CREDENTIAL_ALGORITHMS];
  if (typeof algorithms === 'string') algorithms = algorithms.split(',').map((a) => a.trim());
  if (!Array.isArray(algorithms) || algorithms.length === 0 || !algorithms.every((a) => (CREDENTIAL_ALGORITHMS as readonly unknown[]).includes(a))) {
    c.fail(at('algorithms'), `must be a non-empty list of ${CREDENTIAL_ALGORITHMS.join(', ')}`);
  }
  const jwksUrl = text('jwksUrl');
  if (jwksUrl !== undefined) {
    let u: URL | undefined;
    try {
      u = new URL(jwksUrl);
    } catch {
      c.fail(at('jwksUrl'), 'must be an absolute URL');
    }
    // Plain http would let anyone on the path swap the keys: only for a service on this host.
    if (u && u.protocol !== 'https:' && !(u.protocol === 'http:' && /^(127\.\d+\.\d+\.\d+|localhost|\[::1\])$/.test(u.hostname))) c.fail(at('jwksUrl'), 'must be an https URL (http only on loopback)');
  }
  const jwks = v.jwks;
  if (jwks !== undefined && !(isJson(jwks) && Array.isArray(jwks.keys) && jwks.keys.length > 0 && jwks.keys.every((k) => isJson(k) && typeof k.kty === 'string'))) {
    c.fail(at('jwks'), 'must be a JWKS: { "keys": [ { "kty": …, "kid": …, … } ] }');
  }
  if ((jwks === undefined) === (jwksUrl === undefined)) c.fail('registration.credential', 'needs exactly one of jwks (inline keys) and jwksUrl');
  const maxLifetimeMs = ms('maxLifetimeMs', 15 * 60_000, 10_000, 24 * 3600_000);
  const clockToleranceMs = ms('clockToleranceMs', 30_000, 0, 5 * 60_000);
  if (c.issues.length > before || issuer === undefined || audience === undefined) return undefined;
  return {
    issuer, audience, algorithms: algorithms as CredentialAlgorithm[], maxLifetimeMs, clockToleranceMs,
    ...(jwks !== undefined && { jwks: jwks as CredentialConfig['jwks'] & object }), ...(jwksUrl !== undefined && { jwksUrl }),
  };
}

/**
 * registration.mode, .token and .credential, and the shape of .link; the link's settings are
 * read with the node's other settings (validateRegistrationLink), in the order issues are listed.
 */
export function validateRegistration(c: ConfigCheck): Omit<RegistrationConfig, 'link'> {
  const mode = c.string('registration.mode', 'credential');
  if (mode !== 'open' && mode !== 'token' && mode !== 'credential') c.fail('registration.mode', 'must be "credential", "token" (development) or "open" (development)');
  const token = c.string('registration.token', undefined);
  if (mode === 'token' && !token) c.fail('registration.token', 'is required when registration.mode is "token" (a development setting: use "credential" in production)');
  if (token !== undefined && token.length < 16) c.fail('registration.token', 'must be at least 16 characters');
  const credential = validateCredential(c);
  if (mode === 'credential' && !credential && c.get('registration.credential') === undefined) {
    c.fail('registration.credential', 'is required when registration.mode is "credential" ({ issuer, jwks or jwksUrl }; docs/security.md), or choose a development mode ("token", "open")');
  }
  c.section('registration.link', LINK_KEYS, 'must be an object { enabled, ttlMs }');
  return {
    mode: mode === 'open' || mode === 'token' ? mode : 'credential',
    ...(token && { token }),
    ...(credential && { credential }),
  };
}

const LINK_KEYS = new Set(['enabled', 'ttlMs']);

export function validateRegistrationLink(c: ConfigCheck): RegistrationConfig['link'] {
  return { enabled: c.bool('registration.link.enabled', true), ttlMs: c.int('registration.link.ttlMs', 10 * 60_000, 30_000, 3_600_000) };
}
