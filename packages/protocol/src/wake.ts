import nacl from 'tweetnacl';
import { pack, unpack } from './codec.js';
import { ed25519Sign, random } from './crypto.js';
import { ErrorCode, ProtocolError } from './errors.js';
import { HINT_PUBLIC_KEY_BYTES, HINT_SIGNATURE_BYTES, HintError, verifyHint, type ConnectHint } from './hint.js';
import { bytes, int, isObj, name } from './validate.js';

/*
 * Wake tokens (docs/relay.md): "device u/d, connect to this cell now", carried to
 * an offline device by another device on its LAN. The relayer sees the token, so
 * it is signed with the cluster's hint key (any cell can issue one, no device can
 * forge or alter one), names its target, expires soon and has a random id the
 * target accepts once. It holds no message content.
 *
 *   token = sig (64 bytes) || body                                  ≤ MAX_WAKE_BYTES
 *   sig   = Ed25519(hint_sk, "gravitas wake token v1" || 0x00 || body)
 *   body  = msgpack { t: "wake", id: bin 16, u: user, d: device, h: signed connect hint, iat, exp }
 *
 * Hints are signed over their body alone and a body starts with a msgpack map
 * byte, never with the context's "g": a hint cannot verify as a token, nor a
 * token as a hint, although both use one key.
 */

export interface WakeToken {
  /** Random, 16 bytes: the target accepts a token id once. */
  id: Uint8Array;
  user: string;
  device: string;
  /** A signed connect hint (hint.ts) for the same device: where to connect. */
  hint: Uint8Array;
  issuedAt: number;
  expiresAt: number;
}

/** A token that verified, with its hint read. */
export interface VerifiedWake extends WakeToken { connect: ConnectHint }

export const WAKE_ID_BYTES = 16;
/** Upper bound of an encoded token (an embedded hint is at most 512): anything bigger is refused unread. */
export const MAX_WAKE_BYTES = 768;
/** Upper bound of a token's lifetime; the server issues far less (relay.tokenTtlMs). */
export const MAX_WAKE_LIFETIME_MS = 5 * 60_000;

const WAKE_CONTEXT = new TextEncoder().encode('gravitas wake token v1\0');

export class WakeError extends ProtocolError {
  override name = 'WakeError';
}

function signed(body: Uint8Array): Uint8Array {
  const m = new Uint8Array(WAKE_CONTEXT.length + body.length);
  m.set(WAKE_CONTEXT, 0);
  m.set(body, WAKE_CONTEXT.length);
  return m;
}

/** Signs a token with the hint secret key; a fresh random id unless one is given. Throws WAKE_INVALID for a token that could never verify. */
export function signWake(w: Omit<WakeToken, 'id'> & { id?: Uint8Array }, secretKey: Uint8Array): Uint8Array {
  const id = w.id ?? random(WAKE_ID_BYTES);
  if (id.length !== WAKE_ID_BYTES) throw new WakeError(ErrorCode.WAKE_INVALID, `a wake token id is ${WAKE_ID_BYTES} bytes`);
  if (w.expiresAt - w.issuedAt > MAX_WAKE_LIFETIME_MS || w.expiresAt <= w.issuedAt) throw new WakeError(ErrorCode.WAKE_INVALID, 'wake token lifetime out of range');
  const body = pack({ t: 'wake', id, u: w.user, d: w.device, h: w.hint, iat: w.issuedAt, exp: w.expiresAt });
  if (HINT_SIGNATURE_BYTES + body.length > MAX_WAKE_BYTES) throw new WakeError(ErrorCode.WAKE_INVALID, 'wake token too large');
  const out = new Uint8Array(HINT_SIGNATURE_BYTES + body.length);
  out.set(ed25519Sign(signed(body), secretKey), 0);
  out.set(body, HINT_SIGNATURE_BYTES);
  return out;
}

/**
 * Verifies a token for `expect` (this device) at `now`: size, then the signature
 * (nothing unsigned is parsed), then the contents and the embedded hint, which
 * must verify under the same key for the same device. Throws WakeError
 * WAKE_INVALID or WAKE_EXPIRED. Single use is the caller's part (SeenWakes).
 */
export function verifyWake(token: Uint8Array, publicKey: Uint8Array, expect: { user: string; device: string }, now: number): VerifiedWake {
  const invalid = (why: string): never => {
    throw new WakeError(ErrorCode.WAKE_INVALID, `wake token rejected: ${why}`);
  };
  if (!(token instanceof Uint8Array) || token.length <= HINT_SIGNATURE_BYTES || token.length > MAX_WAKE_BYTES) return invalid('wrong size');
  if (!(publicKey instanceof Uint8Array) || publicKey.length !== HINT_PUBLIC_KEY_BYTES) return invalid('no valid hint key to verify it with');
  const body = token.subarray(HINT_SIGNATURE_BYTES);
  if (!nacl.sign.detached.verify(signed(body), token.subarray(0, HINT_SIGNATURE_BYTES), publicKey)) return invalid('bad signature');
  let w: WakeToken;
  try {
    const o = unpack(body);
    if (!isObj(o) || o.t !== 'wake') return invalid('malformed');
    w = { id: bytes(o, 'id', WAKE_ID_BYTES), user: name(o, 'u'), device: name(o, 'd', 32), hint: bytes(o, 'h', HINT_SIGNATURE_BYTES + 1, 512), issuedAt: int(o, 'iat'), expiresAt: int(o, 'exp') };
  } catch (err) {
    if (err instanceof WakeError) throw err;
    return invalid('malformed');
  }
  if (w.user !== expect.user || w.device !== expect.device) return invalid('issued for another device');
  if (w.expiresAt - w.issuedAt > MAX_WAKE_LIFETIME_MS) return invalid('lifetime too long');
  if (w.expiresAt <= now) throw new WakeError(ErrorCode.WAKE_EXPIRED, 'wake token has expired');
  let connect: ConnectHint;
  try {
    connect = verifyHint(w.hint, publicKey, expect, now);
  } catch (err) {
    if (err instanceof HintError && err.code === ErrorCode.HINT_EXPIRED) throw new WakeError(ErrorCode.WAKE_EXPIRED, 'the wake token\'s connect hint has expired', { cause: err });
    return invalid(`its connect hint: ${(err as Error).message}`);
  }
  return { ...w, connect };
}

/**
 * Token ids a device has accepted, each until its token expires: the single-use
 * check. Bounded; when full of live ids a new token is refused (fail closed:
 * the server rate-limits wakes per target, so a full set means something is off).
 */
export class SeenWakes {
  private readonly seen = new Map<string, number>();

  constructor(readonly max = 1024) {}

  /** Records the id of a verified token; throws WAKE_REPLAYED if it was accepted before. */
  admit(w: Pick<WakeToken, 'id' | 'expiresAt'>, now: number): void {
    // No Buffer here: this package is also bundled for browsers.
    const key = Array.from(w.id, (b) => b.toString(16).padStart(2, '0')).join('');
    const until = this.seen.get(key);
    if (until !== undefined && until > now) throw new WakeError(ErrorCode.WAKE_REPLAYED, 'wake token was used before');
    if (this.seen.size >= this.max) this.prune(now);
    if (this.seen.size >= this.max) throw new WakeError(ErrorCode.WAKE_INVALID, 'too many wake tokens in flight: refused');
    this.seen.set(key, w.expiresAt);
  }

  private prune(now: number): void {
    for (const [k, until] of this.seen) if (until <= now) this.seen.delete(k);
  }

  get size(): number {
    return this.seen.size;
  }
}
