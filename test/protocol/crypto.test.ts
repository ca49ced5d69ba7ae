import { createHmac } from 'node:crypto';
import t from 'tap';
import nacl from 'tweetnacl';
import {
  equalBytes, ErrorCode, fromBase64Url, generateKeyPair, HandshakeError, hkdf, keyPairFromSecret, naclSuite, nativeSuite, open, random, seal, sha256,
  toBase64Url, type DhSuite,
} from '@gravitas/protocol';
import { codeOf } from '../fixtures/codes.js';

const codeOfClass = (fn: () => unknown): string | undefined => codeOf(fn, HandshakeError);

const h = (s: string): Uint8Array => new Uint8Array(Buffer.from(s.replace(/\s+/g, ''), 'hex'));
const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');
const suites: DhSuite[] = [nativeSuite, naclSuite];


// RFC 7748 section 5.2: X25519(scalar, u) = output; scalars and u values are unclamped/unmasked on input.
const RFC7748_5_2 = [
  {
    scalar: 'a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4',
    u: 'e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c',
    out: 'c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552',
  },
  {
    // u has its top bit set: implementations must mask it.
    scalar: '4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d',
    u: 'e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493',
    out: '95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957',
  },
];
const RFC7748_ITERATED = { 1: '422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079', 1000: '684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51' };
// RFC 7748 section 6.1
const ALICE = { sk: '77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a', pk: '8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a' };
const BOB = { sk: '5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb', pk: 'de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f' };
const SHARED = '4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742';

// Points of small order on Curve25519 or its twist, canonical encodings (the libsodium blacklist):
// every clamped scalar maps them to the all-zero output.
const LOW_ORDER = {
  zero: '0000000000000000000000000000000000000000000000000000000000000000',
  one: '0100000000000000000000000000000000000000000000000000000000000000',
  order8a: 'e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800',
  order8b: '5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157',
  'p-1': 'ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f',
  p: 'edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f',
  'p+1': 'eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f',
};

t.test('RFC 7748 section 5.2 vectors, both suites', async (t) => {
  for (const s of suites) {
    for (const v of RFC7748_5_2) t.equal(hex(s.fromSecret(h(v.scalar)).dh(h(v.u))), v.out, `${s.name}: ${v.scalar.slice(0, 8)}`);
  }
});

t.test('RFC 7748 section 5.2 iterated vector (1 and 1000 iterations), both suites', async (t) => {
  for (const s of suites) {
    let k: Uint8Array = h('09'.padEnd(64, '0'));
    let u: Uint8Array = Uint8Array.from(k);
    for (let i = 1; i <= 1000; i++) {
      const next = s.fromSecret(k).dh(u);
      u = k;
      k = next;
      if (i === 1) t.equal(hex(k), RFC7748_ITERATED[1], `${s.name}: 1 iteration`);
    }
    t.equal(hex(k), RFC7748_ITERATED[1000], `${s.name}: 1000 iterations`);
  }
});

t.test('RFC 7748 section 6.1 Diffie-Hellman, both suites and across them', async (t) => {
  for (const s of suites) {
    const a = s.fromSecret(h(ALICE.sk));
    const b = s.fromSecret(h(BOB.sk));
    t.equal(hex(a.publicKey), ALICE.pk, `${s.name}: Alice's public key`);
    t.equal(hex(b.publicKey), BOB.pk, `${s.name}: Bob's public key`);
    t.equal(hex(a.dh(b.publicKey)), SHARED, `${s.name}: K from Alice`);
    t.equal(hex(b.dh(a.publicKey)), SHARED, `${s.name}: K from Bob`);
  }
  t.equal(hex(nativeSuite.fromSecret(h(ALICE.sk)).dh(naclSuite.fromSecret(h(BOB.sk)).publicKey)), SHARED);
  t.equal(hex(keyPairFromSecret(h(ALICE.sk)).publicKey), ALICE.pk, 'keyPairFromSecret');
});

t.test('random keys agree across suites', async (t) => {
  for (let i = 0; i < 20; i++) {
    const a = nativeSuite.generate();
    const b = naclSuite.generate();
    t.equal(a.publicKey.length, 32);
    t.equal(b.publicKey.length, 32);
    const k1 = a.dh(b.publicKey);
    const k2 = b.dh(a.publicKey);
    t.equal(hex(k1), hex(k2), `pair ${i}: native generate x tweetnacl generate`);
    // The same secret in both suites: same public key, same output on any u (high bit, non-canonical).
    const sk = random(32);
    const n = nativeSuite.fromSecret(sk);
    const w = naclSuite.fromSecret(sk);
    t.equal(hex(n.publicKey), hex(w.publicKey), `pair ${i}: same public key from the same secret`);
    const u = random(32);
    u[31] = u[31]! | 0x80; // top bit set: both must mask it
    t.equal(hex(n.dh(u)), hex(w.dh(u)), `pair ${i}: same output on a u with the top bit set`);
    t.equal(hex(n.dh(u)), hex(n.dh(Uint8Array.from(u, (x, j) => (j === 31 ? x & 0x7f : x)))), 'masking the top bit changes nothing');
  }
  // Non-canonical u values (>= p) that are not low order.
  const sk = random(32);
  for (const u of ['f0ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f', 'ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f', 'efffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f']) {
    t.equal(hex(nativeSuite.fromSecret(sk).dh(h(u))), hex(naclSuite.fromSecret(sk).dh(h(u))), `non-canonical u ${u.slice(0, 4)}`);
  }
  const kp = generateKeyPair();
  t.equal(hex(keyPairFromSecret(kp.secretKey).publicKey), hex(kp.publicKey));
  t.equal(hex(nativeSuite.fromSecret(kp.secretKey).publicKey), hex(kp.publicKey), 'native suite derives the same public key');
});

