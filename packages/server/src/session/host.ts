import type { PresenceState, Read, Request, Send, ServerHandshakeContext, Typing } from '@gravitas/protocol';
import type { CellContext } from '../core/context.js';
import type { DeliveryProofs } from '../core/proofs.js';
import type { Delivery, DeviceSession } from '../core/session.js';
import type { Accounts } from './accounts.js';
import type { AccountBudgets } from './budgets.js';
import type { HandshakeGuard } from './guard.js';
import type { SpentIds } from './tickets.js';

/**
 * What a session actor needs from the cell that accepted it: the identity
 * pieces its handshake checks against, and where an open session's traffic
 * goes. The cell builds one (cell/cell.ts); the session knows nothing else.
 */
export interface SessionHost<S extends DeviceSession = DeviceSession> {
  readonly ctx: CellContext;
  // ---- identity ----
  readonly handshake: ServerHandshakeContext;
  readonly guard: Pick<HandshakeGuard, 'admit' | 'recordEphemeral' | 'begin' | 'end'>;
  readonly accounts: Pick<Accounts, 'authenticate' | 'checkResume'>;
  readonly tickets: Pick<SpentIds, 'spend'>;
  readonly budgets: Pick<AccountBudgets, 'take'>;
  readonly proofs: Pick<DeliveryProofs, 'of'>;
  /** The hint key's public half, for the welcome. */
  readonly hintPublicKey: Uint8Array;
  /** host:port of this cell's web listener ('' when off), for the welcome. */
  webAddress(): string;
  /** Unsent bytes of a connection right after a write (the cell keeps the high-water mark). */
  noteOutbound(bytes: number): void;
  // ---- lifecycle ----
  /** The handshake is done: register the session (directory, hub) before its traffic runs. */
  opened(s: S): Promise<void>;
  closed(s: S, wasOpen: boolean): void;
  // ---- traffic of an open session ----
  /** Synchronous when custody had every record it needed cached (no promise per message). */
  send1to1(s: S, m: Send & { to: string }): void | Promise<void>;
  sendGroup(s: S, m: Send): void | Promise<void>;
  read(s: S, m: Read): Promise<void>;
  typing(s: S, m: Typing): Promise<void>;
  presence(s: S, state: Exclude<PresenceState, 'offline'>): void;
  /** The device acknowledged `d`, which it was given earlier. */
  acked(s: S, d: Delivery): void;
  request(s: S, m: Request): Promise<void>;
}
