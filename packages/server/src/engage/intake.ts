import { ErrorCode, ProtocolError } from '@gravitas/protocol';
import type { Cell } from '../cell/cell.js';
import type { Session } from '../cell/session.js';
import type { TrackingRecord } from './records.js';

/** Placeholder during development of issue 6: replaced by the real module. */
export class TrackingIntake {
  constructor(readonly cell: Cell) {}
  async start(): Promise<void> {}
  async handle(_s: Session, _op: string, _args: unknown): Promise<unknown> {
    throw new ProtocolError(ErrorCode.BUSY, 'not available yet');
  }
  /** Writes a record the server itself produces (the runner's `sent`); durable when it resolves. */
  async record(_rec: TrackingRecord): Promise<void> {
    throw new ProtocolError(ErrorCode.BUSY, 'not available yet');
  }
  async stop(): Promise<void> {}
}
