import type { KV } from '@nats-io/kv';
import { ErrorCode, ProtocolError } from '@gravitas/protocol';
import { CombinedCas } from '../infra/combined-cas.js';
import { BUDGET_WINDOW_MS, budgetShares } from '../infra/rate.js';

/*
 * Per-account limits, cluster-wide, without a KV round trip per message
 * (docs/security.md, "Limits"). An account may spend `rate × WINDOW` units of each
 * kind per window, across all its devices, wherever their sessions are:
 *
 *  - every cell may spend a free allowance for an account without asking anyone:
 *    budget / (2 × maxDevicesPerUser), so the allowances of all cells an account
 *    can be on (one session per device) add up to half the budget at most;
 *  - beyond it, a cell leases chunks of the other half from a counter in KV
 *    (`<user>.<kind>.<window>`, compare-and-set), one KV write per chunk.
 *
 * An ordinary user never leaves the free allowance; a flooding account costs one
 * KV write per chunk and is refused once the shared half is spent. A session that
 * moves to another cell finds a fresh allowance there: the bound is the budget
 * plus one allowance per cell the account reaches within a window.
 */

import type { BudgetKind } from '../core/session.js';
export type { BudgetKind };
const KINDS: readonly BudgetKind[] = ['msg', 'fanout', 'read', 'req'];
const INDEX: Record<BudgetKind, number> = { msg: 0, fanout: 1, read: 2, req: 3 };

export { BUDGET_WINDOW_MS, budgetShares };
/** Accounts tracked per cell (those with sessions here, and recently so). */
const MAX_ACCOUNTS = 200_000;
/** How long a cell stops asking KV for leases after a lease failed (NATS away). */
const OFFLINE_RETRY_MS = 5_000;


/** Units per second an account may spend of each kind. */
export type AccountRates = Record<BudgetKind, number>;

interface Usage {
  window: number;
  used: number[];
  granted: number[];
  leasing: Array<Promise<void> | undefined>;
}

/** A window's counter: units taken from its shared pool, as decimal text. */
const COUNTER = {
  decode: (b: Uint8Array): number => Number(Buffer.from(b).toString()) || 0,
  encode: (n: number): Uint8Array => Buffer.from(String(n)),
};

export class AccountBudgets {
  private readonly usage = new Map<string, Usage>();
  private readonly counters: CombinedCas<number>;
  private readonly free: number[];
  private readonly pool: number[];
  private warned = false;
  /** After a failed lease, leases are not tried again until then: each would wait out a KV timeout. */
  private offlineUntil = 0;

  constructor(
    kv: KV,
    rates: AccountRates,
    maxDevices: number,
    private readonly log: (msg: string, err?: unknown) => void,
  ) {
    this.counters = new CombinedCas<number>(kv, COUNTER, (key) => new ProtocolError(ErrorCode.BUSY, `budget ${key} is contended`));
    const shares = KINDS.map((k) => budgetShares(rates[k], maxDevices));
    this.free = shares.map((x) => x.free);
    this.pool = shares.map((x) => x.pool);
  }

  /**
   * Spends `n` units of `kind` for `user`: true/false at once while the cell's share
   * covers it, else a promise (one KV lease for every caller waiting on it).
   */
  take(user: string, kind: BudgetKind, n: number, now = Date.now()): boolean | Promise<boolean> {
    const u = this.usageOf(user, now);
    const i = INDEX[kind];
    if (u.used[i]! + n <= u.granted[i]!) {
      u.used[i]! += n;
      return true;
    }
    return this.lease(user, u, i, n);
  }

  private async lease(user: string, u: Usage, i: number, n: number): Promise<boolean> {
    // Someone is leasing already: wait for it, then try once more from what it brought.
    if (u.leasing[i]) await u.leasing[i];
    if (u.used[i]! + n > u.granted[i]!) {
      const want = Math.max(this.free[i]!, 1, u.used[i]! + n - u.granted[i]!);
      if (Date.now() < this.offlineUntil) u.granted[i]! += want;
      else {
        const p = this.leaseFromKv(`${user}.${KINDS[i]}.${u.window}`, i, want).then(
          (got) => void (u.granted[i]! += got),
          (err: unknown) => this.unreachable(u, i, want, err),
        );
        u.leasing[i] = p;
        await p;
        if (u.leasing[i] === p) u.leasing[i] = undefined;
      }
    }
    if (u.used[i]! + n > u.granted[i]!) return false;
    u.used[i]! += n;
    return true;
  }

  /**
   * KV unreachable (NATS away): the account limit holds per cell only until it is back — the
   * session limits still apply, and what needs NATS fails on its own; refusing everything would
   * stop what the cell can still do alone (feedback into its local tier). Leases are not tried
   * again for a while: each would wait out a KV timeout.
   */
  private unreachable(u: Usage, i: number, want: number, err: unknown): void {
    if (!this.warned) this.log('account budgets cannot be leased from KV now: enforced per cell until NATS is back', err);
    this.warned = true;
    this.offlineUntil = Date.now() + OFFLINE_RETRY_MS;
    u.granted[i]! += want;
  }

  /** Takes up to `want` units of the window's shared pool; returns how many it got (0 when spent, or too contended). */
  private async leaseFromKv(key: string, i: number, want: number): Promise<number> {
    const pool = this.pool[i]!;
    try {
      const { before = 0, after = 0 } = await this.counters.change(key, (taken = 0) => (taken < pool ? taken + Math.min(want, pool - taken) : undefined));
      this.warned = false;
      return after - before;
    } catch (err) {
      if (err instanceof ProtocolError) return 0; // every attempt lost to other cells: refused like a spent pool
      throw err;
    }
  }

  private usageOf(user: string, now: number): Usage {
    const window = Math.floor(now / BUDGET_WINDOW_MS);
    let u = this.usage.get(user);
    if (u && u.window === window) return u;
    if (u) this.usage.delete(user); // re-inserted below: insertion order stays age order
    else if (this.usage.size >= MAX_ACCOUNTS) this.usage.delete(this.usage.keys().next().value!);
    u = { window, used: [0, 0, 0, 0], granted: [...this.free], leasing: [undefined, undefined, undefined, undefined] };
    this.usage.set(user, u);
    return u;
  }
}
