import { timingSafeEqual } from 'node:crypto';
import type { KV } from '@nats-io/kv';
import { equalBytes, ErrorCode, HandshakeError, pack, ProtocolError, unpack } from '@gravitas/protocol';
import { isCasConflict } from './nats.js';
import { ReadThrough, TtlCache } from './ttl-cache.js';

const KEY_CACHE_TTL_MS = 60_000;
/** Device lists are also invalidated cluster-wide on every change; the TTL is the fallback. */
const DEVICES_CACHE_TTL_MS = 5_000;
const CACHE_MAX = 50_000;
const CAS_ATTEMPTS = 16;

function sameSecret(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

/** The device index of a user: device → registration time. */
type DeviceIndex = Record<string, number>;

function decodeIndex(v: Uint8Array | undefined): DeviceIndex {
  if (!v || v.length === 0) return {};
  try {
    const o = unpack(v) as { d?: unknown };
    return o && typeof o.d === 'object' && o.d !== null ? (o.d as DeviceIndex) : {};
  } catch {
    return {};
  }
}

/**
 * Accounts and their devices. Two kinds of keys in one KV bucket: `user.device`
 * holds the device's long-term public key, written once (KV create, so a device id
 * bound to a key can never be re-bound by someone else); `user` holds the index of
 * the user's devices, changed by compare-and-set, which enforces the device limit
 * and is what fan-out reads.
 */
export class Accounts {
  private readonly keys = new TtlCache<string, Uint8Array>(CACHE_MAX, KEY_CACHE_TTL_MS);
  /** Concurrent misses for one user share one KV get. */
  private readonly devicesOf = new ReadThrough<string, string[]>(new TtlCache(CACHE_MAX, DEVICES_CACHE_TTL_MS));

  constructor(
    private readonly kv: KV,
    private readonly registration: { mode: 'open' | 'token'; token?: string },
    private readonly maxDevices: number,
    /** Tells every cell that a user's devices changed. */
    private readonly announce: (user: string) => void,
  ) {}

  private async keyOf(user: string, device: string): Promise<Uint8Array | undefined> {
    const k = `${user}.${device}`;
    const hit = this.keys.get(k);
    if (hit) return hit;
    const e = await this.kv.get(k);
    if (!e || e.operation !== 'PUT') return undefined;
    const key = (unpack(e.value) as { pub: Uint8Array }).pub;
    this.keys.set(k, key);
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
    // The index first: it enforces the device limit. A device in the index without
    // a key (a crash in between) is harmless and can be removed by the user.
    await this.modifyIndex(user, (d) => {
      if (d[device] !== undefined) return false;
      if (Object.keys(d).length >= this.maxDevices) throw new HandshakeError(ErrorCode.TOO_MANY_DEVICES, `an account may have at most ${this.maxDevices} devices`);
      d[device] = Date.now();
      return true;
    });
    try {
      await this.kv.create(`${user}.${device}`, pack({ pub: publicKey, at: Date.now() }));
    } catch (err) {
      if (!isCasConflict(err)) throw err;
      // Lost a race with another registration of the same device: check it again.
      this.keys.delete(`${user}.${device}`);
      return this.authenticate(user, device, publicKey, undefined);
    }
    return true;
  }

  /** The registered devices of a user (empty for an unknown user). */
  devices(user: string): Promise<string[]> {
    return this.devicesOf.get(user, async () => {
      const e = await this.kv.get(user);
      return e && e.operation === 'PUT' ? Object.keys(decodeIndex(e.value)) : [];
    });
  }

  /** Devices with their registration time, for `devices.list`. */
  async deviceList(user: string): Promise<Array<{ device: string; registeredAt: number }>> {
    const e = await this.kv.get(user);
    const d = e && e.operation === 'PUT' ? decodeIndex(e.value) : {};
    return Object.entries(d).map(([device, registeredAt]) => ({ device, registeredAt }));
  }

  /** Removes a device and its key: it must register again (with a new key) to come back. */
  async removeDevice(user: string, device: string): Promise<void> {
    let found = false;
    await this.modifyIndex(user, (d) => {
      found = d[device] !== undefined;
      delete d[device];
      return found;
    });
    if (!found) throw new ProtocolError(ErrorCode.NOT_FOUND, 'no such device');
    await this.kv.delete(`${user}.${device}`);
    this.keys.delete(`${user}.${device}`);
  }

  invalidate(user: string): void {
    this.devicesOf.invalidate(user);
  }

  private async modifyIndex(user: string, change: (d: DeviceIndex) => boolean): Promise<void> {
    for (let attempt = 0; attempt < CAS_ATTEMPTS; attempt++) {
      const cur = await this.kv.get(user);
      const d = cur && cur.operation === 'PUT' ? decodeIndex(cur.value) : {};
      if (!change(d)) return;
      try {
        if (cur) await this.kv.update(user, pack({ d }), cur.revision);
        else await this.kv.create(user, pack({ d }));
        this.devicesOf.invalidate(user);
        this.announce(user);
        return;
      } catch (err) {
        if (!isCasConflict(err)) throw err;
      }
    }
    throw new ProtocolError(ErrorCode.BUSY, `device list of ${user} is too contended`);
  }
}
