import t from 'tap';
import nacl from 'tweetnacl';
import { ChannelError, encodeFrame, ErrorCode, FrameDecoder, MAX_FRAME_COUNTER, random, SecureChannel } from '@gravitas/protocol';
import { codeOf } from '../fixtures/codes.js';

const enc = new TextEncoder();
const dec = new TextDecoder();

function pair(): { a: SecureChannel; b: SecureChannel; k1: Uint8Array; k2: Uint8Array } {
  const k1 = random(32);
  const k2 = random(32);
  return { a: new SecureChannel(k1, k2), b: new SecureChannel(k2, k1), k1, k2 };
}


function nonce(counter: bigint): Uint8Array {
  const n = new Uint8Array(24);
  new DataView(n.buffer).setBigUint64(16, counter);
  return n;
}

t.test('sealFrame is encodeFrame(seal()) in one buffer, and shares the counter', async (t) => {
  const k1 = random(32);
  const k2 = random(32);
  const x = new SecureChannel(k1, k2);
  const y = new SecureChannel(k1, k2);
  const z = new SecureChannel(k2, k1);
  for (const text of ['', 'one', 'x'.repeat(5000)]) {
    const f = x.sealFrame(enc.encode(text));
    t.ok(f.equals(encodeFrame(y.seal(enc.encode(text)))), `same bytes (${text.length} chars)`);
    const bodies: Uint8Array[] = [];
    new FrameDecoder().push(f, (b) => bodies.push(b));
    t.equal(dec.decode(z.open(bodies[0]!)), text, 'the receiver opens it');
  }
  x.seal(enc.encode('interleaved'));
  t.equal(x.sent, 4, 'one counter for both');
});

t.test('round trip both ways, counters advance', async (t) => {
  const { a, b } = pair();
  for (let i = 0; i < 50; i++) {
    t.equal(dec.decode(b.open(a.seal(enc.encode(`a->b ${i}`)))), `a->b ${i}`);
    if (i % 3 === 0) t.equal(dec.decode(a.open(b.seal(enc.encode(`b->a ${i}`)))), `b->a ${i}`);
  }
  t.equal(a.sent, 50);
  t.equal(b.received, 50);
  t.equal(b.sent, 17);
  t.equal(a.received, 17);
  t.equal(b.open(a.seal(new Uint8Array(0))).length, 0, 'empty plaintext');
});

t.test('frame layout: u64 BE counter, then secretbox under nonce = 16 zero bytes + counter', async (t) => {
  const { a, k1 } = pair();
  a.seal(enc.encode('zero'));
  const f = a.seal(enc.encode('one'));
  t.equal(f.length, 8 + 16 + 3);
  t.same([...f.subarray(0, 8)], [0, 0, 0, 0, 0, 0, 0, 1]);
  const plain = nacl.secretbox.open(f.subarray(8), nonce(1n), k1);
  t.ok(plain);
  t.equal(dec.decode(plain!), 'one');
});

t.test('a replayed frame is NONCE_REUSE, a skipped one NONCE_GAP', async (t) => {
  const { a, b } = pair();
  const f0 = a.seal(enc.encode('0'));
  const f1 = a.seal(enc.encode('1'));
  const f2 = a.seal(enc.encode('2'));
  b.open(f0);
  t.equal(codeOf(() => b.open(f0)), ErrorCode.NONCE_REUSE, 'replay of the last frame');
  t.equal(codeOf(() => b.open(f2)), ErrorCode.NONCE_GAP, 'skipping frame 1');
  t.equal(b.received, 1, 'rejected frames do not move the counter');
  t.equal(dec.decode(b.open(f1)), '1');
  t.equal(dec.decode(b.open(f2)), '2');
  t.equal(codeOf(() => b.open(f1)), ErrorCode.NONCE_REUSE, 'replay of an older frame');
  try {
    b.open(f0);
  } catch (err) {
    t.ok(err instanceof ChannelError);
    t.ok((err as ChannelError).fatal);
  }
});

