import { createHmac, timingSafeEqual } from 'node:crypto';
import { DELIVERY_PROOF_BYTES, hkdf } from '@gravitas/protocol';
import type { ChatItem } from './envelope.js';

const SALT = new TextEncoder().encode('gravitas delivery proofs v1');

/**
 * Delivery proofs (docs/security.md): a short MAC, under a key every cell derives
 * from the cluster's server key, over a message and the user it was delivered
 * to. Every delivered message carries one (`rk`; copies of a user's own messages
 * need none); a read receipt must return the proof of the message it is about,
 * and campaign feedback the proof of the campaign's message — so only a reader
 * the message reached can send either, and no cell keeps any per-delivery state
 * to check it. It costs one HMAC per delivery.
 *
 *   message:  HMAC-SHA256(k, "m" 0 from 0 id 0 reader)[0..12]
 *   campaign: HMAC-SHA256(k, "c" 0 campaign 0 reader)[0..12]   (every recipient gets the same message id)
 */
export class DeliveryProofs {
  private readonly key: Buffer;

  constructor(serverSecret: Uint8Array) {
    this.key = Buffer.from(hkdf(serverSecret, SALT, 'gravitas delivery proof key', 32));
  }

  private mac(text: string): Buffer {
    return createHmac('sha256', this.key).update(text).digest().subarray(0, DELIVERY_PROOF_BYTES);
  }

  /** The proof a reader's copy of `item` carries. Names hold no NUL, so the fields cannot run into each other. */
  of(item: ChatItem, reader: string): Uint8Array {
    return item.c !== undefined ? this.campaign(item.c, reader) : this.message(item.from, item.id, reader);
  }

  message(from: string, id: string, reader: string): Buffer {
    return this.mac(`m\0${from}\0${id}\0${reader}`);
  }

  campaign(c: string, reader: string): Buffer {
    return this.mac(`c\0${c}\0${reader}`);
  }

  /** Constant-time check of a returned proof. */
  static same(expected: Buffer, got: Uint8Array): boolean {
    return got.length === expected.length && timingSafeEqual(expected, got);
  }
}
