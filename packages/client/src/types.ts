/*
 * The SDK's shared types: what the client, its parts (connection, outbox, inbox,
 * feedback, moves) and its store all speak of. Imports nothing of the SDK but the
 * transport's types, so every module can import it and none imports the client.
 */
import type {
  CampaignEvent, KeyPair, MuteEntry, Msg, Presence, Receipt, Registration, ResumptionState, TypingEvent, WelcomePayload,
} from '@gravitas/protocol';
import type { Dialer, Endpoint, TransportKind } from './transport.js';

/** Where a message goes: a user or a group. */
export type Target = { to: string } | { g: string };

/** One unconfirmed outgoing message, as stored. */
export interface OutboxRecord { id: string; target: Target; text: string; createdAt: number }

/**
 * One campaign feedback event not yet taken by the server, as stored (`ts`: when it
 * happened; `rk`: the delivery proof of the campaign's message, without which the server
 * takes no feedback).
 */
export interface FeedbackRecord { eid: string; c: string; ev: CampaignEvent; ts: number; rk: Uint8Array }

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
  /**
   * Protocol capabilities to ask the server for (docs/protocol.md 4.7); default: all this SDK
   * implements (`CAPABILITIES`: batched frames, ChaCha20-Poly1305). What the server does not
   * grant is simply not used.
   */
  capabilities?: readonly string[];
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

/** How an outbox message ended: the server's answer, or the error that ended it. */
export type Settled = SendResult | { id: string; error: Error };

/** Feedback the server took; `dup`: it had it already (an earlier send whose answer was lost). */
export interface Tracked extends FeedbackRecord { dup: boolean }
/** Feedback the server refused for good (BAD_MESSAGE, NOT_FOUND, …), or dropped at close without a storage path. */
export interface TrackFailed extends FeedbackRecord { error: Error }

/** A campaign message, or what identifies one: its campaign and its delivery proof (`Msg.c`, `Msg.rk`). */
export interface CampaignRef { c: string; rk: Uint8Array }

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
