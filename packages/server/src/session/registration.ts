import { createPublicKey, verify as verifySignature, type KeyObject } from 'node:crypto';
import { createLocalJWKSet, createRemoteJWKSet, errors as joseErrors, jwtVerify, type JSONWebKeySet, type JWTPayload, type JWTVerifyGetKey } from 'jose';
import {
  bytes, ed25519Sign, equalBytes, ErrorCode, fromBase64Url, HandshakeError, HINT_SIGNATURE_BYTES, int, isObj, MAX_LINK_APPROVAL_BYTES, name, pack, random, sha256, toBase64Url, unpack,
  type HintKeyPair,
} from '@gravitas/protocol';
import type { CredentialConfig } from '../config/index.js';

/*
 * The two proofs that let a new device join an existing account (docs/security.md,
 * "Registration"): a credential issued by the operator's own auth service, and an
 * approval from one of the account's existing devices. Both bind the user, the
 * device and the device's public key, so neither can register another device or
 * another key than the one it names; the handshake itself proves the device holds
 * the key's secret half.
 */

/** What a proof must name: the hello's user and device, and the key the handshake authenticated. */
export interface Binding { user: string; device: string; key: Uint8Array }

/** A proof that verified; `id` is spent once (KV create), so a proof cannot register twice. */
export interface Verified { id: string; expiresAt: number }

const utf8 = new TextEncoder();
const denied = (why: string): HandshakeError => new HandshakeError(ErrorCode.REGISTRATION_DENIED, why);

// ---- credentials (JWT from the operator's auth service) -------------------------------

/** Claims of a registration credential (docs/security.md, "Credentials"). */
interface CredentialClaims extends JWTPayload {
  device?: unknown;
  /** RFC 7800 confirmation: the device's X25519 public key as an OKP JWK. */
  cnf?: unknown;
}

/**
 * Verifies registration credentials: a compact JWS, its algorithm on the
 * allow-list (never `none`, never chosen by the token), signed by a key of the
 * configured JWKS (inline, or fetched from a URL: cached, and fetched again when a
 * token names an unknown `kid`, at most once per cooldown), with the issuer,
 * audience, expiry, not-before and a bounded lifetime checked, and bound to the
 * hello's user, device and key.
 */
export class CredentialVerifier {
  private readonly keys: JWTVerifyGetKey;

  constructor(private readonly cfg: CredentialConfig) {
    this.keys = cfg.jwksUrl
      ? createRemoteJWKSet(new URL(cfg.jwksUrl), { timeoutDuration: 5000, cooldownDuration: 30_000, cacheMaxAge: 10 * 60_000 })
      : createLocalJWKSet(cfg.jwks as JSONWebKeySet);
  }

  async verify(jwt: string, expect: Binding, now: number): Promise<Verified> {
    let claims: CredentialClaims;
    try {
      const r = await jwtVerify<CredentialClaims>(jwt, this.keys, {
        issuer: this.cfg.issuer,
        audience: this.cfg.audience,
        algorithms: this.cfg.algorithms,
        clockTolerance: Math.ceil(this.cfg.clockToleranceMs / 1000),
        currentDate: new Date(now),
        requiredClaims: ['iat', 'exp', 'sub', 'jti'],
        maxTokenAge: `${Math.ceil(this.cfg.maxLifetimeMs / 1000)}s`,
      });
      claims = r.payload;
    } catch (err) {
      // A key set that cannot be fetched now says nothing about the credential: retry later.
      if (err instanceof joseErrors.JWKSTimeout || !(err instanceof joseErrors.JOSEError)) {
        throw new HandshakeError(ErrorCode.BUSY, 'the registration credential cannot be checked now; retry later', { cause: err });
      }
      throw denied(`registration credential rejected: ${(err as Error).message}`);
    }
    const iat = claims.iat!;
    const exp = claims.exp!;
    if ((exp - iat) * 1000 > this.cfg.maxLifetimeMs) throw denied(`registration credential lives longer than ${this.cfg.maxLifetimeMs / 1000} s`);
    if (claims.sub !== expect.user) throw denied('registration credential was issued for another user');
    if (claims.device !== expect.device) throw denied('registration credential was issued for another device');
    const jwk = isObj(claims.cnf) && isObj(claims.cnf.jwk) ? claims.cnf.jwk : undefined;
    if (!jwk || jwk.kty !== 'OKP' || jwk.crv !== 'X25519' || typeof jwk.x !== 'string') throw denied('registration credential has no cnf.jwk X25519 key');
    let key: Uint8Array;
    try {
      key = fromBase64Url(jwk.x, 32);
    } catch {
      throw denied('registration credential has a malformed cnf.jwk key');
    }
    if (!equalBytes(key, expect.key)) throw denied('registration credential was issued for another device key');
    if (typeof claims.jti !== 'string' || claims.jti.length === 0 || claims.jti.length > 128) throw denied('registration credential needs a jti of at most 128 characters');
    return { id: `c.${toBase64Url(sha256(utf8.encode(`${this.cfg.issuer}\0${claims.jti}`)))}`, expiresAt: exp * 1000 };
  }
}

