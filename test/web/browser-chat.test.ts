import { copyFile, mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import type { Browser, BrowserContext, Page } from 'playwright-core';
import { chromiumMissing, launchChromium, startDev, type DevProcess } from '../fixtures/browser.js';

/*
 * The demo page of `gravitas dev` in headless Chromium: two users in two browser
 * contexts (separate storage, like two browsers) chat both ways over WebSocket;
 * then two more, whose WebSockets are refused, chat over the chunked-HTTP
 * fallback. Everything real: the dev command's nats-server and node, the SDK
 * bundle, the page. UPDATE_DOCS_IMG=1 copies the screenshot to docs/img/.
 */

const DOCS_IMG = fileURLToPath(new URL('../../docs/img/demo-chat.png', import.meta.url));
const skip = chromiumMissing();

/** Opens the demo page as `me`, chatting with `peer`, and joins; resolves once connected. */
async function openChat(ctx: BrowserContext, dev: DevProcess, me: string, peer: string): Promise<Page> {
  const page = await ctx.newPage();
  await page.goto(dev.demoUrl);
  await page.fill('#me', me);
  await page.fill('#peer', peer);
  await page.click('#connect');
  await page.waitForSelector('#state[data-state="connected"]');
  return page;
}

async function say(page: Page, text: string): Promise<void> {
  await page.fill('#text', text);
  await page.press('#text', 'Enter');
}

/** The exact text (a plain string in hasText matches any substring, ignoring case). */
const exactly = (text: string): RegExp => new RegExp(`^${text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`);

/** Waits until `page` shows a received message with this sender and text. */
async function received(page: Page, from: string, text: string): Promise<void> {
  await page.locator(`#log li.in[data-from="${from}"] .text`, { hasText: exactly(text) }).waitFor();
}

t.test('two pages chat through gravitas dev: WebSocket, then the chunked-HTTP fallback', { skip }, async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'gravitas-browser-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const dev = await startDev(join(dir, 'home'));
  t.teardown(() => dev.stop());
  const browser: Browser = await launchChromium();
  t.teardown(() => browser.close());

  await t.test('WebSocket', async (t) => {
    const alice = await openChat(await browser.newContext(), dev, 'alice', 'bob');
    const bob = await openChat(await browser.newContext(), dev, 'bob', 'alice');
    for (const p of [alice, bob]) {
      t.equal(await p.getAttribute('#transport', 'data-kind'), 'ws', 'the page uses WebSocket');
      t.match(await p.textContent('#transport'), /WebSocket/, 'and says so');
    }
    await say(alice, 'hello bob, from a browser');
    await received(bob, 'alice', 'hello bob, from a browser');
    await say(bob, 'hi alice!');
    await received(alice, 'bob', 'hi alice!');
    // The sender sees the server's answer (delivered; stored if bob's ack missed the custody window).
    await alice.locator('#log li.out .status', { hasText: /^✓✓ delivered$|^✓ stored$/ }).waitFor();
    t.equal(await bob.locator('#log li.in').count(), 1, 'bob got exactly one message');
    t.equal(await alice.locator('#log li.in').count(), 1, 'alice got exactly one message');
    const shot = join(dir, 'demo-chat.png');
    await alice.screenshot({ path: shot });
    t.pass(`screenshot ${shot}`);
    if (process.env.UPDATE_DOCS_IMG === '1') {
      await mkdir(join(DOCS_IMG, '..'), { recursive: true });
      await copyFile(shot, DOCS_IMG);
    }
  });

  await t.test('chunked HTTP when WebSocket is refused', async (t) => {
    const contexts = [await browser.newContext(), await browser.newContext()];
    // Like a proxy that lets no WebSocket through: every upgrade is answered by a close.
    for (const ctx of contexts) await ctx.routeWebSocket(/\/gravitas$/, (ws) => ws.close({ code: 1011, reason: 'no websockets here' }));
    const carol = await openChat(contexts[0]!, dev, 'carol', 'dave');
    const dave = await openChat(contexts[1]!, dev, 'dave', 'carol');
    for (const p of [carol, dave]) {
      t.equal(await p.getAttribute('#transport', 'data-kind'), 'http', 'the page fell back to chunked HTTP');
      t.match(await p.textContent('#transport'), /chunked HTTP/, 'and says so');
    }
    await say(carol, 'over plain HTTP');
    await received(dave, 'carol', 'over plain HTTP');
    // Several in a row, to exercise the batching of upstream POSTs, in order.
    for (let i = 1; i <= 5; i++) await say(dave, `reply ${i}`);
    for (let i = 1; i <= 5; i++) await received(carol, 'dave', `reply ${i}`);
    t.strictSame(await carol.locator('#log li.in .text').allTextContents(), ['reply 1', 'reply 2', 'reply 3', 'reply 4', 'reply 5'], 'in the order sent');
    await carol.screenshot({ path: join(dir, 'demo-chat-http.png') });
  });
});
