import type { KV } from '@nats-io/kv';
import { ErrorCode, ProtocolError, type Prefs, type RequestOp } from '@gravitas/protocol';
import type { Cell } from './cell.js';
import type { Session } from './session.js';

// PLACEHOLDER (being implemented): contacts, blocks and preferences in KV.
export class Social {
  constructor(readonly cell: Cell, readonly kv: KV) {}
  async refuses(_recipient: string, _sender: string): Promise<boolean> {
    return false;
  }
  async prefs(_user: string): Promise<Prefs> {
    return { readReceipts: true, presence: 'contacts' };
  }
  async handle(_s: Session, op: RequestOp, _args: unknown): Promise<unknown> {
    throw new ProtocolError(ErrorCode.NOT_ALLOWED, `${op} is not available`);
  }
  invalidate(_user: string): void {}
}
