import { EventEmitter } from 'node:events';
import {
  ClientHandshake, decodeMuteList, decodeServerHandshake, DELIVERY_PROOF_BYTES, decodeServerMessage, ErrorCode, HintError, MAX_USERS_PER_REQUEST, MUTE_LIMITS, NO_RECONNECT_CODES, pack, ProtocolError, random, RemoteError, RETRYABLE_SEND_CODES, TICKET_REFUSED_CODES, toBase64Url, unpack, verifyHint,
  type CampaignEvent, type ConnectHint, type KeyPair, type Msg, type Presence, type Receipt, type RequestArgs, type RequestOp, type ResumptionState, type SecureChannel, type ServerMessage,
  type TypingEvent, type WelcomePayload, type MuteDurationName, type MuteEntry, type PushTarget, type Registration,
} from '@gravitas/protocol';
import { ClientError, ClientErrorCode, DeliveryError } from './errors.js';
import { openStore, type ClientStore, type FeedbackRecord, type OutboxRecord } from './store.js';
import {
  defaultDialers, endpointName, toEndpoint, TRANSPORT_ORDER, type Dialer, type Endpoint, type FrameConnection, type FrameHandlers, type TransportKind,
} from './transport.js';

/** A group the user is in (docs/groups.md). */
export interface GroupSummary { g: string; name: string }
/** A pending invitation of the user: to group `g` (named `name`) by `by` at `at`, lapsing at `expires` (ms). */
export interface GroupInvite { g: string; name: string; by: string; at: number; expires: number }
/**
 * A group as a member sees it: members in name order, the admins among them, the
 * member count; for an admin also the pending invitations (`invited`, in name order).
 */
export interface GroupInfo {
  g: string;
  name: string;
  owner: string;
  count: number;
  members: string[];
  admins: string[];
  invited?: Array<{ user: string; by: string; expires: number }>;
}

export interface ClientOptions {
  /**
   * Cells to connect to, tried in turn: `host:port` (a TCP listener), a URL of a
   * web listener (`ws://`, `http://`, `https://` … host:port[/base]), or an
   * Endpoint naming both (docs/transports.md).
   */
  servers: Array<string | Endpoint>;
  /**
   * Transports to try, in this order, for each cell (default ['tcp', 'ws', 'http']):
   * when one cannot connect the next is tried, and the one that worked is tried
   * first from then on.
   */
  transports?: TransportKind[];
  /** Dialers by transport; default: those registered by the entry point (Node: TCP, ws, node:http). */
  dialers?: Partial<Record<TransportKind, Dialer>>;
  /** The cluster's server public key (pinned). */
  serverPublicKey: Uint8Array;
  identity: KeyPair;
  user: string;
  device: string;
  /**
   * What registers this device on first use (docs/security.md): a credential from the
   * operator's auth service (`{ credential: jwt }`), an approval from another device of
   * the account (`{ link: approval }`, see approveDevice), or on a development cluster
   * its registration token ('' when it is open).
   */
  registration?: Registration;
  /** A ticket from an earlier session, for a one-round-trip resumption. */
  resumption?: ResumptionState;
  /** Called with every new ticket, so the application can persist it. */
  onResumption?: (r: ResumptionState | undefined) => void;
  /** Acknowledge received messages automatically after the 'message' event (default true). */
  autoAck?: boolean;
  /**
   * The cluster's connect-hint key (Ed25519, 32 bytes), to verify hints that arrive
   * before any connection (a push payload). Without it the key the server sends in
   * the (authenticated) welcome is used.
   */
  hintPublicKey?: Uint8Array;
  /** Reconnect after a lost connection (default true). */
  reconnect?: boolean;
  connectTimeoutMs?: number;
  /** Unconfirmed outgoing messages kept for re-sending (default 1024). */
  maxOutbox?: number;
  /** Campaign feedback events queued until the server takes them (default 10,000). */
  maxFeedback?: number;
  /** Ping interval that keeps an idle session under the server's idle timeout (default 30 s; 0 = off). */
  keepaliveMs?: number;
  /**
   * A directory for the outbox and the keys of received messages (LMDB), so that
   * both survive a restart of the process (docs/sdk.md). One client per directory.
   * Without it both are kept in memory.
   */
  storagePath?: string;
}

/** `delivered`: every device of the recipient acknowledged; `stored`: durable in the mailbox (or group log). */
export interface SendResult { id: string; status: 'delivered' | 'stored' }

/** Where a message goes: a user or a group. */
export type Target = { to: string } | { g: string };

/**
 * A message in the outbox. `ready`: its record is durable (at once without a
 * storage path), so it may go on the wire. Restored messages have no promise.
 */
interface Outgoing extends OutboxRecord { attempts: number; ready: boolean; resolve: (r: SendResult) => void; reject: (e: Error) => void }

/** How an outbox message ended: the server's answer, or the error that ended it. */
export type Settled = SendResult | { id: string; error: Error };

/** Feedback the server took; `dup`: it had it already (an earlier send whose answer was lost). */
export interface Tracked extends FeedbackRecord { dup: boolean }
/** Feedback the server refused for good (BAD_MESSAGE, NOT_FOUND, …), or dropped at close without a storage path. */
export interface TrackFailed extends FeedbackRecord { error: Error }

/** A campaign message, or what identifies one: its campaign and its delivery proof (`Msg.c`, `Msg.rk`). */
export interface CampaignRef { c: string; rk: Uint8Array }

/** Delivery proofs of recently received messages remembered for markRead(id, from) and track(campaignId). */
const RECENT_PROOFS = 4096;

/**
 * The delivery proofs of the last RECENT_PROOFS messages, by `from/id` (or `c/<campaign>`):
 * fixed slots in one buffer, the oldest reused. A proof is copied in, never kept as the
 * decoded view, which would hold the whole plaintext frame it came in.
 */
class RecentProofs {
  private readonly bytes = new Uint8Array(RECENT_PROOFS * DELIVERY_PROOF_BYTES);
  private readonly keys: Array<string | undefined> = new Array<string | undefined>(RECENT_PROOFS);
  private readonly slots = new Map<string, number>();
  private next = 0;

