import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import t, { type Test } from 'tap';
import nacl from 'tweetnacl';
import { browserPrimitives as browserPrims, nodePrimitives as nodePrims } from '@gravitas/protocol/internal';
import { naclSuite } from '@gravitas/protocol';
import { bundleForBrowser, chromiumMissing, launchChromium, NODE_STUBS, SDK_ENTRY } from '../fixtures/browser.js';
import type { ChannelVectors } from '../fixtures/channel-vectors.js';
import { hex, type Vectors } from '../fixtures/handshake-vectors.js';

/*
 * The protocol in a browser: primitives.browser.ts (chosen by the package.json
 * "browser" field) gives the same bytes as the node:crypto primitives, and a
 * bundle built with the SDK's esbuild options reproduces the handshake vectors,
 * in Node and in headless Chromium.
 */

const V = JSON.parse(readFileSync(new URL('../vectors/handshake.json', import.meta.url), 'utf8')) as Vectors;
const C = JSON.parse(readFileSync(new URL('../vectors/channel.json', import.meta.url), 'utf8')) as ChannelVectors;
const ENTRY = fileURLToPath(new URL('../fixtures/browser-vectors-entry.ts', import.meta.url));
type Run = (v: Vectors, c: ChannelVectors) => {
  suite: string; full: unknown; resumed: unknown; sha256: string; hkdf: string; b64: string; back: string; randomLength: number; channel: Array<{ frame: string; opened: string }>;
};

/** What the test page's global scope holds. */
interface Page { runVectors?: Run; navigator: { userAgent: string } }

const bytes = (n: number, seed: number): Uint8Array => Uint8Array.from({ length: n }, (_, i) => (i * 131 + seed * 7) & 0xff);

t.test('browser primitives give the bytes of the node:crypto ones', async (t) => {
  t.equal(browserPrims.nativeSuite, naclSuite, 'no native X25519 in a browser: the tweetnacl suite');
  for (const n of [0, 1, 55, 56, 64, 1000, 100_000]) {
    t.equal(hex(browserPrims.sha256(bytes(n, 1))), hex(nodePrims.sha256(bytes(n, 1))), `sha256 of ${n} bytes`);
  }
  t.equal(hex(browserPrims.sha256(bytes(10, 2), bytes(70, 3))), hex(nodePrims.sha256(bytes(10, 2), bytes(70, 3))), 'sha256 of parts');
  for (const len of [1, 32, 64, 100, 255 * 32]) {
    t.equal(hex(browserPrims.hkdf(bytes(32, 4), bytes(32, 5), 'gravitas mixkey', len)), hex(nodePrims.hkdf(bytes(32, 4), bytes(32, 5), 'gravitas mixkey', len)), `hkdf ${len}`);
  }
  t.equal(hex(browserPrims.hkdf(bytes(3, 6), new Uint8Array(0), 'ü info', 42)), hex(nodePrims.hkdf(bytes(3, 6), new Uint8Array(0), 'ü info', 42)), 'hkdf: empty salt, UTF-8 info');
  for (let n = 0; n < 70; n++) {
    const s = nodePrims.toBase64Url(bytes(n, n));
    t.equal(browserPrims.toBase64Url(bytes(n, n)), s, `base64url encode ${n}`);
    t.equal(hex(browserPrims.decodeBase64Url(s)), hex(bytes(n, n)), `base64url decode ${n}`);
  }
  for (const s of ['A', 'AAAAA', 'AB', 'ABC', '_-_-_']) t.equal(hex(browserPrims.decodeBase64Url(s)), hex(nodePrims.decodeBase64Url(s)), `lenient decode "${s}" as Node does`);
  for (let i = 0; i < 5; i++) {
    const sk = nacl.sign.keyPair.fromSeed(bytes(32, i)).secretKey;
    t.equal(hex(browserPrims.ed25519Sign(bytes(40 * i, i), sk)), hex(nodePrims.ed25519Sign(bytes(40 * i, i), sk)), `ed25519 signature ${i}`);
  }
  const r = browserPrims.random(200_000);
  t.equal(r.length, 200_000, 'random beyond getRandomValues\' 65,536-byte limit');
  t.not(hex(r.subarray(0, 32)), hex(r.subarray(100_000, 100_032)), 'random bytes differ');
  t.not(hex(r.subarray(199_968)), hex(new Uint8Array(32)), 'the last chunk is filled too');
});

