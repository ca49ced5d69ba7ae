import nacl from 'tweetnacl';
import { decodeBase64Url } from './primitives.js';

/*
 * Primitives: X25519, XSalsa20-Poly1305 (secretbox, tweetnacl), SHA-256 and
 * HKDF-SHA256 (node:crypto, or @noble/hashes in a browser bundle: primitives.ts).
 * X25519 has two byte-identical implementations: the tweetnacl reference (what
 * browsers and test vectors use) and Node's native one (~20x faster), proven
 * equal by the RFC 7748 vectors in the tests.
 */

export { KEY_BYTES, naclSuite, type DhKey, type DhSuite } from './dh.js';
export { chachaOpen, chachaSeal, ed25519Sign, hkdf, nativeSuite, random, sha256, toBase64Url } from './primitives.js';

export const NONCE_BYTES = 24;
export const MAC_BYTES = 16;

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

export function fromBase64Url(s: string, expectedLength?: number): Uint8Array {
  if (!/^[A-Za-z0-9_-]*$/.test(s)) throw new TypeError('not base64url');
  const b = decodeBase64Url(s);
  if (expectedLength !== undefined && b.length !== expectedLength) throw new TypeError(`expected ${expectedLength} bytes, got ${b.length}`);
  return b;
}
