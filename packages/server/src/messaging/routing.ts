import type { CellContext } from '../core/context.js';
import type { Envelope, Item } from '../core/envelope.js';
import type { CustodyPort, DeviceLocation, GroupsPort, MailboxPort, MessagingEvents } from '../core/ports.js';
import type { Delivery, DeviceSession } from '../core/session.js';

type Dlv = Extract<Envelope, { k: 'dlv' }>;
type Answer = Extract<Envelope, { k: 'ack' | 'nh' }>;

/** What routing hands on: custody's answers, mailbox deletes, group cursors, and who observes deliveries. */
export interface RoutingPorts {
  custody: () => Pick<CustodyPort, 'acked' | 'notHereFor' | 'receipt'>;
  mailbox: () => Pick<MailboxPort, 'remove'>;
  groups: () => Pick<GroupsPort, 'acked'>;
  events: Pick<MessagingEvents, 'delivered' | 'arrived'>;
}

/**
 * Every hop of a 1:1 item between cells, in one place. Out: custody hands an
 * item for a located device here (a call on this cell, one `dlv` publish to
 * another). In: a `dlv` goes to the session or answers `nh`; `ack` and `nh`
 * go to custody — on this cell by a call, on the origin cell by a publish. A
 * device's ack is understood here too: what it settles depends on how the
 * item came (live, from the mailbox, from a group's log).
 */
export class Routing {
  constructor(private readonly ctx: CellContext, private readonly ports: RoutingPorts) {}

  // ---- out: custody → device ---------------------------------------------------

  /**
   * Hands `item` (custody held here) to `user/device` at `loc`. False when the
   * device is on this cell but cannot take it now (custody looks again or stores).
   */
  toDevice(item: Item, user: string, device: string, loc: DeviceLocation, sender: DeviceSession | undefined): boolean {
    const { ctx } = this;
    if (loc.cell === ctx.cellId) {
      const target = ctx.hub.session(user, device);
      if (!target?.deliverLive(item, ctx.cellId)) return false;
      ctx.metrics.deliveries.inc({ path: 'local' });
      this.ports.events.delivered(sender, target, loc.cell);
      return true;
    }
    ctx.bus.publish(loc.cell, { k: 'dlv', m: item, u: user, dev: device, oc: ctx.cellId });
    ctx.metrics.deliveries.inc({ path: 'cross_cell' });
    this.ports.events.delivered(sender, undefined, loc.cell);
    return true;
  }

  // ---- in: envelopes from other cells ---------------------------------------------

  /** A live item from custody cell `e.oc`: to the session, or "not here" back. */
  onDeliver(e: Dlv): void {
    const target = this.ctx.hub.session(e.u, e.dev);
    if (target?.deliverLive(e.m, e.oc)) this.ports.events.arrived(target, e.oc);
    else this.ctx.bus.publish(e.oc, { k: 'nh', id: e.m.id, from: e.m.from, fd: e.m.fd, u: e.u, dev: e.dev });
  }

  /** An ack or "not here" for an item this cell holds. */
  onAnswer(e: Answer): void {
    const key = `${e.from}/${e.fd}/${e.id}`;
    if (e.k === 'ack') this.ports.custody().acked(key, e.u, e.dev);
    else this.ports.custody().notHereFor(key, e.u, e.dev);
  }

  // ---- device acks ------------------------------------------------------------------

  /** A device acknowledged something it was given; what that means depends on how it came. */
  deviceAcked(s: DeviceSession, d: Delivery): void {
    const item = d.item;
    switch (d.via) {
      case 'live':
        if (d.ref) this.removeStored(d.ref);
        return this.answer(d.origin, 'ack', item, s);
      case 'mbox':
        this.ports
          .mailbox()
          .remove(d.ref)
          .then((removed) => {
            // The sender was told `stored`; now tell it this device has it. Not for the
            // sender's own devices, nor for receipts (no receipts of receipts).
            if (removed && item.k === 'm' && item.from !== s.user) return this.ports.custody().receipt(item.from, item.id, s.user, s.device, 'delivered');
          })
          .catch((err: unknown) => this.ctx.log('mailbox ack failed', err));
        return;
      case 'group':
        this.ports.groups().acked(s, d.item);
    }
  }

  /**
   * A session ended: live items it never acknowledged need not wait out the
   * custody window — their custody cells store them (or find the device's new
   * session) now.
   */
  sessionGone(s: DeviceSession): void {
    for (const d of s.unacked.values()) if (d.via === 'live') this.answer(d.origin, 'nh', d.item, s);
    s.unacked.clear();
  }

  private answer(origin: string, k: 'ack' | 'nh', item: Item, s: DeviceSession): void {
    if (origin !== this.ctx.cellId) return this.ctx.bus.publish(origin, { k, id: item.id, from: item.from, fd: item.fd, u: s.user, dev: s.device });
    const key = `${item.from}/${item.fd}/${item.id}`;
    if (k === 'ack') this.ports.custody().acked(key, s.user, s.device);
    else this.ports.custody().notHereFor(key, s.user, s.device);
  }

  private removeStored(ref: { stream: string; seq: number }): void {
    this.ports
      .mailbox()
      .remove(ref)
      .catch((err: unknown) => this.ctx.log('mailbox ack failed', err));
  }
}
