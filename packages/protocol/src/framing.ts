import { FramingError, ErrorCode } from './errors.js';
import { FRAME_HEADER_BYTES, DEFAULT_MAX_FRAME_BYTES } from './limits.js';

/** Prefix a frame body with its 4-byte big-endian length. */
export function encodeFrame(body: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(FRAME_HEADER_BYTES + body.length);
  out.writeUInt32BE(body.length, 0);
  out.set(body, FRAME_HEADER_BYTES);
  return out;
}

/** Several frame bodies as one buffer of length-prefixed frames: one socket write for all of them. */
export function encodeFrames(bodies: readonly Uint8Array[]): Buffer {
  if (bodies.length === 1) return encodeFrame(bodies[0]!);
  let size = 0;
  for (const b of bodies) size += FRAME_HEADER_BYTES + b.length;
  const out = Buffer.allocUnsafe(size);
  let off = 0;
  for (const b of bodies) {
    out.writeUInt32BE(b.length, off);
    out.set(b, off + FRAME_HEADER_BYTES);
    off += FRAME_HEADER_BYTES + b.length;
  }
  return out;
}

/**
 * Incremental length-prefixed frame decoder. It never holds more than one frame
 * plus one header: an oversized length prefix is rejected before any body byte
 * is buffered, so a hostile peer cannot make us allocate.
 */
export class FrameDecoder {
  private buf: Buffer = Buffer.alloc(0);
  readonly maxFrameBytes: number;

  constructor(maxFrameBytes = DEFAULT_MAX_FRAME_BYTES) {
    this.maxFrameBytes = maxFrameBytes;
  }

  /** Bytes held that do not form a whole frame yet. */
  get pending(): number {
    return this.buf.length;
  }

  /**
   * Feed bytes; calls `onFrame` for every complete frame, in order. Throws
   * FramingError(FRAME_TOO_LARGE) as soon as a length prefix exceeds the limit.
   * The subarray handed to onFrame is only valid during the call. If onFrame
   * throws, that frame counts as consumed and the bytes after it stay buffered
   * (push an empty chunk to drain them): nothing is lost or delivered twice.
   */
  push(chunk: Uint8Array, onFrame: (body: Buffer) => void): void {
    const buf = this.buf.length === 0 ? Buffer.from(chunk.buffer, chunk.byteOffset, chunk.length) : Buffer.concat([this.buf, chunk]);
    let off = 0;
    try {
      while (buf.length - off >= FRAME_HEADER_BYTES) {
        const len = buf.readUInt32BE(off);
        if (len > this.maxFrameBytes) {
          off = buf.length; // the stream is unusable: drop everything held
          throw new FramingError(ErrorCode.FRAME_TOO_LARGE, `frame of ${len} bytes exceeds the limit of ${this.maxFrameBytes}`);
        }
        if (buf.length - off - FRAME_HEADER_BYTES < len) break;
        const start = off + FRAME_HEADER_BYTES;
        off = start + len;
        onFrame(buf.subarray(start, off));
      }
    } finally {
      // Copy the remainder: the caller's chunk may be reused after we return.
      this.buf = off === buf.length ? Buffer.alloc(0) : Buffer.from(buf.subarray(off));
    }
  }

  /** At end of stream: throws FRAME_TRUNCATED if a partial frame is held. */
  end(): void {
    if (this.buf.length > 0) {
      const n = this.buf.length;
      this.buf = Buffer.alloc(0);
      throw new FramingError(ErrorCode.FRAME_TRUNCATED, `stream ended inside a frame (${n} bytes pending)`);
    }
  }
}
