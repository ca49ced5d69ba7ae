import { Packr, Unpackr } from 'msgpackr';
import { DecodeError, ErrorCode } from './errors.js';

// Plain maps, no records, no custom types: the wire format stays readable by any
// msgpack implementation and decoding untrusted bytes cannot instantiate classes.
const packr = new Packr({ useRecords: false, moreTypes: false, structuredClone: false, variableMapSize: true });
// int64AsType 'number': other encoders send integers above 2^32 (timestamps) as
// uint64/int64, which msgpackr would otherwise return as BigInt and validation
// would refuse. Values beyond 2^53 lose precision and fail the integer range check.
const unpackr = new Unpackr({ useRecords: false, moreTypes: false, structuredClone: false, mapsAsObjects: true, int64AsType: 'number' });

export function pack(value: unknown): Buffer {
  return packr.pack(value);
}

/**
 * Decode exactly one msgpack value. The caller has already capped the size (a
 * frame limit). Trailing bytes or any decoder failure give DECODE_FAILED.
 */
export function unpack(bytes: Uint8Array): unknown {
  let values: unknown[];
  try {
    values = unpackr.unpackMultiple(bytes) as unknown[];
  } catch (err) {
    throw new DecodeError(ErrorCode.DECODE_FAILED, 'malformed msgpack', { cause: err });
  }
  if (values.length !== 1) throw new DecodeError(ErrorCode.DECODE_FAILED, `expected one msgpack value, got ${values.length}`);
  return values[0];
}

/**
 * One msgpack array of already packed values `parts[start..end)`: the bytes `pack(values)`
 * would give, without packing anything twice (a batch of frames, a batch of envelopes).
 */
export function joinPacked(parts: readonly Uint8Array[], start = 0, end = parts.length): Uint8Array {
  const n = end - start;
  const head = n < 16 ? 1 : n < 0x10000 ? 3 : 5;
  let size = head;
  for (let i = start; i < end; i++) size += parts[i]!.length;
  const out = new Uint8Array(size);
  if (head === 1) out[0] = 0x90 | n;
  else if (head === 3) {
    out[0] = 0xdc;
    out[1] = n >> 8;
    out[2] = n & 0xff;
  } else {
    out[0] = 0xdd;
    new DataView(out.buffer).setUint32(1, n);
  }
  let off = head;
  for (let i = start; i < end; i++) {
    out.set(parts[i]!, off);
    off += parts[i]!.length;
  }
  return out;
}
