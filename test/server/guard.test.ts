/*
 * The handshake guard of a cell (cell/guard.ts; docs/protocol.md §4.5, §4.6): its
 * in-flight cap, the cookie secret's rotation with the previous secret accepted for
 * one period, and the replay cache's two generations and cap. These run on the
 * real class with a clock the test moves (rotations are minutes apart) and a small
 * replay cap (the real one is 2,000,000 keys); whole-node tests show the same
 * guard at work through sockets (identity.test.ts "BUSY…", protocol-errors.test.ts,
 * sources.test.ts).
 */
import t from 'tap';
import { ErrorCode, HELLO_MAX_SKEW_MS, random } from '@gravitas/protocol';
import { HandshakeGuard } from '@gravitas/server';
import { codeOf } from '../fixtures/codes.js';

const COOKIE_ROTATE_MS = 120_000;
const GENERATION_MS = 2 * HELLO_MAX_SKEW_MS;
const SRC = '198.51.100.7';

/** A guard on a clock the test moves; cookies demanded from the first hello on (threshold 0). */
function guard(o: { maxInFlight?: number; replayMax?: number } = {}): { g: HandshakeGuard; advance: (ms: number) => void } {
  let now = 1_000_000;
  const g = new HandshakeGuard(o.maxInFlight ?? 4, 0, { now: () => now, ...(o.replayMax !== undefined && { replayMax: o.replayMax }) });
  return { g, advance: (ms) => void (now += ms) };
}

const hex = (b: Uint8Array | null): string => (b ? Buffer.from(b).toString('hex') : 'accepted');

t.test('cookies: bound to the source and the key; the previous secret is honoured for one rotation, not longer', async (t) => {
  const { g, advance } = guard();
  const e = random(32);
  const c0 = g.admit(SRC, e, undefined);
  t.ok(c0 instanceof Uint8Array && c0.length === 16, 'a hello without a cookie is challenged');
  t.equal(g.admit(SRC, e, c0!), null, 'its echo is accepted');
  t.not(g.admit('198.51.100.8', e, c0!), null, 'the same cookie from another address is challenged again');
  t.not(g.admit(SRC, random(32), c0!), null, 'the same cookie with another ephemeral key is challenged again');

  advance(COOKIE_ROTATE_MS + 1);
  const c1 = g.admit(SRC, e, undefined);
  t.not(hex(c1), hex(c0), 'after 120 s the secret has rotated: a new cookie');
  t.equal(g.admit(SRC, e, c0!), null, 'a cookie of the previous secret is still accepted (a client that was challenged just before the rotation)');
  t.equal(g.admit(SRC, e, c1!), null, 'and one of the current secret');

  advance(COOKIE_ROTATE_MS + 1);
  const again = g.admit(SRC, e, c0!);
  t.not(again, null, 'two rotations later the first cookie is refused: a fresh challenge');
  t.not(hex(again), hex(c0), 'and the fresh challenge is not the old cookie');
  t.equal(g.admit(SRC, e, c1!), null, 'the cookie of the secret just retired is still accepted');
});

t.test('at most maxInFlight handshakes in progress: BUSY beyond, a finished one frees its slot', async (t) => {
  const { g } = guard({ maxInFlight: 2 });
  // Threshold 0 challenges every hello: a cookie-less admit returns a cookie; what matters is whether it throws BUSY.
  const admit = (): string => codeOf(() => g.admit(SRC, random(32), undefined)) ?? 'admitted';
  g.begin();
  t.equal(admit(), 'admitted', 'one in progress: a first flight is looked at');
  g.begin();
  t.equal(admit(), ErrorCode.BUSY, 'two in progress (the cap): BUSY before any other work');
  t.equal(admit(), ErrorCode.BUSY, 'and again');
  g.end();
  t.equal(admit(), 'admitted', 'one finished: admitted again');
});

t.test('replay cache: an ephemeral key is refused for two generations (240 s each), then forgotten', async (t) => {
  const { g, advance } = guard();
  const record = (e: Uint8Array): string => codeOf(() => g.recordEphemeral(e)) ?? 'recorded';
  const e1 = random(32);
  t.equal(record(e1), 'recorded');
  t.equal(record(e1), ErrorCode.HANDSHAKE_REPLAY, 'the same hello again: HANDSHAKE_REPLAY');
  t.equal(record(Uint8Array.from([...e1.subarray(0, 8), ...random(24)])), ErrorCode.HANDSHAKE_REPLAY, 'keys are compared by their first 8 bytes');

  advance(GENERATION_MS);
  t.equal(record(random(32)), 'recorded', 'a new generation begins (the first key moves to the older one)');
  t.equal(record(e1), ErrorCode.HANDSHAKE_REPLAY, 'a key of the older generation is still refused: it outlives the ±120 s hello window');

  advance(GENERATION_MS);
  t.equal(record(random(32)), 'recorded', 'another generation begins');
  t.equal(record(e1), 'recorded', 'two generations later the key is forgotten (its hello would be stale by now)');
});

t.test('replay cache: at most replayMax keys over both generations, BUSY beyond until the older generation ages out', async (t) => {
  const { g, advance } = guard({ replayMax: 4 });
  const record = (e: Uint8Array): string => codeOf(() => g.recordEphemeral(e)) ?? 'recorded';
  const keys = Array.from({ length: 4 }, () => random(32));
  t.same(keys.slice(0, 2).map(record), ['recorded', 'recorded']);
  advance(GENERATION_MS);
  t.same(keys.slice(2).map(record), ['recorded', 'recorded'], 'two more in the next generation: 4 in all');
  t.equal(record(random(32)), ErrorCode.BUSY, 'full: a new key is BUSY (the client retries later)');
  t.equal(record(keys[0]!), ErrorCode.HANDSHAKE_REPLAY, 'a replay of a remembered key is still named as such');
  advance(GENERATION_MS);
  t.equal(record(random(32)), 'recorded', 'the older generation aged out: room again');
  t.equal(record(keys[3]!), ErrorCode.HANDSHAKE_REPLAY, 'the keys of the newer generation are kept');
});
