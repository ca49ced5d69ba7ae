import t from 'tap';
import nacl from 'tweetnacl';
import {
  ErrorCode, HintError, hintKeyPair, MAX_WAKE_BYTES, MAX_WAKE_LIFETIME_MS, pack, random, SeenWakes, signHint, signWake, verifyHint, verifyWake, WakeError,
  type ConnectHint,
} from '@gravitas/protocol';
import { codeOf } from '../fixtures/codes.js';

const NOW = 1_700_000_000_000;
const keys = hintKeyPair(random(32));
const who = { user: 'alice', device: 'phone' };
const connect = (over: Partial<ConnectHint> = {}): ConnectHint => ({ cell: 'n1-0-abc', addr: '10.0.0.7:7400', ...who, issuedAt: NOW, expiresAt: NOW + 30_000, ...over });
const hintFor = (over: Partial<ConnectHint> = {}, sk = keys.secretKey): Uint8Array => signHint(connect(over), sk);
const token = (over: { user?: string; device?: string; hint?: Uint8Array; issuedAt?: number; expiresAt?: number; id?: Uint8Array } = {}, sk = keys.secretKey): Uint8Array =>
  signWake({ ...who, hint: hintFor(), issuedAt: NOW, expiresAt: NOW + 20_000, ...over }, sk);
const code = (fn: () => unknown): string | undefined => codeOf(fn, WakeError);

t.test('a signed token verifies, carries its hint, and is small', async (t) => {
  const w = verifyWake(token(), keys.publicKey, who, NOW);
  t.equal(w.user, 'alice');
  t.equal(w.device, 'phone');
  t.equal(w.id.length, 16, 'a 16-byte random id');
  t.equal(w.expiresAt, NOW + 20_000);
  t.same(w.connect, connect(), 'the embedded hint is verified and read');
  t.notSame(verifyWake(token(), keys.publicKey, who, NOW).id, w.id, 'every token gets its own id');
  t.ok(token().length < 400, `a typical token is ${token().length} bytes`);
  t.ok(token().length <= MAX_WAKE_BYTES);
});

t.test('forged, altered, misdirected, oversized and expired tokens are refused with a code', async (t) => {
  const good = token();
  t.equal(code(() => verifyWake(token({}, hintKeyPair(random(32)).secretKey), keys.publicKey, who, NOW)), ErrorCode.WAKE_INVALID, 'signed by another key');
  // A relayer may change any byte; none of its changes verifies.
  let accepted = 0;
  for (let i = 0; i < good.length; i++) {
    for (const bit of [0x01, 0x80]) {
      const bad = good.slice();
      bad[i]! ^= bit;
      if (code(() => verifyWake(bad, keys.publicKey, who, NOW)) !== ErrorCode.WAKE_INVALID) accepted++;
    }
  }
  t.equal(accepted, 0, `each of ${good.length} bytes flipped (two bits each): all WAKE_INVALID`);
  t.equal(code(() => verifyWake(good, keys.publicKey, { user: 'alice', device: 'laptop' }, NOW)), ErrorCode.WAKE_INVALID, 'issued for another device');
  t.equal(code(() => verifyWake(good, keys.publicKey, { user: 'mallory', device: 'phone' }, NOW)), ErrorCode.WAKE_INVALID, 'issued for another user');
  t.equal(code(() => verifyWake(good, keys.publicKey, who, NOW + 20_000)), ErrorCode.WAKE_EXPIRED, 'expired at its expiry');
  t.equal(code(() => verifyWake(token({ hint: hintFor({ expiresAt: NOW + 5_000 }) }), keys.publicKey, who, NOW + 10_000)), ErrorCode.WAKE_EXPIRED, 'its hint expired first');
  t.equal(code(() => verifyWake(token({ hint: hintFor({ device: 'laptop' }) }), keys.publicKey, who, NOW)), ErrorCode.WAKE_INVALID, 'a genuine hint for another device inside');
  t.equal(code(() => verifyWake(token({ hint: hintFor({}, hintKeyPair(random(32)).secretKey) }), keys.publicKey, who, NOW)), ErrorCode.WAKE_INVALID, 'a hint signed by another key inside');
  t.equal(code(() => verifyWake(good.subarray(0, 64), keys.publicKey, who, NOW)), ErrorCode.WAKE_INVALID, 'signature only');
  t.equal(code(() => verifyWake(new Uint8Array(MAX_WAKE_BYTES + 1), keys.publicKey, who, NOW)), ErrorCode.WAKE_INVALID, 'oversized, refused unread');
  t.equal(code(() => verifyWake(good, new Uint8Array(5), who, NOW)), ErrorCode.WAKE_INVALID, 'no usable key');
  t.equal(code(() => verifyWake(new Uint8Array(200), keys.publicKey, who, NOW)), ErrorCode.WAKE_INVALID, 'zeros');
  t.equal(code(() => verifyWake('junk' as unknown as Uint8Array, keys.publicKey, who, NOW)), ErrorCode.WAKE_INVALID, 'not bytes');
});

