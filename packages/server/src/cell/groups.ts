import type { KV } from '@nats-io/kv';
import { ErrorCode, ProtocolError, type RequestOp, type Send } from '@gravitas/protocol';
import type { Cell } from './cell.js';
import type { ChatItem } from './envelope.js';
import type { Session } from './session.js';

// PLACEHOLDER (being implemented): groups, their logs and member cursors.
export class Groups {
  constructor(readonly cell: Cell, readonly kv: KV) {}
  async start(): Promise<void> {}
  async stop(): Promise<void> {}
  async send(s: Session, m: Send): Promise<void> {
    s.send({ t: 'status', id: m.id, s: 'failed', code: ErrorCode.NOT_A_MEMBER });
  }
  async handle(_s: Session, op: RequestOp, _args: unknown): Promise<unknown> {
    throw new ProtocolError(ErrorCode.NOT_ALLOWED, `${op} is not available`);
  }
  catchUp(_s: Session): void {}
  detached(_s: Session): void {}
  acked(_s: Session, _item: ChatItem): void {}
  onDelivery(_item: ChatItem, _to: Array<[string, string]>): void {}
  invalidate(_key: string): void {}
}
