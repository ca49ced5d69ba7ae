/**
 * The admin port as an attacker finds it (docs/operations.md, "Admin HTTP"): idle
 * sockets by the hundred from one address and from many, slow heads, silent
 * kept-alive connections, slow bodies, oversized and unauthenticated bodies. The
 * port holds at most admin.maxConnections (admin.maxConnectionsPerSource per
 * address), closes idle and slow connections within a second or so of their
 * timeout (not on Node's 30 s sweep), and refuses a request from its head before
 * reading its body — while a probe from another address keeps getting /healthz.
 * (A whole node under a low fd limit surviving such a flood: fd-limit.test.ts.)
 */
import t, { type Test } from 'tap';
import { join } from 'node:path';
import { check, NatsServer, tempDir } from '@gravitas/testkit';
import { startNode, validateConfig } from '@gravitas/server';
import { clusterKeys, connectClient, exchange, http, metricsText, metricValue, nodeConfig, readyz } from '../fixtures/cluster.js';
import { RawHttp } from '../fixtures/web.js';

const nats = await NatsServer.start();
t.teardown(() => nats.stop());
const dir = await tempDir('gravitas-admin-hard-');
t.teardown(() => dir[Symbol.asyncDispose]());
const keys = clusterKeys();
const TOKEN = 'admin-secret-token';
const ADMIN = { maxConnections: 24, maxConnectionsPerSource: 8, headerTimeoutMs: 600, requestTimeoutMs: 1500, keepAliveTimeoutMs: 600 };
const node = await startNode(
  validateConfig(nodeConfig({ natsUrl: nats.url, nodeId: 'adminhard', dataDir: join(dir.path, 'n'), keys, cells: 1, extra: { admin: { ...ADMIN, token: TOKEN } } })),
  () => undefined,
);
t.teardown(() => node.stop());
const admin = node.adminUrl.replace('http://', '');

async function raw(t: Test, from?: string): Promise<RawHttp> {
  const c = await RawHttp.open(admin, from);
  t.teardown(() => c.destroy());
  return c;
}

/** A socket that may be closed at accept (then reset before or after its connect): closed either way. */
async function tryRaw(t: Test, from: string): Promise<{ ended: boolean; data: Buffer }> {
  try {
    return await raw(t, from);
  } catch {
    return { ended: true, data: Buffer.alloc(0) };
  }
}

/** The probe: /healthz from 127.0.0.1, an address no attacker uses. */
async function probe(t: Test): Promise<void> {
  t.equal((await http('GET', `${node.adminUrl}/healthz`)).status, 200, 'a probe from another address still gets /healthz');
}

async function metric(name: string, labels: Record<string, string> = {}): Promise<number> {
  return metricValue(await metricsText(node.adminUrl), name, labels) ?? 0;
}

t.test('hundreds of idle sockets: one address holds its share, many addresses the cap, and idle ones go', async (t) => {
  const flood = await Promise.all(Array.from({ length: 200 }, () => tryRaw(t, '127.10.0.2')));
  const open = (): number => flood.filter((c) => !c.ended).length;
  await check('the address is cut to its share', () => (open() <= ADMIN.maxConnectionsPerSource ? true : undefined), { timeout: 5000, interval: 20 });
  t.ok(open() <= ADMIN.maxConnectionsPerSource, `${open()} of 200 idle sockets from one address stay open (≤ ${ADMIN.maxConnectionsPerSource})`);
  await probe(t);
  t.ok((await metric('gravitas_admin_connections_refused_total', { reason: 'source' })) >= 200 - ADMIN.maxConnectionsPerSource, 'refusals counted (reason source)');
  // Many addresses: the total cap holds, and the header timeout empties the port again.
  // Many addresses: the total cap holds (the port is full meanwhile, probes included), and the
  // header timeout empties it again.
  const wide = await Promise.all(Array.from({ length: 60 }, (_, i) => tryRaw(t, `127.10.1.${i + 2}`)));
  await check('idle sockets closed by the header timeout', () => ([...flood, ...wide].every((c) => c.ended) ? true : undefined), { timeout: 5000, interval: 50 });
  t.pass('every idle socket was closed (408 after admin.headerTimeoutMs)');
  t.ok((await metric('gravitas_admin_connections_refused_total', { reason: 'total' })) > 0, 'past admin.maxConnections, connections were closed at accept (reason total)');
  t.match(wide.find((c) => c.data.length > 0)?.data.toString('latin1') ?? '', /^HTTP\/1\.1 408/, 'an idle socket that got in is answered 408');
  await probe(t);
  t.ok((await metric('gravitas_admin_connections')) <= ADMIN.maxConnections, 'open admin connections never above the cap');
});

