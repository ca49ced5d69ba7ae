/*
 * GravitasClient, the SDK's facade: it opens the store, builds the parts and wires them
 * together, and is the application's one object. The parts, each given only what it uses:
 *   connection.ts  the session with a cell: transports, handshake, reconnects, keepalive
 *   inbox.ts       frames in: dispatch, de-duplication and acks of what custody delivers
 *   outbox.ts      messages out until their status (custody.ts: the device's custody rules)
 *   feedback.ts    campaign feedback until the server takes it
 *   moves.ts       connect hints: verified, followed make-before-break
 *   requests.ts    round trips (requests, pings) and the group helpers; mutes.ts the mutes
 */
import { EventEmitter } from 'node:events';
import {
  random, toBase64Url,
  type CampaignEvent, type Msg, type MuteDurationName, type MuteEntry, type PushTarget, type RequestArgs, type RequestOp, type WelcomePayload,
} from '@gravitas/protocol';
import { Connection } from './connection.js';
import { ClientError, ClientErrorCode } from './errors.js';
import { FeedbackQueue } from './feedback.js';
import { Inbox } from './inbox.js';
import { Moves } from './moves.js';
import { Mutes } from './mutes.js';
import { Outbox } from './outbox.js';
import { registerStore, type Emit } from './private.js';
import { Calls, createGroup, groupInfo, inBatches, invites, listGroups } from './requests.js';
import { openStore, type ClientStore } from './store.js';
import type { FrameConnection, TransportKind } from './transport.js';
import type {
  CampaignRef, ClientEvents, ClientOptions, FeedbackRecord, GroupInfo, GroupInvite, GroupSummary, OutboxRecord, SendResult, Target,
} from './types.js';

const noop = (): void => undefined;

/**
 * The Node SDK: one secure connection to a cell, re-established after failures
 * (resuming with a ticket when it has one). Outgoing messages stay in an outbox
 * until the server reports their fate, and are re-sent with the same id after a
 * reconnect.
 */
export class GravitasClient extends EventEmitter<ClientEvents> {
  /** Outbox records and the keys of received items: memory, or LMDB with a storage path. */
  private readonly store: ClientStore;
  private storeClosed = false;
  /** Outbox and feedback writes under way (durable store): flush() waits for them. */
  private readonly saving = new Set<Promise<unknown>>();
  private readonly conn: Connection;
  private readonly outbox: Outbox;
  private readonly feedback: FeedbackQueue;
  private readonly inbox: Inbox;
  private readonly calls: Calls;
  private readonly moves: Moves;
  private readonly muted: Mutes;

  /** Throws ClientError STORAGE_FAILED when the store at `storagePath` cannot be opened or read. */
  constructor(readonly options: ClientOptions) {
    super();
    const emitAny = this.emit.bind(this) as (event: keyof ClientEvents, ...args: unknown[]) => boolean;
    const emit: Emit = (event, ...args) => void emitAny(event, ...args);
    const emitLater = (err: Error): void => void process.nextTick(() => this.emit('error', err));
    const saving = (p: Promise<unknown>): void => {
      this.saving.add(p);
      void p.then(() => this.saving.delete(p));
    };
    this.store = openStore(options.storagePath);
    registerStore(this, this.store);
    const conn = (this.conn = new Connection(options, {
      emit,
      sessionOpened: () => {
        this.outbox.sendAll();
        this.feedback.resume();
      },
      frame: (channel, body) => this.inbox.frame(channel, body),
      sessionLost: () => {
        this.calls.cut();
        this.outbox.pause();
      },
      ended: () => {
        this.feedback.fail();
        this.outbox.fail();
      },
      ping: () => this.ping(),
    }));
    const session = {
      get online(): boolean {
        return conn.channel !== undefined;
      },
      write: (m: object) => conn.write(m),
    };
    try {
      // Left unconfirmed by an earlier process: re-sent, same ids, once connected.
      this.outbox = new Outbox(
        this.store,
        {
          emit,
          emitLater,
          saving,
          write: session.write,
          get online() {
            return session.online;
          },
          get open() {
            return !conn.closed;
          },
        },
        options,
      );
      this.feedback = new FeedbackQueue(
        this.store,
        {
          emit,
          emitLater,
          saving,
          get sending() {
            return session.online && !conn.closed;
          },
          track: (q) => this.request('track', { c: q.c, ev: q.ev, eid: q.eid, ts: q.ts, rk: q.rk }),
        },
        options,
      );
    } catch (err) {
      void this.store.close().catch(noop);
      throw new ClientError(ClientErrorCode.STORAGE_FAILED, `cannot read the outbox at ${options.storagePath}: ${(err as Error).message}`, { cause: err });
    }
    this.calls = new Calls(session);
    this.moves = new Moves(options, conn, emit);
    this.muted = new Mutes((op, args) => this.request(op, args), emit);
    const parts = { conn, outbox: this.outbox, calls: this.calls, moves: this.moves, mutes: this.muted };
    this.inbox = new Inbox(this.store, { emit, emitLater, ack: (id, from) => this.ack(id, from) }, parts, options);
  }

