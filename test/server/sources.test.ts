/**
 * Connections bounded per source (docs/security-notes-net.md). Attackers on their
 * own 127.x.y.z addresses fill one per-source cap at a time — open connections
 * (TCP and web together), connections still in their handshake, chunked-HTTP
 * downstreams waiting for their upstream — and per prefix (/24). Each is refused
 * with SOURCE_LIMIT before anything is read or decrypted, is counted in
 * gravitas_source_refusals_total, and frees its slot when it closes, while
 * neighbours on 127.0.0.1 (TCP, WebSocket and chunked HTTP) keep chatting.
 * Trusted proxies: the PROXY protocol (v1 and v2, by hand and from nginx's stream
 * module) and X-Forwarded-For (by hand and through nginx) name the client that is
 * charged; the same headers from an untrusted peer are never believed.
 */
import t, { type Test } from 'tap';
import { join } from 'node:path';
import WebSocket from 'ws';
import { ClientHandshake, ErrorCode, generateKeyPair, type ClientHandshakeOptions } from '@gravitas/protocol';
import { proxyV1, proxyV2, startNode, STREAM_HEADER, validateConfig } from '@gravitas/server';
import { check, NatsServer, tempDir } from '@gravitas/testkit';
import { clusterKeys, connectClient, exchange, metricsText, metricValue, nodeConfig, type TestClient } from '../fixtures/cluster.js';
import { RawConn, rawHandshakeOn } from '../fixtures/raw.js';
import { Nginx, nginxBinary, nginxStreamModule } from '../fixtures/nginx.js';
import { RawDown, RawHttp } from '../fixtures/web.js';

const nats = await NatsServer.start();
t.teardown(() => nats.stop());
const dir = await tempDir('gravitas-sources-');
t.teardown(() => dir[Symbol.asyncDispose]());
const keys = clusterKeys();
const pk = keys.serverPublicKey;
/** The only trusted proxy: the tests' nginx binds to it, and hand-written headers come from it. */
const PROXY = '127.0.0.9';
const CAPS = {
  maxConnectionsPerSource: 8,
  maxConnectionsPerPrefix: 16,
  maxHandshakesPerSource: 3,
  maxHandshakesPerPrefix: 6,
  maxPendingStreamsPerSource: 2,
  maxPendingStreamsPerPrefix: 4,
};
const node = await startNode(
  validateConfig(
    nodeConfig({
      natsUrl: nats.url,
      nodeId: 'sources',
      dataDir: join(dir.path, 'n'),
      keys,
      cells: 1,
      // cookieThresholdPerSec 0: every first flight must echo a cookie (bound to the source address).
      extra: { limits: { handshakeTimeoutMs: 3000, cookieThresholdPerSec: 0 }, network: { trustedProxies: [`${PROXY}/32`], ...CAPS }, web: { maxPendingStreams: 16 } },
    }),
  ),
  () => undefined,
);
t.teardown(() => node.stop());
const cell = node.clientAddresses[0]!;
const web = node.webAddresses[0]!;

// Neighbours on 127.0.0.1, one per transport; every case ends with them chatting.
const teardowns: Array<() => unknown> = [];
const holder = { teardown: (f: () => unknown) => void teardowns.push(f) };
const nTcp: TestClient = await connectClient(holder, { servers: [cell], serverPublicKey: pk, user: 'n-tcp' });
const nWs: TestClient = await connectClient(holder, { servers: [`ws://${web}`], transports: ['ws'], serverPublicKey: pk, user: 'n-ws' });
const nHttp: TestClient = await connectClient(holder, { servers: [`http://${web}`], transports: ['http'], serverPublicKey: pk, user: 'n-http' });
let round = 0;
async function neighboursChat(t: Test): Promise<void> {
  round++;
  t.equal((await exchange(nTcp, nWs, `r${round}`)).status, 'delivered', 'the TCP and WebSocket neighbours still chat');
  t.equal((await exchange(nHttp, nTcp, `r${round}`)).status, 'delivered', 'the chunked-HTTP neighbour still chats');
  t.equal(nTcp.disconnects + nWs.disconnects + nHttp.disconnects, 0, 'no neighbour was disconnected');
}