t.test('domain separation: a hint never passes as a token, nor a token as a hint', async (t) => {
  const hint = hintFor();
  t.equal(code(() => verifyWake(hint, keys.publicKey, who, NOW)), ErrorCode.WAKE_INVALID, 'a genuine hint is not a token');
  t.equal(codeOf(() => verifyHint(token(), keys.publicKey, who, NOW), HintError), ErrorCode.HINT_INVALID, 'a genuine token is not a hint');
  // A token body signed the way hints are signed (no context) does not verify either.
  const body = token().subarray(64);
  const asHint = new Uint8Array(64 + body.length);
  asHint.set(nacl.sign.detached(body, keys.secretKey), 0);
  asHint.set(body, 64);
  t.equal(code(() => verifyWake(asHint, keys.publicKey, who, NOW)), ErrorCode.WAKE_INVALID, 'a token body signed without the context');
  // Correctly signed with the context, but not a token.
  const ctx = new TextEncoder().encode('gravitas wake token v1\0');
  const junkBody = pack({ t: 'move', u: 'alice' });
  const junk = new Uint8Array(64 + junkBody.length);
  junk.set(nacl.sign.detached(new Uint8Array([...ctx, ...junkBody]), keys.secretKey), 0);
  junk.set(junkBody, 64);
  t.equal(code(() => verifyWake(junk, keys.publicKey, who, NOW)), ErrorCode.WAKE_INVALID, 'signed but malformed');
});

t.test('the signer refuses tokens that could never verify', async (t) => {
  t.equal(code(() => token({ expiresAt: NOW + MAX_WAKE_LIFETIME_MS + 1 })), ErrorCode.WAKE_INVALID, 'lifetime beyond the bound');
  t.equal(code(() => token({ expiresAt: NOW })), ErrorCode.WAKE_INVALID, 'no lifetime');
  t.equal(code(() => token({ id: new Uint8Array(3) })), ErrorCode.WAKE_INVALID, 'id of the wrong size');
  t.equal(code(() => token({ hint: new Uint8Array(700) })), ErrorCode.WAKE_INVALID, 'too large');
});

t.test('single use: SeenWakes admits an id once until it expires, and stays bounded', async (t) => {
  const seen = new SeenWakes(3);
  const w = verifyWake(token(), keys.publicKey, who, NOW);
  seen.admit(w, NOW);
  t.equal(code(() => seen.admit(w, NOW + 1)), ErrorCode.WAKE_REPLAYED, 'the same id again');
  t.equal(code(() => seen.admit({ id: w.id.slice(), expiresAt: w.expiresAt }, NOW + 2)), ErrorCode.WAKE_REPLAYED, 'a copy of the id');
  seen.admit(verifyWake(token(), keys.publicKey, who, NOW), NOW);
  seen.admit(verifyWake(token(), keys.publicKey, who, NOW), NOW);
  t.equal(code(() => seen.admit(verifyWake(token(), keys.publicKey, who, NOW), NOW)), ErrorCode.WAKE_INVALID, 'full of live ids: refused (fail closed)');
  t.equal(seen.size, 3);
  seen.admit({ id: random(16), expiresAt: NOW + 60_000 }, NOW + 20_000);
  t.equal(seen.size, 1, 'expired ids are pruned when room is needed');
});

t.test('the verifier refuses a genuinely signed token whose lifetime is over 5 minutes', async (t) => {
  // signWake refuses such tokens, so sign one by hand: the device must not trust the issuer to have checked.
  const ctx = new TextEncoder().encode('gravitas wake token v1\0');
  const handSigned = (iat: number, exp: number): Uint8Array => {
    const body = pack({ t: 'wake', id: random(16), u: who.user, d: who.device, h: hintFor({ issuedAt: iat, expiresAt: exp }), iat, exp });
    const out = new Uint8Array(64 + body.length);
    out.set(nacl.sign.detached(new Uint8Array([...ctx, ...body]), keys.secretKey), 0);
    out.set(body, 64);
    return out;
  };
  t.equal(verifyWake(handSigned(NOW, NOW + MAX_WAKE_LIFETIME_MS), keys.publicKey, who, NOW).expiresAt, NOW + MAX_WAKE_LIFETIME_MS, 'exactly 5 minutes: accepted (the hand signer is right)');
  t.equal(code(() => verifyWake(handSigned(NOW, NOW + MAX_WAKE_LIFETIME_MS + 1), keys.publicKey, who, NOW)), ErrorCode.WAKE_INVALID, '5 minutes and 1 ms: WAKE_INVALID');
  t.equal(code(() => verifyWake(handSigned(NOW, NOW + 86_400_000), keys.publicKey, who, NOW + 60_000)), ErrorCode.WAKE_INVALID, 'a day, still unexpired: WAKE_INVALID');
  t.equal(code(() => verifyWake(handSigned(NOW - 3_600_000, NOW + 60_000), keys.publicKey, who, NOW)), ErrorCode.WAKE_INVALID, 'issued an hour ago, valid another minute: WAKE_INVALID');
});
