/*
 * Gravitation on the client (docs/gravitation.md): connect hints, from the server's
 * `move` or from outside (a push payload, a relayed wake-up), verified and followed
 * make-before-break; a hint that comes while offline is kept for the next connect.
 */
import { ErrorCode, HintError, verifyHint, type ConnectHint } from '@gravitas/protocol';
import { hintEndpoint, type Connection } from './connection.js';
import type { Emit } from './private.js';
import type { ClientOptions } from './types.js';

export type MoveReason = 'rebalance' | 'associate' | 'external';

export class Moves {
  private moving = false;

  constructor(
    private readonly options: ClientOptions,
    private readonly conn: Connection,
    private readonly emit: Emit,
  ) {}

  /** A verified hint for this device, or undefined (reported as 'hintIgnored'). */
  verify(bytes: Uint8Array): ConnectHint | undefined {
    const key = this.options.hintPublicKey ?? this.conn.welcome?.hk;
    try {
      if (!key) throw new HintError(ErrorCode.HINT_INVALID, 'connect hint rejected: no hint key known yet');
      return verifyHint(bytes, key, { user: this.options.user, device: this.options.device }, Date.now());
    } catch (err) {
      this.emit('hintIgnored', err as Error);
      return undefined;
    }
  }

  /** The server's `move`: followed if it verifies. */
  move(bytes: Uint8Array, why: MoveReason): void {
    const h = this.verify(bytes);
    if (h) void this.follow(h, why);
  }

  /** A hint from outside: followed now when connected, else kept for the next connect. */
  followHint(bytes: Uint8Array): boolean {
    const h = this.verify(bytes);
    if (!h) return false;
    if (this.conn.channel) void this.follow(h, 'external');
    else this.conn.hint = h;
    return true;
  }

  /**
   * Moves to the hinted cell, make-before-break: the new session is opened by
   * resumption first (one round trip), then the old one is closed. Nothing is lost:
   * what the old session delivered unacknowledged goes back to custody and is
   * delivered again on the new one (shown once, by its key); unconfirmed sends are
   * re-sent with the same ids. If the cell cannot be reached, the client stays.
   */
  private async follow(h: ConnectHint, why: MoveReason): Promise<void> {
    const conn = this.conn;
    if (this.moving || conn.closed || conn.welcome?.cell === h.cell) return;
    this.moving = true;
    const oldSocket = conn.socket;
    const oldChannel = conn.channel;
    try {
      await conn.open(hintEndpoint(h));
    } catch (err) {
      this.emit('hintIgnored', err as Error);
      return;
    } finally {
      this.moving = false;
    }
    if (oldSocket && oldChannel) conn.retire(oldSocket, oldChannel);
    this.emit('moved', { cell: h.cell, addr: h.addr, why });
  }
}
