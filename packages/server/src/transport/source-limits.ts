import type { NetworkConfig } from '../config/index.js';
import type { ClientSource } from './source.js';

/*
 * Per-source caps of one cell (docs/security.md, "Connections per source"): how many of a thing
 * (open connections, handshakes in progress, chunked-HTTP downstreams waiting for
 * their upstream) one client address and one network prefix may hold. Checked
 * where the thing begins, before any crypto or buffering; a refusal is one map
 * lookup. Tables hold only sources with a count above zero: an entry vanishes
 * when its count drops to 0, so their size is bounded by what they count.
 */

/**
 * Connections a listener accepts beyond its cap so that they can be refused with a code
 * rather than dropped; past cap + this, Node closes them at accept (server.maxConnections).
 */
export const REFUSAL_SLACK = 32;

export type SourceLimitKind = 'connections' | 'handshakes' | 'streams';

export interface SourceCaps {
  perSource: number;
  perPrefix: number;
}

/** A slot held by a source; releasing it twice is harmless (close paths overlap). */
export interface SourceCharge {
  readonly source: ClientSource;
  release(): void;
}

/** What a refusal says: which cap, at which scope. */
export interface SourceRefusal {
  kind: SourceLimitKind;
  scope: 'source' | 'prefix';
  message: string;
}

export class SourceTable {
  private readonly bySource = new Map<string, number>();
  private readonly byPrefix = new Map<string, number>();

  constructor(readonly kind: SourceLimitKind, private readonly caps: SourceCaps) {}

  /** Sources and prefixes with a slot held (for the gauge and the tests of boundedness). */
  get size(): number {
    return this.bySource.size + this.byPrefix.size;
  }

  count(source: ClientSource): number {
    return this.bySource.get(source.ip) ?? 0;
  }

  /** Takes a slot for `source`, or says which cap is full. */
  acquire(source: ClientSource): SourceCharge | SourceRefusal {
    const s = this.bySource.get(source.ip) ?? 0;
    if (s >= this.caps.perSource) return { kind: this.kind, scope: 'source', message: `${source.ip} already holds ${s} ${WHAT[this.kind]} on this cell (at most ${this.caps.perSource} per client address)` };
    const p = this.byPrefix.get(source.prefix) ?? 0;
    if (p >= this.caps.perPrefix) return { kind: this.kind, scope: 'prefix', message: `${source.prefix} already holds ${p} ${WHAT[this.kind]} on this cell (at most ${this.caps.perPrefix} per network)` };
    this.bySource.set(source.ip, s + 1);
    this.byPrefix.set(source.prefix, p + 1);
    let held = true;
    return {
      source,
      release: () => {
        if (!held) return;
        held = false;
        dec(this.bySource, source.ip);
        dec(this.byPrefix, source.prefix);
      },
    };
  }
}

const WHAT: Record<SourceLimitKind, string> = {
  connections: 'connections',
  handshakes: 'connections still in their handshake',
  streams: 'chunked-HTTP streams waiting for their upstream',
};

function dec(m: Map<string, number>, k: string): void {
  const n = (m.get(k) ?? 0) - 1;
  if (n <= 0) m.delete(k);
  else m.set(k, n);
}

export function isRefusal(x: SourceCharge | SourceRefusal): x is SourceRefusal {
  return 'scope' in x;
}

/** The three tables of one cell; `refused` is told of every refusal (a metric). */
export class SourceLimits {
  readonly connections: SourceTable;
  readonly handshakes: SourceTable;
  readonly streams: SourceTable;

  constructor(
    n: Omit<NetworkConfig, 'trustedProxies' | 'capabilities'>,
    private readonly refused: (r: SourceRefusal) => void = () => undefined,
  ) {
    this.connections = new SourceTable('connections', { perSource: n.maxConnectionsPerSource, perPrefix: n.maxConnectionsPerPrefix });
    this.handshakes = new SourceTable('handshakes', { perSource: n.maxHandshakesPerSource, perPrefix: n.maxHandshakesPerPrefix });
    this.streams = new SourceTable('streams', { perSource: n.maxPendingStreamsPerSource, perPrefix: n.maxPendingStreamsPerPrefix });
  }

  /** A slot of `kind` for `source`, or the refusal (counted). */
  take(kind: SourceLimitKind, source: ClientSource): SourceCharge | SourceRefusal {
    const r = this[kind].acquire(source);
    if (isRefusal(r)) this.refused(r);
    return r;
  }

  /** Entries held over all tables: 0 once every connection is gone. */
  get entries(): number {
    return this.connections.size + this.handshakes.size + this.streams.size;
  }
}
