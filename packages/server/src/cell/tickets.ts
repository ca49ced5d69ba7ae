import type { KV } from '@nats-io/kv';
import { ErrorCode, HandshakeError, toBase64Url } from '@gravitas/protocol';
import { isCasConflict } from './nats.js';

/**
 * Resumption tickets are single use across the whole cluster: spending one is a
 * KV create of its id, which JetStream lets succeed exactly once. The bucket's max
 * age outlives the longest ticket, so the record lasts as long as it matters.
 */
export class SpentTickets {
  constructor(private readonly kv: KV) {}

  async spend(id: Uint8Array): Promise<void> {
    try {
      await this.kv.create(toBase64Url(id), new Uint8Array(0));
    } catch (err) {
      if (isCasConflict(err)) throw new HandshakeError(ErrorCode.TICKET_REPLAYED, 'resumption ticket was already used');
      throw err;
    }
  }
}