t.test('every flipped bit is rejected with the right code, and leaves the channel usable', async (t) => {
  const { a, b } = pair();
  // Bring both sides to counter 5 (binary 101), so counter flips can go either way.
  for (let i = 0; i < 5; i++) b.open(a.seal(enc.encode(`warm-up ${i}`)));
  const f = a.seal(enc.encode('hello, world'));
  const expected: Record<string, number> = {};
  for (let i = 0; i < f.length * 8; i++) {
    const bad = Buffer.from(f);
    bad[i >> 3] = bad[i >> 3]! ^ (1 << (i & 7));
    let want: string = ErrorCode.DECRYPT_FAILED;
    if (i < 64) {
      const c = bad.readBigUInt64BE(0);
      want = c < 5n ? ErrorCode.NONCE_REUSE : ErrorCode.NONCE_GAP;
    }
    const got = codeOf(() => b.open(bad));
    if (got !== want) t.fail(`bit ${i}: got ${got}, want ${want}`);
    expected[want] = (expected[want] ?? 0) + 1;
  }
  // Counter 5 = ...0101: flipping bit 0 or bit 2 of the last byte lowers it; every other counter bit raises it.
  t.strictSame(expected, { [ErrorCode.NONCE_REUSE]: 2, [ErrorCode.NONCE_GAP]: 62, [ErrorCode.DECRYPT_FAILED]: (f.length - 8) * 8 });
  t.equal(dec.decode(b.open(f)), 'hello, world', 'the genuine frame still opens afterwards');
});

t.test('wrong key, wrong direction, short and truncated frames: DECRYPT_FAILED', async (t) => {
  const { a, b } = pair();
  const other = new SecureChannel(random(32), random(32));
  const f = a.seal(enc.encode('secret'));
  t.equal(codeOf(() => other.open(f)), ErrorCode.DECRYPT_FAILED, 'wrong key');
  const { a: a2 } = pair();
  t.equal(codeOf(() => a2.open(a2.seal(enc.encode('x')))), ErrorCode.DECRYPT_FAILED, 'a frame reflected back to its sender');
  t.equal(codeOf(() => b.open(f.subarray(0, f.length - 1))), ErrorCode.DECRYPT_FAILED, 'truncated');
  t.equal(codeOf(() => b.open(Buffer.concat([f, Buffer.from([0])]))), ErrorCode.DECRYPT_FAILED, 'extended');
  t.equal(codeOf(() => b.open(f.subarray(0, 23))), ErrorCode.DECRYPT_FAILED, 'shorter than counter + MAC');
  t.equal(codeOf(() => b.open(new Uint8Array(0))), ErrorCode.DECRYPT_FAILED, 'empty');
  t.equal(dec.decode(b.open(f)), 'secret');
});

t.test('counters far ahead (beyond 2^53) are NONCE_GAP, not a precision bug', async (t) => {
  const { a, b } = pair();
  const f = a.seal(enc.encode('x'));
  for (const c of [0xffffffffffffffffn, 2n ** 53n, 2n ** 53n + 1n, 2n ** 48n]) {
    const bad = Buffer.from(f);
    bad.writeBigUInt64BE(c, 0);
    t.equal(codeOf(() => b.open(bad)), ErrorCode.NONCE_GAP, `counter ${c}`);
  }
});

t.test('the send counter never wraps: refused at 2^48', async (t) => {
  t.equal(MAX_FRAME_COUNTER, 2 ** 48);
  const { a, k1 } = pair();
  // Jump the private counter to the end of its range instead of sealing 2^48 frames.
  (a as unknown as { sendCounter: number }).sendCounter = MAX_FRAME_COUNTER - 1;
  const last = a.seal(enc.encode('last'));
  t.equal(last.readBigUInt64BE(0), 2n ** 48n - 1n);
  t.equal(dec.decode(nacl.secretbox.open(last.subarray(8), nonce(2n ** 48n - 1n), k1)!), 'last');
  t.equal(codeOf(() => a.seal(enc.encode('one too many'))), ErrorCode.NONCE_REUSE);
  t.equal(codeOf(() => a.seal(enc.encode('and again'))), ErrorCode.NONCE_REUSE, 'stays refused');
  t.equal(a.sent, MAX_FRAME_COUNTER);
});

t.test('the same plaintext twice gives different frames (no nonce reuse)', async (t) => {
  const { a } = pair();
  const x = a.seal(enc.encode('same'));
  const y = a.seal(enc.encode('same'));
  t.not(x.subarray(8).toString('hex'), y.subarray(8).toString('hex'));
});
