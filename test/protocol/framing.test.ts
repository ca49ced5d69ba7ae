import t from 'tap';
import { DEFAULT_MAX_FRAME_BYTES, encodeFrame, ErrorCode, FRAME_HEADER_BYTES, FrameDecoder, FramingError } from '@gravitas/protocol';
import { codeOf } from '../fixtures/codes.js';

/** Deterministic pseudo-random bytes (xorshift32), so failures reproduce. */
function prng(seed: number): (n: number) => number {
  let x = seed >>> 0 || 1;
  return (n: number) => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x % n;
  };
}

function body(len: number, fill: number): Buffer {
  const b = Buffer.alloc(len);
  for (let i = 0; i < len; i++) b[i] = (fill + i) & 0xff;
  return b;
}

/** Feeds `chunks` to a fresh decoder and returns copies of the frames it emitted. */
function decodeAll(chunks: Uint8Array[], max?: number): Buffer[] {
  const d = new FrameDecoder(max);
  const out: Buffer[] = [];
  for (const c of chunks) d.push(c, (b) => out.push(Buffer.from(b)));
  d.end();
  return out;
}


const bodies = [body(0, 0), body(1, 7), body(3, 9), body(300, 1), body(70, 2), body(0, 0), body(1000, 3)];
const stream = Buffer.concat(bodies.map(encodeFrame));

t.test('encodeFrame writes a 4-byte big-endian length prefix', async (t) => {
  t.equal(FRAME_HEADER_BYTES, 4);
  t.same([...encodeFrame(Buffer.from([0xaa, 0xbb]))], [0, 0, 0, 2, 0xaa, 0xbb]);
  t.same([...encodeFrame(new Uint8Array(0))], [0, 0, 0, 0]);
  t.same([...encodeFrame(Buffer.alloc(0x10203)).subarray(0, 4)], [0, 1, 2, 3]);
});

t.test('many frames in one chunk, including empty ones', async (t) => {
  t.same(decodeAll([stream]), bodies);
});

t.test('every split point of a multi-frame stream into two chunks', async (t) => {
  for (let i = 0; i <= stream.length; i++) {
    const got = decodeAll([stream.subarray(0, i), stream.subarray(i)]);
    if (got.length !== bodies.length || got.some((b, k) => !b.equals(bodies[k]!))) {
      t.fail(`split at ${i} gave wrong frames`);
      return;
    }
  }
  t.pass('all two-chunk splits decode identically');
});

t.test('one byte at a time', async (t) => {
  const chunks = [...stream].map((b) => Uint8Array.of(b));
  t.same(decodeAll(chunks), bodies);
});

t.test('random chunk boundaries (3-way splits and random sizes)', async (t) => {
  const rnd = prng(42);
  for (let round = 0; round < 500; round++) {
    const chunks: Buffer[] = [];
    let off = 0;
    while (off < stream.length) {
      const n = Math.min(stream.length - off, rnd(round % 2 === 0 ? 8 : 400));
      chunks.push(stream.subarray(off, off + n)); // n may be 0: empty chunks too
      off += n;
    }
    const got = decodeAll(chunks);
    if (got.length !== bodies.length || got.some((b, k) => !b.equals(bodies[k]!))) return t.fail(`round ${round}`);
  }
  t.pass('500 random chunkings decode identically');
});

t.test('pending counts only the incomplete tail', async (t) => {
  const d = new FrameDecoder();
  const frames: Buffer[] = [];
  const f = encodeFrame(body(10, 0));
  d.push(f.subarray(0, 2), (b) => frames.push(b));
  t.equal(d.pending, 2);
  d.push(f.subarray(2, 9), (b) => frames.push(b));
  t.equal(d.pending, 9);
  t.equal(frames.length, 0);
  d.push(Buffer.concat([f.subarray(9), f.subarray(0, 5)]), (b) => frames.push(Buffer.from(b)));
  t.equal(frames.length, 1);
  t.equal(d.pending, 5);
  t.throws(() => d.end(), { code: ErrorCode.FRAME_TRUNCATED });
  t.equal(d.pending, 0, 'end() resets the decoder');
});

