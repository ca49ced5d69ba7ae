import { randomInt, timingSafeEqual } from 'node:crypto';
import type { KV } from '@nats-io/kv';
import { equalBytes, ErrorCode, HandshakeError, isSystemName, pack, ProtocolError, unpack, type Registration } from '@gravitas/protocol';
import type { RegistrationConfig } from '../config/index.js';
import { CombinedCas } from '../infra/combined-cas.js';
import { KeyedBuckets } from '../infra/rate.js';
import { approvalId, CredentialVerifier, type LinkApprovals } from './registration.js';
import type { SpentIds } from './tickets.js';
import { ReadThrough, TtlCache } from '../infra/ttl-cache.js';

/*
 * Accounts and their devices (docs/security.md). One KV bucket, two kinds of keys:
 *
 *   <user>                  the account record: msgpack { d: { <device>: { r, t } }, s? }
 *                           r: the registration id of the device's current key, t: when it
 *                           registered; s: set while an operator suspends the account
 *   <user>.<device>.<rid>   one registered key: msgpack { pub, at } — written once, before
 *                           the record points at it, never changed
 *
 * The record is the revocation record too: a device is revoked by taking it out
 * (or re-registering it, which gives it a new rid), and every handshake reads the
 * record afresh — a full handshake checks that the record names a key equal to
 * the one the handshake authenticated, a resumption that its ticket's rid is still
 * the device's. Once a removal has answered, no cell lets that key or those
 * tickets in again. Live sessions are told by a cluster-wide broadcast (Cell).
 */

/** One registered device. */
interface DeviceEntry { r: number; t: number }
/** The account record, read-only once decoded: a change makes a new one (combined-cas.ts). A Map, so no device name meets Object.prototype. */
export interface AccountRecord { readonly d: ReadonlyMap<string, DeviceEntry>; readonly s?: number }
const NO_ACCOUNT: AccountRecord = { d: new Map() };

const KEY_CACHE_TTL_MS = 10 * 60_000;
/**
 * Device lists (fan-out) are invalidated cluster-wide on every change, and all of them are
 * dropped when invalidations may have been lost (a NATS reconnect): the TTL is only a backstop.
 * Every message needs its recipient's and its sender's lists, so a short TTL meant a KV read
 * for a sizeable share of all messages.
 */
const DEVICES_CACHE_TTL_MS = 10 * 60_000;
const CACHE_MAX = 50_000;
/** Failed registrations a source may make: a burst, then one per FAILURE_INTERVAL_MS (guessing a token or a credential is not worth it). */
const FAILURE_BURST = 10;
const FAILURE_INTERVAL_MS = 6_000;
/** A registration id: random, so two registrations of one device id never share one. */
const MAX_RID = 2 ** 48;

