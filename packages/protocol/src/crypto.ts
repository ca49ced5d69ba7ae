import { createHash, createPrivateKey, createPublicKey, diffieHellman, generateKeyPairSync, hkdfSync, randomBytes, type KeyObject } from 'node:crypto';
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

// DER wrapper that lets node:crypto import a raw X25519 secret key (RFC 8410).
const PKCS8_PREFIX = Buffer.from('302e020100300506032b656e04220420', 'hex');

// JWK import/export is an order of magnitude faster than DER in Node 20.
function importPublic(raw: Uint8Array): KeyObject {
  return createPublicKey({ key: { kty: 'OKP', crv: 'X25519', x: Buffer.from(raw.buffer, raw.byteOffset, raw.length).toString('base64url') }, format: 'jwk' });
}

function exportPublic(key: KeyObject): Uint8Array {
  const x = key.export({ format: 'jwk' }).x;
  if (typeof x !== 'string') throw new Error('X25519 key export gave no public value');
  return new Uint8Array(Buffer.from(x, 'base64url'));
}

class NativeDhKey implements DhKey {
  constructor(private readonly key: KeyObject, readonly publicKey: Uint8Array) {}
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
  generate() {
    const { privateKey, publicKey } = generateKeyPairSync('x25519');
    return new NativeDhKey(privateKey, exportPublic(publicKey));
  },
  fromSecret(sk) {
    const key = createPrivateKey({ key: Buffer.concat([PKCS8_PREFIX, sk]), format: 'der', type: 'pkcs8' });
    return new NativeDhKey(key, exportPublic(createPublicKey(key)));
  },
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
