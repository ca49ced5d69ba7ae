import { ChannelError, ErrorCode } from './errors.js';
import { chachaOpen, chachaSeal, seal, open, NONCE_BYTES, MAC_BYTES } from './crypto.js';
import { FRAME_HEADER_BYTES, MAX_FRAME_COUNTER } from './limits.js';

const COUNTER_BYTES = 8;
/** ChaCha20-Poly1305's nonce: 4 zero bytes || the u64 counter. */
const AEAD_NONCE_BYTES = 12;

/**
 * What seals a frame: XSalsa20-Poly1305 (NaCl secretbox, tag first) unless the handshake
 * negotiated `aead:chacha20poly1305` (RFC 8439, tag last). docs/protocol.md section 6.
 */
export type ChannelCipher = 'xsalsa20poly1305' | 'chacha20poly1305';

const TWO_32 = 2 ** 32;

/** The counter as u64 big-endian at `at` (counters stay below 2^48: two u32 writes, no BigInt per frame). */
function writeCounter(out: Uint8Array, at: number, counter: number): void {
  const hi = Math.floor(counter / TWO_32);
  const lo = counter >>> 0;
  out[at] = hi >>> 24;
  out[at + 1] = hi >>> 16;
  out[at + 2] = hi >>> 8;
  out[at + 3] = hi;
  out[at + 4] = lo >>> 24;
  out[at + 5] = lo >>> 16;
  out[at + 6] = lo >>> 8;
  out[at + 7] = lo;
}

function nonceFor(counter: number, bytes: number): Uint8Array {
  const n = new Uint8Array(bytes);
  writeCounter(n, bytes - COUNTER_BYTES, counter);
  return n;
}

/**
 * The transport after a handshake: one key and one counter per direction. A sealed
 * frame body is [u64 counter][AEAD output]. TCP is ordered, so the receiver demands
 * exactly the next counter: a replayed or reordered frame is refused before it is
 * decrypted, and a nonce is never used twice under one key.
 */
export class SecureChannel {
  private sendCounter = 0;
  private recvCounter = 0;

  constructor(
    private readonly sendKey: Uint8Array,
    private readonly recvKey: Uint8Array,
    readonly cipher: ChannelCipher = 'xsalsa20poly1305',
  ) {}

  get sent(): number {
    return this.sendCounter;
  }
  get received(): number {
    return this.recvCounter;
  }

  seal(plain: Uint8Array): Buffer {
    return this.sealAt(plain, 0);
  }

  /**
   * `plain` sealed as a whole length-prefixed frame, ready for the socket: the same bytes as
   * `encodeFrame(seal(plain))` in one buffer instead of two (what a sender of many frames wants).
   */
  sealFrame(plain: Uint8Array): Buffer {
    const out = this.sealAt(plain, FRAME_HEADER_BYTES);
    out.writeUInt32BE(out.length - FRAME_HEADER_BYTES, 0);
    return out;
  }

  private sealAt(plain: Uint8Array, head: number): Buffer {
    if (this.sendCounter >= MAX_FRAME_COUNTER) throw new ChannelError(ErrorCode.NONCE_REUSE, 'send counter exhausted: reconnect to rekey');
    const counter = this.sendCounter++;
    const out = Buffer.allocUnsafe(head + COUNTER_BYTES + plain.length + MAC_BYTES);
    writeCounter(out, head, counter);
    if (this.cipher === 'chacha20poly1305') chachaSeal(this.sendKey, nonceFor(counter, AEAD_NONCE_BYTES), plain, out, head + COUNTER_BYTES);
    else out.set(seal(plain, nonceFor(counter, NONCE_BYTES), this.sendKey), head + COUNTER_BYTES);
    return out;
  }

  open(body: Uint8Array): Uint8Array {
    if (body.length < COUNTER_BYTES + MAC_BYTES) throw new ChannelError(ErrorCode.DECRYPT_FAILED, 'sealed frame too short');
    const counter = (body[0]! * 2 ** 24 + body[1]! * 2 ** 16 + body[2]! * 2 ** 8 + body[3]!) * TWO_32 + (body[4]! * 2 ** 24 + body[5]! * 2 ** 16 + body[6]! * 2 ** 8 + body[7]!);
    if (counter < this.recvCounter) throw new ChannelError(ErrorCode.NONCE_REUSE, `frame counter ${counter} was already used`);
    if (counter > this.recvCounter) throw new ChannelError(ErrorCode.NONCE_GAP, `frame counter ${counter} skips ahead of ${this.recvCounter}`);
    const sealed = body.subarray(COUNTER_BYTES);
    const plain =
      this.cipher === 'chacha20poly1305' ? chachaOpen(this.recvKey, nonceFor(counter, AEAD_NONCE_BYTES), sealed) : open(sealed, nonceFor(counter, NONCE_BYTES), this.recvKey);
    if (plain === null) throw new ChannelError(ErrorCode.DECRYPT_FAILED, 'sealed frame failed authentication');
    this.recvCounter++;
    return plain;
  }
}
