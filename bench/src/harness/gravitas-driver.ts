import { RetryQueue, type RetryHandler } from '@gravitas/client/internal';
import { ErrorCode, MAX_ID_LENGTH, MAX_USERS_PER_REQUEST, type ResumptionState } from '@gravitas/protocol';
import { parseTarget } from '../rawclient.js';
import { CAN_SPREAD_LOOPBACK, isLoopbackHost, loopbackSource } from './sources.js';
import { DriverError, type DeviceEvents, type DeviceRef, type Driver, type DriverCapabilities, type DriverDevice } from './driver.js';
import { REG_PING, type Conn, type CounterName, type GravitasDriverCounters } from './gravitas-conn.js';
import { GravitasDevice, key, type DeviceHost, type Out } from './gravitas-device.js';

/*
 * The Gravitas driver: raw protocol sessions, one per device, speaking exactly what the SDK
 * (@gravitas/client) speaks — the same handshake (ClientHandshake, cookie challenge included),
 * resumption tickets, custody (outbox until `status`, retryable codes re-sent with the same id
 * after a backoff, everything without an outcome re-sent after a reconnect), acks of every `msg`
 * and `rcpt`, de-duplication of re-deliveries, and make-before-break moves on `move` hints — but
 * without the SDK's per-client machinery, because one generator process hosts ~15,000 devices.
 *
 * What keeps it cheap:
 * - Per idle device: one object, its ticket and (once it received something) a 2 KiB ring of
 *   (sender, id) hashes; per connection: the socket, a small Conn and two 32-byte keys. No timer
 *   per device: one driver-wide sweep does keepalive pings and dead-peer detection, one
 *   driver-wide timer does every retry backoff.
 * - Per message: no promise and no closure. Every socket reads into one shared buffer (`onread`,
 *   no stream chunks); frames are sealed and opened by the protocol's own SecureChannel
 *   (`sealFrame`: the length-prefixed frame in one buffer) and decoded and checked by its
 *   `decodeServerMessage` — one implementation of the wire for the SDK, the server and this.
 * - The acks (and anything else) caused by one incoming chunk leave in one write (cork/uncork).
 *
 * In three files: this one (the driver: devices, provisioning, the keepalive sweep, the one retry
 * queue), gravitas-device.ts (a device: sessions, moves, outbox, de-duplication) and
 * gravitas-conn.ts (a connection: handshake and frames). The custody rules themselves (what a
 * status means, the backoff, the acks) are the SDK's: @gravitas/client/internal (custody.ts).
 */

export type { GravitasDriverCounters } from './gravitas-conn.js';

export interface GravitasDriverOptions {
  /** Cell addresses (host:port, TCP). A device starts on the one a hash of its name picks. */
  addresses: string[];
  /** The cluster's server public key (pinned). */
  serverPublicKey: Uint8Array;
  /** Registration token for a device's first handshake ('' for an open cluster; the default). */
  registration?: string;
  /**
   * Unique per generator and run: message ids are `idPrefix + ref.toString(36)`, so ids never
   * collide across generators or with an earlier run. `[A-Za-z0-9_-]`, at most 53 characters.
   */
  idPrefix: string;
  /** One handshake attempt (one cell), ms (default 10,000). */
  connectTimeoutMs?: number;
  /** A connection with no traffic for this long is pinged, one silent for twice as long is dropped (default 30,000; 0 = off). */
  keepaliveMs?: number;
  /** Follow `move` hints as the SDK does (default true). */
  followHints?: boolean;
  /** Recent (sender, id) pairs remembered per device to drop re-deliveries (default 256). */
  dedupWindow?: number;
  /**
   * Each device connects from its own loopback address 127.(generator+1).H.L (sources.ts), so that
   * a local target's per-source caps see thousands of clients, not one flood. Used only when every
   * address is a loopback one and the host can bind them (Linux); undefined: one address for all.
   */
  spreadSources?: { generator: number };
}


/** contacts.add requests in flight at once on a provisioning session. */
const PROVISION_CONCURRENCY = 32;
const ID_PREFIX = /^[A-Za-z0-9_-]+$/;
/** The longest ref a message id may carry: Number.MAX_SAFE_INTEGER in base 36. */
const MAX_REF_CHARS = Number.MAX_SAFE_INTEGER.toString(36).length;
/** Keepalive sweep slices: the sweep visits 1/SWEEP_SLICES of the open sessions per tick. */
const SWEEP_SLICES = 64;
const NO_EVENTS: DeviceEvents = { message() {}, outcome() {}, presence() {}, lost() {} };

