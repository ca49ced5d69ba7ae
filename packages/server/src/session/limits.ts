import type { NodeConfig } from '../config/index.js';
import type { BudgetKind } from '../core/session.js';
import { TokenBucket } from '../infra/rate.js';

type Limits = NodeConfig['limits'];
type LimitKind = BudgetKind | 'control';

/** Each kind's rate and burst settings (limits.*). */
const LIMIT_SETTINGS: Record<LimitKind, readonly [keyof Limits, keyof Limits]> = {
  msg: ['msgRatePerSec', 'msgBurst'],
  fanout: ['fanoutRatePerSec', 'fanoutBurst'],
  read: ['readRatePerSec', 'readBurst'],
  req: ['requestRatePerSec', 'requestBurst'],
  control: ['controlRatePerSec', 'controlBurst'],
};

/**
 * What a session may do how often (limits.*): a token bucket per kind of operation,
 * made on its first use (an idle session holds none of them; a full one starts full).
 */
export class SessionLimits {
  private readonly buckets: Partial<Record<LimitKind, TokenBucket>> = {};

  constructor(private readonly l: Limits) {}

  take(kind: LimitKind, n: number, now: number): boolean {
    let b = this.buckets[kind];
    if (!b) {
      const [rate, burst] = LIMIT_SETTINGS[kind];
      b = this.buckets[kind] = new TokenBucket(this.l[rate] as number, this.l[burst] as number, now);
    }
    return b.take(n, now);
  }
}
