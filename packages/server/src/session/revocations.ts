import { ErrorCode } from '@gravitas/protocol';
import type { CellContext } from '../core/context.js';
import type { DeviceSession } from '../core/session.js';
import { each } from '../infra/limiter.js';
import { TtlCache } from '../infra/ttl-cache.js';
import { REFUSED, type Accounts } from './accounts.js';

/**
 * Revocations are remembered this long: a handshake that read the account just
 * before a removal and registers its session just after the broadcast passed is
 * still refused (longer than any handshake may take).
 */
const REVOCATION_MEMORY_MS = 120_000;
/** Sessions re-checked against their accounts at once after a NATS outage. */
const RECHECK_CONCURRENCY = 16;

type Refusal = typeof ErrorCode.DEVICE_REVOKED | typeof ErrorCode.ACCOUNT_SUSPENDED;

/**
 * Revoked keys as this cell hears of them: live sessions of a revoked
 * registration (or of a suspended account) end with the code, and the
 * revocation is remembered for sessions still being set up.
 */
export class Revocations {
  /** `user/device` → the revoked registration; `user` → when the account was suspended (performance.now()). */
  private readonly recent = new TtlCache<string, number>(100_000, REVOCATION_MEMORY_MS);

  constructor(private readonly ctx: CellContext, private readonly accounts: () => Pick<Accounts, 'standing'>) {}

  /** Keys were revoked somewhere in the cluster (an invalidation). */
  revoked(user: string, dev: string | undefined, rid: number | undefined): void {
    // A rid is never registered twice; a suspension refuses only sessions that began before it was heard of.
    if (dev === undefined) this.recent.set(user, performance.now());
    else this.recent.set(`${user}/${dev}`, rid ?? 0);
    for (const s of [...this.ctx.hub.sessionsOf(user)]) {
      if (dev !== undefined && (s.device !== dev || s.rid !== rid)) continue;
      this.end(s, dev === undefined ? ErrorCode.ACCOUNT_SUSPENDED : ErrorCode.DEVICE_REVOKED);
    }
  }

  /** Was `s` revoked while it was being set up (its handshake read the account just before)? */
  refusalFor(s: DeviceSession): Refusal | undefined {
    if (this.recent.get(`${s.user}/${s.device}`) === s.rid) return ErrorCode.DEVICE_REVOKED;
    const suspendedAt = this.recent.get(s.user);
    return suspendedAt !== undefined && suspendedAt >= s.startedAt ? ErrorCode.ACCOUNT_SUSPENDED : undefined;
  }

  /**
   * After NATS comes back: a revocation broadcast while this cell was cut off
   * never reached it, so every session's registration is read again (a few at a
   * time) and those no longer current end.
   */
  recheck(sessions: DeviceSession[]): void {
    void each(sessions, RECHECK_CONCURRENCY, async (s) => {
      if (!s.isOpen) return;
      try {
        const why = await this.accounts().standing(s.user, s.device, s.rid);
        if (why) this.end(s, why);
      } catch (err) {
        this.ctx.log('session re-check failed (kept)', err);
      }
    });
  }

  private end(s: DeviceSession, why: Refusal): void {
    this.ctx.metrics.revokedSessions.inc();
    s.bye(why, REFUSED[why]);
  }
}
