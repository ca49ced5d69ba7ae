import type { NodeConfig } from '../config/index.js';

/** How often custody sweeps its windows; a sweep that comes late measures the cell's own lag. */
export const SWEEP_MS = 100;
/** A sweep later than this counts as the cell's own lag: the window does not run meanwhile. */
const LAG_GRACE_MS = 20;

/**
 * What custody's pace is on a cell (docs/custody.md, "Under overload"): the clock its windows
 * run on — the wall clock less the time the cell could not run, measured by how late each
 * sweep comes, so an online device that reads is never spilled to its mailbox because the
 * server fell behind — and whether new sends are taken: at most limits.maxPendingPerCell under
 * custody, none while the cell runs limits.maxLagMs late.
 */
export class CustodyPace {
  private lastSweep = Date.now();
  private lagCredit = 0;
  private shedding = false;
  /** Most entries pending at once since peak() was last read. */
  private high = 0;

  constructor(private readonly limits: Pick<NodeConfig['limits'], 'maxLagMs' | 'maxPendingPerCell'>) {}

  /** Custody's clock: the wall clock less the time the cell could not run. */
  now(): number {
    return Date.now() - this.lagCredit;
  }

  /** Whether a new send may be taken with `pending` messages under custody. */
  admits(pending: number): boolean {
    return !this.shedding && pending < this.limits.maxPendingPerCell;
  }

  /** At every sweep: credits the sweep's lateness to the clock and decides whether to refuse sends until the next. */
  swept(pending: number): void {
    const wall = Date.now();
    const late = wall - this.lastSweep - SWEEP_MS;
    this.lastSweep = wall;
    if (late > LAG_GRACE_MS) this.lagCredit += late;
    this.shedding = late > this.limits.maxLagMs || pending >= this.limits.maxPendingPerCell;
  }

  /** `pending` entries are held now (the high-water mark follows). */
  holding(pending: number): void {
    if (pending > this.high) this.high = pending;
  }

  /** The most held at once since the previous call (a scrape), `pending` now. */
  peak(pending: number): number {
    const p = Math.max(this.high, pending);
    this.high = pending;
    return p;
  }
}