  static {
    // The current connection as `socket`, off the typed API: tests reach in to pause or cut it.
    Object.defineProperty(this.prototype, 'socket', {
      get(this: GravitasClient): FrameConnection | undefined {
        return this.conn.socket;
      },
    });
  }

  /** The welcome of the current (or last) session. */
  get welcome(): WelcomePayload | undefined {
    return this.conn.welcome;
  }

  set welcome(w: WelcomePayload | undefined) {
    this.conn.welcome = w;
  }

  /** Address of the cell currently connected to. */
  get server(): string | undefined {
    return this.conn.server;
  }

  set server(s: string | undefined) {
    this.conn.server = s;
  }

  get connected(): boolean {
    return this.conn.channel !== undefined;
  }

  /** The protocol capabilities the current session negotiated (docs/protocol.md 4.7); none while offline. */
  get capabilities(): ReadonlySet<string> {
    return this.conn.caps;
  }

  /** The transport of the current connection (or of the last one that worked). */
  get transport(): TransportKind | undefined {
    return this.conn.working;
  }

  /** Connects (full handshake, or resumption when a ticket is held). Resolves when the session is open. */
  async connect(): Promise<WelcomePayload> {
    if (this.storeClosed) throw new ClientError(ClientErrorCode.CLOSED, 'a client with a storage path cannot be reused after close(): create a new one');
    return this.conn.connect();
  }

  /** The unconfirmed messages, oldest first (with a storage path: also those restored from an earlier process). */
  pendingMessages(): OutboxRecord[] {
    return this.outbox.pending();
  }

  /**
   * Resolves once every message given to send() (and every event given to
   * track()) so far is durable in the store (at once without a storage path). A
   * message whose write failed has its send() rejected with STORAGE_FAILED.
   */
  async flush(): Promise<void> {
    await Promise.allSettled([...this.saving]);
  }

  /**
   * Sends a text message to a user. Resolves once the server holds custody:
   * `delivered` (every device of the recipient acknowledged) or `stored` (durable
   * in its mailbox). Until then it stays in the outbox and is re-sent, with the
   * same id, after a reconnect.
   */
  send(to: string, text: string, id: string = newMessageId()): Promise<SendResult> {
    return this.submit({ to }, text, id);
  }

  /** Sends a text message to a group; resolves `stored` once it is durable in the group's log. */
  sendToGroup(g: string, text: string, id: string = newMessageId()): Promise<SendResult> {
    return this.submit({ g }, text, id);
  }

  private submit(target: Target, text: string, id: string): Promise<SendResult> {
    if (this.conn.closed || this.storeClosed) return Promise.reject(new ClientError(ClientErrorCode.CLOSED, 'client is closed'));
    return this.outbox.submit(target, text, id);
  }

  // ---- campaign feedback ----------------------------------------------------------

  /**
   * Reports what happened to a campaign message (`c`: its campaign id). The event
   * is queued (with a storage path: written to disk first) and sent as a `track`
   * request until the server takes it — again after a reconnect, after a
   * RETRY_LATER (the server's store is full until its archive catches up) and
   * after a restart of the process — always with the same `eventId`, which the
   * server uses to store it once. Resolves with the event id once queued
   * (durable with a storage path); the outcome comes as 'tracked' or, for an
   * event the server refuses for good (BAD_MESSAGE, NOT_FOUND), 'trackFailed'.
   * Rejects with OUTBOX_FULL when maxFeedback events are queued, DUPLICATE_ID
   * when this id is queued already, CLOSED, or STORAGE_FAILED.
   */
  track(campaign: string | CampaignRef, event: CampaignEvent, eventId: string = newEventId()): Promise<string> {
    if (this.conn.closed || this.storeClosed) return Promise.reject(new ClientError(ClientErrorCode.CLOSED, 'client is closed'));
    const campaignId = typeof campaign === 'string' ? campaign : campaign.c;
    const rk = (typeof campaign === 'string' ? undefined : campaign.rk) ?? this.inbox.proofs.get(`c/${campaignId}`);
    if (!rk) return Promise.reject(new ClientError(ClientErrorCode.NO_PROOF, `no message of campaign ${campaignId} was received here: pass the message (its c and rk)`));
    return this.feedback.add({ eid: eventId, c: campaignId, ev: event, ts: Date.now(), rk });
  }

