import t from 'tap';
import { decodeClientHandshake, decodeClientMessage, DecodeError, ErrorCode, pack, ProtocolError, unpack } from '@gravitas/protocol';
import { codeOf, norm } from '../fixtures/codes.js';

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');
const str = (s: string): number[] => {
  const b = Buffer.from(s);
  if (b.length > 31) throw new Error('fixstr only');
  return [0xa0 | b.length, ...b];
};



/** unpack must either return a value or throw DecodeError(DECODE_FAILED); anything else is a bug. */
function unpackOrCoded(bytes: Uint8Array): { ok: true; value: unknown } | { ok: false; code: string } {
  try {
    return { ok: true, value: unpack(bytes) };
  } catch (err) {
    if (err instanceof DecodeError) return { ok: false, code: err.code };
    throw err;
  }
}

t.test('round trip of the value shapes the protocol uses', async (t) => {
  const v = { t: 'hello', v: 1, e: new Uint8Array(32).fill(3), s: new Uint8Array(48), p: new Uint8Array(16), n: -5, ok: true, ts: 1_700_000_000_123, txt: 'ünï' };
  const back = unpack(pack(v)) as Record<string, unknown>;
  t.strictSame(norm(back), norm(v));
  t.ok(back.e instanceof Uint8Array, 'binary decodes as bytes');
  t.equal(Object.getPrototypeOf(back), Object.prototype, 'maps decode as plain objects');
});

t.test('encoding is plain msgpack (no records, no extensions)', async (t) => {
  t.equal(pack({ a: 1 }).toString('hex'), '81a16101');
  t.equal(pack({ b: new Uint8Array([1, 2]) }).toString('hex'), '81a162c4020102');
  // Integers beyond 32 bits are written as float64 by msgpackr.
  t.equal(pack(1_700_000_000_000).toString('hex'), 'cb4278bcfe56800000');
  const twice = pack([{ a: 1, b: 2 }, { a: 3, b: 4 }]);
  t.equal(twice.toString('hex'), '9282a16101a1620282a16103a16204', 'repeated shapes are not turned into records');
});

t.test('64-bit integers from other encoders decode as numbers', async (t) => {
  t.equal(unpack(hex('cf 0000018bcfe56800')), 1_700_000_000_000, 'uint64');
  t.equal(unpack(hex('d3 fffffe7430 1a9800')), -1_700_000_000_000, 'int64');
  // A hello payload timestamp written as uint64 (e.g. by a Go or Rust client) is accepted.
  const ping = hex(`82 ${Buffer.from(str('t')).toString('hex')} ${Buffer.from(str('ping')).toString('hex')} ${Buffer.from(str('n')).toString('hex')} cf 0000018bcfe56800`);
  t.same(decodeClientMessage(unpack(ping)), { t: 'ping', n: 1_700_000_000_000 });
  // Beyond 2^53 precision is lost, and the integer range check refuses it.
  const hugePing = Buffer.concat([ping.subarray(0, ping.length - 8), hex('ffffffffffffffff')]);
  t.equal(codeOf(() => decodeClientMessage(unpack(hugePing))), ErrorCode.BAD_MESSAGE);
  const unsafe = Buffer.concat([ping.subarray(0, ping.length - 8), hex('0020000000000001')]);
  t.equal(codeOf(() => decodeClientMessage(unpack(unsafe))), ErrorCode.BAD_MESSAGE, '2^53 + 1');
});

