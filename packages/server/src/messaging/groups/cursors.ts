import type { KV, KvEntry } from '@nats-io/kv';
import { ErrorCode, pack, ProtocolError, unpack } from '@gravitas/protocol';
import type { CellContext } from '../../core/context.js';
import type { DeviceRoster } from '../../core/ports.js';
import { casModifyRev } from '../../infra/kv.js';
import type { DeviceGroups } from './feed.js';

/**
 * How often dirty cursors are looked at, and how long a device waits between two
 * cursor writes. Cursors are also written when a session ends; the periodic write
 * only bounds what a crashed cell makes devices receive twice (the SDK drops the
 * duplicates). docs/groups.md has the measured cost.
 */
export const FLUSH_TICK_MS = 100;
const CURSOR_FLUSH_MS = 5000;
/**
 * Cursor writes per cell per tick, at most: 320/s. A message to a big group makes
 * all its member devices dirty at once; written in one burst they would hold up
 * the next fan-out (measured: p99 165 ms with 256 per tick, ~100 ms with 32).
 */
const FLUSH_PER_TICK = 32;
/**
 * Attempts of one cursor write. Only the sessions of one device write its cursor
 * record (two at once while the device moves between cells), so a few attempts
 * settle any conflict; more would only hold up the next flush.
 */
const CURSOR_ATTEMPTS = 4;
/** Margin for clocks of cells and JetStream servers when "since the device was registered" is turned into a log position. */
const CLOCK_SKEW_MS = 10_000;
/** Stands for "the value this cell wrote last" in a cursor write's first attempt (no read: the revision is known). */
const OURS = new Uint8Array(0);

interface Cursors { cursors: Record<string, number>; since: number }

/** A device's cursor record: `c` group → cursor, `s` the start of its history (ms). */
export function decodeCursors(bytes: Uint8Array): Cursors {
  const cursors: Record<string, number> = {};
  try {
    const o = unpack(bytes) as { c?: unknown; s?: unknown };
    if (o && typeof o.c === 'object' && o.c !== null) {
      for (const [g, v] of Object.entries(o.c as Record<string, unknown>)) if (typeof v === 'number' && Number.isFinite(v)) cursors[g] = v;
    }
    return { cursors, since: typeof o?.s === 'number' && Number.isFinite(o.s) ? o.s : 0 };
  } catch {
    return { cursors, since: 0 };
  }
}

/**
 * The devices' cursor records in KV (`c.<user>.<device>`): read when a session
 * registers, written coalesced (each device at most every CURSOR_FLUSH_MS, a
 * bounded number per tick) and when it ends. A write is a compare-and-set with
 * the revision this cell read or wrote last; on a conflict (another session of
 * the device wrote) the higher cursor of both is kept.
 */
export class CursorStore {
  constructor(
    private readonly ctx: CellContext,
    private readonly kv: KV,
    private readonly accounts: Pick<DeviceRoster, 'deviceList'>,
  ) {}

  /**
   * Reads the device's cursors. A device with no cursor record connects for the
   * first time: its record is created with the time the device was registered
   * (less a clock-skew margin), the start of its history in groups its user
   * joined before.
   */
  async load(dev: DeviceGroups): Promise<void> {
    let first: KvEntry | null | undefined = await this.kv.get(dev.cursorKey);
    let since = 0;
    if (!first || first.operation !== 'PUT') {
      const registered = (await this.accounts.deviceList(dev.user)).find((d) => d.device === dev.device)?.registeredAt ?? Date.now();
      since = Math.min(registered, Date.now()) - CLOCK_SKEW_MS;
    }
    const { result: got, rev } = await casModifyRev(
      this.kv,
      dev.cursorKey,
      (cur): { write?: Uint8Array; result: Cursors } => (cur ? { result: decodeCursors(cur) } : { write: pack({ c: {}, s: since }), result: { cursors: {}, since } }),
      {
        // The entry read above first; again only after a conflict (another session of this device was first).
        read: async (key) => {
          const e = first !== undefined ? first : await this.kv.get(key);
          first = undefined;
          dev.rev = e?.revision ?? 0;
          return e;
        },
        contended: () => this.contended(dev),
      },
    );
    dev.rev = rev;
    dev.cursors = got.cursors;
    dev.since = got.since;
    dev.loaded = true;
  }

  /** Writes the cursors of devices that moved, each at most every CURSOR_FLUSH_MS, a bounded number per tick. */
  flushDue(devices: Iterable<DeviceGroups>): void {
    const now = Date.now();
    let n = 0;
    for (const dev of devices) {
      if (!dev.dirty || !dev.loaded || dev.flushing || now < dev.flushAfter) continue;
      void this.flush(dev).catch((err) => {
        dev.dirty = true;
        this.ctx.log('group cursor flush failed', err);
      });
      if (++n >= FLUSH_PER_TICK) return;
    }
  }

  /** Writes the device's cursors as they are now (chained after a write under way). */
  flush(dev: DeviceGroups): Promise<void> {
    dev.dirty = false;
    const { cursors, changed } = dev.currentCursors();
    if (!changed && !dev.pruned) return dev.flushing ?? Promise.resolve();
    dev.pruned = false;
    dev.flushAfter = Date.now() + CURSOR_FLUSH_MS * (1 + Math.random() / 2);
    const prev = dev.flushing ?? Promise.resolve();
    const p = prev.catch(() => undefined).then(() => this.write(dev, cursors));
    dev.flushing = p;
    void p.finally(() => {
      if (dev.flushing === p) dev.flushing = undefined;
    }).catch(() => undefined);
    return p;
  }

  /** A device removed from its account: its cursors go, so a device registered later under the same id starts afresh. */
  async forget(user: string, device: string): Promise<void> {
    await this.kv.purge(`c.${user}.${device}`);
  }

  private async write(dev: DeviceGroups, cursors: Record<string, number>): Promise<void> {
    let first = true;
    const { result: written, rev } = await casModifyRev(
      this.kv,
      dev.cursorKey,
      (cur) => {
        if (cur === undefined || cur === OURS) return { write: pack({ c: cursors, s: dev.since }), result: cursors };
        // Another session of this device wrote meanwhile: keep the higher of both.
        const merged = { ...cursors };
        for (const [g, c] of Object.entries(decodeCursors(cur).cursors)) if (c > (merged[g] ?? -1)) merged[g] = c;
        return { write: pack({ c: merged, s: dev.since }), result: merged };
      },
      {
        attempts: CURSOR_ATTEMPTS,
        // First attempt: over the revision this cell read or wrote last, unread (one KV request per write); after a conflict, read.
        read: async (key) => {
          if (first) {
            first = false;
            return dev.rev > 0 ? ({ key, value: OURS, revision: dev.rev, operation: 'PUT' } as unknown as KvEntry) : null;
          }
          const e = await this.kv.get(key);
          dev.rev = e?.revision ?? 0;
          return e;
        },
        contended: () => this.contended(dev),
      },
    );
    dev.rev = rev;
    for (const [g, c] of Object.entries(written)) if (c > (dev.cursors[g] ?? -1)) dev.cursors[g] = c;
    this.ctx.metrics.groupCursorWrites.inc();
  }

  private contended(dev: DeviceGroups): ProtocolError {
    return new ProtocolError(ErrorCode.CONFLICT, `cursors of ${dev.user}/${dev.device} are too contended`);
  }
}