t.test('low-order public keys give BAD_PUBLIC_KEY with both suites', async (t) => {
  for (const s of suites) {
    const keys = [s.generate(), s.fromSecret(h(ALICE.sk)), s.fromSecret(random(32))];
    for (const [label, point] of Object.entries(LOW_ORDER)) {
      const withTopBit = h(point);
      withTopBit[31] = withTopBit[31]! | 0x80; // same point after masking
      for (const k of keys) {
        t.equal(codeOfClass(() => k.dh(h(point))), ErrorCode.BAD_PUBLIC_KEY, `${s.name}: ${label}`);
        t.equal(codeOfClass(() => k.dh(withTopBit)), ErrorCode.BAD_PUBLIC_KEY, `${s.name}: ${label} with the top bit set`);
      }
    }
  }
  // Why the check matters: raw X25519 on a low-order point is all-zero whatever the secret.
  t.equal(hex(nacl.scalarMult(random(32), h(LOW_ORDER.order8a))), LOW_ORDER.zero);
});

t.test('BAD_PUBLIC_KEY is a fatal HandshakeError', async (t) => {
  try {
    nativeSuite.generate().dh(new Uint8Array(32));
    t.fail('should throw');
  } catch (err) {
    t.ok(err instanceof HandshakeError);
    t.equal((err as HandshakeError).code, ErrorCode.BAD_PUBLIC_KEY);
    t.ok((err as HandshakeError).fatal);
  }
});

t.test('SHA-256 and HKDF-SHA256 known answers', async (t) => {
  t.equal(hex(sha256(new TextEncoder().encode('abc'))), 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
  t.equal(hex(sha256(new TextEncoder().encode('a'), new TextEncoder().encode('bc'))), hex(sha256(new TextEncoder().encode('abc'))), 'parts are concatenated');
  t.equal(hex(sha256()), 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
  // RFC 5869 test case 3 (empty salt and info).
  t.equal(hex(hkdf(h('0b'.repeat(22)), new Uint8Array(0), '', 42)), '8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8');
  // The info string is UTF-8; check against HKDF written out from RFC 5869.
  const ikm = random(32);
  const salt = random(32);
  const prk = createHmac('sha256', salt).update(ikm).digest();
  const t1 = createHmac('sha256', prk).update('gravitas mixkey').update(Uint8Array.of(1)).digest();
  const t2 = createHmac('sha256', prk).update(t1).update('gravitas mixkey').update(Uint8Array.of(2)).digest();
  t.equal(hex(hkdf(ikm, salt, 'gravitas mixkey', 64)), hex(Buffer.concat([t1, t2])));
  // Views into larger buffers are read as views.
  const big = random(64);
  t.equal(hex(hkdf(big.subarray(32), big.subarray(0, 32), 'x', 32)), hex(hkdf(Uint8Array.from(big.subarray(32)), Uint8Array.from(big.subarray(0, 32)), 'x', 32)));
});

t.test('secretbox: round trip, any flipped bit fails, wrong key or nonce fails', async (t) => {
  const key = random(32);
  const nonce = random(24);
  const msg = new TextEncoder().encode('attack at dawn');
  const box = seal(msg, nonce, key);
  t.equal(box.length, msg.length + 16);
  t.equal(Buffer.from(open(box, nonce, key)!).toString(), 'attack at dawn');
  let rejected = 0;
  for (let i = 0; i < box.length * 8; i++) {
    const bad = Uint8Array.from(box);
    bad[i >> 3] = bad[i >> 3]! ^ (1 << (i & 7));
    if (open(bad, nonce, key) === null) rejected++;
  }
  t.equal(rejected, box.length * 8, 'every single-bit flip is rejected');
  t.equal(open(box, nonce, random(32)), null, 'wrong key');
  const n2 = Uint8Array.from(nonce);
  n2[23] = n2[23]! ^ 1;
  t.equal(open(box, n2, key), null, 'wrong nonce');
  t.equal(open(box.subarray(0, 15), nonce, key), null, 'shorter than a MAC');
  // tweetnacl's secretbox is XSalsa20-Poly1305 as in NaCl: matches nacl.secretbox directly.
  t.equal(hex(box), hex(nacl.secretbox(msg, nonce, key)));
});

t.test('equalBytes and base64url helpers', async (t) => {
  t.ok(equalBytes(h('0102'), h('0102')));
  t.notOk(equalBytes(h('0102'), h('0103')));
  t.notOk(equalBytes(h('0102'), h('010203')), 'different lengths are unequal (no throw)');
  t.notOk(equalBytes(new Uint8Array(0), new Uint8Array(0)), 'fails closed on empty input (tweetnacl verify)');
  const k = random(32);
  t.equal(hex(fromBase64Url(toBase64Url(k), 32)), hex(k));
  t.equal(toBase64Url(h('fbff')), '-_8');
  t.throws(() => fromBase64Url('a+b/'), TypeError, 'standard base64 alphabet refused');
  t.throws(() => fromBase64Url('AAAA=='), TypeError, 'padding refused');
  t.throws(() => fromBase64Url(toBase64Url(random(31)), 32), TypeError, 'wrong length refused');
  t.equal(random(24).length, 24);
  t.not(hex(random(16)), hex(random(16)));
});