  remember(key: string, rk: Uint8Array): void {
    if (rk.length !== DELIVERY_PROOF_BYTES) return;
    let slot = this.slots.get(key);
    if (slot === undefined) {
      slot = this.next;
      this.next = (slot + 1) % RECENT_PROOFS;
      const old = this.keys[slot];
      if (old !== undefined) this.slots.delete(old);
      this.keys[slot] = key;
      this.slots.set(key, slot);
    }
    this.bytes.set(rk, slot * DELIVERY_PROOF_BYTES);
  }

  get(key: string): Uint8Array | undefined {
    const slot = this.slots.get(key);
    return slot === undefined ? undefined : this.bytes.slice(slot * DELIVERY_PROOF_BYTES, (slot + 1) * DELIVERY_PROOF_BYTES);
  }
}

/** Queued feedback: `ready` once durable, `inFlight` while a `track` request for it is unanswered. */
interface QueuedFeedback extends FeedbackRecord { ready: boolean; inFlight: boolean }

const noop = (): void => undefined;

export interface ClientEvents {
  message: [Msg];
  receipt: [Receipt];
  presence: [Presence];
  typing: [TypingEvent];
  connected: [WelcomePayload];
  /** The transport of each new connection ('tcp', 'ws' or 'http'), right after 'connected'. */
  transport: [TransportKind];
  /** Followed a connect hint: now on the cell it named. */
  moved: [{ cell: string; addr: string; why: 'rebalance' | 'associate' | 'external' }];
  /** A connect hint was not followed: unverifiable (HINT_INVALID, HINT_EXPIRED) or its cell unreachable. */
  hintIgnored: [Error];
  /** The user's mutes changed on another of its devices: the list as the SDK re-read it (also in `client.mutes`). */
  mutes: [MuteEntry[]];
  /**
   * The server asks this device to hand wake token `w` to its LAN peer `u`/`d`
   * (docs/relay.md). Internal: a PeerLink (peer.ts) forwards it; never a message.
   */
  relayRequest: [{ u: string; d: string; w: Uint8Array }];
  /** Every outbox message when it settles: sent by send() (whose promise settles too) or restored from the store. */
  settled: [Settled];
  /** Campaign feedback the server took (queued by track(), or restored from the store). */
  tracked: [Tracked];
  /** Campaign feedback that will not be sent again (refused by the server, or lost at close without a storage path). */
  trackFailed: [TrackFailed];
  disconnected: [Error | undefined];
  error: [Error];
}

const RETRY_MAX_MS = 5000;
/** A `track` answered with one of these is kept and sent again after a backoff; any other error code is final. */
const FEEDBACK_RETRYABLE = new Set<string>([ErrorCode.RETRY_LATER, ErrorCode.BUSY, ErrorCode.STORAGE_UNAVAILABLE, ErrorCode.RATE_LIMITED, ErrorCode.TOO_MANY_IN_FLIGHT, ErrorCode.SHUTTING_DOWN]);
/** `track` requests unanswered at once (the cell takes a session's requests one at a time anyway). */
const FEEDBACK_IN_FLIGHT = 32;
/** An unanswered `track` counts as lost after this long (e.g. its connection was left by a move) and is sent again. */
const FEEDBACK_TIMEOUT_MS = 20_000;
/** The queue pauses after a retryable answer: 100 ms doubling to 30 s, jittered ×0.5–1, reset by success or reconnect. */
const FEEDBACK_RETRY_MAX_MS = 30_000;

/**
 * The Node SDK: one secure connection to a cell, re-established after failures
 * (resuming with a ticket when it has one). Outgoing messages stay in an outbox
 * until the server reports their fate, and are re-sent with the same id after a
 * reconnect.
 */
export class GravitasClient extends EventEmitter<ClientEvents> {
  /** The current connection (named socket: tests reach in to pause or cut it). */
  private socket: FrameConnection | undefined;
  /** Where the current connection goes, with the cell's web address learnt from the welcome. */
  private endpoint: Endpoint | undefined;
  /** The transport that last worked: tried first next time. */
  private working: TransportKind | undefined;
  /** Resolves close()'s wait for the connection to end. */
  private gone: (() => void) | undefined;
  private readonly dialers: Partial<Record<TransportKind, Dialer>>;
  private channel: SecureChannel | undefined;
  private resumption: ResumptionState | undefined;
  private readonly outbox = new Map<string, Outgoing>();
  /** Delivery proofs of recent messages (`from/id`) and campaigns (`c/<id>`), for markRead and track by id. */
  private readonly proofs = new RecentProofs();
  private closed = false;
  private attempt = 0;
  private serverIndex = 0;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private pingSeq = 0;
  private keepalive: NodeJS.Timeout | undefined;
  /** Outbox records and the keys of received items: memory, or LMDB with a storage path. */
  private readonly store: ClientStore;
  private storeClosed = false;
  /** Outbox writes under way (durable store): a message goes out only once its write is done. */
  private readonly saving = new Set<Promise<void>>();
  /** Received items waiting for their key to be durable, shown in arrival order. */
  private inbound: Promise<void> = Promise.resolve();
  private readonly pings = new Map<number, { resolve: () => void; reject: (e: Error) => void }>();
  private readonly requests = new Map<number, { resolve: (data: unknown) => void; reject: (e: Error) => void }>();
  private muteList: MuteEntry[] = [];
  /** A re-list after a `mutes` notice, and whether another notice came while it ran. */
  private muteSync: Promise<void> | undefined;
  private muteSyncAgain = false;
  private requestSeq = 0;
  private readonly retries = new Map<string, NodeJS.Timeout>();
  /** Campaign feedback until the server takes it, oldest first; persisted like the outbox with a storage path. */
  private readonly feedback = new Map<string, QueuedFeedback>();
  private feedbackInFlight = 0;
  private feedbackAttempt = 0;
  /** Set while the feedback queue waits out a backoff. */
  private feedbackPause: NodeJS.Timeout | undefined;
  welcome: WelcomePayload | undefined;
  /** A verified hint for the next connect (from followHint() while offline, or a move that could not finish). */
  private hint: ConnectHint | undefined;
  /** The cell of a connection that was lost: the first reconnect tries it. */
  private rejoin: Endpoint | undefined;
  private moving = false;
  /** Address of the cell currently connected to. */
  server: string | undefined;