t.test('trailing bytes, empty input and truncation give DECODE_FAILED', async (t) => {
  const good = pack({ t: 'ping', n: 7 });
  t.equal(codeOf(() => unpack(Buffer.concat([good, Buffer.from([0x00])]))), ErrorCode.DECODE_FAILED, 'one trailing byte');
  t.equal(codeOf(() => unpack(Buffer.concat([good, good]))), ErrorCode.DECODE_FAILED, 'two whole values');
  t.equal(codeOf(() => unpack(new Uint8Array(0))), ErrorCode.DECODE_FAILED, 'empty');
  for (let i = 1; i < good.length; i++) {
    t.equal(codeOf(() => unpack(good.subarray(0, i))), ErrorCode.DECODE_FAILED, `truncated to ${i} bytes`);
  }
  // Lengths that claim more than is there.
  t.equal(codeOf(() => unpack(hex('c4ff00'))), ErrorCode.DECODE_FAILED, 'bin8 too short');
  t.equal(codeOf(() => unpack(hex('dbffffffff41'))), ErrorCode.DECODE_FAILED, 'str32 of 4 GiB');
  t.equal(codeOf(() => unpack(hex('ddffffffff'))), ErrorCode.DECODE_FAILED, 'array32 of 4G elements');
  t.equal(codeOf(() => unpack(hex('dfffffffff'))), ErrorCode.DECODE_FAILED, 'map32 of 4G entries');
  t.equal(codeOf(() => unpack(hex('c70101ff'))), ErrorCode.DECODE_FAILED, 'unknown extension type');
  t.equal(codeOf(() => unpack(hex('81 80 01'))), ErrorCode.DECODE_FAILED, 'map as a map key');
});

t.test('the error is a DecodeError that carries the cause and is fatal', async (t) => {
  try {
    unpack(hex('92 01'));
    t.fail('should throw');
  } catch (err) {
    t.ok(err instanceof DecodeError);
    t.equal((err as DecodeError).code, ErrorCode.DECODE_FAILED);
    t.ok((err as DecodeError).fatal);
    t.ok((err as DecodeError).cause instanceof Error);
  }
});

/** [[[...nil]]] or {"":{"":...nil}} nested `depth` levels. */
function nest(kind: 'array' | 'map', depth: number): Buffer {
  const unit = kind === 'array' ? [0x91] : [0x81, 0xa0];
  const b = Buffer.alloc(depth * unit.length + 1);
  for (let i = 0; i < depth; i++) b.set(unit, i * unit.length);
  b[b.length - 1] = 0xc0;
  return b;
}

t.test('deeply nested input throws a coded error, quickly, and leaves the decoder usable', async (t) => {
  for (const kind of ['array', 'map'] as const) {
    for (const depth of [1_000, 10_000, 30_000, 1_048_575]) {
      const start = performance.now();
      const r = unpackOrCoded(nest(kind, depth));
      t.ok(performance.now() - start < 2000, `${kind} depth ${depth}: bounded time`);
      // Either the decoder refuses it (stack overflow caught), or the value fails validation.
      if (!r.ok) t.equal(r.code, ErrorCode.DECODE_FAILED, `${kind} depth ${depth}: DECODE_FAILED`);
      else t.equal(codeOf(() => decodeClientMessage(r.value)), ErrorCode.BAD_MESSAGE, `${kind} depth ${depth}: BAD_MESSAGE`);
    }
  }
  // Within one default-sized frame (64 KiB) the stack overflows: a coded error, not a crash.
  t.equal(codeOf(() => unpack(nest('array', 65_535))), ErrorCode.DECODE_FAILED);
  t.same(unpack(pack({ t: 'ping', n: 1 })), { t: 'ping', n: 1 }, 'decoder state is clean afterwards');
  // Nesting hidden inside an unknown field of an otherwise valid message.
  const deep = Buffer.concat([Buffer.from([0x83, ...str('t'), ...str('ack'), ...str('x')]), nest('array', 60_000), Buffer.from([...str('id'), ...str('a1')])]);
  t.equal(codeOf(() => decodeClientMessage(unpack(deep))), ErrorCode.DECODE_FAILED);
});

