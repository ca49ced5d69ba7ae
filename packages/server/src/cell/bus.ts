import type { NatsConnection, Subscription } from '@nats-io/transport-node';
import { pack, unpack } from '@gravitas/protocol';
import type { Bus, Log } from '../core/context.js';
import { decodeEnvelope, decodeInvalidation, type Envelope, type Invalidation } from '../core/envelope.js';
import type { Names } from '../infra/subjects.js';
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