let seq = 0;
const fresh = (): ClientHandshakeOptions => ({ serverPublicKey: pk, identity: generateKeyPair(), user: `s${++seq}`, device: 'raw', registration: '' });

/** A raw TCP connection from `from`, closed at the end of the test. */
async function tcp(t: Test, from: string, to = cell): Promise<RawConn> {
  const c = await RawConn.open(to, from);
  t.teardown(() => c.destroy());
  return c;
}

/** A session opened by hand on `c` (after whatever was written first), proven open by a ping. */
async function open(c: RawConn): Promise<void> {
  const s = await rawHandshakeOn(c, fresh());
  s.conn.sendSealed(s.channel, { t: 'ping', n: 1 });
  const m = await s.conn.nextSealed(s.channel);
  if (m.t !== 'pong') throw new Error(`expected a pong, got ${JSON.stringify(m)}`);
}

/** The connection gets a plaintext error frame with `code`, then is closed. */
async function refused(t: Test, c: RawConn, code: string, what: string): Promise<void> {
  const m = await c.nextPlain();
  t.equal(m.t === 'error' ? m.code : m.t, code, `${what}: ${code}`);
  t.ok(await c.serverClosed(), `${what}: then closed`);
}

/** A WebSocket upgrade from `from`: 'open', or the refusal's status. */
function wsAttempt(t: Test, from: string): Promise<'open' | number> {
  return new Promise((resolve) => {
    const ws = new WebSocket(`ws://${web}/gravitas`, { localAddress: from });
    t.teardown(() => ws.terminate());
    ws.on('open', () => resolve('open'));
    ws.on('unexpected-response', (_req, res) => resolve(res.statusCode ?? 0));
    ws.on('error', () => resolve(0));
  });
}

async function down(t: Test, from: string, headers = '', addr = web): Promise<RawDown> {
  const d = await RawDown.open(addr, { from, headers });
  t.teardown(() => d.destroy());
  return d;
}

async function refusals(limit: string, scope: string): Promise<number> {
  return metricValue(await metricsText(node.adminUrl), 'gravitas_source_refusals_total', { limit, scope }) ?? 0;
}

t.test('open connections per source and per prefix, TCP and web together', async (t) => {
  const before = await refusals('connections', 'source');
  const a = '127.1.0.2';
  for (let i = 0; i < CAPS.maxConnectionsPerSource; i++) await open(await tcp(t, a));
  await refused(t, await tcp(t, a), ErrorCode.SOURCE_LIMIT, 'one TCP connection more than the source may hold');
  t.equal(await wsAttempt(t, a), 429, 'a WebSocket from the same address is refused too (429): one cap for every transport');
  t.equal(await refusals('connections', 'source'), before + 2, 'both counted in gravitas_source_refusals_total');
  // The /24 holds 8 of its 16: a second address in it takes the rest, then the network is full.
  const b = '127.1.0.3';
  for (let i = 0; i < CAPS.maxConnectionsPerPrefix - CAPS.maxConnectionsPerSource; i++) await open(await tcp(t, b));
  await refused(t, await tcp(t, '127.1.0.4'), ErrorCode.SOURCE_LIMIT, 'a third address of the full /24');
  t.ok((await refusals('connections', 'prefix')) >= 1, 'counted with scope prefix');
  await open(await tcp(t, '127.1.1.2'));
  t.pass('an address of the next /24 connects');
  await neighboursChat(t);
});