t.test('__proto__ keys cannot pollute prototypes', async (t) => {
  // {"t":"send","__proto__":{"polluted":true},"id":"a","to":"b","text":"x"}
  const bytes = Buffer.from([0x85, ...str('t'), ...str('send'), ...str('__proto__'), 0x81, ...str('polluted'), 0xc3, ...str('id'), ...str('a'), ...str('to'), ...str('b'), ...str('text'), ...str('x')]);
  const v = unpack(bytes) as Record<string, unknown>;
  t.equal(Object.getPrototypeOf(v), Object.prototype, 'prototype unchanged');
  t.equal((v as { polluted?: unknown }).polluted, undefined);
  t.equal(({} as { polluted?: unknown }).polluted, undefined, 'Object.prototype not polluted');
  t.notOk(Object.prototype.hasOwnProperty.call(v, '__proto__'));
  t.same(decodeClientMessage(v), { t: 'send', id: 'a', to: 'b', text: 'x' }, 'validated copy carries only known fields');
  // The same key as a nested map key, and through a msgpackr record definition.
  const nested = unpack(Buffer.from([0x81, ...str('x'), 0x81, ...str('__proto__'), 0x81, ...str('polluted'), 0xc3])) as { x: object };
  t.equal(Object.getPrototypeOf(nested.x), Object.prototype);
  const rec = unpack(hex(`d4 72 40 92 ${Buffer.from(str('__proto__')).toString('hex')} ${Buffer.from(str('t')).toString('hex')} 81 ${Buffer.from(str('polluted')).toString('hex')} c3 ${Buffer.from(str('send')).toString('hex')}`)) as object;
  t.equal(Object.getPrototypeOf(rec), Object.prototype);
  t.equal((rec as { polluted?: unknown }).polluted, undefined);
});

t.test('records defined inside a message are decoded but do not leak into the next message', async (t) => {
  // msgpackr record definition (fixext1 type 0x72) of slot 0x40 with keys a, b.
  const withRecord = hex(`d4 72 40 92 ${Buffer.from(str('a')).toString('hex')} ${Buffer.from(str('b')).toString('hex')} 05 06`);
  t.same(unpack(withRecord), { a: 5, b: 6 });
  t.equal(unpack(hex('40')), 64, 'byte 0x40 is the fixint 64 again, not the record');
});

t.test('random garbage never escapes as an uncoded error', async (t) => {
  let x = 12345;
  const next = (): number => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
  let decoded = 0;
  let failed = 0;
  for (let i = 0; i < 3000; i++) {
    const b = Buffer.alloc(1 + (next() % 64));
    for (let k = 0; k < b.length; k++) b[k] = next() & 0xff;
    const r = unpackOrCoded(b);
    if (r.ok) {
      decoded++;
      // Whatever came out, the validators give a coded error or a valid message.
      for (const dec of [decodeClientMessage, decodeClientHandshake]) {
        try {
          dec(r.value);
        } catch (err) {
          if (!(err instanceof ProtocolError)) throw err;
        }
      }
    } else {
      t.equal(r.code, ErrorCode.DECODE_FAILED);
      failed++;
    }
  }
  t.ok(decoded > 0 && failed > 0, `decoded ${decoded}, rejected ${failed}`);
});

t.test('every extension type byte gives a value or DECODE_FAILED', async (t) => {
  for (let type = 0; type < 256; type++) {
    for (const payload of ['00', '0000', '00000000', '0000000000000000']) {
      const lenByte = { 2: 'd4', 4: 'd5', 8: 'd6', 16: 'd7' }[payload.length] as string;
      const r = unpackOrCoded(hex(`${lenByte} ${type.toString(16).padStart(2, '0')} ${payload}`));
      if (!r.ok && r.code !== ErrorCode.DECODE_FAILED) t.fail(`ext ${type}`);
      if (r.ok) {
        try {
          decodeClientMessage(r.value);
          t.fail(`ext ${type} made a valid message`);
        } catch (err) {
          if (!(err instanceof ProtocolError)) t.fail(`ext ${type}: uncoded ${String(err)}`);
        }
      }
    }
  }
  t.pass('no extension escapes');
});
