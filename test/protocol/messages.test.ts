import t from 'tap';
import {
  decodeClientHandshake, decodeClientMessage, decodeHelloPayload, decodeServerHandshake, decodeServerMessage, decodeWelcomePayload,
  DecodeError, ErrorCode, isName, MAX_ID_LENGTH, MAX_TEXT_LENGTH, REQUEST_OPS, pack, ProtocolError, unpack,
} from '@gravitas/protocol';
import { codeOf, norm } from '../fixtures/codes.js';

const codeOfClass = (fn: () => unknown): string | undefined => codeOf(fn, DecodeError);

/*
 * Table-driven: for every decoder and message type, a valid message, then each
 * field removed, given every wrong type, and pushed just past its limits. Every
 * rejection must be a DecodeError with exactly the expected code.
 */

type Spec =
  | { k: 'bin'; min: number; max: number }
  | { k: 'str'; min: number; max: number }
  | { k: 'name'; max: number }
  | { k: 'int'; min: number; max: number }
  | { k: 'code' }
  | { k: 'oneOf'; values: string[] }
  | { k: 'bool' };

interface Field { spec: Spec; optional?: boolean }
interface Case { decoder: string; decode: (v: unknown) => unknown; type?: string; valid: Record<string, unknown>; fields: Record<string, Field> }

const b = (n: number, fill = 1): Uint8Array => new Uint8Array(n).fill(fill);
const bin = (min: number, max = min): Spec => ({ k: 'bin', min, max });
const str = (max: number, min = 0): Spec => ({ k: 'str', min, max });
const name = (max = MAX_ID_LENGTH): Spec => ({ k: 'name', max });
const int = (min = 0, max = Number.MAX_SAFE_INTEGER): Spec => ({ k: 'int', min, max });
const code: Spec = { k: 'code' };
const opt = (spec: Spec): Field => ({ spec, optional: true });
const req = (spec: Spec): Field => ({ spec });



