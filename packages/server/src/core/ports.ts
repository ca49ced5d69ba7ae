import type { ErrorCode, HintKeyPair, Prefs, Read, RequestArgs, RequestOp, Send, Typing } from '@gravitas/protocol';
import type { ChatItem, Envelope, Item, ReceiptItem } from './envelope.js';
import type { DeviceSession, StoredRef } from './session.js';

export type { StoredRef };

/*
 * The interfaces features know each other by. A feature's constructor takes the
 * CellContext and the ports it uses from this file; the cell (cell/cell.ts) is
 * the one place that builds the features and hands each the others. Observers
 * (push, relay, gravitation) are told through the event ports at the end, so
 * the feature that acts does not know who listens.
 */

// ---- shared records -----------------------------------------------------------

/** Where one of a user's devices has a session. */
export interface DeviceLocation { device: string; cell: string; node: string; epoch: number }


export interface StoredItem { item: Item; ref: StoredRef; storedAt: number }

/** The fate of an item under custody. */
export type Settlement = { s: 'delivered' | 'stored' } | { s: 'failed'; code: ErrorCode };

/** One user's social record, as the cell uses it. */
export interface SocialRecord {
  readonly contacts: ReadonlySet<string>;
  readonly blocked: ReadonlySet<string>;
  readonly prefs: Readonly<Prefs>;
}

/** What a cell announces about itself on every heartbeat. */
export interface CellInfo {
  cell: string;
  node: string;
  address: string;
  /** The cell's web listener (host:port), if it has one. */
  web?: string;
  sessions: number;
  lagMs: number;
  state: 'up' | 'draining';
}

/** A live cell's addresses and load, as a connect hint needs them. */
export interface CellLoad { addr: string; web?: string; load: number }

/** A system notice under custody (device added or removed, group invitation). */
export interface Notice { from: string; sys: string; text: string; about: string }

/** The answer to one `req` area: validated args in, data (or a ProtocolError) out. */
export interface RequestHandler {
  handle(s: DeviceSession, op: RequestOp, args: unknown): Promise<unknown>;
}

// ---- cluster ------------------------------------------------------------------

/** Which cell each device of a user is on (cluster/directory.ts). */
export interface DirectoryPort {
  lookup(user: string, fresh?: boolean): Promise<DeviceLocation[]>;
  /** Where these devices of `user` are, for a delivery: synchronously when the cache answers (directory.ts). */
  locate(user: string, devices: readonly string[]): DeviceLocation[] | Promise<DeviceLocation[]>;
  register(user: string, device: string, cell: string, node: string): Promise<{ epoch: number; replaced?: DeviceLocation }>;
  unregister(user: string, device: string, epoch: number): Promise<void>;
  /** Every device entry of `user`, also those on cells not heard from lately (`live` false). */
  entries(user: string): Promise<Array<DeviceLocation & { live: boolean }>>;
  invalidate(user: string): void;
}

/** Which cells are alive (cluster/membership.ts). */
export interface Liveness {
  isLive(cell: string): boolean;
  live(): CellInfo[];
}

/** Signed connect hints (one signer for gravitation, push and relay). */
export interface HintSigner {
  readonly keys: HintKeyPair;
  loads(): Map<string, CellLoad>;
  signHintTo(cellId: string, user: string, device: string, ttlMs: number, now?: number, loads?: Map<string, CellLoad>): Uint8Array | undefined;
}

/** Gravitation as the rest of the cell drives it (cluster/gravity.ts). */
export interface Placement extends HintSigner {
  readonly hintPublicKey: Uint8Array;
  registered(s: DeviceSession): void;
  detached(s: DeviceSession): void;
  /** A live item from cell `peerCell` reached `s`. */
  record(s: DeviceSession, peerCell: string): void;
  /** A device told to move here is expected (it gets a slot before it arrives). */
  expect(user: string, device: string): void;
  /** The first stored item a device finds at connect: true when it is told to move (the new cell drains it). */
  associateHint(s: DeviceSession, item: ChatItem): Promise<boolean>;
}

// ---- accounts -----------------------------------------------------------------

/** A user's registered devices (session/accounts.ts). */
export interface DeviceRoster {
  devices(user: string): Promise<string[]>;
  /** `devices` from the cache, without I/O; undefined when that needs a read. */
  cachedDevices(user: string): string[] | undefined;
  deviceList(user: string): Promise<Array<{ device: string; registeredAt: number }>>;
}

// ---- social -------------------------------------------------------------------

/** Contacts, blocks and preferences (social/contacts.ts). */
export interface SocialGraph extends RequestHandler {
  /** The recipient blocks the sender, or accepts messages from contacts only and the sender is not one. */
  refuses(recipient: string, sender: string): Promise<boolean>;
  /** `refuses` answered from the cache, without I/O; undefined when that needs a read. */
  refusesNow(recipient: string, sender: string): boolean | undefined;
  prefs(user: string): Promise<Prefs>;
  record(user: string): Promise<SocialRecord>;
  invalidate(user: string, d?: unknown): void;
}

