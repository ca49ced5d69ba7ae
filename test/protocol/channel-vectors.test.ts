import { readFileSync } from 'node:fs';
import t from 'tap';
import { ChannelError, ErrorCode, pack, SecureChannel, unpack, type ChannelCipher } from '@gravitas/protocol';
import { browserPrimitives, nodePrimitives } from '@gravitas/protocol/internal';
import { runChannelVectors, type ChannelVectors } from '../fixtures/channel-vectors.js';

/*
 * test/vectors/channel.json: fixed key, counter and plaintext → frame bytes, for ChaCha20-Poly1305
 * (the `aead:chacha20poly1305` capability) and secretbox. The Node build (node:crypto) must give
 * them; so must the browser build's @noble/ciphers (here in Node; test/protocol/browser-bundle.test.ts
 * runs the bundle in Chromium too).
 */

const V = JSON.parse(readFileSync(new URL('../vectors/channel.json', import.meta.url), 'utf8')) as ChannelVectors;
const b = (h: string): Uint8Array => new Uint8Array(Buffer.from(h, 'hex'));
const hex = (x: Uint8Array): string => Buffer.from(x).toString('hex');

t.test('the Node build seals and opens the vector frames', async (t) => {
  t.ok(V.frames.some((f) => f.cipher === 'chacha20poly1305') && V.frames.some((f) => f.cipher === 'xsalsa20poly1305'), 'both ciphers have vectors');
  const got = runChannelVectors(V);
  V.frames.forEach((v, i) => {
    t.equal(got[i]!.frame, v.frame, `${v.cipher}: ${v.note ?? ''}`);
    t.equal(got[i]!.opened, v.plaintext, `${v.cipher}: opens back`);
  });
});

t.test('@noble/ciphers (the browser build) gives the bytes of node:crypto', async (t) => {
  for (const v of V.frames.filter((f) => f.cipher === 'chacha20poly1305')) {
    const nonce = new Uint8Array(12);
    new DataView(nonce.buffer).setBigUint64(4, BigInt(v.counter));
    const plain = b(v.plaintext);
    for (const [name, p] of [['noble', browserPrimitives], ['node', nodePrimitives]] as const) {
      const out = new Uint8Array(plain.length + 16);
      p.chachaSeal(b(v.key), nonce, plain, out, 0);
      t.equal(hex(out), v.frame.slice(16), `${name}: ${v.note ?? ''}`);
      t.equal(hex(p.chachaOpen(b(v.key), nonce, b(v.frame.slice(16)))!), v.plaintext, `${name} opens it`);
      const bad = b(v.frame.slice(16));
      bad[bad.length - 1]! ^= 0x80;
      t.equal(p.chachaOpen(b(v.key), nonce, bad), null, `${name}: a flipped tag bit does not open`);
      t.equal(p.chachaOpen(b(v.key), nonce, new Uint8Array(15)), null, `${name}: shorter than a tag`);
    }
  }
});

const codeOf = (fn: () => unknown): string | undefined => {
  try {
    fn();
  } catch (err) {
    return err instanceof ChannelError ? err.code : String(err);
  }
  return undefined;
};

for (const cipher of ['chacha20poly1305', 'xsalsa20poly1305'] as ChannelCipher[]) {
  t.test(`${cipher}: replay, gap, forgery and the 28-byte overhead`, async (t) => {
    const k1 = new Uint8Array(32).fill(1);
    const k2 = new Uint8Array(32).fill(2);
    const a = new SecureChannel(k1, k2, cipher);
    const z = new SecureChannel(k2, k1, cipher);
    const f0 = a.seal(pack({ t: 'ping', n: 0 }));
    t.equal(f0.length, 8 + pack({ t: 'ping', n: 0 }).length + 16, 'counter + plaintext + tag');
    t.strictSame(unpack(z.open(f0)), { t: 'ping', n: 0 });
    t.equal(codeOf(() => z.open(f0)), ErrorCode.NONCE_REUSE, 'replayed');
    a.seal(pack({ t: 'ping', n: 1 }));
    const f2 = a.seal(pack({ t: 'ping', n: 2 }));
    t.equal(codeOf(() => z.open(f2)), ErrorCode.NONCE_GAP, 'one skipped');
    const forged = Buffer.from(f2);
    forged.writeBigUInt64BE(1n, 0);
    t.equal(codeOf(() => z.open(forged)), ErrorCode.DECRYPT_FAILED, 'counter 2 relabelled as 1');
    t.equal(z.received, 1, 'a rejected frame does not advance the counter');
    const framed = a.sealFrame(pack({ t: 'ping', n: 3 }));
    t.equal(framed.readUInt32BE(0), framed.length - 4, 'sealFrame: the length prefix');
    const other: ChannelCipher = cipher === 'chacha20poly1305' ? 'xsalsa20poly1305' : 'chacha20poly1305';
    t.equal(codeOf(() => new SecureChannel(k2, k1, other).open(f0)), ErrorCode.DECRYPT_FAILED, 'the other cipher does not open it');
  });
}