t.test('slow heads, silent keep-alive and slow bodies are cut promptly', async (t) => {
  const slow = await raw(t, '127.10.2.2');
  slow.write('GET /healthz HTTP/1.1\r\nHost: x\r\n');
  const drip = setInterval(() => slow.write('X'), 100);
  t.teardown(() => clearInterval(drip));
  t.equal((await slow.response(5000)).status, 408, 'a head dripped byte by byte: 408 (well before Node\'s 30 s sweep)');
  clearInterval(drip);
  t.ok(await slow.closed(), 'and closed');
  const ka = await raw(t, '127.10.2.3');
  ka.write('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
  t.equal((await ka.response()).status, 200);
  t.ok(await ka.closed(5000), 'a kept-alive connection left silent is closed after admin.keepAliveTimeoutMs');
  const body = await raw(t, '127.10.2.4');
  body.write(`PUT /admin/profiles/u1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"a":`);
  t.equal((await body.response(5000)).status, 408, 'a body that stops coming: 408 after admin.requestTimeoutMs');
  t.ok(await body.closed(), 'and closed');
  await probe(t);
});

/** Writes `head`, then up to `total` body bytes as fast as the server takes them; resolves at the close. */
async function blast(t: Test, head: string, total: number, chunked = false): Promise<{ status: number; code: string | undefined; sent: number }> {
  const c = await raw(t, '127.10.3.2');
  c.write(head);
  const block = Buffer.alloc(64 * 1024, 0x20);
  const frame = chunked ? Buffer.concat([Buffer.from(`${block.length.toString(16)}\r\n`), block, Buffer.from('\r\n')]) : block;
  let sent = 0;
  await new Promise<void>((resolve) => {
    const pump = (): void => {
      while (sent < total && !c.ended && !c.socket.destroyed) {
        sent += block.length;
        if (!c.socket.write(frame)) return void c.socket.once('drain', pump);
      }
      resolve();
    };
    c.socket.once('close', () => resolve());
    pump();
  });
  const r = await c.response();
  t.ok(await c.closed(), 'the connection is closed, the rest of the body unread');
  let code: string | undefined;
  try {
    code = (JSON.parse(r.body) as { error?: { code?: string } }).error?.code;
  } catch {
    code = undefined;
  }
  return { status: r.status, code, sent: c.socket.bytesWritten };
}

t.test('bodies are judged by the head: refused before they are read', async (t) => {
  const HUNDRED_MB = 100 * 1024 * 1024;
  const unauth = await blast(t, `POST /admin/campaigns HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${HUNDRED_MB}\r\n\r\n`, HUNDRED_MB);
  t.equal(unauth.status, 401, 'an unauthenticated 100 MB POST: 401');
  t.equal(unauth.code, 'UNAUTHORIZED');
  t.ok(unauth.sent < HUNDRED_MB / 4, `and it was not read to its end (${(unauth.sent / 1048576).toFixed(1)} MiB got into the socket buffers before the close)`);
  const wrong = await blast(t, `POST /admin/campaigns HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n`, HUNDRED_MB, true);
  t.equal(wrong.status, 401, 'a wrong token with a chunked body: 401, unread');
  t.ok(wrong.sent < HUNDRED_MB / 4);
  const big = await raw(t, '127.10.3.3');
  big.write(`POST /admin/publishers HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${TOKEN}\r\nContent-Type: application/json\r\nContent-Length: ${10 * 1024 * 1024}\r\n\r\n`);
  const r = await big.response();
  t.equal(r.status, 413, 'a Content-Length over the route\'s maximum: 413 before any body byte is sent');
  t.ok(await big.closed(), 'and closed');
  const chunked = await blast(t, `POST /admin/publishers HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${TOKEN}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n`, HUNDRED_MB, true);
  t.equal(chunked.status, 413, 'a chunked body is cut as it passes the route\'s maximum: 413');
  t.ok(chunked.sent < HUNDRED_MB / 4);
  const health = await blast(t, `POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: ${HUNDRED_MB}\r\n\r\n`, HUNDRED_MB);
  t.equal(health.status, 413, '/healthz takes no body: 413, unread');
  const small = await raw(t, '127.10.3.6');
  small.write(`POST /admin/campaigns/nope/start HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}`);
  t.equal((await small.response()).status, 404, 'a route without a body ignores a small one ({}): 404, no such campaign');
  const cont = await raw(t, '127.10.3.4');
  cont.write(`POST /admin/campaigns HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n`);
  const c = await cont.response();
  t.equal(c.status, 401, 'with Expect: 100-continue the refusal comes instead of 100 Continue');
  const ok = await raw(t, '127.10.3.5');
  ok.write(`POST /admin/publishers HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n`);
  await check('100 Continue', () => (ok.data.toString('latin1').startsWith('HTTP/1.1 100') ? true : undefined), { timeout: 5000, interval: 10 });
  ok.write('{}');
  await check('an answer after the body', () => (/\r\n\r\nHTTP\/1\.1 (\d{3})/.exec(ok.data.toString('latin1'))?.[1]), { timeout: 5000, interval: 10 });
  t.match(ok.data.toString('latin1'), /\r\n\r\nHTTP\/1\.1 400/, 'an authorised request is told to go on, and its body is read (400: {} names no publisher)');
  await probe(t);
});

t.test('the node is unharmed', async (t) => {
  t.equal(await readyz(node.adminUrl), 200);
  const pk = keys.serverPublicKey;
  const a = await connectClient(t, { servers: [node.clientAddresses[0]!], serverPublicKey: pk, user: 'after-a' });
  const b = await connectClient(t, { servers: [node.clientAddresses[0]!], serverPublicKey: pk, user: 'after-b' });
  t.equal((await exchange(a, b, 'fine')).status, 'delivered', 'clients still chat');
});
