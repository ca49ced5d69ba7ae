import { createPublicKey, verify as verifySignature, type KeyObject } from 'node:crypto';
import type { SignatureCheck } from '@gravitas/protocol';

/** Hint public keys imported so far (one per cluster a generator talks to). */
const hintKeys = new Map<string, KeyObject>();

/**
 * The signature check of hints done by OpenSSL: tweetnacl verifies at ~40–1,000/s and a reconnect
 * storm makes thousands of devices follow hints at once. The server signs canonically, and for
 * canonical signatures the two agree (decisions.md §15); the hint's other checks are the protocol's.
 */
export const nativeCheck: SignatureCheck = (message, signature, publicKey) => {
  const id = Buffer.from(publicKey).toString('base64url');
  let key = hintKeys.get(id);
  if (!key) hintKeys.set(id, (key = createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: id }, format: 'jwk' })));
  return verifySignature(null, message, key, signature);
};
