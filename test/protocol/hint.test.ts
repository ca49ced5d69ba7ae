import t from 'tap';
import nacl from 'tweetnacl';
import { ed25519Sign, ErrorCode, HintError, hintKeyPair, MAX_HINT_BYTES, MAX_HINT_LIFETIME_MS, pack, random, signHint, verifyHint, type ConnectHint } from '@gravitas/protocol';
import { codeOf } from '../fixtures/codes.js';

const NOW = 1_700_000_000_000;
const keys = hintKeyPair(random(32));
const who = { user: 'alice', device: 'phone' };
const hint = (over: Partial<ConnectHint> = {}): ConnectHint => ({ cell: 'n1-0-abc', addr: '10.0.0.7:7400', ...who, issuedAt: NOW, expiresAt: NOW + 30_000, ...over });
const code = (fn: () => unknown): string | undefined => codeOf(fn, HintError);

t.test('a signed hint verifies and says where to go', async (t) => {
  const h = hint();
  t.same(verifyHint(signHint(h, keys.secretKey), keys.publicKey, who, NOW), h);
  t.same(verifyHint(signHint(hint({ addr: '[::1]:7400' }), keys.secretKey), keys.publicKey, who, NOW).addr, '[::1]:7400', 'IPv6 addresses');
});

t.test('native Ed25519 signing gives tweetnacl’s bytes (the reference clients verify with)', async (t) => {
  for (let i = 0; i < 50; i++) {
    const kp = nacl.sign.keyPair.fromSeed(random(32));
    const msg = random(i * 7);
    t.same(Buffer.from(ed25519Sign(msg, kp.secretKey)), Buffer.from(nacl.sign.detached(msg, kp.secretKey)), `key ${i}, ${msg.length} bytes`);
  }
  // RFC 8032 test 1: empty message.
  const seed = Buffer.from('9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60', 'hex');
  t.equal(Buffer.from(ed25519Sign(new Uint8Array(0), nacl.sign.keyPair.fromSeed(seed).secretKey)).toString('hex'), 'e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b');
  const h = signHint(hint(), keys.secretKey);
  t.same(Buffer.from(h.subarray(0, 64)), Buffer.from(nacl.sign.detached(h.subarray(64), keys.secretKey)), 'a hint’s signature is tweetnacl’s');
});

t.test('a caller may bring its own signature check; every other check still applies', async (t) => {
  const good = signHint(hint(), keys.secretKey);
  const seen: number[] = [];
  const native = (m: Uint8Array, sig: Uint8Array, pk: Uint8Array): boolean => {
    seen.push(m.length);
    return nacl.sign.detached.verify(m, sig, pk);
  };
  t.same(verifyHint(good, keys.publicKey, who, NOW, native), hint(), 'a good hint passes');
  t.equal(seen.length, 1, 'the given check was used');
  t.equal(code(() => verifyHint(good, keys.publicKey, who, NOW, () => false)), ErrorCode.HINT_INVALID, 'its "no" is a refusal');
  t.equal(code(() => verifyHint(good, keys.publicKey, who, NOW + 60_000, () => true)), ErrorCode.HINT_EXPIRED, 'expiry is still checked');
  t.equal(code(() => verifyHint(good, keys.publicKey, { user: 'mallory', device: 'phone' }, NOW, () => true)), ErrorCode.HINT_INVALID, 'the addressee is still checked');
});

t.test('the key is derived from the server secret: every cell of a cluster signs alike', async (t) => {
  const secret = random(32);
  t.same(hintKeyPair(secret).publicKey, hintKeyPair(secret).publicKey);
  t.notSame(hintKeyPair(secret).publicKey, hintKeyPair(random(32)).publicKey);
});

