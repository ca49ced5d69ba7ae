import t from 'tap';
import {
  batchBytes, batchFull, batchRuns, decodeClientFrame, decodeServerFrame, DecodeError, ErrorCode, MAX_BATCH_MESSAGES, pack, packBatch, ProtocolError,
} from '@gravitas/protocol';

/* Batches (capability `batch`, docs/protocol.md 6.1): the frame-level decoders and packBatch. */

const ping = (n: number): { t: 'ping'; n: number } => ({ t: 'ping', n });
const codes = (items: unknown[]): Array<string> => items.map((m) => (m instanceof ProtocolError ? m.code : (m as { t: string }).t));

t.test('a batch: each element decoded on its own, a bad one refused alone', async (t) => {
  const items = decodeClientFrame(pack([ping(1), { t: 'ping' }, { t: 'nope' }, 'not a map', [ping(9)], { t: 'ack', id: 'm1', from: 'bob' }, ping(2)]), true);
  t.strictSame(codes(items), ['ping', ErrorCode.BAD_MESSAGE, ErrorCode.UNKNOWN_TYPE, ErrorCode.BAD_MESSAGE, ErrorCode.BAD_MESSAGE, 'ack', 'ping'], 'in order, errors in place');
  for (const m of items) if (m instanceof ProtocolError) t.notOk(m.fatal, `${m.code} is not fatal: ${m.message}`);
  t.match((items[1] as ProtocolError).message, /^batch element 1: /, 'the error names the element');
  t.strictSame(items[6], ping(2));
  const down = decodeServerFrame(pack([{ t: 'pong', n: 1 }, { t: 'msg' }, { t: 'mutes' }]), true);
  t.strictSame(codes(down), ['pong', ErrorCode.BAD_MESSAGE, 'mutes'], 'the server direction too');
});

t.test('one message per frame is unchanged; without the capability an array is one bad message', async (t) => {
  t.strictSame(decodeClientFrame(pack(ping(3)), true), [ping(3)]);
  t.strictSame(decodeClientFrame(pack(ping(3)), false), [ping(3)]);
  const [err] = decodeClientFrame(pack([ping(1)]), false);
  t.ok(err instanceof DecodeError && err.code === ErrorCode.BAD_MESSAGE && !err.fatal, 'not negotiated: BAD_MESSAGE, non-fatal');
  const [bad] = decodeClientFrame(pack({ t: 'nope' }), true);
  t.ok(bad instanceof ProtocolError && bad.code === ErrorCode.UNKNOWN_TYPE, 'a single bad message comes back as its error');
  t.throws(() => decodeClientFrame(new Uint8Array([0x92, 0x01]), true), { code: ErrorCode.DECODE_FAILED }, 'not msgpack: fatal, as before');
});

t.test(`bounds: 1..${MAX_BATCH_MESSAGES} messages, else DECODE_FAILED (fatal)`, async (t) => {
  t.equal(MAX_BATCH_MESSAGES, 256);
  t.equal(decodeClientFrame(pack(Array.from({ length: 256 }, (_, i) => ping(i))), true).length, 256);
  for (const n of [0, 257, 5000]) {
    t.throws(() => decodeClientFrame(pack(Array.from({ length: n }, (_, i) => ping(i))), true), { code: ErrorCode.DECODE_FAILED }, `${n} elements`);
  }
});

t.test('packBatch gives the bytes of packing the array', async (t) => {
  for (const n of [2, 15, 16, 17, 255, 256]) {
    const msgs = Array.from({ length: n }, (_, i) => ({ t: 'ack', id: `m${i}`, from: 'alice' }));
    const parts = msgs.map((m) => pack(m));
    const batch = packBatch(parts);
    t.equal(Buffer.from(batch).toString('hex'), pack(msgs).toString('hex'), `${n} elements`);
    t.equal(batch.length, batchBytes(n, parts.reduce((a, p) => a + p.length, 0)), 'batchBytes predicts its size');
  }
  const one = pack(ping(1));
  t.equal(packBatch([one]), one, 'one message is sent as itself');
  t.equal(batchBytes(1, one.length), one.length);
  t.throws(() => packBatch([]), RangeError);
  t.throws(() => packBatch(Array.from({ length: 257 }, () => one)), RangeError);
});

t.test('batchRuns: consecutive runs within the item and byte bounds; a part too large to share runs alone', async (t) => {
  const parts = [10, 10, 10, 50, 10, 10, 10, 10].map((n) => new Uint8Array(n));
  const runs: Array<[number, number]> = [];
  batchRuns(parts, 40, (s, e) => runs.push([s, e]), 3);
  t.same(runs, [[0, 3], [3, 4], [4, 7], [7, 8]], '3 at most, 40 bytes at most (the 50-byte part alone)');
  const one: Array<[number, number]> = [];
  batchRuns(parts.slice(0, 2), 1024, (s, e) => one.push([s, e]));
  t.same(one, [[0, 2]], 'everything in one run when it fits');
  t.notOk(batchFull(0, 0, 5000, 10), 'the first part of a batch always fits');
});