t.test('connections still in their handshake per source; a closed one frees its slot', async (t) => {
  const a = '127.2.0.2';
  const idle = [await tcp(t, a), await tcp(t, a)];
  t.equal(await wsAttempt(t, a), 'open', 'a WebSocket that has sent nothing yet holds the third slot');
  await refused(t, await tcp(t, a), ErrorCode.SOURCE_LIMIT, 'a fourth connection before any finished its handshake');
  t.ok((await refusals('handshakes', 'source')) >= 1, 'counted as limit handshakes');
  idle[0]!.destroy();
  const next = await check('a slot freed by the close', async () => {
    const c = await tcp(t, a);
    c.sendPlain({ t: 'nothing' }); // an error answer (not SOURCE_LIMIT) means it was admitted
    const m = await c.nextPlain();
    return m.t === 'error' && m.code === ErrorCode.SOURCE_LIMIT ? undefined : m;
  }, { timeout: 5000, interval: 50 });
  t.equal(next.t === 'error' ? next.code : next.t, ErrorCode.UNKNOWN_TYPE, 'admitted once one closed: its first frame was read and judged (UNKNOWN_TYPE), not refused at accept');
  // Open sessions no longer count: a source with handshakes done may start new ones.
  const b = '127.2.1.2';
  for (let i = 0; i < CAPS.maxHandshakesPerSource + 1; i++) await open(await tcp(t, b));
  t.pass('more sessions than the handshake cap, one after another');
  await neighboursChat(t);
});

t.test('chunked-HTTP downstreams waiting for their upstream per source; one source cannot take them all', async (t) => {
  const a = '127.3.0.2';
  const held = [await down(t, a), await down(t, a)];
  t.ok(held.every((d) => d.sid.length === 32), 'two downstreams wait for their upstream');
  const third = await down(t, a);
  t.same(third.refusal(), { status: 429, code: ErrorCode.SOURCE_LIMIT }, 'a third is refused: 429 SOURCE_LIMIT');
  t.ok((await refusals('streams', 'source')) >= 1, 'counted as limit streams');
  // Claiming a stream (its first upstream request) frees the slot.
  const up = await RawHttp.open(web, a);
  t.teardown(() => up.destroy());
  up.write(`POST /gravitas/up HTTP/1.1\r\nHost: x\r\n${STREAM_HEADER}: ${held[0]!.sid}\r\nTransfer-Encoding: chunked\r\n\r\n`);
  await check('the claimed stream freed its slot', async () => ((await down(t, a)).sid ? true : undefined), { timeout: 5000, interval: 50 });
  // The original finding: one client's idle downstreams shut everyone out. Now a neighbour still gets a stream.
  await down(t, '127.3.0.3');
  await down(t, '127.3.0.3');
  t.same((await down(t, '127.3.0.4')).refusal(), { status: 429, code: ErrorCode.SOURCE_LIMIT }, 'the /24 is full at 4');
  const c = await connectClient(t, { servers: [`http://${web}`], transports: ['http'], serverPublicKey: pk, user: 'late-http' });
  t.equal((await exchange(c, nTcp, 'still room')).status, 'delivered', 'a chunked-HTTP client from another network connects and chats');
  await neighboursChat(t);
});

t.test('PROXY protocol from the trusted proxy: v1 and v2 name the client that is charged', async (t) => {
  const v1 = await tcp(t, PROXY);
  v1.write(proxyV1('10.1.1.1', '127.0.0.1', 40000, 7400));
  await open(v1);
  const v2 = await tcp(t, PROXY);
  v2.write(proxyV2('2001:db8::1', '2001:db8::2', 40001, 7400));
  await open(v2);
  t.pass('a session opens after a v1 and after a v2 (IPv6) header');
  const local = await tcp(t, PROXY);
  local.write(proxyV2('0.0.0.0', '0.0.0.0', 0, 0, true));
  await open(local);
  t.pass('a v2 LOCAL header (the proxy speaking for itself) is accepted');
  // Handshake slots go to the reported client, not to the proxy.
  const idle: RawConn[] = [];
  for (let i = 0; i < CAPS.maxHandshakesPerSource; i++) {
    const c = await tcp(t, PROXY);
    c.write(i % 2 ? proxyV2('10.1.2.1', '127.0.0.1', 40100 + i, 7400) : proxyV1('10.1.2.1', '127.0.0.1', 40100 + i, 7400));
    idle.push(c);
  }
  const over = await tcp(t, PROXY);
  over.write(proxyV1('10.1.2.1', '127.0.0.1', 40200, 7400));
  await refused(t, over, ErrorCode.SOURCE_LIMIT, 'a fourth idle connection of client 10.1.2.1 through the proxy');
  const other = await tcp(t, PROXY);
  other.write(proxyV1('10.1.3.1', '127.0.0.1', 40201, 7400));
  await open(other);
  t.pass('another client through the same proxy is not affected');
  await neighboursChat(t);
});