t.test('a browser bundle of the protocol reproduces the handshake vectors', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'gravitas-vectors-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const out = join(dir, 'vectors.mjs');
  const meta = await bundleForBrowser(ENTRY, out);
  const inputs = Object.keys(meta.inputs);
  t.ok(inputs.some((f) => f.endsWith('protocol/dist/primitives.browser.js')), 'the browser primitives went in');
  t.ok(inputs.some((f) => f.includes('node_modules/@noble/ciphers/')), '@noble/ciphers went in');
  t.notOk(inputs.some((f) => f.endsWith('protocol/dist/primitives.js')), 'the node:crypto primitives stayed out');
  t.notOk(inputs.some((f) => f.startsWith('node:') || f.startsWith('node-stub:')), 'no Node built-in, not even a stub');
  t.notMatch(readFileSync(out, 'utf8'), /node:crypto/, 'the bundle never names node:crypto');

  const check = (t: Test, r: ReturnType<Run>): void => {
    t.equal(r.suite, 'tweetnacl', 'default suite is tweetnacl');
    t.strictSame(r.full, V.handshake.full.expected, 'full handshake');
    t.strictSame(r.resumed, V.handshake.resume.expected, 'resumption');
    t.equal(r.sha256, 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad', 'SHA-256("abc"), FIPS 180-2');
    const ikm = Uint8Array.from({ length: 100 }, (_, i) => (i * 37) & 0xff);
    t.equal(r.hkdf, hex(nodePrims.hkdf(ikm, ikm.subarray(0, 13), 'gravitas test', 100)), 'HKDF as node:crypto');
    t.equal(r.b64, nodePrims.toBase64Url(ikm), 'base64url as Buffer');
    t.equal(r.back, hex(ikm), 'base64url round trip');
    t.equal(r.randomLength, 70_000, 'random');
    t.strictSame(r.channel, C.frames.map((f) => ({ frame: f.frame, opened: f.plaintext })), 'sealed frames (test/vectors/channel.json), both ciphers');
  };

  await t.test('in Node, run as the browser bundle', async (t) => {
    const { runVectors } = (await import(pathToFileURL(out).href)) as { runVectors: Run };
    check(t, runVectors(V, C));
  });

  await t.test('in headless Chromium', { skip: chromiumMissing() }, async (t) => {
    const browser = await launchChromium();
    t.teardown(() => browser.close());
    const page = await browser.newPage();
    const code = readFileSync(out, 'utf8');
    // A made-up origin served from memory: module scripts need an http(s) page.
    await page.route('http://vectors.test/**', (route) =>
      route.request().url().endsWith('.js')
        ? route.fulfill({ contentType: 'text/javascript', body: code })
        : route.fulfill({ contentType: 'text/html', body: '<!doctype html><script type="module">import { runVectors } from "./v.js"; window.runVectors = runVectors;</script>' }),
    );
    await page.goto('http://vectors.test/');
    // Functions given to evaluate run in the page: only inline casts, no closures.
    await page.waitForFunction(() => (globalThis as unknown as Page).runVectors !== undefined);
    check(t, await page.evaluate(([v, c]) => (globalThis as unknown as Page).runVectors!(v, c), [V, C] as const));
    t.match(await page.evaluate(() => (globalThis as unknown as Page).navigator.userAgent), /Chrome/, 'it was Chromium');
  });
});

t.test('the browser SDK bundle leaves the Node-only code out', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'gravitas-sdk-bundle-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const inputs = Object.keys((await bundleForBrowser(SDK_ENTRY, join(dir, 'gravitas.js'))).inputs);
  t.ok(inputs.some((f) => f.endsWith('client/dist/client.js')), 'the client core is in');
  t.ok(inputs.some((f) => f.endsWith('client/dist/browser/websocket.js')) && inputs.some((f) => f.endsWith('client/dist/browser/http.js')), 'with the browser dialers');
  for (const node of ['client/dist/transport-tcp.js', 'client/dist/transport-ws.js', 'client/dist/transport-http.js', 'client/dist/peer.js', 'client/dist/index.js', 'protocol/dist/primitives.js', 'node_modules/ws/', 'node_modules/lmdb/']) {
    t.notOk(inputs.some((f) => f.includes(node)), `${node} stays out`);
  }
  // store.ts's durable branch (a storage path) is the only Node path left, and it throws if reached.
  t.strictSame(inputs.filter((f) => f.startsWith('node-stub:')).sort(), NODE_STUBS.map((n) => `node-stub:${n}`).sort(), 'stubbed built-ins: only those of store.ts');
});
