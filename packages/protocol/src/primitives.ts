import { createCipheriv, createDecipheriv, createHash, createPrivateKey, createPublicKey, diffieHellman, hkdfSync, randomBytes, sign, type KeyObject } from 'node:crypto';
import { badKey, isZero, KEY_BYTES, type DhKey, type DhSuite } from './dh.js';

/*
 * The primitives that come from node:crypto: SHA-256, HKDF-SHA256, randomness,
 * base64url, the native X25519 suite, Ed25519 signing and ChaCha20-Poly1305. A browser bundle gets
 * primitives.browser.ts instead (package.json "browser" field), with the same
 * exports and byte-identical results (test/protocol/primitives.test.ts).
 */

// Raw keys go in through JWK: an order of magnitude faster than DER in Node 20.
// Nothing is ever exported: generateKeyPairSync followed by a JWK export can
// deadlock in Node 20 (seen here under GC), so a key pair is made from random
// bytes and its public half is computed as X25519(secret, 9).
const b64url = (b: Uint8Array): string => Buffer.from(b.buffer, b.byteOffset, b.length).toString('base64url');
const BASE_POINT = new Uint8Array(32);
BASE_POINT[0] = 9;
const BASE_POINT_X = b64url(BASE_POINT);

function importPublic(raw: Uint8Array): KeyObject {
  return createPublicKey({ key: { kty: 'OKP', crv: 'X25519', x: b64url(raw) }, format: 'jwk' });
}

const basePointKey = importPublic(BASE_POINT);

class NativeDhKey implements DhKey {
  private readonly key: KeyObject;
  readonly publicKey: Uint8Array;
  constructor(secret: Uint8Array) {
    // Node requires `x` in a private JWK but derives the public key from `d`.
    this.key = createPrivateKey({ key: { kty: 'OKP', crv: 'X25519', d: b64url(secret), x: BASE_POINT_X }, format: 'jwk' });
    this.publicKey = new Uint8Array(diffieHellman({ privateKey: this.key, publicKey: basePointKey }));
  }
  dh(peer: Uint8Array): Uint8Array {
    let out: Buffer;
    try {
      out = diffieHellman({ privateKey: this.key, publicKey: importPublic(peer) });
    } catch (err) {
      // OpenSSL refuses an all-zero shared secret itself.
      return badKey(err);
    }
    if (isZero(out)) badKey();
    return out;
  }
}

export const nativeSuite: DhSuite = {
  name: 'native',
  generate: () => new NativeDhKey(randomBytes(KEY_BYTES)),
  fromSecret: (sk) => new NativeDhKey(sk),
};

export function sha256(...parts: Uint8Array[]): Uint8Array {
  const h = createHash('sha256');
  for (const p of parts) h.update(p);
  return new Uint8Array(h.digest());
}

export function hkdf(ikm: Uint8Array, salt: Uint8Array, info: string, length: number): Uint8Array {
  return new Uint8Array(hkdfSync('sha256', ikm, salt, info, length));
}

export function random(n: number): Uint8Array {
  return new Uint8Array(randomBytes(n));
}

export function toBase64Url(b: Uint8Array): string {
  return Buffer.from(b).toString('base64url');
}

/** Decodes unpadded base64url; the caller has checked the alphabet. */
export function decodeBase64Url(s: string): Uint8Array {
  return new Uint8Array(Buffer.from(s, 'base64url'));
}

/** Signing keys imported so far, by secret key: a server signs with one or two (its hint key, across a rotation). */
const signingKeys = new Map<string, KeyObject>();
const MAX_SIGNING_KEYS = 16;

/**
 * An Ed25519 signature (RFC 8032: deterministic, so the same bytes as tweetnacl's
 * `nacl.sign.detached`, test/protocol/hint.test.ts) from node:crypto, ~160× faster than
 * tweetnacl's pure JavaScript (`npm run bench -- ceilings`): a cell signs a connect hint per move and per push. `secretKey`
 * is tweetnacl's 64 bytes, seed then public key. Verification stays with tweetnacl everywhere:
 * OpenSSL's is stricter on non-canonical signatures, so only signing is the same function.
 */
export function ed25519Sign(message: Uint8Array, secretKey: Uint8Array): Uint8Array {
  const id = b64url(secretKey);
  let key = signingKeys.get(id);
  if (!key) {
    if (signingKeys.size >= MAX_SIGNING_KEYS) signingKeys.clear();
    key = createPrivateKey({ key: { kty: 'OKP', crv: 'Ed25519', d: b64url(secretKey.subarray(0, 32)), x: b64url(secretKey.subarray(32, 64)) }, format: 'jwk' });
    signingKeys.set(id, key);
  }
  return new Uint8Array(sign(null, message, key));
}

const TAG_BYTES = 16;

/**
 * ChaCha20-Poly1305 (RFC 8439), 32-byte key, 12-byte nonce, no associated data: `plain` sealed
 * into `out` at `at` as ciphertext || 16-byte tag. OpenSSL's, one cipher object per frame
 * (node:crypto cannot change the nonce of one): `npm run bench -- ceilings --only aead`.
 */
export function chachaSeal(key: Uint8Array, nonce: Uint8Array, plain: Uint8Array, out: Uint8Array, at: number): void {
  const c = createCipheriv('chacha20-poly1305', key, nonce, { authTagLength: TAG_BYTES });
  const ct = c.update(plain);
  out.set(ct, at);
  c.final();
  out.set(c.getAuthTag(), at + ct.length);
}

/** Opens ciphertext || tag; null when authentication fails. */
export function chachaOpen(key: Uint8Array, nonce: Uint8Array, sealed: Uint8Array): Uint8Array | null {
  if (sealed.length < TAG_BYTES) return null;
  const d = createDecipheriv('chacha20-poly1305', key, nonce, { authTagLength: TAG_BYTES });
  d.setAuthTag(sealed.subarray(sealed.length - TAG_BYTES));
  const plain = d.update(sealed.subarray(0, sealed.length - TAG_BYTES));
  try {
    d.final();
  } catch {
    return null;
  }
  return plain;
}