/** FNV-1a: a stable cell for each device, whichever generator hosts it. */
function hash(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

/** A retry is due: the device sends it again (or keeps it for its next connection). */
const RESEND: RetryHandler<GravitasDevice, Out> = {
  holds: (dev, o) => dev.holds(o),
  resend: (dev, o) => dev.write(o),
};

export class GravitasDriver implements Driver, DeviceHost {
  readonly name = 'gravitas';
  readonly capabilities: DriverCapabilities = { acceptance: true, ownDeviceCopies: true, offlineDelivery: { direct: true, groups: true } };
  readonly addresses: readonly string[];
  readonly serverPublicKey: Uint8Array;
  readonly registration: string;
  readonly idPrefix: string;
  readonly connectTimeoutMs: number;
  readonly followHints: boolean;
  readonly dedupWindow: number;
  /**
   * Open sessions of run devices, in SWEEP_SLICES slices: each sweep tick handles one slice, so a
   * generator's keepalive pings spread evenly over the period instead of leaving in one burst
   * (lockstep counters kept every connection in phase: a 16,000-ping stall of the generator and a
   * spike at the server every 15 s, seen in a 50k-user run).
   */
  private readonly live: Array<Set<Conn>> = Array.from({ length: SWEEP_SLICES }, () => new Set());
  private nextSlice = 0;
  private sweepSlice = 0;
  private readonly devices = new Set<GravitasDevice>();
  /** Tickets of provisioning sessions, for the device's first connect(). */
  private readonly tickets = new Map<string, ResumptionState>();
  private readonly c: GravitasDriverCounters = {
    resumed: 0, fullHandshakes: 0, resumeRefused: 0, cookies: 0, connectFailures: 0, hintsFollowed: 0, hintsIgnored: 0, hintsFailed: 0,
    redeliveriesDropped: 0, notices: 0, retries: 0, resent: 0, outboxFull: 0, lost: 0, keepalivePings: 0, keepaliveTimeouts: 0, clientErrors: 0,
  };
  private readonly strings = new Map<string, string>();
  private hk: Uint8Array | undefined;
  private readonly sweeper: NodeJS.Timeout | undefined;
  /** Sends waiting for their retry, of every device, under one timer (custody.ts RetryQueue). */
  private readonly retries = new RetryQueue<GravitasDevice, Out>(RESEND);
  private closing = false;
  private readonly spread: { generator: number } | undefined;
  private slots = 0;

  constructor(o: GravitasDriverOptions) {
    if (o.addresses.length === 0) throw new RangeError('GravitasDriver needs at least one address');
    if (o.serverPublicKey.length !== 32) throw new RangeError('serverPublicKey must be 32 bytes');
    if (!ID_PREFIX.test(o.idPrefix) || o.idPrefix.length + MAX_REF_CHARS > MAX_ID_LENGTH) {
      throw new RangeError(`idPrefix must be 1 to ${MAX_ID_LENGTH - MAX_REF_CHARS} characters of [A-Za-z0-9_-], got ${JSON.stringify(o.idPrefix)}`);
    }
    this.addresses = [...o.addresses];
    this.serverPublicKey = o.serverPublicKey;
    this.registration = o.registration ?? '';
    this.idPrefix = o.idPrefix;
    this.connectTimeoutMs = o.connectTimeoutMs ?? 10_000;
    this.followHints = o.followHints ?? true;
    this.dedupWindow = Math.max(1, Math.floor(o.dedupWindow ?? 256));
    this.spread = o.spreadSources && CAN_SPREAD_LOOPBACK && this.addresses.every((a) => isLoopbackHost(parseTarget(a).host)) ? o.spreadSources : undefined;
    const keepalive = o.keepaliveMs ?? 30_000;
    if (keepalive > 0) {
      this.sweeper = setInterval(() => this.sweep(), keepalive / 2 / SWEEP_SLICES);
      this.sweeper.unref();
    }
  }

  get isClosed(): boolean {
    return this.closing;
  }

  /** The local address for the next device (its own slot), or undefined when sources are not spread. */
  nextSource(): string | undefined {
    return this.spread && loopbackSource(this.spread.generator, this.slots++);
  }

  /** The device's own cell (a stable hash of user/device). */
  home(name: string): string {
    return this.addresses[hash(name) % this.addresses.length]!;
  }

  count(k: CounterName): void {
    this.c[k]++;
  }

  /** Totals since the driver was made (a copy). */
  counters(): Record<CounterName, number> {
    return { ...this.c };
  }

  /** One string per cell id and address for every device. */
  intern(s: string): string {
    let v = this.strings.get(s);
    if (v === undefined && this.strings.size < 4096) this.strings.set(s, (v = s));
    return v ?? s;
  }

  /** One copy of the cluster's hint key for every device. */
  hintKey(k: Uint8Array): Uint8Array {
    const cur = this.hk;
    if (cur && cur.length === k.length && Buffer.compare(cur, k) === 0) return cur;
    return (this.hk = new Uint8Array(k));
  }

  device(d: DeviceRef, events: DeviceEvents, _groups: readonly string[]): DriverDevice {
    if (this.closing) throw new DriverError('CLOSED', 'the driver is closed');
    const dev = new GravitasDevice(this, d, events, false);
    const k = key(d);
    const t = this.tickets.get(k);
    if (t) {
      this.tickets.delete(k);
      dev.ticket = t;
    }
    this.devices.add(dev);
    return dev;
  }

  async provision(d: DeviceRef, contacts: readonly string[]): Promise<void> {
    const dev = await this.session(d, true);
    try {
      const list = [...new Set(contacts)].filter((u) => u !== d.user);
      let next = 0;
      const worker = async (): Promise<void> => {
        while (next < list.length) await dev.request('contacts.add', { user: list[next++]! });
      };
      // Pipelined: the cell handles a session's requests one by one, the round trips overlap.
      await Promise.all(Array.from({ length: Math.min(PROVISION_CONCURRENCY, list.length) }, worker));
    } finally {
      await this.endSession(d, dev);
    }
  }

  async createGroup(creator: DeviceRef, name: string, members: readonly string[]): Promise<string> {
    const dev = await this.session(creator, false);
    try {
      const rest = [...new Set(members)].filter((u) => u !== creator.user);
      const first = rest.splice(0, MAX_USERS_PER_REQUEST - 1);
      const data = (await dev.request('groups.create', { name, members: first })) as { g?: unknown } | undefined;
      const g = data?.g;
      if (typeof g !== 'string') throw new DriverError(ErrorCode.BAD_MESSAGE, `${key(creator)}: groups.create answered without a group id`);
      while (rest.length > 0) await dev.request('groups.add', { g, users: rest.splice(0, MAX_USERS_PER_REQUEST) });
      return g;
    } finally {
      await this.endSession(creator, dev);
    }
  }

  /**
   * Accepts the invitations of `member`'s user to `groups` (membership is by consent, docs/groups.md):
   * one set-up session, the accepts pipelined (the cell takes them one by one; the round trips
   * overlap), each retried on retryable answers. A group joined already is fine.
   */
  async joinGroups(member: DeviceRef, groups: readonly string[]): Promise<void> {
    const dev = await this.session(member, false);
    try {
      let next = 0;
      const worker = async (): Promise<void> => {
        while (next < groups.length) {
          const g = groups[next++]!;
          await dev.request('groups.accept', { g }).catch(async (e: unknown) => {
            // No invitation (any more): fine if the user is a member already (a retried join); groups.info says.
            if ((e as DriverError).driverCode !== ErrorCode.NOT_FOUND) throw e;
            await dev.request('groups.info', { g });
          });
        }
      };
      await Promise.all(Array.from({ length: Math.min(PROVISION_CONCURRENCY, groups.length) }, worker));
    } finally {
      await this.endSession(member, dev);
    }
  }

  /** A set-up session as `d`, holding the ticket chain of provisioning. */
  private async session(d: DeviceRef, full: boolean): Promise<GravitasDevice> {
    if (this.closing) throw new DriverError('CLOSED', 'the driver is closed');
    const dev = new GravitasDevice(this, d, NO_EVENTS, true);
    const t = this.tickets.get(key(d));
    if (t) dev.ticket = t;
    this.tickets.delete(key(d));
    await dev.open(full);
    return dev;
  }

  private async endSession(d: DeviceRef, dev: GravitasDevice): Promise<void> {
    await dev.disconnect();
    // The first connect() of the run resumes with it (one round trip).
    if (dev.ticket) this.tickets.set(key(d), dev.ticket);
  }

  /** The server could not take custody now: the same id again after a backoff. */
  retryLater(dev: GravitasDevice, o: Out): void {
    this.count('retries');
    this.retries.schedule(dev, o, Math.random());
  }

  watch(c: Conn): void {
    c.slice = this.nextSlice;
    this.nextSlice = (this.nextSlice + 1) % SWEEP_SLICES;
    this.live[c.slice]!.add(c);
  }

  unwatch(c: Conn): void {
    this.live[c.slice]!.delete(c);
  }

  /**
   * One slice per tick, so each connection is visited every keepaliveMs / 2: one we have not
   * written to for a keepalive period, or that has not heard from the server for one, is pinged;
   * one that heard nothing for two is cut.
   */
  private sweep(): void {
    const slice = this.live[this.sweepSlice]!;
    this.sweepSlice = (this.sweepSlice + 1) % SWEEP_SLICES;
    for (const c of slice) {
      c.idle++;
      c.quiet++;
      if (c.quiet >= 4) {
        this.count('keepaliveTimeouts');
        c.fail('KEEPALIVE_TIMEOUT');
      } else if (c.idle >= 2 || c.quiet >= 2) {
        this.count('keepalivePings');
        c.write({ t: 'ping', n: REG_PING });
      }
    }
  }

  async close(): Promise<void> {
    this.closing = true;
    clearInterval(this.sweeper);
    this.retries.clear();
    const all = [...this.devices];
    this.devices.clear();
    this.tickets.clear();
    await Promise.allSettled(all.map((d) => d.disconnect()));
  }
}