t.test('the held remainder is a copy: the caller may reuse its chunk', async (t) => {
  const d = new FrameDecoder();
  const f = encodeFrame(body(8, 50));
  const chunk = Buffer.from(f.subarray(0, 6));
  d.push(chunk, () => t.fail('no frame yet'));
  chunk.fill(0xee); // the socket layer recycles its buffer
  const got: Buffer[] = [];
  d.push(f.subarray(6), (b) => got.push(Buffer.from(b)));
  t.same(got, [body(8, 50)]);
});

t.test('oversized length prefix is rejected before any body byte is buffered', async (t) => {
  t.equal(DEFAULT_MAX_FRAME_BYTES, 64 * 1024);
  const d = new FrameDecoder(100);
  const header = Buffer.alloc(4);
  header.writeUInt32BE(101);
  // The header alone is enough: the decoder does not wait for (or hold) a body.
  const err = t.throws(() => d.push(header, () => t.fail('no frame'))) as unknown;
  t.ok(err instanceof FramingError);
  t.equal((err as FramingError).code, ErrorCode.FRAME_TOO_LARGE);
  t.ok((err as FramingError).fatal);
  t.equal(d.pending, 0, 'nothing held after the rejection');

  // Header split over two chunks: rejected at the chunk that completes it.
  const d2 = new FrameDecoder(100);
  d2.push(header.subarray(0, 3), () => t.fail('no frame'));
  t.equal(d2.pending, 3);
  t.equal(codeOf(() => d2.push(header.subarray(3), () => t.fail('no frame'))), ErrorCode.FRAME_TOO_LARGE);

  // 4 GiB - 1 claimed, a few bytes sent.
  const huge = Buffer.from([0xff, 0xff, 0xff, 0xff, 1, 2, 3]);
  t.equal(codeOf(() => new FrameDecoder().push(huge, () => t.fail('no frame'))), ErrorCode.FRAME_TOO_LARGE);
});

t.test('frames before an oversized one are delivered, nothing after it', async (t) => {
  const d = new FrameDecoder(100);
  const bad = Buffer.alloc(4);
  bad.writeUInt32BE(1_000_000);
  const got: Buffer[] = [];
  const chunk = Buffer.concat([encodeFrame(body(5, 1)), encodeFrame(body(100, 2)), bad, encodeFrame(body(5, 3))]);
  t.equal(codeOf(() => d.push(chunk, (b) => got.push(Buffer.from(b)))), ErrorCode.FRAME_TOO_LARGE);
  t.same(got, [body(5, 1), body(100, 2)], 'a frame of exactly the limit is accepted');
  t.equal(d.pending, 0);
});

t.test('truncated stream', async (t) => {
  const f = encodeFrame(body(20, 4));
  for (const cut of [1, 3, 4, 5, 23]) {
    const d = new FrameDecoder();
    d.push(f.subarray(0, cut), () => t.fail('no complete frame'));
    t.equal(codeOf(() => d.end()), ErrorCode.FRAME_TRUNCATED, `cut after ${cut} bytes`);
  }
  const clean = new FrameDecoder();
  clean.push(f, () => {});
  t.doesNotThrow(() => clean.end(), 'a stream ending on a frame boundary is fine');
  t.doesNotThrow(() => new FrameDecoder().end(), 'an empty stream is fine');
});

t.test('a throwing onFrame loses and repeats nothing', async (t) => {
  const frames = [body(3, 1), body(4, 2), body(5, 3), body(6, 4)];
  const all = Buffer.concat(frames.map(encodeFrame));
  const d = new FrameDecoder();
  const got: Buffer[] = [];
  const partialTail = all.length - 3;
  // The first chunk holds 4 frames minus the last 3 bytes; the handler rejects frame #2.
  const err = t.throws(() =>
    d.push(all.subarray(0, partialTail), (b) => {
      got.push(Buffer.from(b));
      if (got.length === 2) throw new Error('handler failed');
    }),
  ) as Error;
  t.equal(err.message, 'handler failed');
  t.same(got, frames.slice(0, 2));
  d.push(new Uint8Array(0), (b) => got.push(Buffer.from(b)));
  t.same(got, frames.slice(0, 3), 'an empty push drains the complete frame that was held');
  d.push(all.subarray(partialTail), (b) => got.push(Buffer.from(b)));
  t.same(got, frames, 'and the stream continues in order');
  t.doesNotThrow(() => d.end());
});