t.test('forged, altered, misdirected, oversized and expired hints are refused with a code', async (t) => {
  const good = signHint(hint(), keys.secretKey);
  t.equal(code(() => verifyHint(signHint(hint(), hintKeyPair(random(32)).secretKey), keys.publicKey, who, NOW)), ErrorCode.HINT_INVALID, 'signed by another key');
  const altered = good.slice();
  altered[altered.length - 3]! ^= 1;
  t.equal(code(() => verifyHint(altered, keys.publicKey, who, NOW)), ErrorCode.HINT_INVALID, 'one bit of the body flipped');
  const sig = good.slice();
  sig[5]! ^= 1;
  t.equal(code(() => verifyHint(sig, keys.publicKey, who, NOW)), ErrorCode.HINT_INVALID, 'one bit of the signature flipped');
  t.equal(code(() => verifyHint(good, keys.publicKey, { user: 'alice', device: 'laptop' }, NOW)), ErrorCode.HINT_INVALID, 'issued for another device');
  t.equal(code(() => verifyHint(good, keys.publicKey, { user: 'mallory', device: 'phone' }, NOW)), ErrorCode.HINT_INVALID, 'issued for another user');
  t.equal(code(() => verifyHint(good, keys.publicKey, who, NOW + 30_000)), ErrorCode.HINT_EXPIRED, 'expired at its expiry');
  t.equal(code(() => verifyHint(good.subarray(0, 64), keys.publicKey, who, NOW)), ErrorCode.HINT_INVALID, 'signature only');
  t.equal(code(() => verifyHint(new Uint8Array(MAX_HINT_BYTES + 1), keys.publicKey, who, NOW)), ErrorCode.HINT_INVALID, 'oversized, refused unread');
  t.equal(code(() => verifyHint(good, new Uint8Array(5), who, NOW)), ErrorCode.HINT_INVALID, 'no usable key');
  t.equal(code(() => verifyHint(signHint(hint({ expiresAt: NOW + MAX_HINT_LIFETIME_MS + 1 }), keys.secretKey), keys.publicKey, who, NOW)), ErrorCode.HINT_INVALID, 'lifetime beyond the bound');
  t.equal(code(() => verifyHint(signHint(hint({ addr: 'evil host:1' }), keys.secretKey), keys.publicKey, who, NOW)), ErrorCode.HINT_INVALID, 'address that is not host:port');
  t.equal(code(() => verifyHint(signHint(hint({ addr: 'h:99999' }), keys.secretKey), keys.publicKey, who, NOW)), ErrorCode.HINT_INVALID, 'port out of range');
  // Correctly signed garbage: the signature is checked first, then the contents.
  const body = pack({ c: 'x' });
  const junk = new Uint8Array(64 + body.length);
  junk.set(nacl.sign.detached(body, keys.secretKey), 0);
  junk.set(body, 64);
  t.equal(code(() => verifyHint(junk, keys.publicKey, who, NOW)), ErrorCode.HINT_INVALID, 'signed but malformed');
});

t.test('a hint may name the cell web listener too; a malformed one is refused, and the hint stays small', async (t) => {
  const h = hint({ web: '10.0.0.7:7600' });
  const signed = signHint(h, keys.secretKey);
  t.same(verifyHint(signed, keys.publicKey, who, NOW), h);
  t.notOk('web' in verifyHint(signHint(hint(), keys.secretKey), keys.publicKey, who, NOW), 'optional: absent when not given');
  t.equal(code(() => verifyHint(signHint(hint({ web: 'http://x:1' }), keys.secretKey), keys.publicKey, who, NOW)), ErrorCode.HINT_INVALID, 'web address that is not host:port');
  t.equal(code(() => verifyHint(signHint(hint({ web: 'h:70000' }), keys.secretKey), keys.publicKey, who, NOW)), ErrorCode.HINT_INVALID, 'web port out of range');
  const longest = signHint(hint({ cell: 'c'.repeat(128), addr: `${'h'.repeat(60)}:65535`, web: `${'w'.repeat(60)}:65535`, user: 'u'.repeat(64), device: 'd'.repeat(32) }), keys.secretKey);
  t.ok(longest.length <= MAX_HINT_BYTES, `long names still fit (${longest.length} bytes)`);
});
