import type { CellContext } from '../core/context.js';
import { ANY_DEVICE, type ReceiptItem } from '../core/envelope.js';
import type { CustodyPort, DeviceRoster, MailboxPort } from '../core/ports.js';

export interface ExpiryPorts {
  mailbox: Pick<MailboxPort, 'expired' | 'store' | 'remove'>;
  accounts: Pick<DeviceRoster, 'devices'>;
  /** Wakes the sender's sessions for the `expired` receipt. */
  custody: Pick<CustodyPort, 'wake'>;
}

/**
 * Expires undelivered mailbox items past `mailbox.retentionMs`. Each expired chat
 * message becomes an `expired` receipt stored in every mailbox of its sender
 * before it is deleted, so the sender learns of it even if it is offline for
 * long. The receipt's id derives from the expired item's place in the stream:
 * two sweepers racing over the same item store the same receipt once (the
 * mailbox refuses a second copy of a subject).
 */
export class ExpirySweeper {
  private timer: NodeJS.Timeout | undefined;
  private running = false;

  constructor(private readonly ctx: CellContext, private readonly ports: ExpiryPorts) {}

  start(): void {
    const every = this.ctx.config.mailbox.sweepIntervalMs;
    // Jitter spreads the sweeps of many nodes over the interval.
    const first = setTimeout(() => void this.sweepAll(), Math.random() * every);
    first.unref();
    this.timer = setInterval(() => void this.sweepAll(), every);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
  }

  async sweepAll(): Promise<number> {
    if (this.running) return 0;
    this.running = true;
    let expired = 0;
    try {
      const cutoff = Date.now() - this.ctx.config.mailbox.retentionMs;
      for (let k = 0; k < this.ctx.config.mailbox.partitions; k++) expired += await this.sweep(k, cutoff);
    } catch (err) {
      this.ctx.log('mailbox expiry sweep failed', err);
    } finally {
      this.running = false;
    }
    return expired;
  }

  private async sweep(k: number, cutoff: number): Promise<number> {
    const { mailbox, accounts } = this.ports;
    let n = 0;
    for await (const { item, ref } of mailbox.expired(k, cutoff)) {
      // The target of a stored item is in its subject; the item says who sent it. A
      // copy for the sender's own device, or a receipt, expires without a receipt.
      if (item.k === 'm' && item.to !== item.from) {
        const receipt: ReceiptItem = { k: 'r', id: `x${k}-${ref.seq}`, from: item.to, fd: ANY_DEVICE, to: item.from, ref: item.id, s: 'expired', ts: Date.now() };
        const devices = await accounts.devices(item.from);
        await Promise.all(devices.map((d) => mailbox.store(item.from, d, receipt)));
        this.ports.custody.wake(item.from);
      }
      // Another node's sweeper may have removed it first: it counted it.
      if (await mailbox.remove(ref)) {
        this.ctx.metrics.mailboxExpired.inc();
        n++;
      }
    }
    return n;
  }
}
