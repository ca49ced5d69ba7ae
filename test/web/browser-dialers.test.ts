import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { bundleForBrowser, chromiumMissing, launchChromium, serveFiles, startDev } from '../fixtures/browser.js';
import type { PingRun } from '../fixtures/browser-dialers-entry.js';
import { http } from '../fixtures/cluster.js';

/*
 * The browser dialers (packages/client/src/browser) against a real web listener,
 * in headless Chromium, on a page of another origin (so CORS is exercised as on
 * the demo page): a full handshake and 50 sealed pings sent at once, answered in
 * order, over WebSocket and over chunked HTTP (upstream POSTs batched, one in flight).
 */

const ENTRY = fileURLToPath(new URL('../fixtures/browser-dialers-entry.ts', import.meta.url));
interface Page { pingOver?: (kind: string, web: string, key: string, user: string, count: number) => Promise<PingRun>; defaultTransport?: (web: string, key: string, user: string) => Promise<string> }

t.test('browser dialers carry a session over WebSocket and chunked HTTP', { skip: chromiumMissing() }, async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'gravitas-dialers-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const out = join(dir, 'dialers.mjs');
  await bundleForBrowser(ENTRY, out);
  const dev = await startDev(join(dir, 'home'));
  t.teardown(() => dev.stop());
  const config = JSON.parse((await http('GET', `${dev.demoUrl}demo/config`)).body) as { web: string[]; serverPublicKey: string };
  t.equal(config.web.length, 2, 'two cells with a web listener');

  const browser = await launchChromium();
  t.teardown(() => browser.close());
  const page = await browser.newPage();
  // Another origin than the web listeners (another port): CORS applies as on the demo page.
  const site = await serveFiles({
    '/': { type: 'text/html', body: '<!doctype html><script type="module">import { pingOver, defaultTransport } from "./d.js"; window.pingOver = pingOver; window.defaultTransport = defaultTransport;</script>' },
    '/d.js': { type: 'text/javascript', body: readFileSync(out, 'utf8') },
  });
  t.teardown(() => site.close());
  await page.goto(site.url);
  await page.waitForFunction(() => (globalThis as unknown as Page).pingOver !== undefined);

  let posts = 0;
  const sidInUrl: string[] = [];
  page.on('request', (r) => {
    if (r.method() !== 'POST' || !r.url().includes('/gravitas/up')) return;
    posts++;
    // The stream id travels in a header, never in the URL (which proxies log).
    if (!r.url().endsWith('/gravitas/up') || !/^[0-9a-f]{32}$/.test(r.headers()['x-gravitas-stream'] ?? '')) sidInUrl.push(r.url());
  });
  const expected = Array.from({ length: 50 }, (_, i) => i + 1);
  for (const kind of ['ws', 'http'] as const) {
    for (const [i, web] of config.web.entries()) {
      posts = 0;
      const r = await page.evaluate(([k, w, key, user]) => (globalThis as unknown as Page).pingOver!(k, w, key, user, 50), [kind, web, config.serverPublicKey, `raw-${kind}-${i}`] as const);
      t.equal(r.kind, kind, `${kind} to cell ${i}: the connection's kind`);
      t.match(r.cell, /^dev-\d+-/, `${kind} to cell ${i}: welcomed by a cell`);
      t.strictSame(r.pongs, expected, `${kind} to cell ${i}: 50 pongs, in order`);
      // hello, finish and 50 pings are 52 frames: one POST at a time batches them into a few.
      if (kind === 'http') t.ok(posts >= 2 && posts <= 5, `http to cell ${i}: ${posts} upstream POSTs for 52 frames`);
      else t.equal(posts, 0, `ws to cell ${i}: no POST`);
    }
  }
  t.same(sidInUrl, [], 'every upstream POST named its stream in X-Gravitas-Stream, none in its URL');

  // A browser client with default options on a page where every WebSocket is refused (like a proxy that passes none): chunked HTTP.
  const refusing = await browser.newPage();
  await refusing.routeWebSocket(/\/gravitas$/, (ws) => ws.close({ code: 1011, reason: 'no websockets here' }));
  await refusing.goto(site.url);
  await refusing.waitForFunction(() => (globalThis as unknown as Page).defaultTransport !== undefined);
  const kind = await refusing.evaluate(([w, key]) => (globalThis as unknown as Page).defaultTransport!(w, key, 'default-client'), [config.web[0]!, config.serverPublicKey] as const);
  t.equal(kind, 'http', 'a default browser client falls back to chunked HTTP when WebSocket is refused');
});
