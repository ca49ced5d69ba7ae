import { fromBase64Url, hintKeyPair, signHint, type HintKeyPair } from '@gravitas/protocol';
import type { CellContext } from '../core/context.js';
import type { CellLoad, HintSigner, Liveness } from '../core/ports.js';

/** Where this cell can be reached (known once its listeners are up). */
export interface SelfAddress {
  /** host:port of the TCP listener. */
  address(): string;
  /** host:port of the web listener; '' when off. */
  webAddress(): string;
}

/**
 * The one signer of connect hints: gravitation's moves, push and relay wake-ups
 * all name a live cell with its addresses and sign with the cluster's hint key
 * (derived from the server key), so a device trusts them alike.
 */
export class Hints implements HintSigner {
  readonly keys: HintKeyPair;

  constructor(private readonly ctx: CellContext, private readonly liveness: () => Liveness, private readonly self: SelfAddress) {
    this.keys = hintKeyPair(fromBase64Url(ctx.config.serverKey, 32));
  }

  /** Live, accepting cells: addresses (TCP, web) and loads, this cell's own load taken fresh. */
  loads(): Map<string, CellLoad> {
    const out = new Map<string, CellLoad>();
    for (const c of this.liveness().live()) if (c.state === 'up') out.set(c.cell, { addr: c.address, ...(c.web && { web: c.web }), load: c.sessions });
    const web = this.self.webAddress();
    out.set(this.ctx.cellId, { addr: this.self.address(), ...(web && { web }), load: this.ctx.hub.count });
    return out;
  }

  /** The web address of live cell `cellId` ('' or undefined when it has none). */
  webOf(cellId: string): string | undefined {
    return cellId === this.ctx.cellId ? this.self.webAddress() : this.liveness().live().find((c) => c.cell === cellId)?.web;
  }

  /**
   * A signed hint sending `user`/`device` to live cell `cellId`, with its web address
   * too so a device on WebSocket or chunked HTTP can follow. Undefined if the cell is not live.
   */
  signHintTo(cellId: string, user: string, device: string, ttlMs: number, now = Date.now(), loads = this.loads()): Uint8Array | undefined {
    const c = loads.get(cellId);
    if (!c) return undefined;
    return signHint({ cell: cellId, addr: c.addr, ...(c.web && { web: c.web }), user, device, issuedAt: now, expiresAt: now + ttlMs }, this.keys.secretKey);
  }

  /** A signed hint to `cellId` at `addr` (an exchange partner's own word for its address). */
  signHintAt(cellId: string, addr: string, user: string, device: string, ttlMs: number, now = Date.now()): Uint8Array {
    const web = this.webOf(cellId);
    return signHint({ cell: cellId, addr, ...(web && { web }), user, device, issuedAt: now, expiresAt: now + ttlMs }, this.keys.secretKey);
  }
}