  /** Throws ClientError STORAGE_FAILED when the store at `storagePath` cannot be opened or read. */
  constructor(readonly options: ClientOptions) {
    super();
    this.resumption = options.resumption;
    this.dialers = { ...defaultDialers(), ...options.dialers };
    this.store = openStore(options.storagePath);
    let restored: OutboxRecord[];
    let restoredFeedback: FeedbackRecord[];
    try {
      restored = this.store.loadOutbox();
      restoredFeedback = this.store.loadFeedback();
    } catch (err) {
      void this.store.close().catch(noop);
      throw new ClientError(ClientErrorCode.STORAGE_FAILED, `cannot read the outbox at ${options.storagePath}: ${(err as Error).message}`, { cause: err });
    }
    // Left unconfirmed by an earlier process: re-sent, same ids, once connected.
    for (const r of restored) this.outbox.set(r.id, { ...r, attempts: 0, ready: true, resolve: noop, reject: noop });
    for (const r of restoredFeedback) this.feedback.set(r.eid, { ...r, ready: true, inFlight: false });
  }

  get connected(): boolean {
    return this.channel !== undefined;
  }

  /** The transport of the current connection (or of the last one that worked). */
  get transport(): TransportKind | undefined {
    return this.working;
  }

  /** Connects (full handshake, or resumption when a ticket is held). Resolves when the session is open. */
  async connect(): Promise<WelcomePayload> {
    if (this.storeClosed) throw new ClientError(ClientErrorCode.CLOSED, 'a client with a storage path cannot be reused after close(): create a new one');
    this.closed = false;
    let lastErr: unknown;
    const hint = this.hint && this.hint.expiresAt > Date.now() ? this.hint : undefined;
    this.hint = undefined;
    if (hint) {
      try {
        return await this.open(hintEndpoint(hint));
      } catch (err) {
        if (err instanceof RemoteError && NO_RECONNECT_CODES.has(err.code)) throw err;
        this.emit('hintIgnored', err as Error); // the hinted cell is gone: any other will do
      }
    }
    // After a lost connection, the cell it was on first (gravitation put it there), once.
    const last = this.rejoin;
    this.rejoin = undefined;
    if (last) {
      try {
        return await this.open(last);
      } catch (err) {
        if (err instanceof RemoteError && NO_RECONNECT_CODES.has(err.code)) throw err;
      }
    }
    const servers = this.options.servers;
    for (let i = 0; i < servers.length; i++) {
      const server = toEndpoint(servers[(this.serverIndex + i) % servers.length]!);
      try {
        const w = await this.open(server);
        this.serverIndex = (this.serverIndex + i) % servers.length;
        return w;
      } catch (err) {
        lastErr = err;
        if (err instanceof RemoteError && NO_RECONNECT_CODES.has(err.code)) throw err;
      }
    }
    throw lastErr instanceof Error ? lastErr : new ClientError(ClientErrorCode.CONNECT_FAILED, 'no server could be reached');
  }

  /**
   * Opens a session with one cell, trying its transports in turn: the one that
   * worked last first, then the configured order. A transport that cannot connect
   * (a ClientError: refused, timed out, cut during the handshake) gives way to the
   * next; a coded refusal by the server (RemoteError) ends the attempt on this cell.
   */
  private async open(server: Endpoint): Promise<WelcomePayload> {
    const order = this.options.transports ?? TRANSPORT_ORDER;
    const kinds = (this.working && order.includes(this.working) ? [this.working, ...order.filter((k) => k !== this.working)] : [...order]).filter((k) =>
      k === 'tcp' ? server.tcp !== undefined : server.web !== undefined,
    );
    let lastErr: unknown = new ClientError(ClientErrorCode.CONNECT_FAILED, `${endpointName(server)}: no configured transport reaches it`);
    for (const kind of kinds) {
      try {
        return await this.openWith(server, kind);
      } catch (err) {
        lastErr = err;
        if (!(err instanceof ClientError)) throw err;
      }
    }
    throw lastErr;
  }

  private async openWith(server: Endpoint, kind: TransportKind): Promise<WelcomePayload> {
    const hadTicket = this.resumption !== undefined;
    try {
      return await this.handshake(server, kind);
    } catch (err) {
      // handshake() has already dropped the ticket it sent, so test what we had before.
      if (err instanceof RemoteError && TICKET_REFUSED_CODES.has(err.code) && hadTicket) {
        this.setResumption(undefined); // a spent or stale ticket: fall back to a full handshake
        return this.handshake(server, kind);
      }
      throw err;
    }
  }

  private setResumption(r: ResumptionState | undefined): void {
    this.resumption = r;
    this.options.onResumption?.(r);
  }

