import type { ErrorCode, ServerMessage } from '@gravitas/protocol';
import type { ChatItem, Item } from './envelope.js';
import type { StoredRef } from './ports.js';

/*
 * A device's session as features see it: who it is, whether it is still open,
 * and the few ways to hand it something. The actor behind it
 * (session/session.ts) owns the secure channel, the inbox and the window.
 */

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