t.test('a trusted proxy must send a valid header; an untrusted peer\'s header is never believed', async (t) => {
  const silent = await tcp(t, PROXY);
  silent.write(Buffer.from('PROXY TCP4 10.0.0.1', 'latin1'));
  const none = await tcp(t, PROXY);
  none.sendPlain({ t: 'hello' });
  await refused(t, none, ErrorCode.BAD_PROXY_HEADER, 'a frame instead of a header from the trusted proxy');
  const garbled = await tcp(t, PROXY);
  garbled.write(Buffer.from('PROXY TCP4 10.0.0.1 nonsense\r\n', 'latin1'));
  await refused(t, garbled, ErrorCode.BAD_PROXY_HEADER, 'a malformed v1 line');
  await refused(t, silent, ErrorCode.BAD_PROXY_HEADER, 'a header never finished (within limits.handshakeTimeoutMs)');
  // From an untrusted peer the bytes are frames like any others: "PROX" is a length beyond the limit.
  for (const [what, header] of [['v1', proxyV1('10.9.9.9', '127.0.0.1', 1, 2)], ['v2', proxyV2('10.9.9.9', '127.0.0.1', 1, 2)]] as const) {
    const forged = await tcp(t, '127.4.0.2');
    forged.write(header);
    await refused(t, forged, ErrorCode.FRAME_TOO_LARGE, `a forged ${what} header from an untrusted peer is read as a frame`);
  }
  // And the forger is charged as itself: its own handshake slots run out, whatever it claims.
  for (let i = 0; i < CAPS.maxHandshakesPerSource; i++) (await tcp(t, '127.4.0.3')).write(proxyV1(`10.9.9.${i}`, '127.0.0.1', 1, 2).subarray(0, 3));
  await refused(t, await tcp(t, '127.4.0.3'), ErrorCode.SOURCE_LIMIT, 'headers naming other clients did not move the charge');
  await neighboursChat(t);
});

t.test('X-Forwarded-For: believed from the trusted proxy (rightmost untrusted hop), ignored from anyone else', async (t) => {
  const via = (xff: string): Promise<RawDown> => down(t, PROXY, `X-Forwarded-For: ${xff}\r\n`);
  await via('10.2.2.2');
  await via('203.0.113.7, 10.2.2.2, 127.0.0.9'); // a client's own forged entry on the left, a trusted hop on the right
  t.same((await via('10.2.2.2')).refusal(), { status: 429, code: ErrorCode.SOURCE_LIMIT }, 'the third stream of client 10.2.2.2 is refused');
  t.ok((await via('10.2.3.2')).sid, 'another forwarded client through the same proxy is not');
  t.ok((await via('203.0.113.7, 10.2.4.2')).sid, 'a forged entry left of the real client changes nothing');
  // From an untrusted peer the header is not read: it is charged as itself.
  const a = '127.5.0.2';
  await down(t, a, 'X-Forwarded-For: 10.3.0.1\r\n');
  await down(t, a, 'X-Forwarded-For: 10.3.0.2\r\n');
  t.same((await down(t, a, 'X-Forwarded-For: 10.3.0.3\r\n')).refusal(), { status: 429, code: ErrorCode.SOURCE_LIMIT }, 'forged X-Forwarded-For from an untrusted peer is ignored');
  await neighboursChat(t);
});