const cases: Case[] = [
  {
    decoder: 'decodeClientHandshake', decode: decodeClientHandshake, type: 'hello',
    valid: { t: 'hello', v: 1, e: b(32), s: b(48), p: b(40) },
    fields: { v: req(int(0, 255)), e: req(bin(32)), s: req(bin(48)), p: req(bin(16, 8192)), cookie: opt(bin(16, 64)) },
  },
  {
    decoder: 'decodeClientHandshake', decode: decodeClientHandshake, type: 'resume',
    valid: { t: 'resume', v: 1, e: b(32), tk: b(120), p: b(40), cookie: b(16) },
    fields: { v: req(int(0, 255)), e: req(bin(32)), tk: req(bin(32, 1024)), p: req(bin(16, 8192)), cookie: opt(bin(16, 64)) },
  },
  { decoder: 'decodeServerHandshake', decode: decodeServerHandshake, type: 'cookie', valid: { t: 'cookie', c: b(16) }, fields: { c: req(bin(16, 64)) } },
  { decoder: 'decodeServerHandshake', decode: decodeServerHandshake, type: 'welcome', valid: { t: 'welcome', e: b(32), p: b(200) }, fields: { e: req(bin(32)), p: req(bin(16, 4096)) } },
  {
    decoder: 'decodeServerHandshake', decode: decodeServerHandshake, type: 'error',
    valid: { t: 'error', code: 'BUSY', message: 'try later', ref: 'm1' },
    fields: { code: req(code), message: req(str(1024)), ref: opt(str(MAX_ID_LENGTH)) },
  },
  {
    decoder: 'decodeHelloPayload', decode: decodeHelloPayload,
    valid: { user: 'alice', device: 'phone-1', ts: 1_700_000_000_000, reg: 'token' },
    fields: { user: req(name()), device: req(name(32)), ts: req(int()), reg: opt(str(256)) },
  },
  {
    decoder: 'decodeHelloPayload', decode: decodeHelloPayload,
    valid: { user: 'alice', device: 'phone-1', ts: 1_700_000_000_000, cred: 'eyJhbGciOiJFZERTQSJ9.e30.sig' },
    fields: { cred: opt(str(6144)) },
  },
  {
    decoder: 'decodeHelloPayload', decode: decodeHelloPayload,
    valid: { user: 'alice', device: 'phone-1', ts: 1_700_000_000_000, link: b(200) },
    fields: { link: opt(bin(65, 512)) },
  },
  {
    decoder: 'decodeWelcomePayload', decode: decodeWelcomePayload,
    valid: { session: 'c0-1', cell: 'node-a.c0', node: 'node-a', serverTime: 5, resumed: false, ticket: b(100), ticketExpires: 99 },
    fields: {
      session: req(str(MAX_ID_LENGTH, 1)), cell: req(str(128, 1)), node: req(str(128, 1)), serverTime: req(int()), resumed: req({ k: 'bool' }),
      ticket: opt(bin(32, 1024)),
    },
  },
  {
    decoder: 'decodeClientMessage', decode: decodeClientMessage, type: 'send',
    valid: { t: 'send', id: 'm-1', to: 'bob', text: 'hi' },
    fields: { id: req(name()), to: req(name()), text: req(str(MAX_TEXT_LENGTH)) },
  },
  {
    decoder: 'decodeClientMessage', decode: decodeClientMessage, type: 'send',
    valid: { t: 'send', id: 'm-1', g: 'grp1', text: 'hi' },
    fields: { id: req(name()), g: req(name()), text: req(str(MAX_TEXT_LENGTH)) },
  },
  { decoder: 'decodeClientMessage', decode: decodeClientMessage, type: 'ack', valid: { t: 'ack', id: 'm-1', from: 'alice' }, fields: { id: req(name()), from: req(name()) } },
  { decoder: 'decodeClientMessage', decode: decodeClientMessage, type: 'read', valid: { t: 'read', id: 'm-1', from: 'alice', rk: new Uint8Array(12) }, fields: { id: req(name()), from: req(name()), rk: req(bin(12)) } },
  { decoder: 'decodeClientMessage', decode: decodeClientMessage, type: 'typing', valid: { t: 'typing', to: 'bob', on: true }, fields: { to: req(name()), on: req({ k: 'bool' }) } },
  { decoder: 'decodeClientMessage', decode: decodeClientMessage, type: 'typing', valid: { t: 'typing', g: 'grp1', on: false }, fields: { g: req(name()), on: req({ k: 'bool' }) } },
  { decoder: 'decodeClientMessage', decode: decodeClientMessage, type: 'presence', valid: { t: 'presence', s: 'away' }, fields: { s: req({ k: 'oneOf', values: ['online', 'away'] }) } },
  {
    decoder: 'decodeClientMessage', decode: decodeClientMessage, type: 'req',
    valid: { t: 'req', rid: 1, op: 'contacts.add', a: { user: 'bob' } },
    fields: { rid: req(int(0, 2 ** 32)), op: req({ k: 'oneOf', values: [...REQUEST_OPS] }) },
  },
  { decoder: 'decodeClientMessage', decode: decodeClientMessage, type: 'ping', valid: { t: 'ping', n: 3 }, fields: { n: req(int()) } },
  { decoder: 'decodeClientMessage', decode: decodeClientMessage, type: 'finish', valid: { t: 'finish', h: b(32) }, fields: { h: req(bin(32)) } },
  {
    decoder: 'decodeClientMessage', decode: decodeClientMessage, type: 'bye',
    valid: { t: 'bye', code: 'SHUTTING_DOWN', message: 'bye' },
    fields: { code: opt(code), message: opt(str(1024)) },
  },
  {
    decoder: 'decodeServerMessage', decode: decodeServerMessage, type: 'msg',
    valid: { t: 'msg', id: 'm-1', from: 'alice', fd: 'phone', to: 'bob', text: 'hi', ts: 17 },
    fields: { id: req(name()), from: req(name()), fd: req(name(32)), to: req(name()), text: req(str(MAX_TEXT_LENGTH)), ts: req(int()) },
  },
  {
    decoder: 'decodeServerMessage', decode: decodeServerMessage, type: 'status',
    valid: { t: 'status', id: 'm-1', s: 'failed', code: 'UNDELIVERABLE' },
    fields: { id: req(name()), s: req({ k: 'oneOf', values: ['delivered', 'stored', 'failed'] }), code: opt(code) },
  },
  {
    decoder: 'decodeServerMessage', decode: decodeServerMessage, type: 'msg',
    valid: { t: 'msg', id: 'm-1', from: 'alice', fd: 'phone', to: 'bob', text: 'hi', ts: 17, g: 'grp1', seq: 9 },
    fields: { g: opt(name()), seq: opt(int()) },
  },
  {
    decoder: 'decodeServerMessage', decode: decodeServerMessage, type: 'msg',
    valid: { t: 'msg', id: '_n1', from: '_account', fd: 'system', to: 'bob', text: 'a device was added', ts: 17, sys: 'device-added', about: 'tablet', rk: b(12) },
    fields: { sys: opt(name(32)), about: opt(name()), rk: opt(bin(12)) },
  },
  {
    decoder: 'decodeServerMessage', decode: decodeServerMessage, type: 'rcpt',
    valid: { t: 'rcpt', id: 'r-1', ref: 'm-1', by: 'bob', bd: 'phone', s: 'delivered', ts: 5 },
    fields: { id: req(name()), ref: req(name()), by: req(name()), bd: opt(name(32)), s: req({ k: 'oneOf', values: ['delivered', 'read', 'expired'] }), ts: req(int()) },
  },
  {
    decoder: 'decodeServerMessage', decode: decodeServerMessage, type: 'pres',
    valid: { t: 'pres', user: 'bob', s: 'offline', last: 5 },
    fields: { user: req(name()), s: req({ k: 'oneOf', values: ['online', 'away', 'offline'] }), last: opt(int()) },
  },
  { decoder: 'decodeServerMessage', decode: decodeServerMessage, type: 'typing', valid: { t: 'typing', from: 'bob', on: true, g: 'grp1' }, fields: { from: req(name()), on: req({ k: 'bool' }), g: opt(name()) } },
  {
    decoder: 'decodeServerMessage', decode: decodeServerMessage, type: 'res',
    valid: { t: 'res', rid: 4, ok: false, code: 'NOT_FOUND', message: 'no such group' },
    fields: { rid: req(int(0, 2 ** 32)), code: req(code), message: req(str(1024)) },
  },
  { decoder: 'decodeServerMessage', decode: decodeServerMessage, type: 'pong', valid: { t: 'pong', n: 0 }, fields: { n: req(int()) } },
  {
    decoder: 'decodeServerMessage', decode: decodeServerMessage, type: 'error',
    valid: { t: 'error', code: 'RATE_LIMITED', message: '' },
    fields: { code: req(code), message: req(str(1024)), ref: opt(str(MAX_ID_LENGTH)) },
  },
  { decoder: 'decodeServerMessage', decode: decodeServerMessage, type: 'bye', valid: { t: 'bye' }, fields: { code: opt(code), message: opt(str(1024)) } },
];

