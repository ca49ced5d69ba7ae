import nacl from 'tweetnacl';
import { ErrorCode, HandshakeError } from './errors.js';

/*
 * X25519 key agreement, the part that runs everywhere: the interface and the
 * tweetnacl reference suite. The native (node:crypto) suite lives in
 * primitives.ts, so that a browser build can leave it out (primitives.browser.ts).
 */

export const KEY_BYTES = 32;

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

export function badKey(cause?: unknown): never {
  throw new HandshakeError(ErrorCode.BAD_PUBLIC_KEY, 'peer public key is invalid (low order)', { cause });
}

export function isZero(b: Uint8Array): boolean {
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
