import { joinPacked, unpack } from './codec.js';
import { DecodeError, ErrorCode, ProtocolError } from './errors.js';
import { decodeClientMessage, decodeServerMessage, type ClientMessage, type ServerMessage } from './messages.js';

/*
 * Batches (capability `batch`, docs/protocol.md section 6.1): once negotiated, a sealed frame's
 * plaintext may be a msgpack array of 1..MAX_BATCH_MESSAGES messages, each exactly what a frame
 * of its own would hold, in either direction. Each element is decoded on its own: a bad one is
 * refused alone (its own coded, non-fatal error), the others go through, in order.
 */

/** Most messages one batched frame may carry; more (or none) is DECODE_FAILED, fatal. */
export const MAX_BATCH_MESSAGES = 256;

/** One element of a frame: the message, or why it was refused (a ProtocolError with its code). */
export type FrameItem<M> = M | ProtocolError;

function decodeFrame<M>(plain: Uint8Array, batch: boolean, decode: (v: unknown) => M): Array<FrameItem<M>> {
  const v = unpack(plain);
  if (!batch || !Array.isArray(v)) return [one(v, decode, -1)];
  if (v.length === 0 || v.length > MAX_BATCH_MESSAGES) throw new DecodeError(ErrorCode.DECODE_FAILED, `a batch holds 1..${MAX_BATCH_MESSAGES} messages, not ${v.length}`);
  const out: Array<FrameItem<M>> = [];
  for (let i = 0; i < v.length; i++) out.push(one(v[i], decode, i));
  return out;
}

function one<M>(v: unknown, decode: (v: unknown) => M, index: number): FrameItem<M> {
  try {
    return decode(v);
  } catch (err) {
    if (!(err instanceof ProtocolError)) throw err;
    if (index < 0) return err;
    return new DecodeError(err.code, `batch element ${index}: ${err.message}`);
  }
}

/**
 * The messages of a client's sealed frame (`batch`: whether the session negotiated batches;
 * without it an array is one bad message, as before). Throws only for a frame that is not one
 * msgpack value or a batch out of bounds (DECODE_FAILED).
 */
export function decodeClientFrame(plain: Uint8Array, batch: boolean): Array<FrameItem<ClientMessage>> {
  return decodeFrame(plain, batch, decodeClientMessage);
}

/** The messages of a server's sealed frame: as decodeClientFrame, the other direction. */
export function decodeServerFrame(plain: Uint8Array, batch: boolean): Array<FrameItem<ServerMessage>> {
  return decodeFrame(plain, batch, decodeServerMessage);
}

/**
 * A batch's plaintext from messages already packed one by one (codec.ts `pack`): a msgpack array
 * header, then the elements as they are. A sender packs each message once, so it can stop adding
 * before a frame gets too large (`batchBytes`), and one element is sent as itself, not as a batch.
 */
export function packBatch(parts: readonly Uint8Array[], start = 0, end = parts.length): Uint8Array {
  const n = end - start;
  if (n === 1) return parts[start]!;
  if (n <= 0 || n > MAX_BATCH_MESSAGES) throw new RangeError(`a batch holds 1..${MAX_BATCH_MESSAGES} messages`);
  return joinPacked(parts, start, end);
}

/** The plaintext size of a batch of `count` elements of `bytes` bytes together. */
export function batchBytes(count: number, bytes: number): number {
  return (count === 1 ? 0 : count < 16 ? 1 : 3) + bytes;
}

/**
 * Whether a part of `next` bytes must open a new batch after `count` parts of `bytes` bytes
 * together: at most `maxItems` parts and a plaintext of at most `maxBytes` (a part too large to
 * share is a batch of its own).
 */
export function batchFull(count: number, bytes: number, next: number, maxBytes: number, maxItems = MAX_BATCH_MESSAGES): boolean {
  return count > 0 && (count >= maxItems || batchBytes(count + 1, bytes + next) > maxBytes);
}

/** Splits packed `parts` into consecutive batches within `batchFull`'s bounds: `emit(start, end)` for each, in order. */
export function batchRuns(parts: readonly Uint8Array[], maxBytes: number, emit: (start: number, end: number) => void, maxItems = MAX_BATCH_MESSAGES): void {
  let start = 0;
  let bytes = 0;
  for (let i = 0; i < parts.length; i++) {
    const n = parts[i]!.length;
    if (batchFull(i - start, bytes, n, maxBytes, maxItems)) {
      emit(start, i);
      start = i;
      bytes = 0;
    }
    bytes += n;
  }
  if (parts.length > start) emit(start, parts.length);
}