const WRONG_TYPES: Array<[string, unknown]> = [
  ['null', null], ['integer', 7], ['float', 1.5], ['string', 'x'], ['boolean', true], ['binary', b(32)], ['array', [1]], ['map', { a: 1 }],
];

function acceptsType(spec: Spec, v: unknown): boolean {
  switch (spec.k) {
    case 'bin':
      return v instanceof Uint8Array && v.length >= spec.min && v.length <= spec.max;
    case 'str':
      return typeof v === 'string' && v.length >= spec.min && v.length <= spec.max;
    case 'name':
      return v === 'x';
    case 'int':
      return v === 7 && spec.max >= 7;
    case 'bool':
      return typeof v === 'boolean';
    default:
      return false;
  }
}

/** Values that must be rejected (just past the limits) and accepted (at the limits). */
function limits(spec: Spec): { bad: Array<[string, unknown]>; good: Array<[string, unknown]> } {
  switch (spec.k) {
    case 'bin':
      return {
        bad: [[`${spec.min - 1} bytes`, b(spec.min - 1)], [`${spec.max + 1} bytes`, b(spec.max + 1)]],
        good: [[`${spec.min} bytes`, b(spec.min)], [`${spec.max} bytes`, b(spec.max)]],
      };
    case 'str':
      return {
        bad: [[`${spec.max + 1} chars`, 'x'.repeat(spec.max + 1)], ...(spec.min > 0 ? [['empty', ''] as [string, unknown]] : [])],
        good: [[`${spec.max} chars`, 'y'.repeat(spec.max)], [`${spec.min} chars`, 'z'.repeat(spec.min)]],
      };
    case 'name':
      return {
        bad: [
          ['empty', ''], [`${spec.max + 1} chars`, 'n'.repeat(spec.max + 1)], ['dot (NATS token separator)', 'a.b'], ['wildcard *', 'a*'], ['wildcard >', '>'],
          ['space', 'a b'], ['non-ASCII', 'zoë'], ['slash', 'a/b'], ['NUL', 'a\u0000'],
        ],
        good: [[`${spec.max} chars`, 'N'.repeat(spec.max)], ['all allowed classes', 'Az09_-']],
      };
    case 'int':
      return {
        bad: [
          ['below min', spec.min - 1], ['above max', spec.max === Number.MAX_SAFE_INTEGER ? 2 ** 53 : spec.max + 1], ['fraction', spec.min + 0.5],
          ['NaN', Number.NaN], ['Infinity', Number.POSITIVE_INFINITY], ['numeric string', '1'], ['bigint', 1n],
        ],
        good: [['min', spec.min], ['max', spec.max]],
      };
    case 'code':
      return { bad: [['unknown code', 'NOT_A_CODE'], ['lower case', 'busy'], ['empty', '']], good: Object.values(ErrorCode).map((c) => [c, c]) };
    case 'oneOf':
      return { bad: [['other string', 'pending'], ['case', spec.values[0]!.toUpperCase()]], good: spec.values.map((v) => [v, v]) };
    case 'bool':
      return { bad: [['0', 0], ['string', 'true']], good: [['true', true], ['false', false]] };
  }
}

