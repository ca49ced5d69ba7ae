import { HarnessError } from './errors.js';

/*
 * What the harness needs from a system under test, so one scenario can drive Gravitas, an XMPP
 * server or anything else. A driver knows nothing about schedules, histograms or NATS; the
 * generator owns those and tells the driver's devices what to do.
 *
 * The shape follows what a real client is: a *device* outlives its connections (it keeps its
 * outbox, its resumption state and the ids it has seen), is connected, dropped by the network,
 * reconnected. The hot path (send, receive) is callbacks, not a promise per message: a generator
 * hosts ~15,000 devices and must stay cheap per message (the issue's generator-cost target).
 *
 * Latency needs the *intended* send time at the receiver, and servers do not carry it for us, so
 * every message body starts with it (`encodeBody`); the receiving generator decodes it. The
 * generators' clocks are aligned to the runner's (clock.ts), so sender and receiver may be on
 * different hosts.
 */

export interface DeviceRef {
  /** The user's name on the wire (also an XMPP localpart: lower case). */
  user: string;
  /** Device name, unique per user (an XMPP resource). */
  device: string;
  /**
   * 32 bytes derived from the run's namespace, user and device (identity.ts): a driver derives the
   * device's key or password from them, so every generator — and a re-run with the same namespace
   * — acts as the same device.
   */
  secret: Uint8Array;
  /**
   * 32 bytes per user (identity.ts), the same for all its devices: for protocols whose secret is
   * the account's rather than the device's (an XMPP password).
   */
  userSecret: Uint8Array;
  /** The user's index in the population: drivers of multi-node peers put user i on node i mod n. */
  index?: number;
}

export interface Incoming {
  /** The sending user. */
  from: string;
  /** The group (as `createGroup` named it) for group messages. */
  group?: string;
  /** The campaign that sent it, for campaign messages. */
  campaign?: string;
  body: string;
}

/** What a device reports. Called synchronously from the driver's I/O callbacks: keep them cheap. */
export interface DeviceEvents {
  /** A message reached this device: once per message id (drivers drop the protocol's re-deliveries). */
  message(m: Incoming): void;
  /** The server took custody of send `ref` (ok), or refused it for good (`code`). Never called from within `send()` itself. */
  outcome(ref: number, ok: boolean, code?: string): void;
  /** The server told this device that another user's presence changed. */
  presence(user: string): void;
  /**
   * The session ended without `disconnect()` or `drop()` (the server closed it, the network failed).
   * The driver does not reconnect by itself: the generator decides when.
   */
  lost(code: string): void;
}

export interface DriverDevice {
  readonly connected: boolean;
  /**
   * Opens a session, resuming where the protocol allows (Gravitas: a ticket from the previous
   * session). Resolves once the server can deliver to the device (not merely once the handshake
   * is done): offline-delivery and reconnect numbers depend on it. Rejects with a DriverError.
   * Calling it while connected is a no-op.
   */
  connect(): Promise<void>;
  /**
   * Sends `body` to user `to`. While not connected, the message waits in the device's outbox
   * (at most OUTBOX_MAX; beyond, outcome(ref, false, 'OUTBOX_FULL')); a message without an outcome
   * when a connection is lost is sent again, with the same id, on the next one — what a real
   * client does, so that the server's de-duplication is exercised and nothing is counted lost
   * that the server never accepted.
   */
  send(ref: number, to: string, body: string): void;
  sendToGroup(ref: number, group: string, body: string): void;
  /** Dropped when not connected (presence is advisory). */
  setPresence(state: 'online' | 'away'): void;
  /** One round trip to the server; rejects when not connected. */
  ping(): Promise<void>;
  /** Ends the session cleanly (the protocol's goodbye); resolves once the connection is closed. */
  disconnect(): Promise<void>;
  /** Ends the connection abruptly, as a network loss would (reconnect storms). No `lost` event. */
  drop(): void;
}

export interface DriverCapabilities {
  /**
   * Every send gets an outcome from the server (custody accepted or refused), so the harness can
   * count what was accepted but never arrived. Without it, outcome(ref, true) only means "written".
   */
  acceptance: boolean;
  /** A 1:1 message also reaches the sender's other devices. */
  ownDeviceCopies: boolean;
  /** Messages for devices that are offline are kept and delivered when they connect: 1:1, groups. */
  offlineDelivery: { direct: boolean; groups: boolean };
}

export interface Driver {
  readonly name: string;
  readonly capabilities: DriverCapabilities;
  /**
   * Before the run: registers the device's account (idempotent: an existing one is fine) and,
   * when `contacts` is non-empty, adds them to the user's contacts (or roster). Leaves no session.
   */
  provision(d: DeviceRef, contacts: readonly string[]): Promise<void>;
  /** Before the run: creates a group owned by `creator` (provisioned) with `members`; resolves with the id to send to. */
  createGroup(creator: DeviceRef, name: string, members: readonly string[]): Promise<string>;
  /**
   * Before the run, once every group exists, for systems where membership is by consent: the
   * user of `member` (provisioned) accepts its invitations to `groups`. Leaves no session.
   * Drivers without it have their members in the group from createGroup on.
   */
  joinGroups?(member: DeviceRef, groups: readonly string[]): Promise<void>;
  /** A device; `groups` are the ids of the groups its user is in (XMPP joins their rooms at connect). */
  device(d: DeviceRef, events: DeviceEvents, groups: readonly string[]): DriverDevice;
  /** Ends every connection and releases what the driver holds. */
  close(): Promise<void>;
  /** Counters the driver keeps (resumptions, hints followed, re-deliveries dropped…), summed into the result. */
  counters?(): Record<string, number>;
}

