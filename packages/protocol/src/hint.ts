import nacl from 'tweetnacl';
import { pack, unpack } from './codec.js';
import { ed25519Sign, hkdf } from './crypto.js';
import { ErrorCode, ProtocolError } from './errors.js';
import { int, isObj, name, str } from './validate.js';

/*
 * Connect hints (docs/gravitation.md): "connect to this cell". The cluster signs
 * them with an Ed25519 key derived from its server key, so any cell can issue one
 * and a hint that travels outside the secure channel (a push payload, a wake-up
 * relayed by another device) cannot be forged or altered. A hint names the user
 * and device it is for and expires; the SDK ignores one it cannot verify.
 *
 *   hint = signature (64 bytes, Ed25519 over body) || body
 *   body = msgpack { c: cell id, a: "host:port", w?: "host:port", u: user, d: device, iat: ms, exp: ms }
 *
 * `w` is the cell's web listener (WebSocket and chunked HTTP), so a client that
 * cannot use TCP can follow the hint too.
 */

export interface ConnectHint {
  cell: string;
  /** Client address of the cell, host:port. */
  addr: string;
  /** The cell's web listener, host:port (docs/transports.md), if it has one. */
  web?: string;
  user: string;
  device: string;
  issuedAt: number;
  expiresAt: number;
}

export interface HintKeyPair { publicKey: Uint8Array; secretKey: Uint8Array }

export const HINT_SIGNATURE_BYTES = 64;
export const HINT_PUBLIC_KEY_BYTES = 32;
/** Upper bound of an encoded hint: a hint is small, anything bigger is refused unread. */
export const MAX_HINT_BYTES = 512;
/** Upper bound of a hint's lifetime; issuers use far less (seconds to minutes). */
export const MAX_HINT_LIFETIME_MS = 24 * 3600_000;

const HINT_SALT = new TextEncoder().encode('gravitas connect hints v1');

/** The cluster's hint-signing key pair, derived from its X25519 server secret: one secret to manage. */
export function hintKeyPair(serverSecret: Uint8Array): HintKeyPair {
  const kp = nacl.sign.keyPair.fromSeed(hkdf(serverSecret, HINT_SALT, 'gravitas hint signing key', 32));
  return { publicKey: kp.publicKey, secretKey: kp.secretKey };
}

export class HintError extends ProtocolError {}

export function signHint(h: ConnectHint, secretKey: Uint8Array): Uint8Array {
  const body = pack({ c: h.cell, a: h.addr, ...(h.web !== undefined && { w: h.web }), u: h.user, d: h.device, iat: h.issuedAt, exp: h.expiresAt });
  const sig = ed25519Sign(body, secretKey);
  const out = new Uint8Array(HINT_SIGNATURE_BYTES + body.length);
  out.set(sig, 0);
  out.set(body, HINT_SIGNATURE_BYTES);
  return out;
}

const ADDR_RE = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):\d{1,5}$/;

/** host:port with a port of at most 65535 (IPv6 hosts in brackets). */
export function isHostPort(s: string): boolean {
  return ADDR_RE.test(s) && Number(s.slice(s.lastIndexOf(':') + 1)) <= 65535;
}

/** Checks an Ed25519 signature: tweetnacl's by default. */
export type SignatureCheck = (message: Uint8Array, signature: Uint8Array, publicKey: Uint8Array) => boolean;

const naclCheck: SignatureCheck = (m, sig, pk) => nacl.sign.detached.verify(m, sig, pk);

/**
 * Verifies a hint for `user`/`device` at time `now`: the signature first (nothing
 * unsigned is even parsed), then the contents. Throws HintError HINT_INVALID
 * (bad signature, malformed, for someone else) or HINT_EXPIRED.
 *
 * `check` replaces tweetnacl's signature check for a caller that verifies hints in bulk from a
 * server it trusts to sign canonically (a load generator: OpenSSL and tweetnacl agree on every
 * signature that server makes); everything else about the hint is checked here either way.
 */
export function verifyHint(hint: Uint8Array, publicKey: Uint8Array, expect: { user: string; device: string }, now: number, check: SignatureCheck = naclCheck): ConnectHint {
  const invalid = (why: string): never => {
    throw new HintError(ErrorCode.HINT_INVALID, `connect hint rejected: ${why}`);
  };
  if (!(hint instanceof Uint8Array) || hint.length <= HINT_SIGNATURE_BYTES || hint.length > MAX_HINT_BYTES) return invalid('wrong size');
  if (publicKey.length !== HINT_PUBLIC_KEY_BYTES) return invalid('no valid hint key to verify it with');
  const body = hint.subarray(HINT_SIGNATURE_BYTES);
  if (!check(body, hint.subarray(0, HINT_SIGNATURE_BYTES), publicKey)) return invalid('bad signature');
  let h: ConnectHint;
  try {
    const o = unpack(body);
    if (!isObj(o)) return invalid('malformed');
    h = { cell: name(o, 'c', 128), addr: str(o, 'a', 300, 3), user: name(o, 'u'), device: name(o, 'd', 32), issuedAt: int(o, 'iat'), expiresAt: int(o, 'exp') };
    if (o.w !== undefined) h.web = str(o, 'w', 300, 3);
  } catch (err) {
    if (err instanceof HintError) throw err;
    return invalid('malformed');
  }
  if (!isHostPort(h.addr)) return invalid('malformed address');
  if (h.web !== undefined && !isHostPort(h.web)) return invalid('malformed web address');
  if (h.user !== expect.user || h.device !== expect.device) return invalid('issued for another device');
  if (h.expiresAt - h.issuedAt > MAX_HINT_LIFETIME_MS) return invalid('lifetime too long');
  if (h.expiresAt <= now) throw new HintError(ErrorCode.HINT_EXPIRED, 'connect hint has expired');
  return h;
}
