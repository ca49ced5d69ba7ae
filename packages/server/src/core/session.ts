import type { ErrorCode, ServerMessage } from '@gravitas/protocol';
import type { ChatItem, Item } from './envelope.js';

/*
 * A device's session as features see it: who it is, whether it is still open,
 * and the few ways to hand it something. The actor behind it
 * (session/session.ts) owns the secure channel, the inbox and the window.
 */

/** Where one stored item lives: enough to delete it once acknowledged. */
export interface StoredRef { stream: string; seq: number }

/**
 * An item written to this device and not yet acknowledged, and how it came: live
 * (custody held by cell `origin`), from the mailbox (delete `ref` on ack), or from
 * a group's log (advance the device's cursor on ack).
 */
export type Delivery =
  | { via: 'live'; item: Item; origin: string; ref?: StoredRef }
  | { via: 'mbox'; item: Item; ref: StoredRef }
  | { via: 'group'; item: ChatItem };

export type BudgetKind = 'msg' | 'fanout' | 'read' | 'req';

/** Where a device's mailbox drain is (messaging/drain.ts keeps it on the session). */
export interface DrainState {
  running: boolean;
  /** A wake-up came during the run: run once more from `next`. */
  again: boolean;
  /** The next mailbox sequence to read. */
  next: number;
  /** Mailbox items written and not yet acknowledged (the drain window). */
  inFlight: number;
  retryMs: number;
  /** The connect-time associate hint was considered (gravitation). */
  hinted: boolean;
}

export interface DeviceSession {
  readonly id: string;
  /** A number unique within the cell (the gravitation sketch's key). */
  readonly slot: number;
  readonly user: string;
  readonly device: string;
  /** The registration this session authenticated with (revocations name it). */
  readonly rid: number;
  readonly isOpen: boolean;
  /** Directory epoch of its registration. */
  readonly epoch: number;
  readonly startedAt: number;
  /** Unsent bytes on its connection. */
  readonly outboundBytes: number;
  /** Registered in the directory and the hub (set by the hub). */
  readonly registered: boolean;
  /** When it registered (ms since the epoch). */
  readonly registeredAt: number;
  /** Written and not yet acknowledged, by `from/id`. */
  readonly unacked: Map<string, Delivery>;
  readonly drain: DrainState;
  /** Resolves when fewer than `window` mailbox items are unacknowledged and the connection has room (or the session ended). */
  windowFor(window: number): Promise<void>;
  /** Told to move to another cell (a connect hint): not moved again meanwhile (gravitation's mark). */
  moving: boolean;
  send(m: ServerMessage): void;
  sendError(code: ErrorCode, message: string, ref?: string): void;
  /** Writes a live item held under custody by cell `origin`; false when the session cannot take it now. */
  deliverLive(item: Item, origin: string): boolean;
  deliverStored(item: Item, ref: StoredRef): void;
  deliverGroup(item: ChatItem): boolean;
  /** Spends from the session's and its account's budgets; false (or a promise of it) when refused. */
  spend(kind: BudgetKind, n: number): boolean | Promise<boolean>;
  refused(kind: Exclude<BudgetKind, 'req'> | 'control', id?: string): void;
  bye(code: ErrorCode, message: string): void;
}
