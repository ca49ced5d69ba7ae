import type { KV } from '@nats-io/kv';
import type { Typing } from '@gravitas/protocol';
import type { Cell } from './cell.js';
import type { Envelope } from './envelope.js';
import type { Session } from './session.js';

// PLACEHOLDER (being implemented): presence, last seen and typing.
export class PresenceHub {
  constructor(readonly cell: Cell, readonly kv: KV) {}
  start(): void {}
  stop(): void {}
  online(_s: Session): void {}
  offline(_s: Session): void {}
  set(_s: Session, _state: 'online' | 'away'): void {}
  typing(_s: Session, _m: Typing): void {}
  onTyping(_e: Extract<Envelope, { k: 'typ' }>): void {}
  cellDied(_cell: string): void {}
}
