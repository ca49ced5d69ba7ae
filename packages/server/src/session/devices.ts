import type { RequestArgs, RequestOp } from '@gravitas/protocol';
import type { Bus } from '../core/context.js';
import { ACCOUNT_SENDER, NOTICE } from '../core/envelope.js';
import type { Notice, RequestHandler } from '../core/ports.js';
import type { DeviceSession } from '../core/session.js';
import type { AccountEvents, Accounts } from './accounts.js';

/** What else holds state per device and must forget a removed one (mailbox, group cursors, push targets). */
export type DeviceForgetter = (user: string, device: string) => Promise<void>;

/** `devices.*` requests: a user's own devices — list them, approve a new one, remove one. */
export class DeviceRequests implements RequestHandler {
  constructor(private readonly accounts: () => Pick<Accounts, 'deviceList' | 'approve' | 'removeDevice'>, private readonly forgetters: readonly DeviceForgetter[]) {}

  async handle(s: DeviceSession, op: RequestOp, args: unknown): Promise<unknown> {
    const accounts = this.accounts();
    switch (op) {
      case 'devices.list':
        return { devices: await accounts.deviceList(s.user) };
      case 'devices.link': {
        const a = args as RequestArgs['devices.link'];
        return accounts.approve(s.user, s.device, s.rid, a.device, a.key);
      }
      default: {
        const { device } = args as RequestArgs['devices.remove'];
        // Answers once no cell accepts the device any more; its sessions end everywhere (revocation broadcast).
        await accounts.removeDevice(s.user, device);
        await Promise.all(this.forgetters.map((f) => f(s.user, device)));
        return undefined;
      }
    }
  }
}

/** What accounts tell the cluster: caches to drop, revocations to broadcast, notices for the account's other devices. */
export function accountEvents(bus: Bus, notice: (user: string, except: string, n: Notice) => void): AccountEvents {
  const tell = (user: string, device: string, sys: string, text: string): void => notice(user, device, { from: ACCOUNT_SENDER, sys, text, about: device });
  return {
    changed: (user) => bus.invalidate({ kind: 'devices', key: user }),
    revoked: (user, dev, rid) => bus.invalidate({ kind: 'revoked', key: user, ...(dev !== undefined && { dev, rid: rid ?? 0 }) }),
    added: (user, device) => tell(user, device, NOTICE.deviceAdded, `a new device (${device}) was added to your account`),
    removed: (user, device) => tell(user, device, NOTICE.deviceRemoved, `the device ${device} was removed from your account`),
  };
}
