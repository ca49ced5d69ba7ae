import { pbkdf2Sync } from 'node:crypto';
import { createRequire } from 'node:module';

/*
 * SCRAM-SHA-1 logins at a client's real cost. xmpp.js (through the `sasl-scram-sha-1` package)
 * computes the salted password, Hi() = PBKDF2-HMAC-SHA1, as one async WebCrypto HMAC per
 * iteration: ~0.1 s of CPU per login at ejabberd's 4,096 iterations, which would make a generator
 * of 2,000 devices spend minutes logging in. This swaps that one function for node:crypto's
 * pbkdf2 (the same value, ~2 ms) and keeps the result per (password, salt, iterations), as real
 * clients keep the salted password rather than the password. Nothing else of the exchange changes:
 * the server still checks the proof and the client still checks the server's signature.
 */

type Hi = (text: string, salt: Uint8Array, iterations: number) => Promise<Uint8Array>;

const cache = new Map<string, Uint8Array>();
let installed = false;

/** Installs the fast Hi() into the copy of sasl-scram-sha-1 that @xmpp/client loads (idempotent). */
export function installFastScram(): void {
  if (installed) return;
  installed = true;
  // Resolved from where @xmpp/sasl-scram-sha-1 resolves it: the module instance xmpp.js uses.
  const fromXmpp = createRequire(createRequire(import.meta.url).resolve('@xmpp/sasl-scram-sha-1'));
  const bitops = fromXmpp(fromXmpp.resolve('sasl-scram-sha-1/lib/bitops')) as { Hi: Hi };
  bitops.Hi = (text, salt, iterations) => {
    const key = `${iterations}:${Buffer.from(salt).toString('base64')}:${text}`;
    let v = cache.get(key);
    if (v === undefined) {
      v = new Uint8Array(pbkdf2Sync(text, salt, iterations, 20, 'sha1'));
      if (cache.size > 100_000) cache.clear();
      cache.set(key, v);
    }
    return Promise.resolve(v);
  };
}