for (const c of cases) {
  const label = c.type ? `${c.decoder} ${c.type}` : c.decoder;
  t.test(label, async (t) => {
    // Valid, also after a msgpack round trip; unknown fields are dropped.
    const out = c.decode(c.valid);
    t.strictSame(norm(out), norm(c.valid), 'valid message decodes to itself');
    t.strictSame(norm(c.decode(unpack(pack(c.valid)))), norm(c.valid), 'and survives msgpack');
    t.strictSame(norm(c.decode({ ...c.valid, extra: 'x', constructor: 1, toString: 2 })), norm(c.valid), 'unknown fields are dropped');

    for (const [field, f] of Object.entries(c.fields)) {
      const without = { ...c.valid };
      delete without[field];
      if (f.optional) t.equal(codeOfClass(() => c.decode(without)), undefined, `${field} may be absent`);
      else t.equal(codeOfClass(() => c.decode(without)), ErrorCode.BAD_MESSAGE, `${field} missing`);
      t.equal(codeOfClass(() => c.decode({ ...c.valid, [field]: undefined })), f.optional ? undefined : ErrorCode.BAD_MESSAGE, `${field} undefined`);

      for (const [what, v] of WRONG_TYPES) {
        if (acceptsType(f.spec, v)) continue;
        t.equal(codeOfClass(() => c.decode({ ...c.valid, [field]: v })), ErrorCode.BAD_MESSAGE, `${field} as ${what}`);
      }
      const { bad, good } = limits(f.spec);
      for (const [what, v] of bad) t.equal(codeOfClass(() => c.decode({ ...c.valid, [field]: v })), ErrorCode.BAD_MESSAGE, `${field}: ${what} rejected`);
      for (const [what, v] of good) {
        const m = { ...c.valid, [field]: v };
        t.strictSame(norm(c.decode(m)), norm(m), `${field}: ${what} accepted`);
      }
    }

    // The message-level checks.
    for (const [what, v] of [['null', null], ['array', [c.valid]], ['string', 'hello'], ['number', 1], ['binary', pack(c.valid)], ['undefined', undefined]] as const) {
      t.equal(codeOfClass(() => c.decode(v)), ErrorCode.BAD_MESSAGE, `message as ${what}`);
    }
    if (c.type) {
      const { t: _t, ...untyped } = c.valid;
      t.equal(codeOfClass(() => c.decode(untyped)), ErrorCode.BAD_MESSAGE, 't missing');
      for (const v of [1, null, b(4), ['hello']]) t.equal(codeOfClass(() => c.decode({ ...c.valid, t: v })), ErrorCode.BAD_MESSAGE, `t as ${JSON.stringify(norm(v))}`);
      for (const v of ['', 'HELLO', `${c.type} `, 'x'.repeat(10_000), '__proto__', 'constructor', 'toString']) {
        t.equal(codeOfClass(() => c.decode({ ...c.valid, t: v })), ErrorCode.UNKNOWN_TYPE, `t = ${JSON.stringify(v.slice(0, 12))}`);
      }
    }
  });
}

t.test('welcome payload: a ticket needs its expiry', async (t) => {
  const w = { session: 's', cell: 'c', node: 'n', serverTime: 1, resumed: true, ticket: b(64) };
  t.equal(codeOfClass(() => decodeWelcomePayload(w)), ErrorCode.BAD_MESSAGE);
  t.equal(codeOfClass(() => decodeWelcomePayload({ ...w, ticketExpires: -1 })), ErrorCode.BAD_MESSAGE);
  const { ticket: _x, ...noTicket } = w;
  t.strictSame(decodeWelcomePayload({ ...noTicket, ticketExpires: 5 }), noTicket, 'an expiry without a ticket is ignored');
});

