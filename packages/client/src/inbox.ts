/*
 * What arrives on the session: every sealed frame decoded and handed to the part it
 * concerns (outbox, round trips, moves, mutes), and the items custody delivers — messages
 * and receipts — shown at most once (by their key in the store) and acknowledged.
 */
import { DELIVERY_PROOF_BYTES, decodeServerFrame, ProtocolError, RemoteError, type SecureChannel, type ServerMessage } from '@gravitas/protocol';
import type { Connection } from './connection.js';
import { seenKey } from './custody.js';
import { ClientError, ClientErrorCode } from './errors.js';
import type { Moves } from './moves.js';
import type { Mutes } from './mutes.js';
import type { Outbox } from './outbox.js';
import type { Calls } from './requests.js';
import type { ClientStore } from './store.js';
import type { Emit } from './private.js';
import type { ClientOptions } from './types.js';

/** Delivery proofs of recently received messages remembered for markRead(id, from) and track(campaignId). */
const RECENT_PROOFS = 4096;

/**
 * The delivery proofs of the last RECENT_PROOFS messages, by `from/id` (or `c/<campaign>`):
 * fixed slots in one buffer, the oldest reused. A proof is copied in, never kept as the
 * decoded view, which would hold the whole plaintext frame it came in.
 */
export class RecentProofs {
  private readonly bytes = new Uint8Array(RECENT_PROOFS * DELIVERY_PROOF_BYTES);
  private readonly keys: Array<string | undefined> = new Array<string | undefined>(RECENT_PROOFS);
  private readonly slots = new Map<string, number>();
  private next = 0;

  remember(key: string, rk: Uint8Array): void {
    if (rk.length !== DELIVERY_PROOF_BYTES) return;
    let slot = this.slots.get(key);
    if (slot === undefined) {
      slot = this.next;
      this.next = (slot + 1) % RECENT_PROOFS;
      const old = this.keys[slot];
      if (old !== undefined) this.slots.delete(old);
      this.keys[slot] = key;
      this.slots.set(key, slot);
    }
    this.bytes.set(rk, slot * DELIVERY_PROOF_BYTES);
  }

  get(key: string): Uint8Array | undefined {
    const slot = this.slots.get(key);
    return slot === undefined ? undefined : this.bytes.slice(slot * DELIVERY_PROOF_BYTES, (slot + 1) * DELIVERY_PROOF_BYTES);
  }
}

/** What the inbox uses of the client itself. */
export interface InboxPorts {
  readonly emit: Emit;
  /** 'error' outside the promise chain, so that a missing listener fails as loudly as it does elsewhere. */
  emitLater(err: Error): void;
  /** The client's ack(): applications and tests may wrap it, so every ack goes through it. */
  ack(id: string, from: string): void;
}

/** The parts a frame may concern. */
export interface InboxParts {
  readonly conn: Connection;
  readonly outbox: Outbox;
  readonly calls: Calls;
  readonly moves: Moves;
  readonly mutes: Mutes;
}

export class Inbox {
  /** Delivery proofs of recent messages (`from/id`) and campaigns (`c/<id>`), for markRead and track by id. */
  readonly proofs = new RecentProofs();
  /** Received items waiting for their key to be durable, shown in arrival order. */
  private inbound: Promise<void> = Promise.resolve();

  constructor(
    private readonly store: ClientStore,
    private readonly ports: InboxPorts,
    private readonly parts: InboxParts,
    private readonly options: ClientOptions,
  ) {}

  /** Resolves once the items whose keys are being written have been shown. */
  drained(): Promise<void> {
    return this.inbound;
  }

  /** A sealed frame: one message, or a batch whose bad elements are reported one by one ('error') while the others go through. */
  frame(channel: SecureChannel, body: Buffer): void {
    const items = decodeServerFrame(channel.open(body), this.parts.conn.batches(channel));
    if (items.length === 1 && items[0] instanceof ProtocolError) throw items[0]; // one message: as before batches
    const refused: ProtocolError[] = [];
    for (const m of items) {
      if (m instanceof ProtocolError) refused.push(m);
      else this.dispatch(channel, m);
    }
    for (const err of refused) this.ports.emit('error', err); // after the others: a throwing listener stops none of them
  }

  private dispatch(channel: SecureChannel, m: ServerMessage): void {
    const { emit } = this.ports;
    switch (m.t) {
      case 'msg':
        if (m.rk) this.proofs.remember(m.c !== undefined ? `c/${m.c}` : seenKey(m.from, m.id), m.rk);
        // A re-delivery (the sender re-sent after losing its status, a mailbox drain
        // after a lost ack): ack it again, show it once. With a storage path a
        // re-delivery is acked even without autoAck: its key says it was shown,
        // possibly by an earlier process, and nothing else would ever ack it.
        return this.receive(
          seenKey(m.from, m.id),
          () => emit('message', m),
          (first) => {
            if (this.options.autoAck !== false || (!first && this.store.durable)) this.ports.ack(m.id, m.from);
          },
        );
      case 'rcpt':
        return this.receive(
          seenKey(m.by, m.id),
          () => emit('receipt', m),
          () => this.ports.ack(m.id, m.by),
        );
      case 'pres':
        emit('presence', m);
        return;
      case 'typing':
        emit('typing', m);
        return;
      case 'res':
        return this.parts.calls.answer(m);
      case 'status':
        return this.parts.outbox.status(m);
      case 'pong':
        return this.parts.calls.pong(m.n);
      case 'move':
        return this.parts.moves.move(m.h, m.why);
      case 'relay':
        emit('relayRequest', { u: m.u, d: m.d, w: m.w });
        return;
      case 'mutes':
        return this.parts.mutes.resync();
      case 'error': {
        const err = new RemoteError(m.code, m.message, m.ref);
        if (this.parts.calls.refused(m.ref, err)) return;
        if (!(m.ref && this.parts.outbox.refused(m.ref, err))) emit('error', err);
        return;
      }
      case 'bye':
        return this.parts.conn.bye(channel, m);
    }
  }

  /**
   * Shows an incoming item at most once and then acknowledges it: its (sender, id)
   * key is recorded first (with a storage path: durably, before the event), then
   * the event, then the ack. A crash before the key is durable leaves the item
   * unacked, so the server delivers it again and it is shown then; a crash after
   * the event never shows it twice. Items are shown in arrival order.
   */
  private receive(key: string, show: () => void, ack: (first: boolean) => void): void {
    const seen = this.store.markSeen(key);
    if (typeof seen === 'boolean') {
      if (seen) show();
      return ack(seen);
    }
    this.inbound = this.inbound.then(async () => {
      let first: boolean;
      try {
        first = await seen;
      } catch (err) {
        // Neither shown nor acked: the server delivers it again.
        return this.ports.emitLater(new ClientError(ClientErrorCode.STORAGE_FAILED, `cannot record received item ${key}: ${(err as Error).message}`, { cause: err }));
      }
      try {
        if (first) show();
        ack(first);
      } catch (err) {
        this.ports.emitLater(err as Error); // a throwing listener: not acked, as without a storage path
      }
    });
  }
}