  /** Queued feedback, oldest first (with a storage path: also what an earlier process left). */
  pendingFeedback(): FeedbackRecord[] {
    return this.feedback.pending();
  }

  // ---- connect hints --------------------------------------------------------------

  /**
   * Follows a connect hint that came from outside the connection (a push payload,
   * a relayed wake-up). Connected: moves now, like a server's `move`. Not connected:
   * the next connect() tries the hinted cell first. Unverifiable hints are ignored
   * ('hintIgnored'); returns whether the hint was accepted.
   */
  followHint(bytes: Uint8Array): boolean {
    return this.moves.followHint(bytes);
  }

  /**
   * A verified wake-up relayed by a LAN peer (peer.ts, docs/relay.md): follows
   * the hint, and a client that was closed connects now (its mailbox drains on
   * connect). One that is between reconnect attempts uses the hint on its next
   * attempt; one that is connected moves if the hint names another cell.
   */
  async wakeUp(hint: Uint8Array): Promise<'connected' | 'reconnecting' | 'ignored'> {
    if (!this.followHint(hint)) return 'ignored';
    const conn = this.conn;
    if (conn.channel) return 'connected';
    // A reconnect loop is running (attempt counts its tries): it takes the hint next.
    if (!conn.closed && conn.attempt > 0 && this.options.reconnect !== false) return 'reconnecting';
    await this.connect();
    return 'connected';
  }

  /** Acknowledges a received message (automatic unless autoAck is false). */
  ack(id: string, from: string): void {
    if (this.conn.channel) this.conn.write({ t: 'ack', id, from });
  }

  /**
   * Tells the sender that this user read its message (dropped by the server if read
   * receipts are off). Pass the message itself, or its id and sender if it arrived
   * recently on this client: the read goes back with the message's delivery proof.
   */
  markRead(m: string | Pick<Msg, 'id' | 'from' | 'rk'>, from?: string): void {
    const id = typeof m === 'string' ? m : m.id;
    const sender = typeof m === 'string' ? from : m.from;
    if (sender === undefined) throw new TypeError('markRead(id, from): the sender is missing');
    if (sender === this.options.user) return; // one's own message: no receipt (and no proof: the server sends none)
    const rk = (typeof m === 'string' ? undefined : m.rk) ?? this.inbox.proofs.get(`${sender}/${id}`);
    if (!rk) throw new ClientError(ClientErrorCode.NO_PROOF, `message ${id} from ${sender} was not received here: pass the message (with its rk)`);
    if (this.conn.channel) this.conn.write({ t: 'read', id, from: sender, rk });
  }

  /**
   * Approves a new device for this account (docs/security.md, "Linking a device"):
   * `key` is the new device's public key, which it shows (e.g. as a QR code). The
   * approval goes back to the new device the same way; it registers with
   * `registration: { link: approval }` before `expiresAt`, once.
   */
  async approveDevice(device: string, key: Uint8Array): Promise<{ approval: Uint8Array; expiresAt: number }> {
    return (await this.request('devices.link', { device, key })) as { approval: Uint8Array; expiresAt: number };
  }

  /** Ephemeral typing indicator to a user or a group; never stored, lost if nobody is online. */
  typing(target: Target, on = true): void {
    if (this.conn.channel) this.conn.write({ t: 'typing', on, ...target });
  }

  /** Sets this user's presence as seen by its contacts. */
  setPresence(s: 'online' | 'away'): void {
    if (this.conn.channel) this.conn.write({ t: 'presence', s });
  }

  /** Contacts, blocks, preferences, devices and groups: one request, one answer (rejects with a RemoteError code). */
  request<K extends RequestOp>(op: K, args: RequestArgs[K]): Promise<unknown> {
    return this.calls.request(op, args);
  }

  // ---- groups (docs/groups.md) ---------------------------------------------------

  /** Every group this user is in (all pages of `groups.list`). */
  listGroups(): Promise<GroupSummary[]> {
    return listGroups((op, a) => this.request(op, a));
  }

  /** A group, whole (all pages of `groups.info`): NOT_FOUND, NOT_A_MEMBER. */
  groupInfo(g: string): Promise<GroupInfo> {
    return groupInfo((op, a) => this.request(op, a), g);
  }

