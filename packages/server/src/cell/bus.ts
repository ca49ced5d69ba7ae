import type { NatsConnection, Subscription } from '@nats-io/transport-node';
import { pack, unpack } from '@gravitas/protocol';
import type { Bus, Log } from '../core/context.js';
import { decodeEnvelope, decodeInvalidation, type Envelope, type Invalidation } from '../core/envelope.js';
import type { Names } from '../infra/subjects.js';

/** One handler per envelope kind: a kind added to `Envelope` without a handler does not compile. */
export type EnvelopeHandlers = { [K in Envelope['k']]: (e: Extract<Envelope, { k: K }>) => void };
/** The same for invalidations. */
export type InvalidationHandlers = { [K in Invalidation['kind']]: (i: Invalidation & { kind: K }) => void };

/**
 * The cell's side of NATS messaging between cells: one publish per envelope to
 * a cell's inbox (or to every cell, for invalidations), and on receipt a
 * decode, a check and a call of the kind's handler. A malformed envelope is
 * logged and dropped; a malformed invalidation is dropped.
 */
export class CellBus implements Bus {
  private readonly subs: Subscription[] = [];

  constructor(private readonly nc: NatsConnection, private readonly names: Names, private readonly log: Log) {}

  publish(cell: string, e: Envelope): void {
    this.nc.publish(this.names.cellInbox(cell), pack(e));
  }

  invalidate(i: Invalidation): void {
    this.nc.publish(this.names.invalidations, pack(i));
  }

  /** Subscribes to cell `cellId`'s inbox and to invalidations. */
  listen(cellId: string, envelopes: EnvelopeHandlers, invalidations: InvalidationHandlers): void {
    this.subs.push(
      this.nc.subscribe(this.names.cellInbox(cellId), { callback: (err, msg) => void (err || this.onEnvelope(msg.data, envelopes)) }),
      this.nc.subscribe(this.names.invalidations, { callback: (err, msg) => void (err || this.onInvalidation(msg.data, invalidations)) }),
    );
  }

  stop(): void {
    for (const sub of this.subs) sub.unsubscribe();
  }

  private onEnvelope(data: Uint8Array, handlers: EnvelopeHandlers): void {
    let e: Envelope;
    try {
      e = decodeEnvelope(unpack(data));
    } catch (err) {
      this.log('dropped a malformed cell envelope', err);
      return;
    }
    (handlers[e.k] as (e: Envelope) => void)(e);
  }

  private onInvalidation(data: Uint8Array, handlers: InvalidationHandlers): void {
    let i: Invalidation;
    try {
      i = decodeInvalidation(unpack(data));
    } catch {
      return;
    }
    (handlers[i.kind] as (i: Invalidation) => void)(i);
  }
}
