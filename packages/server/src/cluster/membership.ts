import type { NatsConnection, Subscription } from '@nats-io/transport-node';
import type { KV } from '@nats-io/kv';
import { pack, unpack } from '@gravitas/protocol';
import type { CellInfo, Liveness } from '../core/ports.js';

export type { CellInfo };

/** A heartbeat from the wire, checked: a malformed one is ignored, never trusted. */
function decodeInfo(v: unknown): CellInfo | undefined {
  const o = v as Partial<CellInfo> | null;
  if (typeof o !== 'object' || o === null || typeof o.cell !== 'string' || typeof o.node !== 'string' || typeof o.address !== 'string') return undefined;
  return { cell: o.cell, node: o.node, address: o.address, ...(typeof o.web === 'string' && { web: o.web }), sessions: Number(o.sessions) || 0, lagMs: Number(o.lagMs) || 0, state: o.state === 'draining' ? 'draining' : 'up' };
}

/**
 * Cells announce themselves every `heartbeatMs` on a core NATS subject every cell
 * subscribes to; a cell is live while its heartbeats keep arriving, judged by local
 * receive time (immune to clock skew). Liveness deliberately does not depend on
 * JetStream: during a stream leader election KV writes stall for seconds, and a
 * cell wrongly counted dead gets no deliveries and no wake-ups. The same record is
 * also put (best effort) into a KV bucket with a short max age, so a starting cell
 * learns the membership at once and a graceful leave (a delete) is seen at once.
 */
export class Membership implements Liveness {
  private readonly seen = new Map<string, { info: CellInfo; at: number }>();
  private hb: NodeJS.Timeout | undefined;
  private reaper: NodeJS.Timeout | undefined;
  private watcher: { stop(): void } | undefined;
  private sub: Subscription | undefined;

  constructor(
    private readonly nc: NatsConnection,
    private readonly subject: string,
    private readonly kv: KV,
    private readonly self: () => CellInfo,
    private readonly heartbeatMs: number,
    private readonly timeoutMs: number,
    /** Called once for each cell that left or fell silent (presence turns its users offline). */
    private readonly onGone: (cell: string) => void = () => undefined,
  ) {}

  /** Idempotent up to its first await, so a failed start can be retried. */
  async start(): Promise<void> {
    this.sub ??= this.nc.subscribe(this.subject, {
      callback: (err, msg) => {
        if (err) return;
        try {
          const info = decodeInfo(unpack(msg.data));
          if (info) this.seen.set(info.cell, { info, at: Date.now() });
        } catch {
          // not msgpack: ignore
        }
      },
    });
    await this.kv.put(this.self().cell, pack(this.self()));
    const w = await this.kv.watch();
    this.watcher = w;
    void (async () => {
      for await (const e of w) {
        if (e.operation === 'PUT') {
          const info = (() => {
            try {
              return decodeInfo(unpack(e.value));
            } catch {
              return undefined;
            }
          })();
          if (info && !this.seen.has(e.key)) this.seen.set(e.key, { info, at: Date.now() });
        } else if (this.seen.delete(e.key)) this.onGone(e.key);
      }
    })();
    this.beat();
    this.hb = setInterval(() => this.beat(), this.heartbeatMs);
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

  private beat(): void {
    const info = this.self();
    const data = pack(info);
    this.nc.publish(this.subject, data);
    this.kv.put(info.cell, data).catch(() => undefined); // the record for late joiners; liveness does not wait on it
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
    this.sub?.unsubscribe();
    await this.kv.delete(cellId).catch(() => undefined);
  }
}
