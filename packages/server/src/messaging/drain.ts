import type { CellContext } from '../core/context.js';
import type { DeviceLocation, Drains, MailboxPort, Placement } from '../core/ports.js';
import type { DeviceSession } from '../core/session.js';

/** Mailbox drains running at once per cell; more wait their turn. */
const MAX_CONCURRENT_DRAINS = 32;

export interface DrainPorts {
  mailbox: () => Pick<MailboxPort, 'read'>;
  placement: Pick<Placement, 'associateHint'>;
}

/**
 * Mailbox drains of the sessions on this cell. A drain delivers a device's
 * mailbox in order, at most `mailbox.drainWindow` items unacknowledged at a
 * time (the session's window). One drain per session; a wake-up during a drain
 * makes it run once more from where it stopped. Its state lives on the session
 * (`s.drain`), so a drain ends with its session.
 */
export class MailboxDrains implements Drains {
  private active = 0;
  /** Sessions waiting for a drain slot (each at most once). */
  private readonly queue = new Set<DeviceSession>();

  constructor(private readonly ctx: CellContext, private readonly ports: DrainPorts) {}

  drain(s: DeviceSession): void {
    const d = s.drain;
    if (d.running) {
      d.again = true;
      return;
    }
    // Bounded concurrency: a reconnect storm must not starve handshakes and live traffic.
    if (this.active >= MAX_CONCURRENT_DRAINS) {
      this.queue.add(s);
      return;
    }
    this.active++;
    d.running = true;
    void this.run(s);
  }

  private async run(s: DeviceSession): Promise<void> {
    const d = s.drain;
    const atConnect = !d.hinted;
    const mailbox = this.ports.mailbox();
    try {
      do {
        d.again = false;
        for await (const { item, ref } of mailbox.read(s.user, s.device, d.next)) {
          if (!s.isOpen) return;
          d.next = ref.seq + 1;
          if (s.unacked.has(`${item.from}/${item.id}`)) continue; // already in flight on this session
          // The first thing a device finds at connect tells whom it belongs with (gravitation).
          if (atConnect && !d.hinted && item.k === 'm') {
            d.hinted = true;
            if (await this.ports.placement.associateHint(s, item)) {
              d.next = ref.seq; // the new cell drains it; if the device stays, this one does
              return;
            }
          }
          await s.windowFor(this.ctx.config.mailbox.drainWindow);
          if (!s.isOpen) return;
          s.deliverStored(item, ref);
          this.ctx.metrics.deliveries.inc({ path: 'mailbox' });
        }
      } while (d.again && s.isOpen);
      d.retryMs = 0;
      d.hinted = true;
    } catch (err) {
      // NATS away or a stream changing leader: the items stay in the mailbox; try again soon.
      this.ctx.log('mailbox drain failed', err);
      d.retryMs = Math.min(5000, Math.max(250, d.retryMs * 2));
      setTimeout(() => s.isOpen && this.drain(s), d.retryMs).unref();
    } finally {
      d.running = false;
      this.active--;
      for (const next of this.queue) {
        this.queue.delete(next);
        if (next.isOpen) {
          this.drain(next);
          break;
        }
      }
    }
  }

  /** The session ended: it no longer waits for a slot. */
  forget(s: DeviceSession): void {
    this.queue.delete(s);
  }

  /**
   * After NATS comes back, wake-ups meant for this cell may have been lost or never
   * sent (others counted it dead): every session looks at its mailbox again (one
   * cheap read each when empty).
   */
  redrainAll(sessions: Iterable<DeviceSession>): void {
    for (const s of sessions) this.drain(s);
  }

  poke(loc: DeviceLocation, user: string): void {
    if (loc.cell === this.ctx.cellId) {
      const s = this.ctx.hub.session(user, loc.device);
      if (s) this.drain(s);
    } else this.ctx.bus.publish(loc.cell, { k: 'mbx', user, dev: loc.device });
  }

  /** An `mbx` from another cell: a device here has new mailbox items. */
  onPoke(user: string, device: string): void {
    const s = this.ctx.hub.session(user, device);
    if (s) this.drain(s);
  }
}
