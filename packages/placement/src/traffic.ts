import { DecayingTopK } from './sketch.js';

/** Cell numbers are below this, so (session, cell) packs into one exact float64 key. */
export const CELL_SPACE = 65536;
/** Session numbers are below this (2^53 / CELL_SPACE). */
export const MAX_SESSION = 2 ** 37;

const pack = (session: number, cell: number): number => session * CELL_SPACE + cell;

/** What one cell knows about one of its sessions' traffic, decayed. */
export interface SessionTraffic {
  /** Traffic with sessions on this cell. */
  home: number;
  /** Total over all cells (home included). */
  total: number;
  /** Remote cell with the most traffic, and how much (cell −1: none). */
  best: number;
  bestCount: number;
  /** Traffic per remote cell. */
  remote: Map<number, number>;
}

/** A session that would gain by moving to `cell`: gain = traffic there − traffic at home. */
export interface Candidate { session: number; cell: number; gain: number }

/** A session cheap to move for balance: no traffic toward the other cell; `weight` is the local traffic lost by moving. */
export interface Spare { session: number; weight: number }

/**
 * The traffic of one cell's sessions by (session, peer cell), in a bounded,
 * decaying top-K sketch: deliveries in either direction count for the session on
 * this cell and the cell of the other side (this cell itself for local traffic).
 * Memory is fixed by `capacity` however many sessions and cells there are.
 */
export class CellTraffic {
  private readonly sketch: DecayingTopK;

  constructor(readonly self: number, capacity: number, halfLifeMs: number, now = 0) {
    this.sketch = new DecayingTopK(capacity, halfLifeMs, now);
  }

  /** One delivery between `session` (on this cell) and a session on `peerCell`. */
  record(session: number, peerCell: number, weight: number, now: number): void {
    this.sketch.add(pack(session, peerCell), weight, now);
  }

  /** Drops the counts of sessions that left (`gone(session)` true). */
  forget(gone: (session: number) => boolean): void {
    this.sketch.prune((k) => gone(Math.floor(k / CELL_SPACE)));
  }

  /** Per-session summaries of everything the sketch holds. */
  summarize(now: number): Map<number, SessionTraffic> {
    const out = new Map<number, SessionTraffic>();
    this.sketch.forEach(now, (k, count) => {
      const session = Math.floor(k / CELL_SPACE);
      const cell = k - session * CELL_SPACE;
      let t = out.get(session);
      if (!t) out.set(session, (t = { home: 0, total: 0, best: -1, bestCount: 0, remote: new Map() }));
      t.total += count;
      if (cell === this.self) t.home += count;
      else {
        const c = (t.remote.get(cell) ?? 0) + count;
        t.remote.set(cell, c);
        if (c > t.bestCount) {
          t.best = cell;
          t.bestCount = c;
        }
      }
    });
    return out;
  }

  /** Traffic from this cell's sessions to each remote cell: whom to exchange with. */
  static crossTraffic(summary: Map<number, SessionTraffic>): Map<number, number> {
    const out = new Map<number, number>();
    for (const t of summary.values()) for (const [cell, c] of t.remote) out.set(cell, (out.get(cell) ?? 0) + c);
    return out;
  }

  /**
   * Sessions that would gain at least `minGain` by moving to `cell` (their best
   * remote cell), best first. `eligible` filters out sessions that must not move now.
   */
  static candidates(summary: Map<number, SessionTraffic>, cell: number, minGain: number, eligible: (session: number) => boolean, limit: number): Candidate[] {
    const out: Candidate[] = [];
    for (const [session, t] of summary) {
      if (t.best !== cell) continue;
      const gain = t.bestCount - t.home;
      if (gain >= minGain && eligible(session)) out.push({ session, cell, gain });
    }
    out.sort((a, b) => b.gain - a.gain);
    return out.length > limit ? out.slice(0, limit) : out;
  }

  /**
   * Sessions with no traffic toward `cell`, lightest first: moving one there for
   * balance costs only its traffic with this cell (its weight); what it has with
   * third cells stays remote either way. `sessions` is every session of this cell
   * (untracked ones weigh 0 and come first).
   */
  static spares(summary: Map<number, SessionTraffic>, sessions: Iterable<number>, cell: number, eligible: (session: number) => boolean, limit: number): Spare[] {
    const out: Spare[] = [];
    for (const session of sessions) {
      const t = summary.get(session);
      if (t && t.remote.has(cell)) continue;
      if (!eligible(session)) continue;
      out.push({ session, weight: t ? t.home : 0 });
    }
    out.sort((a, b) => a.weight - b.weight);
    return out.length > limit ? out.slice(0, limit) : out;
  }
}
