import type { NatsConnection, Subscription } from '@nats-io/transport-node';
import { batchRuns, joinPacked, pack, unpack } from '@gravitas/protocol';
import type { Bus, Log } from '../core/context.js';
import { decodeEnvelope, decodeInvalidation, type Envelope, type Invalidation } from '../core/envelope.js';
import type { Names } from '../infra/subjects.js';
import type { Flushable, TurnFlusher } from '../infra/turn.js';
import type { GroupsPort, Placement, PresencePort, ProfilesPort, PushPort, RelayPort, SocialGraph } from '../core/ports.js';
import type { MailboxDrains } from '../messaging/drain.js';
import type { Routing } from '../messaging/routing.js';
import type { Accounts } from '../session/accounts.js';
import type { Revocations } from '../session/revocations.js';
import type { CellSessions } from './sessions.js';

/** One handler per envelope kind: a kind added to `Envelope` without a handler does not compile. */
export type EnvelopeHandlers = { [K in Envelope['k']]: (e: Extract<Envelope, { k: K }>) => void };
/** The same for invalidations. */
export type InvalidationHandlers = { [K in Invalidation['kind']]: (i: Invalidation & { kind: K }) => void };

/** Envelopes to one cell per NATS message at most: well inside NATS's 1 MiB max_payload with 16 KiB texts. */
const BATCH_MAX_ENVELOPES = 256;
const BATCH_MAX_BYTES = 256 * 1024;

/** The envelopes of this turn to one cell, published together at its end. */
class Outgoing implements Flushable {
  packed: Buffer[] = [];
  queued = false;

  constructor(private readonly send: (data: Uint8Array) => void) {}

  flush(): void {
    this.queued = false;
    const parts = this.packed;
    this.packed = [];
    batchRuns(parts, BATCH_MAX_BYTES, (start, end) => this.send(end - start === 1 ? parts[start]! : joinPacked(parts, start, end)), BATCH_MAX_ENVELOPES);
  }
}

/**
 * The cell's side of NATS messaging between cells. Envelopes to a cell are
 * collected during an event-loop turn and published at its end as one NATS
 * message (a msgpack array; a lone envelope goes as itself): at load, one
 * publish carries the acks and deliveries of many messages. On receipt each
 * envelope is decoded, checked and handed to its kind's handler on its own — a
 * malformed one is logged and dropped without its neighbours. Invalidations go
 * at once, one publish each, to every cell.
 */
export class CellBus implements Bus {
  private readonly subs: Subscription[] = [];
  private readonly outgoing = new Map<string, Outgoing>();

  constructor(private readonly nc: NatsConnection, private readonly names: Names, private readonly log: Log, private readonly turn: Pick<TurnFlusher, 'mark'>) {}

  publish(cell: string, e: Envelope): void {
    let o = this.outgoing.get(cell);
    if (!o) {
      const subject = this.names.cellInbox(cell);
      o = new Outgoing((data) => this.nc.publish(subject, data));
      this.outgoing.set(cell, o);
    }
    o.packed.push(pack(e));
    if (o.queued) return;
    o.queued = true;
    this.turn.mark(o);
  }

  invalidate(i: Invalidation): void {
    this.nc.publish(this.names.invalidations, pack(i));
  }

  /** Subscribes to cell `cellId`'s inbox and to invalidations (after a reconnect the cell drops what they keep current: Cell.natsReconnected). */
  listen(cellId: string, envelopes: EnvelopeHandlers, invalidations: InvalidationHandlers): void {
    this.subs.push(
      this.nc.subscribe(this.names.cellInbox(cellId), { callback: (err, msg) => void (err || this.onEnvelope(msg.data, envelopes)) }),
      this.nc.subscribe(this.names.invalidations, { callback: (err, msg) => void (err || this.onInvalidation(msg.data, invalidations)) }),
    );
  }

  stop(): void {
    for (const o of this.outgoing.values()) if (o.queued) o.flush(); // what this turn produced still goes
    for (const sub of this.subs) sub.unsubscribe();
  }

  private onEnvelope(data: Uint8Array, handlers: EnvelopeHandlers): void {
    let v: unknown;
    try {
      v = unpack(data);
    } catch (err) {
      this.log('dropped a malformed cell envelope', err);
      return;
    }
    if (!Array.isArray(v)) return this.dispatch(v, handlers);
    for (const one of v) this.dispatch(one, handlers);
  }

  private dispatch(v: unknown, handlers: EnvelopeHandlers): void {
    let e: Envelope;
    try {
      e = decodeEnvelope(v);
    } catch (err) {
      this.log('dropped a malformed cell envelope', err);
      return;
    }
    try {
      (handlers[e.k] as (e: Envelope) => void)(e);
    } catch (err) {
      // One envelope's failure must not cost the others of its batch.
      this.log(`handling a ${e.k} envelope failed`, err);
    }
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

/** Who handles each envelope kind on a cell's inbox. */
export function envelopeHandlers(p: {
  routing: Pick<Routing, 'onDeliver' | 'onAnswer'>;
  sessions: Pick<CellSessions, 'kick'>;
  drains: Pick<MailboxDrains, 'onPoke'>;
  groups: Pick<GroupsPort, 'onDelivery'>;
  presence: Pick<PresencePort, 'onTyping'>;
  placement: Pick<Placement, 'expect'>;
  relay: Pick<RelayPort, 'deliver'>;
}): EnvelopeHandlers {
  return {
    dlv: (e) => p.routing.onDeliver(e),
    ack: (e) => p.routing.onAnswer(e),
    nh: (e) => p.routing.onAnswer(e),
    kick: (e) => p.sessions.kick(e.user, e.dev, e.ep),
    mbx: (e) => p.drains.onPoke(e.user, e.dev),
    gdlv: (e) => p.groups.onDelivery(e.m, e.to),
    typ: (e) => p.presence.onTyping(e),
    exp: (e) => p.placement.expect(e.user, e.dev),
    rly: (e) => p.relay.deliver(e.u, e.dev, e.tu, e.td, e.w),
  };
}

/** Who drops which cached record when another cell says it changed. */
export function invalidationHandlers(p: {
  revocations: Pick<Revocations, 'revoked'>;
  accounts: Pick<Accounts, 'invalidate'>;
  social: Pick<SocialGraph, 'invalidate'>;
  profiles: Pick<ProfilesPort, 'invalidate'>;
  push: Pick<PushPort, 'mutesChanged'>;
  groups: Pick<GroupsPort, 'invalidate'>;
}): InvalidationHandlers {
  return {
    revoked: (i) => p.revocations.revoked(i.key, i.dev, i.rid),
    devices: (i) => p.accounts.invalidate(i.key),
    social: (i) => p.social.invalidate(i.key, i.d),
    profile: (i) => p.profiles.invalidate(i.key),
    mutes: (i) => p.push.mutesChanged(i.key),
    group: (i) => p.groups.invalidate(i.key),
  };
}
