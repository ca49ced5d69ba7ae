import { timingSafeEqual } from 'node:crypto';
import type { KV } from '@nats-io/kv';
import { equalBytes, ErrorCode, HandshakeError, pack, unpack } from '@gravitas/protocol';
import { isCasConflict } from './nats.js';

const CACHE_MAX = 50_000;

function sameSecret(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}
const CACHE_TTL_MS = 60_000;

/**
 * Accounts and their devices' long-term public keys (KV, key `user.device`).
 * Registration is first-writer-wins (KV create), so a device id once bound to a
 * key can never be re-bound by someone else.
 */
export class Accounts {
  private readonly cache = new Map<string, { key: Uint8Array; at: number }>();

  constructor(
    private readonly kv: KV,
    private readonly registration: { mode: 'open' | 'token'; token?: string },
  ) {}

  private async keyOf(user: string, device: string): Promise<Uint8Array | undefined> {
    const k = `${user}.${device}`;
    const hit = this.cache.get(k);
    if (hit && Date.now() - hit.at < CACHE_TTL_MS) return hit.key;
    const e = await this.kv.get(k);
    if (!e || e.operation !== 'PUT') return undefined;
    const key = (unpack(e.value) as { pub: Uint8Array }).pub;
    if (this.cache.size >= CACHE_MAX) this.cache.delete(this.cache.keys().next().value!);
    this.cache.set(k, { key, at: Date.now() });
    return key;
  }

  /**
   * Checks that `publicKey` is the registered key of the device, registering it
   * first if the device is new and the client offered valid registration.
   * Returns true if the device was registered by this call.
   */
  async authenticate(user: string, device: string, publicKey: Uint8Array, registration: string | undefined): Promise<boolean> {
    const known = await this.keyOf(user, device);
    if (known) {
      if (!equalBytes(known, publicKey)) throw new HandshakeError(ErrorCode.DEVICE_KEY_MISMATCH, 'this device id is registered with another key');
      return false;
    }
    if (registration === undefined) throw new HandshakeError(ErrorCode.UNKNOWN_DEVICE, 'device is not registered');
    if (this.registration.mode === 'token' && !sameSecret(registration, this.registration.token ?? '')) {
      throw new HandshakeError(ErrorCode.REGISTRATION_DENIED, 'registration token is not valid');
    }
    try {
      await this.kv.create(`${user}.${device}`, pack({ pub: publicKey, at: Date.now() }));
    } catch (err) {
      if (!isCasConflict(err)) throw err;
      // Lost a race with another registration of the same device: check it again.
      this.cache.delete(`${user}.${device}`);
      return this.authenticate(user, device, publicKey, undefined);
    }
    return true;
  }
}