t.test('types of the other direction or phase are UNKNOWN_TYPE', async (t) => {
  const wrongPlace: Array<[string, (v: unknown) => unknown, Record<string, unknown>]> = [
    ['server msg to client decoder', decodeClientMessage, { t: 'msg', id: 'a', from: 'b', fd: 'c', to: 'd', text: 'e', ts: 1 }],
    ['status to client decoder', decodeClientMessage, { t: 'status', id: 'a', s: 'delivered' }],
    ['pong to client decoder', decodeClientMessage, { t: 'pong', n: 1 }],
    ['error to client decoder', decodeClientMessage, { t: 'error', code: 'BUSY', message: '' }],
    ['hello after the handshake', decodeClientMessage, { t: 'hello', v: 1, e: b(32), s: b(48), p: b(16) }],
    ['send to server decoder', decodeServerMessage, { t: 'send', id: 'a', to: 'b', text: 'c' }],
    ['finish to server decoder', decodeServerMessage, { t: 'finish', h: b(32) }],
    ['welcome after the handshake', decodeServerMessage, { t: 'welcome', e: b(32), p: b(16) }],
    ['send as a first flight', decodeClientHandshake, { t: 'send', id: 'a', to: 'b', text: 'c' }],
    ['welcome as a first flight', decodeClientHandshake, { t: 'welcome', e: b(32), p: b(16) }],
    ['finish as a first flight', decodeClientHandshake, { t: 'finish', h: b(32) }],
    ['hello to the client', decodeServerHandshake, { t: 'hello', v: 1, e: b(32), s: b(48), p: b(16) }],
    ['msg before the welcome', decodeServerHandshake, { t: 'msg', id: 'a', from: 'b', fd: 'c', to: 'd', text: 'e', ts: 1 }],
  ];
  for (const [what, dec, m] of wrongPlace) t.equal(codeOfClass(() => dec(m)), ErrorCode.UNKNOWN_TYPE, what);
  t.equal(codeOfClass(() => decodeClientHandshake({ t: 'hello3' })), ErrorCode.UNKNOWN_TYPE, 'an unknown first flight is UNKNOWN_TYPE even without the other fields');
});

t.test('decode errors are coded, non-fatal, and name the field', async (t) => {
  try {
    decodeClientMessage({ t: 'send', id: 'a', to: 'b.c', text: '' });
    t.fail('should throw');
  } catch (err) {
    t.ok(err instanceof DecodeError && err instanceof ProtocolError);
    t.equal((err as DecodeError).code, ErrorCode.BAD_MESSAGE);
    t.equal((err as DecodeError).fatal, false, 'a bad message inside an open session keeps the session');
    t.match((err as Error).message, /"to"/);
  }
  try {
    decodeServerMessage({ t: 'x'.repeat(5000) });
    t.fail('should throw');
  } catch (err) {
    t.equal((err as DecodeError).code, ErrorCode.UNKNOWN_TYPE);
    t.equal((err as DecodeError).fatal, false);
    t.ok((err as Error).message.length < 100, 'the echoed type is truncated');
  }
});

t.test('__proto__ and prototype keys do not leak into decoded messages', async (t) => {
  const hostile = JSON.parse('{"t":"ack","id":"a","from":"b","__proto__":{"t":"send","to":"x","text":"y"}}') as unknown;
  const out = decodeClientMessage(hostile);
  t.strictSame(out, { t: 'ack', id: 'a', from: 'b' });
  t.equal(Object.getPrototypeOf(out), Object.prototype);
  const viaMsgpack = unpack(pack(hostile)) as object;
  t.strictSame(decodeClientMessage(viaMsgpack), { t: 'ack', id: 'a', from: 'b' }, 'the same after msgpack (where the key becomes __proto_)');
});

t.test('isName: the name rule used for ids, users and devices', async (t) => {
  t.ok(isName('Az09_-'));
  t.ok(isName('x'.repeat(MAX_ID_LENGTH)));
  t.notOk(isName('x'.repeat(MAX_ID_LENGTH + 1)));
  t.notOk(isName('x'.repeat(33), 32));
  for (const bad of ['', 'a.b', 'a*', '>', 'a b', 'zoë', 'a/b']) t.notOk(isName(bad), JSON.stringify(bad));
});

t.test('a hello offers at most one proof of account membership', async (t) => {
  const base = { user: 'alice', device: 'phone-1', ts: 1 };
  for (const two of [{ reg: 'x', cred: 'y' }, { reg: 'x', link: b(100) }, { cred: 'y', link: b(100) }]) {
    t.equal(codeOfClass(() => decodeHelloPayload({ ...base, ...two })), ErrorCode.BAD_MESSAGE, Object.keys(two).join(' and '));
  }
});