t.test('through nginx (X-Forwarded-For): clients behind the proxy are counted one by one', { skip: nginxBinary() ? false : 'nginx is not installed' }, async (t) => {
  const proxy = await Nginx.start({ upstream: web, forwardedFor: true, bind: PROXY });
  t.teardown(() => proxy.stop());
  const addr = `127.0.0.1:${proxy.port}`;
  const a = '127.6.0.2';
  await down(t, a, '', addr);
  await down(t, a, '', addr);
  t.same((await down(t, a, '', addr)).refusal(), { status: 429, code: ErrorCode.SOURCE_LIMIT }, 'the third downstream of one client behind nginx is refused');
  t.ok((await down(t, '127.6.1.2', '', addr)).sid, 'another client behind the same nginx is not');
  const c = await connectClient(t, { servers: [proxy.url], transports: ['http'], serverPublicKey: pk, user: 'via-nginx' });
  t.equal((await exchange(c, nTcp, 'through nginx')).status, 'delivered', 'an SDK client through nginx chats');
  await neighboursChat(t);
});

t.test('through nginx\'s stream module (PROXY protocol v1)', { skip: nginxStreamModule() === undefined ? 'nginx has no stream module (Debian: libnginx-mod-stream)' : false }, async (t) => {
  const proxy = await Nginx.startStream({ upstream: cell, proxyProtocol: true, bind: PROXY });
  t.teardown(() => proxy.stop());
  const addr = `127.0.0.1:${proxy.port}`;
  const c = await connectClient(t, { servers: [addr], serverPublicKey: pk, user: 'via-stream' });
  t.equal((await exchange(c, nTcp, 'through nginx stream')).status, 'delivered', 'an SDK client through nginx chats over TCP');
  const a = '127.7.0.2';
  for (let i = 0; i < CAPS.maxHandshakesPerSource; i++) await tcp(t, a, addr);
  await refused(t, await tcp(t, a, addr), ErrorCode.SOURCE_LIMIT, 'a fourth idle connection of one client behind nginx');
  await open(await tcp(t, '127.7.1.2', addr));
  t.pass('another client behind the same nginx opens a session');
  const direct = await tcp(t, PROXY);
  direct.sendPlain({ t: 'hello' });
  await refused(t, direct, ErrorCode.BAD_PROXY_HEADER, 'the proxy address without a header (nginx without proxy_protocol on)');
  await neighboursChat(t);
});

t.test('handshake cookies are bound to the source address, not the port', async (t) => {
  const hs = new ClientHandshake(fresh());
  const first = await tcp(t, '127.8.0.2');
  first.sendPlain(hs.hello());
  const m = await first.nextPlain();
  if (m.t !== 'cookie') throw new Error(`expected a cookie, got ${JSON.stringify(m)}`);
  const elsewhere = await tcp(t, '127.8.0.3');
  elsewhere.sendPlain(hs.hello(m.c));
  t.equal((await elsewhere.nextPlain()).t, 'cookie', 'echoed from another address: a fresh challenge, no DH work');
  const samePlace = await tcp(t, '127.8.0.2');
  samePlace.sendPlain(hs.hello(m.c));
  t.equal((await samePlace.nextPlain()).t, 'welcome', 'echoed from the same address on another connection (another port): accepted');
  const proxied = await tcp(t, PROXY);
  proxied.write(proxyV1('10.8.0.2', '127.0.0.1', 1, 2));
  const hs2 = new ClientHandshake(fresh());
  proxied.sendPlain(hs2.hello());
  const c2 = await proxied.nextPlain();
  if (c2.t !== 'cookie') throw new Error('expected a cookie');
  const direct = await tcp(t, '127.8.0.4');
  direct.sendPlain(hs2.hello(c2.c));
  t.equal((await direct.nextPlain()).t, 'cookie', 'a cookie issued to a client behind the proxy is bound to that client, not usable from elsewhere');
});

t.test('per-source tables hold only sources with a slot: empty once everyone left', async (t) => {
  await Promise.all(teardowns.map((f) => f()));
  await check(
    'every per-source entry gone',
    async () => (metricValue(await metricsText(node.adminUrl), 'gravitas_source_entries') === 0 ? true : undefined),
    { timeout: 10_000, interval: 100 },
  );
  t.pass('gravitas_source_entries is 0');
});
