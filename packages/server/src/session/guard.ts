import { createHmac, randomBytes } from 'node:crypto';
import { equalBytes, ErrorCode, HandshakeError, HELLO_MAX_SKEW_MS } from '@gravitas/protocol';

const COOKIE_BYTES = 16;
const COOKIE_ROTATE_MS = 120_000;
/*
 * Replay-cache capacity over two generations of the hello window: 2M entries covers
 * ~4,000 full handshakes/s per cell sustained. Entries are the first 8 bytes of the
 * ephemeral key (a false match just makes one client retry with a fresh key).
 */
const REPLAY_MAX = 2_000_000;

/**
 * Protects a cell from handshake floods and replays, before any costly X25519:
 *  - a bounded count of handshakes in progress (BUSY beyond it);
 *  - above a rate threshold, a client must echo a cookie (HMAC of its source
 *    address and ephemeral key under a rotating secret) — proof that it can
 *    receive at that address, WireGuard-style — before the server spends DH work
 *    on it. The address is the connection's source IP (net/source.ts: the peer,
 *    or the client a trusted proxy reports), without a port: behind a proxy the
 *    port is the proxy's, and the source IP is what the per-source caps count;
 *  - a replay cache of ephemeral keys seen within the hello time window (two
 *    generations, bounded), so a recorded hello cannot be replayed into this cell.
 */
export class HandshakeGuard {
  private inFlight = 0;
  private windowStart: number;
  private windowCount = 0;
  private secret = randomBytes(32);
  private previousSecret = randomBytes(32);
  private secretAt: number;
  private seen = new Set<string>();
  private seenPrev = new Set<string>();
  private seenAt: number;
  private readonly now: () => number;
  private readonly replayMax: number;

  /** `o.now` and `o.replayMax` exist for tests (a clock they move, a small cache); cells use the defaults. */
  constructor(private readonly maxInFlight: number, private readonly cookieThresholdPerSec: number, o: { now?: () => number; replayMax?: number } = {}) {
    this.now = o.now ?? Date.now;
    this.replayMax = o.replayMax ?? REPLAY_MAX;
    this.windowStart = this.secretAt = this.seenAt = this.now();
  }

  /** Call when a first flight arrives (`source`: the connection's source IP). Returns a cookie to send back, or null to proceed. */
  admit(source: string, ephemeral: Uint8Array, cookie: Uint8Array | undefined): Uint8Array | null {
    const now = this.now();
    if (now - this.windowStart >= 1000) {
      this.windowStart = now;
      this.windowCount = 0;
    }
    this.windowCount++;
    if (this.inFlight >= this.maxInFlight) throw new HandshakeError(ErrorCode.BUSY, 'too many handshakes in progress; retry later');
    if (this.windowCount > this.cookieThresholdPerSec) {
      this.rotate(now);
      if (!cookie) return this.cookie(this.secret, source, ephemeral);
      const ok = equalBytes(cookie, this.cookie(this.secret, source, ephemeral)) || equalBytes(cookie, this.cookie(this.previousSecret, source, ephemeral));
      if (!ok) return this.cookie(this.secret, source, ephemeral);
    }
    return null;
  }

  /** Records an ephemeral key that passed authentication; throws HANDSHAKE_REPLAY if seen before. */
  recordEphemeral(ephemeral: Uint8Array): void {
    const now = this.now();
    if (now - this.seenAt >= HELLO_MAX_SKEW_MS * 2) {
      this.seenPrev = this.seen;
      this.seen = new Set();
      this.seenAt = now;
    }
    const k = Buffer.from(ephemeral.buffer, ephemeral.byteOffset, 8).toString('base64');
    if (this.seen.has(k) || this.seenPrev.has(k)) throw new HandshakeError(ErrorCode.HANDSHAKE_REPLAY, 'this hello was already used');
    if (this.seen.size + this.seenPrev.size >= this.replayMax) throw new HandshakeError(ErrorCode.BUSY, 'handshake replay cache is full; retry later');
    this.seen.add(k);
  }

  begin(): void {
    this.inFlight++;
  }

  end(): void {
    this.inFlight--;
  }

  private rotate(now: number): void {
    if (now - this.secretAt < COOKIE_ROTATE_MS) return;
    this.previousSecret = this.secret;
    this.secret = randomBytes(32);
    this.secretAt = now;
  }

  private cookie(secret: Buffer, source: string, ephemeral: Uint8Array): Uint8Array {
    return new Uint8Array(createHmac('sha256', secret).update(source).update(ephemeral).digest().subarray(0, COOKIE_BYTES));
  }
}
