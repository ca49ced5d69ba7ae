import { createHash, createPrivateKey, createPublicKey, diffieHellman, hkdfSync, randomBytes, type KeyObject } from 'node:crypto';
import nacl from 'tweetnacl';
import { ErrorCode, HandshakeError } from './errors.js';

/*
 * Primitives: X25519, XSalsa20-Poly1305 (secretbox, tweetnacl), SHA-256 and
 * HKDF-SHA256 (node:crypto). X25519 has two byte-identical implementations: the
 * tweetnacl reference (what browsers and test vectors use) and Node's native one
 * (~20x faster), proven equal by the RFC 7748 vectors in the tests.
 */

export const KEY_BYTES = 32;
export const NONCE_BYTES = 24;
export const MAC_BYTES = 16;

/** A Diffie-Hellman key we hold the secret half of. */
export interface DhKey {
  readonly publicKey: Uint8Array;
  /** X25519(secret, peer). Throws BAD_PUBLIC_KEY for a low-order peer key (all-zero output). */
  dh(peerPublic: Uint8Array): Uint8Array;
}

export interface DhSuite {
  readonly name: 'native' | 'tweetnacl';
  generate(): DhKey;
  fromSecret(secretKey: Uint8Array): DhKey;
}

function badKey(cause?: unknown): never {
  throw new HandshakeError(ErrorCode.BAD_PUBLIC_KEY, 'peer public key is invalid (low order)', { cause });
}

function isZero(b: Uint8Array): boolean {
  let acc = 0;
  for (let i = 0; i < b.length; i++) acc |= b[i]!;
  return acc === 0;
}

class NaclDhKey implements DhKey {
  readonly publicKey: Uint8Array;
  constructor(private readonly secret: Uint8Array) {
    this.publicKey = nacl.scalarMult.base(secret);
  }
  dh(peer: Uint8Array): Uint8Array {
    const out = nacl.scalarMult(this.secret, peer);
    if (isZero(out)) badKey();
    return out;
  }
}

export const naclSuite: DhSuite = {
  name: 'tweetnacl',
  generate: () => new NaclDhKey(nacl.randomBytes(KEY_BYTES)),
  fromSecret: (sk) => new NaclDhKey(Uint8Array.from(sk)),
};

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

export function seal(plain: Uint8Array, nonce: Uint8Array, key: Uint8Array): Uint8Array {
  return nacl.secretbox(plain, nonce, key);
}

/** Returns null when authentication fails. */
export function open(box: Uint8Array, nonce: Uint8Array, key: Uint8Array): Uint8Array | null {
  return nacl.secretbox.open(box, nonce, key);
}

/** Constant-time comparison of equal-length byte strings. */
export function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && nacl.verify(a, b);
}

/** A long-term X25519 key pair in raw bytes (device identity or server key). */
export interface KeyPair { publicKey: Uint8Array; secretKey: Uint8Array }

export function generateKeyPair(): KeyPair {
  const kp = nacl.box.keyPair();
  return { publicKey: kp.publicKey, secretKey: kp.secretKey };
}

export function keyPairFromSecret(secretKey: Uint8Array): KeyPair {
  return { publicKey: nacl.scalarMult.base(secretKey), secretKey };
}

export function toBase64Url(b: Uint8Array): string {
  return Buffer.from(b).toString('base64url');
}

export function fromBase64Url(s: string, expectedLength?: number): Uint8Array {
  if (!/^[A-Za-z0-9_-]*$/.test(s)) throw new TypeError('not base64url');
  const b = new Uint8Array(Buffer.from(s, 'base64url'));
  if (expectedLength !== undefined && b.length !== expectedLength) throw new TypeError(`expected ${expectedLength} bytes, got ${b.length}`);
  return b;
}
