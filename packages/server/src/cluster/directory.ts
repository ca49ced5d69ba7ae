import type { KV } from '@nats-io/kv';
import { pack, unpack } from '@gravitas/protocol';
import { isCasConflict } from '../infra/nats.js';

/** Where one device's session lives. `epoch` grows with every new session of the device. */
import type { DeviceLocation, DirectoryPort } from '../core/ports.js';

export type { DeviceLocation };

type Entry = Record<string, { c: string; n: string; e: number }>;

const CACHE_TTL_MS = 2000;
/**
 * "Offline" is cached for less: a device that registers meanwhile is not lost —
 * custody stores its items and the wake-up after every store reads the directory
 * afresh and tells the new session to drain — it only takes the slower path.
 */
const NEGATIVE_TTL_MS = 1000;
/**
 * For custody's deliveries (locate) a device's cached location is trusted for longer: a
 * wrong one costs the cell it names answering "not here" and custody reading afresh,
 * never a message. Reading every recipient again every 2 s was a KV get for half of all messages.
 */
const LOCATE_TTL_MS = 5 * 60_000;
const CACHE_MAX = 100_000;
const CAS_ATTEMPTS = 16;

function decode(v: Uint8Array | undefined): Entry {
  if (!v || v.length === 0) return {};
  try {
    const o = unpack(v) as { d?: Entry };
    return o && typeof o === 'object' && o.d && typeof o.d === 'object' ? o.d : {};
  } catch {
    return {};
  }
}

/**
 * The directory of online devices: one KV key per user holding all its devices,
 * changed only by compare-and-set so concurrent sessions of one user never lose
 * each other's writes. Epochs make a stale session's cleanup a no-op once a newer
 * session of the same device has registered. Entries on cells that stopped
 * heartbeating are ignored by lookups and dropped on the next write.
 */
export class Directory implements DirectoryPort {
  private readonly cache = new Map<string, { locs: DeviceLocation[]; at: number }>();
  private readonly inFlight = new Map<string, Promise<DeviceLocation[]>>();

  constructor(private readonly kv: KV, private readonly isLive: (cell: string) => boolean) {}

  private async modify(user: string, change: (e: Entry) => boolean): Promise<Entry> {
    for (let attempt = 0; attempt < CAS_ATTEMPTS; attempt++) {
      const cur = await this.kv.get(user);
      const rev = cur && cur.operation === 'PUT' ? cur.revision : 0;
      const entry = rev ? decode(cur!.value) : {};
      for (const [dev, loc] of Object.entries(entry)) if (!this.isLive(loc.c)) delete entry[dev];
      if (!change(entry) && rev) return entry;
      try {
        const value = pack({ d: entry });
        if (rev) await this.kv.update(user, value, rev);
        else if (cur) await this.kv.update(user, value, cur.revision); // over a delete marker
        else await this.kv.create(user, value);
        this.cache.delete(user);
        return entry;
      } catch (err) {
        if (!isCasConflict(err)) throw err;
      }
    }
    throw new Error(`directory entry of ${user} is too contended`);
  }

  /** Registers a new session of `device`; returns its epoch and the session it replaces, if any. */
  async register(user: string, device: string, cell: string, node: string): Promise<{ epoch: number; replaced?: DeviceLocation }> {
    let epoch = 0;
    let replaced: DeviceLocation | undefined;
    await this.modify(user, (e) => {
      const old = e[device];
      replaced = old ? { device, cell: old.c, node: old.n, epoch: old.e } : undefined;
      epoch = (old?.e ?? 0) + 1;
      e[device] = { c: cell, n: node, e: epoch };
      return true;
    });
    return replaced ? { epoch, replaced } : { epoch };
  }

  /** Removes the device only if the directory still names this very session. */
  async unregister(user: string, device: string, epoch: number): Promise<void> {
    await this.modify(user, (e) => {
      if (e[device]?.e !== epoch) return false;
      delete e[device];
      return true;
    });
  }

  /**
   * Online devices of a user, on live cells. Answers are cached briefly (offline
   * ones for less); concurrent reads of one user share one KV get.
   */
  async lookup(user: string, fresh = false): Promise<DeviceLocation[]> {
    const hit = this.cache.get(user);
    // A cached location on a cell that died since is stale: the device may have
    // registered again elsewhere, so read the entry instead of answering "offline".
    if (!fresh && hit && Date.now() - hit.at < (hit.locs.length > 0 ? CACHE_TTL_MS : NEGATIVE_TTL_MS) && hit.locs.every((l) => this.isLive(l.cell))) return hit.locs;
    return this.shared(user, fresh);
  }

  /**
   * Where the `devices` of `user` are, for delivering to them: from the cache — at once, no
   * promise — when it names each of them (trusted for LOCATE_TTL_MS: "not here" corrects
   * it) or is young enough that the ones it does not name are offline (NEGATIVE_TTL_MS, as
   * lookup); otherwise read.
   */
  locate(user: string, devices: readonly string[]): DeviceLocation[] | Promise<DeviceLocation[]> {
    const hit = this.cache.get(user);
    if (hit && hit.locs.every((l) => this.isLive(l.cell))) {
      const age = Date.now() - hit.at;
      if (age < NEGATIVE_TTL_MS || (age < LOCATE_TTL_MS && devices.every((d) => hit.locs.some((l) => l.device === d)))) return hit.locs;
    }
    return this.shared(user, false);
  }

  /** A read of `user`'s entry; concurrent ones share it unless `fresh` (which must start after the caller's call). */
  private shared(user: string, fresh: boolean): Promise<DeviceLocation[]> {
    const running = fresh ? undefined : this.inFlight.get(user);
    if (running) return running;
    const read = this.read(user).finally(() => {
      if (this.inFlight.get(user) === read) this.inFlight.delete(user);
    });
    if (!fresh) this.inFlight.set(user, read);
    return read;
  }

  private async read(user: string): Promise<DeviceLocation[]> {
    const cur = await this.kv.get(user);
    const entry = cur && cur.operation === 'PUT' ? decode(cur.value) : {};
    const locs = Object.entries(entry)
      .map(([device, l]) => ({ device, cell: l.c, node: l.n, epoch: l.e }))
      .filter((l) => this.isLive(l.cell));
    this.cache.delete(user);
    if (this.cache.size >= CACHE_MAX) this.cache.delete(this.cache.keys().next().value!);
    this.cache.set(user, { locs, at: Date.now() });
    return locs;
  }

  /**
   * Every registered session of a user straight from KV, live or not: a cell that
   * merely missed heartbeats (a NATS hiccup) still has its sessions, and whoever
   * must reach them should try again rather than conclude they are gone.
   */
  async entries(user: string): Promise<Array<DeviceLocation & { live: boolean }>> {
    const cur = await this.kv.get(user);
    const entry = cur && cur.operation === 'PUT' ? decode(cur.value) : {};
    return Object.entries(entry).map(([device, l]) => ({ device, cell: l.c, node: l.n, epoch: l.e, live: this.isLive(l.c) }));
  }

  invalidate(user: string): void {
    this.cache.delete(user);
  }
}
