import type { ErrorCode } from '@gravitas/protocol';
import type { CellContext } from '../core/context.js';
import type { Transport, TransportKind } from '../core/transport.js';
import { SourceLimits, type SourceCharge } from './source-limits.js';
import { SourceResolver } from './source.js';
import type { TcpHost } from './tcp.js';
import type { WebHost } from './web-listener.js';

/**
 * The connections of one cell, whatever carries them: admission (the cell's cap,
 * who a connection comes from and what its source may hold), counts by
 * transport, and each source's handshake slot until its session opens. Both
 * listeners hand accepted transports here; a session is started on each.
 */
export class Connections implements TcpHost, WebHost {
  /** Who connections come from (trusted proxies), and what each source may hold on this cell. */
  readonly sources: SourceResolver;
  readonly sourceLimits: SourceLimits;
  /** Every connection carrying a session. */
  private readonly all = new Set<Transport>();
  private readonly byKind: Record<TransportKind, number> = { tcp: 0, ws: 0, http: 0 };
  /** Handshake slots of sessions not yet open, released when they open or close. */
  private readonly handshaking = new Map<Transport, SourceCharge>();
  draining = false;
  /** The largest backlog any connection had right after a write, since the last look. */
  private peak = 0;

  constructor(private readonly ctx: CellContext, private readonly startSession: (t: Transport) => void) {
    this.sources = new SourceResolver(ctx.config.network.trustedProxies);
    this.sourceLimits = new SourceLimits(ctx.config.network, (r) => ctx.metrics.sourceRefusals.inc({ limit: r.kind, scope: r.scope }));
  }

  get config(): CellContext['config'] {
    return this.ctx.config;
  }

  get metrics(): CellContext['metrics'] {
    return this.ctx.metrics;
  }

  log(msg: string, err?: unknown): void {
    this.ctx.log(msg, err);
  }

  get size(): number {
    return this.all.size;
  }

  /** Room for one more session connection. */
  canAccept(): boolean {
    return !this.draining && this.all.size < this.ctx.config.limits.maxConnectionsPerCell;
  }

  /** Starts a session on a new connection, counted by transport until it closes; `handshake`: its source's slot until the session opens. */
  adopt(t: Transport, handshake: SourceCharge): void {
    this.handshaking.set(t, handshake);
    this.all.add(t);
    this.count(t.kind, 1);
    t.onClosed(() => {
      this.handshakeDone(t);
      if (this.all.delete(t)) this.count(t.kind, -1);
    });
    this.startSession(t);
  }

  /** The session on `t` opened (or closed): its source's handshake slot is free again. */
  handshakeDone(t: Transport): void {
    this.handshaking.get(t)?.release();
    this.handshaking.delete(t);
  }

  /** Called after each write to a connection with its unsent bytes (one compare per frame). */
  noteOutbound(bytes: number): void {
    if (bytes > this.peak) this.peak = bytes;
  }

  /** The largest backlog since the previous call: the peak noted, or a connection's backlog now (O(connections), at scrape time). */
  outboundPeak(): number {
    let max = this.peak;
    this.peak = 0;
    for (const t of this.all) if (t.bufferedBytes > max) max = t.bufferedBytes;
    return max;
  }

  /** Ends every connection with `code` (shutdown). */
  endAll(code: ErrorCode): void {
    for (const t of this.all) t.end(code);
  }

  private count(kind: TransportKind, d: number): void {
    this.byKind[kind] += d;
    this.ctx.metrics.connections.set({ transport: kind }, this.byKind[kind]);
  }
}