  /** This user's pending invitations (all pages of `groups.invites`). */
  invites(): Promise<GroupInvite[]> {
    return invites((op, a) => this.request(op, a));
  }

  /** Joins a group this user was invited to: NOT_FOUND (no such invitation, or it lapsed or was revoked), TOO_MANY_GROUPS. */
  async acceptInvite(g: string): Promise<GroupSummary> {
    return (await this.request('groups.accept', { g })) as GroupSummary;
  }

  /** Declines an invitation (idempotent; the group is not told). */
  async declineInvite(g: string): Promise<void> {
    await this.request('groups.decline', { g });
  }

  /**
   * Creates a group owned by this user. The named users are invited (or, on a
   * cluster whose policy is `contacts`, added if they list this user as a
   * contact); a list longer than one request holds goes in several.
   */
  createGroup(name: string, members: string[] = []): Promise<{ g: string; added: string[]; invited: string[] }> {
    return createGroup((op, a) => this.request(op, a), name, members);
  }

  /** Invites (or, under `contacts`, adds) users to a group this user administers, in requests of at most MAX_USERS_PER_REQUEST. */
  addToGroup(g: string, users: string[]): Promise<{ added: string[]; invited: string[] }> {
    return inBatches((op, a) => this.request(op, a), 'groups.add', g, users, { added: [], invited: [] });
  }

  /** Removes members and revokes pending invitations, in requests of at most MAX_USERS_PER_REQUEST. */
  removeFromGroup(g: string, users: string[]): Promise<{ removed: string[]; revoked: string[] }> {
    return inBatches((op, a) => this.request(op, a), 'groups.remove', g, users, { removed: [], revoked: [] });
  }

  // ---- push targets and mutes (docs/push.md) -------------------------------------

  /** Registers a push target of this device (a Web Push subscription or a webhook); resolves to its id. */
  async registerPush(target: PushTarget): Promise<string> {
    return ((await this.request('push.register', target)) as { id: string }).id;
  }

  /** Removes a push target; resolves to whether it was registered. */
  async unregisterPush(id: string): Promise<boolean> {
    return ((await this.request('push.unregister', { id })) as { removed: boolean }).removed;
  }

  /** This device's push targets, and the cluster's VAPID key for a browser's subscribe(). */
  async pushTargets(): Promise<{ targets: Array<{ id: string; kind: 'webpush' | 'webhook'; url: string; at: number }>; vapidPublicKey?: string }> {
    return (await this.request('push.list', {})) as { targets: Array<{ id: string; kind: 'webpush' | 'webhook'; url: string; at: number }>; vapidPublicKey?: string };
  }

  /**
   * Mutes a chat: for `duration` ms, a named duration ('15m' … '1w') or 'always'.
   * Without one: a user until unmuted, a group for a time that grows with its size.
   */
  mute(chat: Target, duration?: number | MuteDurationName | 'always'): Promise<MuteEntry> {
    return this.muted.mute(chat, duration);
  }

  unmute(chat: Target): Promise<void> {
    return this.muted.unmute(chat);
  }

  /** The user's active mutes, fresh from the server, page by page (also kept in `client.mutes`). */
  listMutes(): Promise<MuteEntry[]> {
    return this.muted.fetch();
  }

  /** The mutes last known to this client (listMutes(), its own changes, and 'mutes' syncs); expired ones left out. */
  get mutes(): MuteEntry[] {
    return this.muted.current;
  }

  /** Round trip to the cell; rejects with NOT_CONNECTED if the connection is lost first. */
  ping(): Promise<void> {
    return this.calls.ping();
  }

  /**
   * Says goodbye and closes; unconfirmed messages are rejected with CLOSED. With a
   * storage path they stay stored for the next client, and the store is closed
   * once its writes are done (a closed client with a storage path is not reused).
   */
  async close(): Promise<void> {
    await this.conn.close();
    this.feedback.stop();
    if (this.store.durable && !this.storeClosed) {
      this.storeClosed = true;
      await this.flush(); // every record is written (or its send() failed) before the promises end
      this.outbox.fail();
      await this.inbox.drained(); // received items whose keys are being written are still shown
      await this.store.close();
    } else {
      this.feedback.fail();
      this.outbox.fail();
    }
  }
}

export { splitHostPort } from './transport.js';

/** Time-ordered, collision-resistant message id (ms timestamp + 80 random bits). */
export function newMessageId(): string {
  return Date.now().toString(36).padStart(9, '0') + toBase64Url(random(10));
}

/** Event id for track(): the same shape as a message id (a protocol name, unique per user). */
export function newEventId(): string {
  return newMessageId();
}
