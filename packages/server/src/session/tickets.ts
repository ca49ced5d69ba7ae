import type { KV } from '@nats-io/kv';
import { ErrorCode, HandshakeError, toBase64Url } from '@gravitas/protocol';
import { isCasConflict } from '../infra/nats.js';

/**
 * Things that may be used once across the whole cluster — resumption tickets,
 * registration credentials, device-link approvals — are spent by a KV create of
 * their id, which JetStream lets succeed exactly once. The bucket's max age
 * outlives the longest of them, so a record lasts as long as it matters. Ticket
 * ids are bare base64url; other ids carry a prefix with a dot, so they never meet.
 */
export class SpentIds {
  constructor(private readonly kv: KV) {}

  async spend(id: Uint8Array): Promise<void> {
    if (!(await this.claim(toBase64Url(id)))) throw new HandshakeError(ErrorCode.TICKET_REPLAYED, 'resumption ticket was already used');
  }

  /** True the first time `key` is claimed, false ever after (within the bucket's max age). */
  async claim(key: string): Promise<boolean> {
    try {
      await this.kv.create(key, new Uint8Array(0));
      return true;
    } catch (err) {
      if (isCasConflict(err)) return false;
      throw err;
    }
  }
}
