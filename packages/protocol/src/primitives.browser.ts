import { chacha20poly1305 } from '@noble/ciphers/chacha.js';
import { hkdf as nobleHkdf } from '@noble/hashes/hkdf.js';
import { sha256 as nobleSha256 } from '@noble/hashes/sha2.js';
import nacl from 'tweetnacl';
import { naclSuite, type DhSuite } from './dh.js';

/*
 * Browser variant of primitives.ts, chosen by bundlers through the "browser" field
 * of package.json: @noble/hashes for SHA-256 and HKDF and @noble/ciphers for
 * ChaCha20-Poly1305 (WebCrypto's are async, the handshake and SecureChannel are not), crypto.getRandomValues, atob/btoa. Same exports, same bytes
 * (test/protocol/primitives.test.ts compares the two).
 */

/** No native X25519 in a browser: the tweetnacl reference stands in (same function, same bytes). */
export const nativeSuite: DhSuite = naclSuite;

const utf8 = new TextEncoder();

export function sha256(...parts: Uint8Array[]): Uint8Array {
  const h = nobleSha256.create();
  for (const p of parts) h.update(p);
  return h.digest();
}

export function hkdf(ikm: Uint8Array, salt: Uint8Array, info: string, length: number): Uint8Array {
  return nobleHkdf(nobleSha256, ikm, salt, utf8.encode(info), length);
}

// getRandomValues fills at most 65,536 bytes per call.
const RANDOM_CHUNK = 65_536;

export function random(n: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let off = 0; off < n; off += RANDOM_CHUNK) globalThis.crypto.getRandomValues(out.subarray(off, Math.min(n, off + RANDOM_CHUNK)));
  return out;
}

export function toBase64Url(b: Uint8Array): string {
  let bin = '';
  for (let i = 0; i < b.length; i++) bin += String.fromCharCode(b[i]!);
  return btoa(bin).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

/** Decodes unpadded base64url; the caller has checked the alphabet. */
export function decodeBase64Url(s: string): Uint8Array {
  // Like Buffer.from(s, 'base64url'): a lone trailing character carries no whole byte.
  if (s.length % 4 === 1) s = s.slice(0, -1);
  const bin = atob(s.replace(/-/g, '+').replace(/_/g, '/') + '='.repeat((4 - (s.length % 4)) % 4));
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

/** Ed25519 signing: tweetnacl itself (the Node variant gives the same bytes natively). */
export function ed25519Sign(message: Uint8Array, secretKey: Uint8Array): Uint8Array {
  return nacl.sign.detached(message, secretKey);
}

/** ChaCha20-Poly1305 (RFC 8439) from @noble/ciphers: the same bytes as OpenSSL's (test/vectors/channel.json). */
export function chachaSeal(key: Uint8Array, nonce: Uint8Array, plain: Uint8Array, out: Uint8Array, at: number): void {
  out.set(chacha20poly1305(key, nonce).encrypt(plain), at);
}

/** Opens ciphertext || tag; null when authentication fails. */
export function chachaOpen(key: Uint8Array, nonce: Uint8Array, sealed: Uint8Array): Uint8Array | null {
  if (sealed.length < 16) return null;
  try {
    return chacha20poly1305(key, nonce).decrypt(sealed);
  } catch {
    return null;
  }
}