// ---- link approvals (from an existing device) ----------------------------------------

/** An approval one device of an account gives a new device (`devices.link`). */
export interface LinkApproval {
  id: Uint8Array;
  user: string;
  device: string;
  key: Uint8Array;
  /** The approving device and the registration of its key (an approval from a since-removed device is void). */
  by: string;
  byRid: number;
  issuedAt: number;
  expiresAt: number;
}

const LINK_CONTEXT = new TextEncoder().encode('gravitas device link v1\0');
const LINK_ID_BYTES = 16;

function signed(body: Uint8Array): Uint8Array {
  const m = new Uint8Array(LINK_CONTEXT.length + body.length);
  m.set(LINK_CONTEXT, 0);
  m.set(body, LINK_CONTEXT.length);
  return m;
}

/**
 * Approvals are signed by the cluster with its hint key (docs/protocol.md §5.4),
 * under their own context string: a hint or wake token never verifies as an
 * approval, nor the reverse. Only cells read them, so the check is OpenSSL's.
 *
 *   approval = sig (64) || body
 *   sig      = Ed25519(hint_sk, "gravitas device link v1" || 0x00 || body)
 *   body     = msgpack { t: "link", id: bin 16, u, d, k: bin 32, by, br, iat, exp }
 */
export class LinkApprovals {
  private readonly publicKey: KeyObject;

  constructor(private readonly keys: HintKeyPair) {
    this.publicKey = createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: Buffer.from(keys.publicKey).toString('base64url') }, format: 'jwk' });
  }

  issue(a: Omit<LinkApproval, 'id'>): Uint8Array {
    const body = pack({ t: 'link', id: random(LINK_ID_BYTES), u: a.user, d: a.device, k: a.key, by: a.by, br: a.byRid, iat: a.issuedAt, exp: a.expiresAt });
    const out = new Uint8Array(HINT_SIGNATURE_BYTES + body.length);
    out.set(ed25519Sign(signed(body), this.keys.secretKey), 0);
    out.set(body, HINT_SIGNATURE_BYTES);
    if (out.length > MAX_LINK_APPROVAL_BYTES) throw new Error('link approval too large');
    return out;
  }

  /** Signature first (nothing unsigned is parsed), then the contents and the binding. */
  verify(approval: Uint8Array, expect: Binding, now: number): LinkApproval {
    if (approval.length <= HINT_SIGNATURE_BYTES) throw denied('device link approval rejected: too short');
    const body = approval.subarray(HINT_SIGNATURE_BYTES);
    if (!verifySignature(null, signed(body), this.publicKey, approval.subarray(0, HINT_SIGNATURE_BYTES))) throw denied('device link approval rejected: bad signature');
    let a: LinkApproval;
    try {
      const o = unpack(body);
      if (!isObj(o) || o.t !== 'link') throw denied('device link approval rejected: malformed');
      a = {
        id: bytes(o, 'id', LINK_ID_BYTES), user: name(o, 'u'), device: name(o, 'd', 32), key: bytes(o, 'k', 32), by: name(o, 'by', 32), byRid: int(o, 'br'),
        issuedAt: int(o, 'iat'), expiresAt: int(o, 'exp'),
      };
    } catch (err) {
      if (err instanceof HandshakeError) throw err;
      throw denied('device link approval rejected: malformed');
    }
    if (a.user !== expect.user || a.device !== expect.device) throw denied('device link approval was given for another device');
    if (!equalBytes(a.key, expect.key)) throw denied('device link approval was given for another device key');
    if (a.expiresAt <= now) throw denied('device link approval has expired');
    return a;
  }
}

/** The single-use handle of an approval (spent like a ticket). */
export function approvalId(a: LinkApproval): string {
  return `l.${Buffer.from(a.id).toString('base64url')}`;
}
