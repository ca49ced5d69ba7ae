import type { KV } from '@nats-io/kv';
import { pack, unpack } from '@gravitas/protocol';

/** What a cell announces about itself on every heartbeat. */
export interface CellInfo {
  cell: string;
  node: string;
  address: string;
  sessions: number;
  lagMs: number;
  state: 'up' | 'draining';
}

/**
 * Cells announce themselves by writing a heartbeat into a KV bucket with a short
 * max age; everyone watches the bucket. A cell is live while heartbeats keep
 * arriving: KV expiry leaves no tombstone, so silence for `timeoutMs` (judged by
 * local receive time, immune to clock skew) is what marks a crashed cell dead.
 */
export class Membership {
  private readonly seen = new Map<string, { info: CellInfo; at: number }>();
  private hb: NodeJS.Timeout | undefined;
  private reaper: NodeJS.Timeout | undefined;
  private watcher: { stop(): void } | undefined;

  constructor(
    private readonly kv: KV,
    private readonly self: () => CellInfo,
    private readonly heartbeatMs: number,
    private readonly timeoutMs: number,
    /** Called once for each cell that left or fell silent (presence turns its users offline). */
    private readonly onGone: (cell: string) => void = () => undefined,
  ) {}

  async start(): Promise<void> {
    await this.beat();
    const w = await this.kv.watch();
    this.watcher = w;
    void (async () => {
      for await (const e of w) {
        if (e.operation === 'PUT') {
          try {
            this.seen.set(e.key, { info: unpack(e.value) as CellInfo, at: Date.now() });
          } catch {
            // a foreign writer; ignore the entry
          }
        } else if (this.seen.delete(e.key)) this.onGone(e.key);
      }
    })();
    this.hb = setInterval(() => void this.beat().catch(() => undefined), this.heartbeatMs);
    this.hb.unref();
    this.reaper = setInterval(() => this.reap(), this.heartbeatMs);
    this.reaper.unref();
  }

  private reap(): void {
    const now = Date.now();
    for (const [cell, s] of this.seen) {
      if (now - s.at <= this.timeoutMs) continue;
      this.seen.delete(cell);
      this.onGone(cell);
    }
  }

  private async beat(): Promise<void> {
    const info = this.self();
    await this.kv.put(info.cell, pack(info));
  }

  isLive(cell: string): boolean {
    const s = this.seen.get(cell);
    return s !== undefined && Date.now() - s.at <= this.timeoutMs;
  }

  live(): CellInfo[] {
    const now = Date.now();
    return [...this.seen.values()].filter((s) => now - s.at <= this.timeoutMs).map((s) => s.info);
  }

  /** Leave at once (graceful stop): others see the delete instead of waiting for the timeout. */
  async stop(cellId: string): Promise<void> {
    clearInterval(this.hb);
    clearInterval(this.reaper);
    this.watcher?.stop();
    await this.kv.delete(cellId).catch(() => undefined);
  }
}