  private handshake(server: Endpoint, kind: TransportKind): Promise<WelcomePayload> {
    const o = this.options;
    const name = endpointName(server);
    const dial = this.dialers[kind];
    if (!dial) return Promise.reject(new ClientError(ClientErrorCode.CONNECT_FAILED, `no ${kind} dialer in this build`));
    const resume = this.resumption && this.resumption.expiresAt > Date.now() ? this.resumption : undefined;
    const hs = new ClientHandshake({
      serverPublicKey: o.serverPublicKey,
      identity: o.identity,
      user: o.user,
      device: o.device,
      ...(o.registration !== undefined && { registration: o.registration }),
      ...(resume && { resume }),
    });
    const timeoutMs = o.connectTimeoutMs ?? 10_000;
    return new Promise((resolve, reject) => {
      let conn: FrameConnection | undefined;
      let channel: SecureChannel | undefined;
      let done = false;
      const timer = setTimeout(() => fail(new ClientError(ClientErrorCode.CONNECT_TIMEOUT, `handshake with ${name} (${kind}) timed out`)), timeoutMs);
      const fail = (err: Error): void => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        conn?.destroy();
        reject(err);
      };
      const handlers: FrameHandlers = {
        onFrame: (body) => {
          try {
            if (channel) return this.onFrame(channel, body as Buffer);
            const m = decodeServerHandshake(unpack(body));
            if (m.t === 'error') throw new RemoteError(m.code, m.message);
            if (m.t === 'cookie') return conn!.send(pack(hs.hello(m.c)));
            const r = hs.complete(m);
            channel = r.channel;
            conn!.send(channel.seal(pack(r.finish)));
            clearTimeout(timer);
            done = true;
            this.socket = conn;
            this.channel = channel;
            this.server = name;
            // The welcome names the cell's web listener: a later rejoin can use it if TCP fails.
            this.endpoint = { ...server, ...(!server.web && r.welcome.wa && { web: `http://${r.welcome.wa}` }) };
            this.working = kind;
            this.welcome = r.welcome;
            this.attempt = 0;
            if (r.resumption) this.setResumption(r.resumption);
            this.resendOutbox();
            this.resumeFeedback();
            this.startKeepalive();
            resolve(r.welcome);
            this.emit('connected', r.welcome);
            this.emit('transport', kind);
          } catch (err) {
            if (!done) return fail(err as Error);
            this.emit('error', err as Error);
            if (err instanceof ProtocolError && err.fatal) conn?.destroy();
          }
        },
        onClose: (err) => (done ? this.onLost(conn!, err) : fail(new ClientError(ClientErrorCode.CONNECT_FAILED, `${name} (${kind}) closed the connection during the handshake${err ? `: ${err.message}` : ''}`, { cause: err }))),
      };
      dial(server, handlers, timeoutMs).then(
        (c) => {
          if (done) return c.destroy(); // timed out meanwhile
          conn = c;
          // Single use from the moment it is sent, whatever happens next; a server that
          // could not be reached never saw it, so it stays for the next one.
          if (resume) this.setResumption(undefined);
          c.send(pack(hs.hello()));
        },
        (err: Error) => fail(err instanceof ClientError || err instanceof RemoteError ? err : new ClientError(ClientErrorCode.CONNECT_FAILED, `cannot connect to ${name} (${kind}): ${err.message}`, { cause: err })),
      );
    });
  }

  private onFrame(channel: SecureChannel, body: Buffer): void {
    const m: ServerMessage = decodeServerMessage(unpack(channel.open(body)));
    switch (m.t) {
      case 'msg':
        if (m.rk) this.proofs.remember(m.c !== undefined ? `c/${m.c}` : `${m.from}/${m.id}`, m.rk);
        // A re-delivery (the sender re-sent after losing its status, a mailbox drain
        // after a lost ack): ack it again, show it once. With a storage path a
        // re-delivery is acked even without autoAck: its key says it was shown,
        // possibly by an earlier process, and nothing else would ever ack it.
        return this.receive(
          `${m.from}/${m.id}`,
          () => this.emit('message', m),
          (first) => {
            if (this.options.autoAck !== false || (!first && this.store.durable)) this.ack(m.id, m.from);
          },
        );
      case 'rcpt':
        return this.receive(
          `${m.by}/${m.id}`,
          () => this.emit('receipt', m),
          () => this.ack(m.id, m.by),
        );
      case 'pres':
        this.emit('presence', m);
        return;
      case 'typing':
        this.emit('typing', m);
        return;
      case 'res': {
        const r = this.requests.get(m.rid);
        if (!r) return;
        this.requests.delete(m.rid);
        if (m.ok) r.resolve(m.data);
        else r.reject(new RemoteError(m.code, m.message));
        return;
      }
      case 'status': {
        const out = this.outbox.get(m.id);
        if (!out) return;
        if (m.s === 'failed' && m.code && RETRYABLE_SEND_CODES.has(m.code)) return this.retryLater(out);
        this.outbox.delete(m.id);
        if (m.s === 'failed') this.settle(out, { id: m.id, error: new DeliveryError(m.code ?? ErrorCode.INTERNAL, m.id) });
        else this.settle(out, { id: m.id, status: m.s });
        return;
      }
      case 'pong':
        this.pings.get(m.n)?.resolve();
        this.pings.delete(m.n);
        return;
      case 'move': {
        const h = this.verify(m.h);
        if (h) void this.follow(h, m.why);
        return;
      }
      case 'relay':
        this.emit('relayRequest', { u: m.u, d: m.d, w: m.w });
        return;
      case 'mutes':
        this.resyncMutes();
        return;
      case 'error': {
        const err = new RemoteError(m.code, m.message, m.ref);
        // A refused ping names its number: it settles now rather than waiting for a pong that will not come.
        const ping = m.ref !== undefined && /^\d{1,15}$/.test(m.ref) ? this.pings.get(Number(m.ref)) : undefined;
        if (ping) {
          this.pings.delete(Number(m.ref));
          ping.reject(err);
          return;
        }
        const out = m.ref ? this.outbox.get(m.ref) : undefined;
        if (out) {
          this.outbox.delete(out.id);
          this.settle(out, { id: out.id, error: err });
        } else this.emit('error', err);
        return;
      }
      case 'bye':
        // The cell we just left says goodbye (we replaced that session by moving): nothing to do.
        if (channel !== this.channel) return;
        if (m.code && NO_RECONNECT_CODES.has(m.code)) {
          this.closed = true;
          this.emit('error', new RemoteError(m.code, m.message ?? 'server closed the session'));
        }
        this.socket?.close();
    }
  }

  /**
   * Shows an incoming item at most once and then acknowledges it: its (sender, id)
   * key is recorded first (with a storage path: durably, before the event), then
   * the event, then the ack. A crash before the key is durable leaves the item
   * unacked, so the server delivers it again and it is shown then; a crash after
   * the event never shows it twice. Items are shown in arrival order.
   */
  private receive(key: string, show: () => void, ack: (first: boolean) => void): void {
    const seen = this.store.markSeen(key);
    if (typeof seen === 'boolean') {
      if (seen) show();
      return ack(seen);
    }
    this.inbound = this.inbound.then(async () => {
      let first: boolean;
      try {
        first = await seen;
      } catch (err) {
        // Neither shown nor acked: the server delivers it again.
        return this.emitLater(new ClientError(ClientErrorCode.STORAGE_FAILED, `cannot record received item ${key}: ${(err as Error).message}`, { cause: err }));
      }
      try {
        if (first) show();
        ack(first);
      } catch (err) {
        this.emitLater(err as Error); // a throwing listener: not acked, as without a storage path
      }
    });
  }

  /** 'error' outside the promise chain, so that a missing listener fails as loudly as it does elsewhere. */
  private emitLater(err: Error): void {
    process.nextTick(() => this.emit('error', err));
  }

  /** An outbox message is finished: its record goes, its promise and the 'settled' event tell the outcome. */
  private settle(out: Outgoing, result: Settled): void {
    this.store.deleteOutbox(out.id);
    if ('error' in result) out.reject(result.error);
    else out.resolve(result);
    this.emit('settled', result);
  }

  /** The server could not take custody now: send it again after a backoff (reset by a reconnect). */
  private retryLater(out: Outgoing): void {
    if (this.retries.has(out.id)) return;
    const n = Math.min(10, out.attempts++);
    const delay = Math.min(RETRY_MAX_MS, 50 * 2 ** n) * (0.5 + Math.random() / 2);
    const timer = setTimeout(() => {
      this.retries.delete(out.id);
      if (this.channel && this.outbox.get(out.id) === out) this.write(sendFrame(out));
    }, delay);
    timer.unref();
    this.retries.set(out.id, timer);
  }

  private startKeepalive(): void {
    clearInterval(this.keepalive);
    const every = this.options.keepaliveMs ?? 30_000;
    if (every <= 0) return;
    this.keepalive = setInterval(() => {
      if (this.channel) this.ping().catch(() => undefined); // a lost connection is handled by onLost
    }, every);
    this.keepalive.unref();
  }

  private onLost(socket: FrameConnection, err?: Error): void {
    if (socket !== this.socket) return;
    this.gone?.();
    this.gone = undefined;
    clearInterval(this.keepalive);
    // A round trip cut by the connection loss will never complete: say so.
    for (const p of this.pings.values()) p.reject(new ClientError(ClientErrorCode.NOT_CONNECTED, 'connection lost before the pong'));
    this.pings.clear();
    for (const r of this.requests.values()) r.reject(new ClientError(ClientErrorCode.NOT_CONNECTED, 'connection lost before the answer'));
    this.requests.clear();
    for (const t of this.retries.values()) clearTimeout(t);
    this.retries.clear();
    this.socket = undefined;
    this.channel = undefined;
    this.rejoin = this.endpoint;
    this.emit('disconnected', err);
    if (this.closed || this.options.reconnect === false) {
      this.failFeedback();
      return this.failOutbox();
    }
    this.scheduleReconnect();
  }

  private scheduleReconnect(): void {
    const base = Math.min(5000, 100 * 2 ** this.attempt++);
    const delay = base / 2 + Math.random() * (base / 2);
    this.serverIndex = (this.serverIndex + 1) % this.options.servers.length;
    this.reconnectTimer = setTimeout(() => {
      if (this.closed || this.channel) return; // closed, or a move connected us meanwhile
      this.connect().catch((err: Error) => {
        if (err instanceof RemoteError && NO_RECONNECT_CODES.has(err.code)) {
          this.closed = true;
          this.emit('error', err);
          this.failFeedback();
          return this.failOutbox();
        }
        this.scheduleReconnect();
      });
    }, delay);
  }

  private write(m: object): void {
    if (!this.socket || !this.channel) throw new ClientError(ClientErrorCode.NOT_CONNECTED, 'not connected');
    this.socket.send(this.channel.seal(pack(m)));
  }

  private resendOutbox(): void {
    for (const o of this.outbox.values()) if (o.ready) this.write(sendFrame(o));
  }

  private failOutbox(): void {
    if (this.store.durable) {
      // Not settled: the records stay, and this client after a connect() or the next
      // one on this storage path sends them again. Only the promises end here.
      for (const o of this.outbox.values()) {
        o.reject(new ClientError(ClientErrorCode.CLOSED, `client closed before message ${o.id} was confirmed; it stays in the outbox at ${this.options.storagePath}`));
        o.resolve = o.reject = noop;
      }
      return;
    }
    const all = [...this.outbox.values()];
    this.outbox.clear();
    for (const o of all) this.settle(o, { id: o.id, error: new ClientError(ClientErrorCode.CLOSED, 'client closed before the message was confirmed') });
  }

  /** The unconfirmed messages, oldest first (with a storage path: also those restored from an earlier process). */
  pendingMessages(): OutboxRecord[] {
    return [...this.outbox.values()].map(({ id, target, text, createdAt }) => ({ id, target, text, createdAt }));
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
    if (this.closed || this.storeClosed) return Promise.reject(new ClientError(ClientErrorCode.CLOSED, 'client is closed'));
    if (this.outbox.has(id)) return Promise.reject(new ClientError(ClientErrorCode.DUPLICATE_ID, `message ${id} is already in the outbox`));
    if (this.outbox.size >= (this.options.maxOutbox ?? 1024)) return Promise.reject(new ClientError(ClientErrorCode.OUTBOX_FULL, 'too many unconfirmed messages'));
    return new Promise((resolve, reject) => {
      const out: Outgoing = { id, target, text, createdAt: Date.now(), attempts: 0, ready: false, resolve, reject };
      this.outbox.set(id, out);
      const saved = this.store.putOutbox({ id, target, text, createdAt: out.createdAt });
      if (!saved) {
        out.ready = true;
        // Not connected: it stays in the outbox and goes out after the reconnect.
        if (this.channel) this.write(sendFrame(out));
        return;
      }
      // Write-ahead: the record is on disk before the message may reach the server,
      // so whatever the server may have seen is found again after a crash. The
      // writes of one event turn share one transaction and one flush.
      const done = saved.then(
        () => {
          if (this.outbox.get(id) !== out) return;
          out.ready = true;
          try {
            if (this.channel && !this.closed) this.write(sendFrame(out));
          } catch (err) {
            this.emitLater(err as Error); // it stays in the outbox and goes out after the reconnect
          }
        },
        (err: unknown) => {
          if (this.outbox.get(id) !== out) return;
          this.outbox.delete(id);
          try {
            this.settle(out, { id, error: new ClientError(ClientErrorCode.STORAGE_FAILED, `cannot store message ${id}: ${(err as Error).message}`, { cause: err }) });
          } catch (e) {
            this.emitLater(e as Error); // a throwing 'settled' listener
          }
        },
      );
      this.saving.add(done);
      void done.then(() => this.saving.delete(done));
    });
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
    if (this.closed || this.storeClosed) return Promise.reject(new ClientError(ClientErrorCode.CLOSED, 'client is closed'));
    const campaignId = typeof campaign === 'string' ? campaign : campaign.c;
    const rk = (typeof campaign === 'string' ? undefined : campaign.rk) ?? this.proofs.get(`c/${campaignId}`);
    if (!rk) return Promise.reject(new ClientError(ClientErrorCode.NO_PROOF, `no message of campaign ${campaignId} was received here: pass the message (its c and rk)`));
    if (this.feedback.has(eventId)) return Promise.reject(new ClientError(ClientErrorCode.DUPLICATE_ID, `event ${eventId} is already queued`));
    if (this.feedback.size >= (this.options.maxFeedback ?? 10_000)) return Promise.reject(new ClientError(ClientErrorCode.OUTBOX_FULL, 'too many queued feedback events'));
    const rec: FeedbackRecord = { eid: eventId, c: campaignId, ev: event, ts: Date.now(), rk };
    const q: QueuedFeedback = { ...rec, ready: false, inFlight: false };
    this.feedback.set(eventId, q);
    const saved = this.store.putFeedback(rec);
    if (!saved) {
      q.ready = true;
      this.pumpFeedback();
      return Promise.resolve(eventId);
    }
    // Write-ahead, as for messages: on disk before the server can have seen it.
    const done = saved.then(
      () => {
        q.ready = true;
        this.pumpFeedback();
        return eventId;
      },
      (err: unknown) => {
        if (this.feedback.get(eventId) === q) this.feedback.delete(eventId);
        throw new ClientError(ClientErrorCode.STORAGE_FAILED, `cannot store event ${eventId}: ${(err as Error).message}`, { cause: err });
      },
    );
    const settled = done.then(noop, noop);
    this.saving.add(settled);
    void settled.then(() => this.saving.delete(settled));
    return done;
  }

  /** Queued feedback, oldest first (with a storage path: also what an earlier process left). */
  pendingFeedback(): FeedbackRecord[] {
    return [...this.feedback.values()].map(({ eid, c, ev, ts, rk }) => ({ eid, c, ev, ts, rk }));
  }

  /** Connected again: the queue goes out now, whatever backoff it was waiting out. */
  private resumeFeedback(): void {
    clearTimeout(this.feedbackPause);
    this.feedbackPause = undefined;
    this.feedbackAttempt = 0;
    this.pumpFeedback();
  }

  /** Sends queued events, oldest first, at most FEEDBACK_IN_FLIGHT unanswered. */
  private pumpFeedback(): void {
    if (!this.channel || this.closed || this.feedbackPause) return;
    for (const q of this.feedback.values()) {
      if (this.feedbackInFlight >= FEEDBACK_IN_FLIGHT) return;
      if (q.ready && !q.inFlight) this.sendFeedback(q);
    }
  }

  private sendFeedback(q: QueuedFeedback): void {
    q.inFlight = true;
    this.feedbackInFlight++;
    let done = false;
    const finish = (err: unknown, data?: unknown): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      q.inFlight = false;
      this.feedbackInFlight--;
      if (this.feedback.get(q.eid) !== q) return; // settled meanwhile (failed at close)
      if (err === undefined) {
        this.feedbackAttempt = 0;
        this.settleFeedback(q, { dup: (data as { dup?: unknown } | undefined)?.dup === true });
      } else if (err instanceof RemoteError && !FEEDBACK_RETRYABLE.has(err.code)) {
        this.settleFeedback(q, { error: err });
      } else {
        // Not now (store full, cell busy) or not answered (connection lost): the whole queue waits.
        this.pauseFeedback();
        return;
      }
      this.pumpFeedback();
    };
    const timer = setTimeout(() => finish(new ClientError(ClientErrorCode.NOT_CONNECTED, `no answer to track ${q.eid}`)), FEEDBACK_TIMEOUT_MS);
    timer.unref();
    this.request('track', { c: q.c, ev: q.ev, eid: q.eid, ts: q.ts, rk: q.rk }).then(
      (data) => finish(undefined, data),
      (err: unknown) => finish(err ?? new Error('track failed')),
    );
  }

  private pauseFeedback(): void {
    if (this.feedbackPause) return;
    const n = Math.min(10, this.feedbackAttempt++);
    const delay = Math.min(FEEDBACK_RETRY_MAX_MS, 100 * 2 ** n) * (0.5 + Math.random() / 2);
    this.feedbackPause = setTimeout(() => {
      this.feedbackPause = undefined;
      this.pumpFeedback();
    }, delay);
    this.feedbackPause.unref();
  }

  private settleFeedback(q: QueuedFeedback, outcome: { dup: boolean } | { error: Error }): void {
    this.feedback.delete(q.eid);
    this.store.deleteFeedback(q.eid);
    const rec = { eid: q.eid, c: q.c, ev: q.ev, ts: q.ts, rk: q.rk };
    try {
      if ('error' in outcome) this.emit('trackFailed', { ...rec, error: outcome.error });
      else this.emit('tracked', { ...rec, dup: outcome.dup });
    } catch (err) {
      this.emitLater(err as Error); // a throwing listener must not stop the queue
    }
  }

  /** Closed for good: without a storage path the queued events are lost, and said to be. */
  private failFeedback(): void {
    if (this.store.durable) return; // they stay stored for the next client on this path
    for (const q of [...this.feedback.values()]) this.settleFeedback(q, { error: new ClientError(ClientErrorCode.CLOSED, `client closed before event ${q.eid} was taken`) });
  }

  /** A verified hint for this device, or undefined (reported as 'hintIgnored'). */
  private verify(bytes: Uint8Array): ConnectHint | undefined {
    const key = this.options.hintPublicKey ?? this.welcome?.hk;
    try {
      if (!key) throw new HintError(ErrorCode.HINT_INVALID, 'connect hint rejected: no hint key known yet');
      return verifyHint(bytes, key, { user: this.options.user, device: this.options.device }, Date.now());
    } catch (err) {
      this.emit('hintIgnored', err as Error);
      return undefined;
    }
  }

  /**
   * Follows a connect hint that came from outside the connection (a push payload,
   * a relayed wake-up). Connected: moves now, like a server's `move`. Not connected:
   * the next connect() tries the hinted cell first. Unverifiable hints are ignored
   * ('hintIgnored'); returns whether the hint was accepted.
   */
  followHint(bytes: Uint8Array): boolean {
    const h = this.verify(bytes);
    if (!h) return false;
    if (this.channel) void this.follow(h, 'external');
    else this.hint = h;
    return true;
  }

  /**
   * A verified wake-up relayed by a LAN peer (peer.ts, docs/relay.md): follows
   * the hint, and a client that was closed connects now (its mailbox drains on
   * connect). One that is between reconnect attempts uses the hint on its next
   * attempt; one that is connected moves if the hint names another cell.
   */
  async wakeUp(hint: Uint8Array): Promise<'connected' | 'reconnecting' | 'ignored'> {
    if (!this.followHint(hint)) return 'ignored';
    if (this.channel) return 'connected';
    // A reconnect loop is running (attempt counts its tries): it takes the hint next.
    if (!this.closed && this.attempt > 0 && this.options.reconnect !== false) return 'reconnecting';
    await this.connect();
    return 'connected';
  }

  /**
   * Moves to the hinted cell, make-before-break: the new session is opened by
   * resumption first (one round trip), then the old one is closed. Nothing is lost:
   * what the old session delivered unacknowledged goes back to custody and is
   * delivered again on the new one (shown once, by its key); unconfirmed sends are
   * re-sent with the same ids. If the cell cannot be reached, the client stays.
   */
  private async follow(h: ConnectHint, why: 'rebalance' | 'associate' | 'external'): Promise<void> {
    if (this.moving || this.closed || this.welcome?.cell === h.cell) return;
    this.moving = true;
    const oldSocket = this.socket;
    const oldChannel = this.channel;
    try {
      await this.open(hintEndpoint(h));
    } catch (err) {
      this.emit('hintIgnored', err as Error);
      return;
    } finally {
      this.moving = false;
    }
    if (oldSocket && oldChannel) {
      try {
        oldSocket.send(oldChannel.seal(pack({ t: 'bye' })));
      } catch {
        // already gone
      }
      oldSocket.close();
      setTimeout(() => oldSocket.destroy(), 1000).unref();
    }
    this.emit('moved', { cell: h.cell, addr: h.addr, why });
  }

  /** Acknowledges a received message (automatic unless autoAck is false). */
  ack(id: string, from: string): void {
    if (this.channel) this.write({ t: 'ack', id, from });
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
    const rk = (typeof m === 'string' ? undefined : m.rk) ?? this.proofs.get(`${sender}/${id}`);
    if (!rk) throw new ClientError(ClientErrorCode.NO_PROOF, `message ${id} from ${sender} was not received here: pass the message (with its rk)`);
    if (this.channel) this.write({ t: 'read', id, from: sender, rk });
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
    if (this.channel) this.write({ t: 'typing', on, ...target });
  }

  /** Sets this user's presence as seen by its contacts. */
  setPresence(s: 'online' | 'away'): void {
    if (this.channel) this.write({ t: 'presence', s });
  }

  /** Contacts, blocks, preferences, devices and groups: one request, one answer (rejects with a RemoteError code). */
  request<K extends RequestOp>(op: K, args: RequestArgs[K]): Promise<unknown> {
    if (!this.channel) return Promise.reject(new ClientError(ClientErrorCode.NOT_CONNECTED, 'not connected'));
    const rid = (this.requestSeq = (this.requestSeq + 1) % 2 ** 32);
    return new Promise((resolve, reject) => {
      this.requests.set(rid, { resolve, reject });
      this.write({ t: 'req', rid, op, a: args });
    });
  }

  // ---- groups (docs/groups.md) ---------------------------------------------------

  /**
   * Asks for every page of a paginated answer: `from` the previous page's `next`
   * until an answer has none. Each page fits a frame; the whole list may not.
   */
  private async pages<K extends 'groups.list' | 'groups.info' | 'groups.invites' | 'mute.list', P extends { next?: string }>(op: K, args: RequestArgs[K], each: (page: P) => void): Promise<void> {
    let from: string | undefined;
    for (;;) {
      const page = (await this.request(op, { ...args, ...(from !== undefined && { from }) })) as P;
      each(page);
      if (page.next === undefined) return;
      if (page.next === from) throw new ProtocolError(ErrorCode.BAD_MESSAGE, `${op} answered the same cursor twice`);
      from = page.next;
    }
  }

  /** Every group this user is in (all pages of `groups.list`). */
  async listGroups(): Promise<GroupSummary[]> {
    const out: GroupSummary[] = [];
    await this.pages<'groups.list', { groups: GroupSummary[]; next?: string }>('groups.list', {}, (p) => out.push(...p.groups));
    return out;
  }

  /** A group, whole (all pages of `groups.info`): NOT_FOUND, NOT_A_MEMBER. */
  async groupInfo(g: string): Promise<GroupInfo> {
    let info: GroupInfo | undefined;
    await this.pages<'groups.info', GroupInfo & { next?: string; pending?: number }>('groups.info', { g }, (p) => {
      if (!info) {
        info = { g: p.g, name: p.name, owner: p.owner, count: p.count, members: [...p.members], admins: [...p.admins], ...(p.invited && { invited: [...p.invited] }) };
        return;
      }
      info.members.push(...p.members);
      info.admins.push(...p.admins);
      if (p.invited) (info.invited ??= []).push(...p.invited);
    });
    return info!;
  }

  /** This user's pending invitations (all pages of `groups.invites`). */
  async invites(): Promise<GroupInvite[]> {
    const out: GroupInvite[] = [];
    await this.pages<'groups.invites', { invites: GroupInvite[]; next?: string }>('groups.invites', {}, (p) => out.push(...p.invites));
    return out;
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
  async createGroup(name: string, members: string[] = []): Promise<{ g: string; added: string[]; invited: string[] }> {
    const rest = [...new Set(members)];
    const first = rest.splice(0, MAX_USERS_PER_REQUEST);
    const r = (await this.request('groups.create', { name, members: first })) as { g: string; added: string[]; invited: string[] };
    if (rest.length === 0) return r;
    const more = await this.addToGroup(r.g, rest);
    return { g: r.g, added: [...r.added, ...more.added], invited: [...r.invited, ...more.invited] };
  }

  /** Invites (or, under `contacts`, adds) users to a group this user administers, in requests of at most MAX_USERS_PER_REQUEST. */
  addToGroup(g: string, users: string[]): Promise<{ added: string[]; invited: string[] }> {
    return this.inBatches('groups.add', g, users, { added: [], invited: [] });
  }

  /** Removes members and revokes pending invitations, in requests of at most MAX_USERS_PER_REQUEST. */
  removeFromGroup(g: string, users: string[]): Promise<{ removed: string[]; revoked: string[] }> {
    return this.inBatches('groups.remove', g, users, { removed: [], revoked: [] });
  }

  /** A group request naming many users, one request per MAX_USERS_PER_REQUEST of them; the answers' lists joined into `out`. */
  private async inBatches<T extends Record<string, string[]>>(op: 'groups.add' | 'groups.remove', g: string, users: string[], out: T): Promise<T> {
    const list = [...new Set(users)];
    for (let i = 0; i < list.length; i += MAX_USERS_PER_REQUEST) {
      const r = (await this.request(op, { g, users: list.slice(i, i + MAX_USERS_PER_REQUEST) })) as Record<string, string[]>;
      for (const [k, names] of Object.entries(out)) names.push(...(r[k] ?? []));
    }
    return out;
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
  async mute(chat: Target, duration?: number | MuteDurationName | 'always'): Promise<MuteEntry> {
    const { mute } = (await this.request('mute.set', { ...chat, ...(duration !== undefined && { for: duration }) } as unknown as RequestArgs['mute.set'])) as { mute: MuteEntry };
    this.muteList = [...this.muteList.filter((e) => !sameChat(e, chat)), mute];
    return mute;
  }

  async unmute(chat: Target): Promise<void> {
    await this.request('mute.clear', chat as RequestArgs['mute.clear']);
    this.muteList = this.muteList.filter((e) => !sameChat(e, chat));
  }

  /** The user's active mutes, fresh from the server, page by page (also kept in `client.mutes`). */
  async listMutes(): Promise<MuteEntry[]> {
    const all: MuteEntry[] = [];
    await this.pages<'mute.list', { mutes: unknown; next?: string }>('mute.list', {}, (p) => {
      all.push(...decodeMuteList(p.mutes));
      if (all.length > MUTE_LIMITS.maxPerUser) throw new ProtocolError(ErrorCode.BAD_MESSAGE, `mute.list answered more than ${MUTE_LIMITS.maxPerUser} mutes`);
    });
    this.muteList = all;
    return all;
  }

  /**
   * The server's notice that the mutes changed on another device: list them again
   * (once more if another notice arrives meanwhile), then emit `mutes`. A re-list
   * that fails (the connection went) leaves `client.mutes` as it was.
   */
  private resyncMutes(): void {
    if (this.muteSync) {
      this.muteSyncAgain = true;
      return;
    }
    this.muteSync = (async () => {
      do {
        this.muteSyncAgain = false;
        await this.listMutes();
      } while (this.muteSyncAgain);
      this.emit('mutes', this.mutes);
    })()
      .catch(() => undefined)
      .finally(() => {
        this.muteSync = undefined;
      });
  }

  /** The mutes last known to this client (listMutes(), its own changes, and 'mutes' syncs); expired ones left out. */
  get mutes(): MuteEntry[] {
    const now = Date.now();
    return this.muteList.filter((e) => e.until === undefined || e.until > now);
  }

  /** Round trip to the cell; rejects with NOT_CONNECTED if the connection is lost first. */
  ping(): Promise<void> {
    const n = ++this.pingSeq;
    return new Promise((resolve, reject) => {
      this.write({ t: 'ping', n });
      this.pings.set(n, { resolve, reject });
    });
  }

  /**
   * Says goodbye and closes; unconfirmed messages are rejected with CLOSED. With a
   * storage path they stay stored for the next client, and the store is closed
   * once its writes are done (a closed client with a storage path is not reused).
   */
  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.reconnectTimer);
    clearInterval(this.keepalive);
    const socket = this.socket;
    if (socket && this.channel) {
      try {
        this.write({ t: 'bye' });
      } catch {
        // already gone
      }
      await new Promise<void>((r) => {
        this.gone = r;
        socket.close();
        setTimeout(() => {
          socket.destroy();
          r();
        }, 1000).unref();
      });
    }
    clearTimeout(this.feedbackPause);
    this.feedbackPause = undefined;
    if (this.store.durable && !this.storeClosed) {
      this.storeClosed = true;
      await this.flush(); // every record is written (or its send() failed) before the promises end
      this.failOutbox();
      await this.inbound; // received items whose keys are being written are still shown
      await this.store.close();
    } else {
      this.failFeedback();
      this.failOutbox();
    }
  }
}

function sameChat(e: MuteEntry, c: Target): boolean {
  return 'g' in c ? e.g === c.g : e.to === c.to;
}

function sendFrame(o: Outgoing): object {
  return { t: 'send', id: o.id, text: o.text, ...o.target };
}

export { splitHostPort } from './transport.js';

/** Where a verified connect hint points: the cell's TCP listener and, if named, its web listener. */
function hintEndpoint(h: ConnectHint): Endpoint {
  return { tcp: h.addr, ...(h.web && { web: `http://${h.web}` }) };
}

/** Time-ordered, collision-resistant message id (ms timestamp + 80 random bits). */
export function newMessageId(): string {
  return Date.now().toString(36).padStart(9, '0') + toBase64Url(random(10));
}

/** Event id for track(): the same shape as a message id (a protocol name, unique per user). */
export function newEventId(): string {
  return newMessageId();
}