/**
 * The messages a device showed lately, as (sender, id) pairs: a protocol may deliver a message
 * again (custody after a reconnect, a resumed XMPP stream) and the application must see it once.
 * A ring of `window` pairs, each kept as two independent 32-bit hashes: 8 bytes a pair, a false
 * match about once in 2^64 / window. Allocated by a device on its first message.
 */
export class RecentIds {
  private readonly ring: Int32Array;
  private pos = 0;
  private count = 0;

  constructor(private readonly window: number) {
    this.ring = new Int32Array(2 * window);
  }

  /** Whether (from, id) was seen already; records it if not. */
  seenBefore(from: string, id: string): boolean {
    let a = 0x811c9dc5;
    let b = 0x2545f491;
    for (let i = 0; i < from.length; i++) {
      const ch = from.charCodeAt(i);
      a = Math.imul(a ^ ch, 0x01000193);
      b = Math.imul(b ^ ch, 0x5bd1e995);
      b ^= b >>> 13;
    }
    // A separator, so ("ab", "c") and ("a", "bc") differ.
    a = Math.imul(a ^ 0x2f, 0x01000193);
    b = Math.imul(b ^ 0x2f, 0x5bd1e995);
    for (let i = 0; i < id.length; i++) {
      const ch = id.charCodeAt(i);
      a = Math.imul(a ^ ch, 0x01000193);
      b = Math.imul(b ^ ch, 0x5bd1e995);
      b ^= b >>> 13;
    }
    const ring = this.ring;
    for (let i = 0, n = 2 * this.count; i < n; i += 2) if (ring[i] === a && ring[i + 1] === b) return true;
    ring[2 * this.pos] = a;
    ring[2 * this.pos + 1] = b;
    this.pos = (this.pos + 1) % this.window;
    if (this.count < this.window) this.count++;
    return false;
  }
}

/** A device's outbox bound: what waits while disconnected, or without an outcome. */
export const OUTBOX_MAX = 1000;

/**
 * A send's way into a device's outbox, the same in every driver: the id it travels under
 * (`idPrefix` + ref in base 36), or undefined when it is refused — OUTBOX_FULL at OUTBOX_MAX
 * waiting, DUPLICATE_ID for a ref already waiting, or `invalid` (a code the caller found) — with
 * the refusal reported through `outcome` after send() returns, as every outcome is.
 */
export function admitToOutbox(outbox: ReadonlyMap<string, unknown>, idPrefix: string, ref: number, ev: DeviceEvents, invalid?: string): string | undefined {
  if (!Number.isSafeInteger(ref) || ref < 0) throw new RangeError(`send ref must be a non-negative safe integer, got ${ref}`);
  const id = idPrefix + ref.toString(36);
  const refusal = outbox.size >= OUTBOX_MAX ? 'OUTBOX_FULL' : outbox.has(id) ? 'DUPLICATE_ID' : invalid;
  if (refusal === undefined) return id;
  queueMicrotask(() => ev.outcome(ref, false, refusal));
  return undefined;
}

/**
 * A driver operation that failed; `code` is the protocol's or the transport's own (e.g.
 * `TICKET_EXPIRED`, `ECONNREFUSED`, `not-authorized`), counted by code in the result.
 */
export class DriverError extends HarnessError {
  override name = 'DriverError';
  constructor(
    readonly driverCode: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super('DRIVER_ERROR', message, options);
  }
}

// ---------- message bodies ----------

/** Longest padding a body needs; built once (a body is a slice of it, not a new repeat per message). */
const PAD = 'x'.repeat(60_000);

/**
 * `<intended ms, 3 decimals> <tag> ` then padding up to `bytes` (never shorter than the head).
 * `tag` names the run and the message (`<run>.<generator>.<ref>`), so a receiver can tell this
 * run's messages from leftovers of another run in a reused account.
 */
export function encodeBody(intendedMs: number, tag: string, bytes: number): string {
  const head = `${intendedMs.toFixed(3)} ${tag} `;
  return bytes > head.length ? head + PAD.slice(0, bytes - head.length) : head;
}

export interface DecodedBody {
  intendedMs: number;
  tag: string;
}

/** The intended send time and tag of a body, or undefined for a body the harness did not write. */
export function decodeBody(body: string): DecodedBody | undefined {
  const a = body.indexOf(' ');
  if (a <= 0) return undefined;
  const b = body.indexOf(' ', a + 1);
  if (b < 0) return undefined;
  const intendedMs = Number(body.slice(0, a));
  return Number.isFinite(intendedMs) ? { intendedMs, tag: body.slice(a + 1, b) } : undefined;
}

/** Epoch ms with sub-ms precision, the same in every process of a host. */
export const nowMs = (): number => performance.timeOrigin + performance.now();