/** Presence and typing (social/presence.ts). */
export interface PresencePort {
  online(s: DeviceSession): void;
  offline(s: DeviceSession): void;
  set(s: DeviceSession, state: 'online' | 'away'): void;
  typing(s: DeviceSession, m: Typing): Promise<void>;
  onTyping(e: Extract<Envelope, { k: 'typ' }>): void;
  cellDied(cell: string): void;
  socialChanged(user: string): void;
}

// ---- messaging ----------------------------------------------------------------

/** A device's mailbox stream (messaging/mailbox.ts). */
export interface MailboxPort {
  store(user: string, device: string, item: Item): Promise<StoredRef>;
  read(user: string, device: string, fromSeq: number): AsyncIterable<StoredItem>;
  /** Items of partition `k` stored before `cutoff` (the expiry sweep). */
  expired(k: number, cutoff: number): AsyncIterable<StoredItem>;
  remove(ref: StoredRef): Promise<boolean>;
  purgeDevice(user: string, device: string): Promise<void>;
}

/** Runs mailbox drains (messaging/drain.ts). */
export interface Drains {
  /** Starts (or repeats) the drain of session `s`'s mailbox. */
  drain(s: DeviceSession): void;
  /** Tells the cell hosting `loc` that the device's mailbox has new items. */
  poke(loc: DeviceLocation, user: string): void;
}

/** 1:1 messages and receipts under custody (messaging/custody.ts). */
export interface CustodyPort {
  /** Synchronous (no promise) when every record it needs is cached. */
  submit(s: DeviceSession, m: Send & { to: string }): void | Promise<void>;
  read(s: DeviceSession, m: Read): Promise<void>;
  /** Overload: true when the cell refuses new sends now, after telling the sender BUSY (group sends ask before their own path). */
  shedsNow(s: DeviceSession, id: string): boolean;
  /** An item the server itself sends (campaigns), settled through the returned promise. */
  submitSystem(item: ChatItem): Promise<Settlement>;
  notice(user: string, except: string | undefined, n: Notice): Promise<void>;
  receipt(to: string, ref: string, by: string, byDevice: string, state: ReceiptItem['s']): Promise<void>;
  acked(key: string, user: string, device: string): void;
  notHereFor(key: string, user: string, device: string): void;
  /** The user's mailbox has items: wake its sessions wherever they are. */
  wake(user: string, attempt?: number): void;
}

/** Groups (messaging/groups/). */
export interface GroupsPort extends RequestHandler {
  send(s: DeviceSession, m: Send): Promise<void>;
  typing(s: DeviceSession, m: Typing & { g: string }): Promise<void>;
  acked(s: DeviceSession, item: ChatItem): void;
  catchUp(s: DeviceSession): void;
  detached(s: DeviceSession): void;
  forgetDevice(user: string, device: string): Promise<void>;
  invalidate(key: string): void;
  onDelivery(item: ChatItem, to: Array<[string, string]>): void;
}

/** What groups tell an invitee: a notice under custody on every device. */
export interface InviteNotices {
  onInvited(invitee: string, g: string, by: string): void;
}

// ---- reach --------------------------------------------------------------------

/** Pushes to offline devices (reach/push-gateway.ts). */
export interface PushPort extends RequestHandler {
  forgetDevice(user: string, device: string): Promise<void>;
  mutesChanged(user: string): void;
}

/** Wake-ups relayed through a peer device (reach/relay.ts). */
export interface RelayPort {
  report(s: DeviceSession, a: RequestArgs['reach.report']): Promise<{ ttlMs: number }>;
  deliver(u: string, dev: string, tu: string, td: string, w: Uint8Array): void;
}

// ---- engage -------------------------------------------------------------------

/** Versioned profiles (engage/profiles.ts). */
export interface ProfilesPort extends RequestHandler {
  version(user: string): Promise<number>;
  invalidate(user: string): void;
}

// ---- events -------------------------------------------------------------------

/** What custody and groups tell observers (push, relay, gravitation listen). */
export interface MessagingEvents {
  /** A 1:1 item was stored in `user/device`'s mailbox (the device is offline or silent). */
  stored(user: string, device: string, item: Item): void;
  /** Custody delivered a live 1:1 item towards `peerCell`; `sender`/`recipient` are the sessions on this cell, if any. */
  delivered(sender: DeviceSession | undefined, recipient: DeviceSession | undefined, peerCell: string): void;
  /** A live item held by cell `origin` reached session `s` here. */
  arrived(s: DeviceSession, origin: string): void;
  /** A group message for `member`: `online` are its devices with sessions. */
  groupMessage(member: string, online: readonly DeviceLocation[], item: ChatItem): void;
  /** A group message did not reach `user/device`, which had just gone offline. */
  groupMissed(user: string, device: string, item: ChatItem): void;
}

/** What push tells the relay: a device no push reached. */
export interface ReachEvents {
  unreachable(user: string, device: string): void;
}