function sameSecret(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

/** Decodes an account record; anything malformed reads as an empty account rather than failing. */
export function decodeAccount(v: Uint8Array | undefined): AccountRecord {
  if (!v || v.length === 0) return NO_ACCOUNT;
  let o: { d?: unknown; s?: unknown };
  try {
    o = unpack(v) as { d?: unknown; s?: unknown };
  } catch {
    return NO_ACCOUNT;
  }
  if (typeof o !== 'object' || o === null) return NO_ACCOUNT;
  const d = new Map<string, DeviceEntry>();
  if (typeof o.d === 'object' && o.d !== null) {
    for (const [dev, e] of Object.entries(o.d as Record<string, unknown>)) {
      const x = e as { r?: unknown; t?: unknown } | null;
      if (typeof x === 'object' && x !== null && typeof x.r === 'number' && typeof x.t === 'number') d.set(dev, { r: x.r, t: x.t });
    }
  }
  return typeof o.s === 'number' ? { d, s: o.s } : { d };
}

function encodeAccount(r: AccountRecord): Uint8Array {
  const d = Object.fromEntries(r.d);
  return pack(r.s === undefined ? { d } : { d, s: r.s });
}

/** The account record of `user` straight from KV (the stream leader); an unknown user reads as an empty account. */
export async function readAccount(kv: KV, user: string): Promise<AccountRecord> {
  const e = await kv.get(user);
  return e && e.operation === 'PUT' ? decodeAccount(e.value) : NO_ACCOUNT;
}

/**
 * Compare-and-set of account records, with this cell's concurrent changes of one
 * account combined into one write (combined-cas.ts). A change returns the new
 * record, or undefined to leave it; it may throw a coded error.
 */
export function accountRecords(kv: KV): CombinedCas<AccountRecord> {
  return new CombinedCas<AccountRecord>(kv, { decode: decodeAccount, encode: encodeAccount }, (user) => new ProtocolError(ErrorCode.BUSY, `the account ${user} is changed too often; try again`));
}

/** `r` with `device` set to `e` (or removed). */
function withDevice(r: AccountRecord, device: string, e: DeviceEntry | undefined): AccountRecord {
  const d = new Map(r.d);
  if (e) d.set(device, e);
  else d.delete(device);
  return r.s === undefined ? { d } : { d, s: r.s };
}

const keyRecord = (user: string, device: string, rid: number): string => `${user}.${device}.${rid}`;

/** What a revoked registration or a suspended account is told (handshake refusals, the bye of live sessions). */
export const REFUSED = {
  [ErrorCode.DEVICE_REVOKED]: 'this device was removed from its account',
  [ErrorCode.ACCOUNT_SUSPENDED]: 'this account is suspended',
} as const;

const suspended = (): HandshakeError => new HandshakeError(ErrorCode.ACCOUNT_SUSPENDED, REFUSED[ErrorCode.ACCOUNT_SUSPENDED]);
const denied = (why: string): HandshakeError => new HandshakeError(ErrorCode.REGISTRATION_DENIED, why);

/** What happens to accounts, for the cell to pass on (caches, live sessions, notices). */
export interface AccountEvents {
  /** The device list of `user` changed (caches everywhere drop it). */
  changed(user: string): void;
  /** Keys were revoked: one registration of one device, or (no device) the whole account. Live sessions end. */
  revoked(user: string, device?: string, rid?: number): void;
  /** A device joined the account (or a device id got a new key): its other devices are told. */
  added(user: string, device: string): void;
  /** A device left the account: its other devices are told. */
  removed(user: string, device: string): void;
}

/** The first flight of a full handshake, as accounts see it. */
export interface Hello { user: string; device: string; key: Uint8Array; registration: Registration | undefined; source: string }

export class Accounts {
  /** Registered keys by `user.device.rid`: immutable records, cached for memory's sake only. */
  private readonly keys = new TtlCache<string, Uint8Array>(CACHE_MAX, KEY_CACHE_TTL_MS);
  /** Device lists for fan-out; concurrent misses for one user share one KV get. */
  private readonly devicesOf = new ReadThrough<string, string[]>(new TtlCache(CACHE_MAX, DEVICES_CACHE_TTL_MS));
  /** Failed registrations by source address (a token or credential guesser is slowed, not the neighbours). */
  private readonly failures = new KeyedBuckets(1000 / FAILURE_INTERVAL_MS, FAILURE_BURST);
  private readonly credentials: CredentialVerifier | undefined;
  private readonly records: CombinedCas<AccountRecord>;

  constructor(
    private readonly kv: KV,
    private readonly spent: SpentIds,
    private readonly cfg: RegistrationConfig,
    private readonly maxDevices: number,
    private readonly links: LinkApprovals,
    private readonly events: AccountEvents,
  ) {
    this.credentials = cfg.credential && new CredentialVerifier(cfg.credential);
    this.records = accountRecords(kv);
  }

  /** The account record straight from KV (the stream leader): what every handshake checks. */
  private read(user: string): Promise<AccountRecord> {
    return readAccount(this.kv, user);
  }

  private async keyOf(user: string, device: string, rid: number): Promise<Uint8Array | undefined> {
    const k = keyRecord(user, device, rid);
    const hit = this.keys.get(k);
    if (hit) return hit;
    const e = await this.kv.get(k);
    if (!e || e.operation !== 'PUT') return undefined;
    const key = (unpack(e.value) as { pub: Uint8Array }).pub;
    this.keys.set(k, key);
    return key;
  }

  /**
   * A full handshake: the key must be the device's registered key, or the hello
   * carries a proof that adds it (docs/security.md, "Registration"). Returns the
   * registration id the session's tickets will carry.
   */
  async authenticate(h: Hello): Promise<{ rid: number; added: boolean }> {
    const { user, device, key } = h;
    if (isSystemName(user) || isSystemName(device)) throw denied('names beginning with "_" are reserved for the system');
    const rec = await this.read(user);
    const entry = rec.d.get(device);
    const known = entry && (await this.keyOf(user, device, entry.r));
    if (known && equalBytes(known, key)) {
      if (rec.s !== undefined) throw suspended();
      return { rid: entry.r, added: false };
    }
    // Unknown, removed, or registered with another key: one answer, so a hello cannot probe who exists.
    if (h.registration === undefined) throw new HandshakeError(ErrorCode.UNKNOWN_DEVICE, 'this device is not registered with this key');
    if (!this.failures.has(h.source)) throw new HandshakeError(ErrorCode.RATE_LIMITED, 'too many failed registrations from this address; try again later');
    try {
      const replace = await this.prove(h, rec, entry !== undefined);
      return { rid: await this.register(h, replace), added: true };
    } catch (err) {
      if (err instanceof HandshakeError && (err.code === ErrorCode.REGISTRATION_DENIED || err.code === ErrorCode.DEVICE_KEY_MISMATCH)) this.failures.take(h.source);
      throw err;
    }
  }

  /**
   * Checks the hello's proof of account membership and spends it. Returns whether
   * the proof may replace the key of a device id that is registered already (a
   * credential or a link approval may: the app was reinstalled; a token may not).
   */
  private async prove(h: Hello, rec: AccountRecord, exists: boolean): Promise<boolean> {
    const reg = h.registration!;
    const now = Date.now();
    const binding = { user: h.user, device: h.device, key: h.key };
    if (typeof reg === 'string') {
      if (this.cfg.mode === 'open') {
        if (exists) throw new HandshakeError(ErrorCode.DEVICE_KEY_MISMATCH, 'this device id is registered with another key');
        if (rec.s !== undefined) throw suspended();
        return false;
      }
      if (this.cfg.mode !== 'token') throw denied('this cluster does not take registration tokens: register with a credential, or link from a device of the account');
      if (!sameSecret(reg, this.cfg.token ?? '')) throw denied('registration token is not valid');
      // The shared token creates accounts; it cannot add a device to someone's account.
      if (rec.d.size > 0) throw denied('this account exists: a new device joins it by linking from one of its devices (devices.link), or with a credential');
      return false;
    }
    let spend: string;
    if ('credential' in reg) {
      if (!this.credentials) throw denied('this cluster takes no registration credentials');
      spend = (await this.credentials.verify(reg.credential, binding, now)).id;
    } else {
      if (!this.cfg.link.enabled) throw denied('device linking is turned off on this cluster');
      const a = this.links.verify(reg.link, binding, now);
      // An approval from a device that has been removed (or re-keyed) since is void.
      if (rec.d.get(a.by)?.r !== a.byRid) throw denied('the device that approved this link is no longer registered');
      spend = approvalId(a);
    }
    // Said only to the holder of a valid proof for this account: no one else learns it is suspended.
    if (rec.s !== undefined) throw suspended();
    if (!(await this.spent.claim(spend))) throw denied('this registration proof was already used');
    return true;
  }

  /** Writes the key record, then points the account at it (the device limit is checked there). */
  private async register(h: Hello, replace: boolean): Promise<number> {
    const { user, device } = h;
    const rid = randomInt(1, MAX_RID);
    const now = Date.now();
    const k = keyRecord(user, device, rid);
    await this.kv.create(k, pack({ pub: h.key, at: now }));
    const changed = await this.records
      .change(user, (r = NO_ACCOUNT) => {
        if (r.s !== undefined) throw suspended();
        const old = r.d.get(device);
        // Someone registered this device id meanwhile; only a proof of ownership may take it over.
        if (old && !replace) throw new HandshakeError(ErrorCode.DEVICE_KEY_MISMATCH, 'this device id is registered with another key');
        if (!old && r.d.size >= this.maxDevices) throw new HandshakeError(ErrorCode.TOO_MANY_DEVICES, `an account may have at most ${this.maxDevices} devices`);
        return withDevice(r, device, { r: rid, t: now });
      })
      .catch((err: unknown) => {
        this.kv.delete(k).catch(() => undefined); // the record never pointed at it
        throw err;
      });
    const old = changed.before?.d.get(device);
    this.devicesOf.invalidate(user);
    this.events.changed(user);
    if (old) {
      this.events.revoked(user, device, old.r);
      this.kv.delete(keyRecord(user, device, old.r)).catch(() => undefined);
    }
    // The account's other devices are told; an account's first device has nobody to tell.
    if (changed.after!.d.size > 1) this.events.added(user, device);
    return rid;
  }

  /**
   * Whether registration `rid` of a device still holds: undefined if it does, else the
   * code its handshakes are refused and its sessions end with. Read afresh (no cache).
   */
  async standing(user: string, device: string, rid: number): Promise<typeof ErrorCode.DEVICE_REVOKED | typeof ErrorCode.ACCOUNT_SUSPENDED | undefined> {
    const rec = await this.read(user);
    if (rec.d.get(device)?.r !== rid) return ErrorCode.DEVICE_REVOKED;
    return rec.s === undefined ? undefined : ErrorCode.ACCOUNT_SUSPENDED;
  }

  /** A resumption: the ticket's registration must still be the device's, the account not suspended. */
  async checkResume(user: string, device: string, rid: number): Promise<void> {
    const why = await this.standing(user, device, rid);
    if (why) throw new HandshakeError(why, REFUSED[why]);
  }

  /** The registered devices of a user, for fan-out (none for an unknown or suspended account). */
  devices(user: string): Promise<string[]> {
    return this.devicesOf.get(user, async () => {
      const r = await this.read(user);
      return r.s === undefined ? [...r.d.keys()] : [];
    });
  }

  /** The cached device list of `user`, if there is one (no I/O: the message path's fast case). */
  cachedDevices(user: string): string[] | undefined {
    return this.devicesOf.peek(user);
  }

  /** Devices with their registration time, for `devices.list`. */
  async deviceList(user: string): Promise<Array<{ device: string; registeredAt: number }>> {
    return listDevices(await this.read(user));
  }

  /**
   * An approval for a new device, from device `by` of `user` (registration `byRid`):
   * what the new device presents in its first hello, within registration.link.ttlMs.
   */
  approve(user: string, by: string, byRid: number, device: string, key: Uint8Array): { approval: Uint8Array; expiresAt: number } {
    if (!this.cfg.link.enabled) throw new ProtocolError(ErrorCode.NOT_ALLOWED, 'device linking is turned off on this cluster');
    if (isSystemName(device)) throw new ProtocolError(ErrorCode.NOT_ALLOWED, 'names beginning with "_" are reserved for the system');
    const now = Date.now();
    const expiresAt = now + this.cfg.link.ttlMs;
    return { approval: this.links.issue({ user, device, key, by, byRid, issuedAt: now, expiresAt }), expiresAt };
  }

  /**
   * Removes a device: answers once the account record no longer names it (from
   * then on no cell accepts its key or its tickets), then its live sessions are
   * told to end everywhere and its key record goes.
   */
  async removeDevice(user: string, device: string): Promise<void> {
    const { before } = await this.records.change(user, (r) => (r?.d.has(device) ? withDevice(r, device, undefined) : undefined));
    const removed = before?.d.get(device);
    if (!removed) throw new ProtocolError(ErrorCode.NOT_FOUND, 'no such device');
    this.devicesOf.invalidate(user);
    this.events.changed(user);
    this.events.revoked(user, device, removed.r);
    this.events.removed(user, device);
    await this.kv.delete(keyRecord(user, device, removed.r)).catch(() => undefined);
  }

  invalidate(user: string): void {
    this.devicesOf.invalidate(user);
  }

  /** Invalidations may have been lost: every device list is read again when next needed. */
  invalidateAll(): void {
    this.devicesOf.clear();
  }
}

/** The devices of an account record with their registration time (devices.list, the admin API). */
export function listDevices(r: AccountRecord): Array<{ device: string; registeredAt: number }> {
  return [...r.d].map(([device, e]) => ({ device, registeredAt: e.t }));
}

/**
 * Suspends an account (every device refused, every session ended: the caller
 * broadcasts the revocation) or lifts the suspension. Used by the admin API.
 * Returns false if the account does not exist.
 */
export async function setSuspended(records: CombinedCas<AccountRecord>, user: string, on: boolean): Promise<boolean> {
  const { before } = await records.change(user, (r) => {
    if (!r || (r.d.size === 0 && r.s === undefined) || (r.s !== undefined) === on) return undefined;
    return on ? { d: r.d, s: Date.now() } : { d: r.d };
  });
  return before !== undefined && (before.d.size > 0 || before.s !== undefined);
}
