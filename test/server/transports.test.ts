/**
 * WebSocket and chunked HTTP end to end (docs/transports.md): chat between a
 * WebSocket device, a chunked-HTTP device and a TCP device on a real node; the
 * welcome and ready line name the web listener; metrics count connections by
 * transport; the upstream POST is rotated without losing a frame; wrong paths and
 * methods get coded JSON errors; a WebSocket message over the frame limit is cut
 * with close code 1009 while a neighbour on the same cell chats on.
 */
import t from 'tap';
import { join } from 'node:path';
import WebSocket from 'ws';
import { decodeServerHandshake, ErrorCode, unpack } from '@gravitas/protocol';
import { UP_ROTATE_FRAMES } from '@gravitas/client';
import { startNode, STREAM_HEADER, validateConfig } from '@gravitas/server';
import { NatsServer, tempDir } from '@gravitas/testkit';
import { clusterKeys, connectClient, exchange, http, metricsText, metricValue, nodeConfig } from '../fixtures/cluster.js';
import { codeOfBody, postUp, RawDown, RawHttp } from '../fixtures/web.js';

const nats = await NatsServer.start();
t.teardown(() => nats.stop());
const dir = await tempDir('gravitas-transports-');
t.teardown(() => dir[Symbol.asyncDispose]());
const keys = clusterKeys();
const MAX_FRAME = 4096;
const node = await startNode(
  // Pings stand in for many frames here: their rate limit is not what this tests.
  validateConfig(nodeConfig({ natsUrl: nats.url, nodeId: 'web', dataDir: join(dir.path, 'web'), keys, extra: { limits: { maxFrameBytes: MAX_FRAME, controlRatePerSec: 1_000_000, controlBurst: 1_000_000 } } })),
  () => undefined,
);
t.teardown(() => node.stop());
const [tcp0, tcp1] = node.clientAddresses as [string, string];
const [web0, web1] = node.webAddresses as [string, string];
const pk = keys.serverPublicKey;

t.test('every cell has a web listener, reported next to its TCP address', async (t) => {
  t.equal(node.webAddresses.length, 2);
  t.not(web0, tcp0);
  const cells = node.supervisor.statuses();
  t.same(cells.map((c) => c.status?.web), [web0, web1]);
});

t.test('a WebSocket device, a chunked-HTTP device and a TCP device chat with each other', async (t) => {
  const ws = await connectClient(t, { servers: [`ws://${web0}`], transports: ['ws'], serverPublicKey: pk, user: 'ws-user' });
  const ht = await connectClient(t, { servers: [`http://${web1}`], transports: ['http'], serverPublicKey: pk, user: 'http-user' });
  const tc = await connectClient(t, { servers: [tcp0], serverPublicKey: pk, user: 'tcp-user' });
  t.equal(ws.client.transport, 'ws');
  t.equal(ht.client.transport, 'http');
  t.equal(tc.client.transport, 'tcp');
  t.equal(ws.client.welcome?.wa, web0, 'the welcome names the cell web listener');
  for (const [a, b] of [[ws, ht], [ht, ws], [ht, tc], [tc, ht], [ws, tc], [tc, ws]] as const) {
    const r = await exchange(a, b, `from ${a.user} to ${b.user}`);
    t.equal(r.status, 'delivered', `${a.user} → ${b.user}`);
    t.equal(r.msg.text, `from ${a.user} to ${b.user}`);
  }
  const m = await metricsText(node.adminUrl);
  t.ok((metricValue(m, 'gravitas_connections', { transport: 'ws' }) ?? 0) >= 1, 'ws connections counted');
  t.ok((metricValue(m, 'gravitas_connections', { transport: 'http' }) ?? 0) >= 1, 'http connections counted');
  t.ok((metricValue(m, 'gravitas_connections', { transport: 'tcp' }) ?? 0) >= 1, 'tcp connections counted');
  t.same(ws.errors, []);
  t.same(ht.errors, []);
});

t.test('the chunked upstream is rotated to a new POST without losing or reordering a frame', async (t) => {
  const a = await connectClient(t, { servers: [`http://${web0}`], transports: ['http'], serverPublicKey: pk, user: 'rot-a' });
  const b = await connectClient(t, { servers: [tcp1], serverPublicKey: pk, user: 'rot-b' });
  // Enough frames for more than one upstream request; each ping is one frame.
  const n = UP_ROTATE_FRAMES + 300;
  await Promise.all(Array.from({ length: n }, () => a.client.ping()));
  const r = await exchange(a, b, 'after the rotation');
  t.equal(r.status, 'delivered');
  t.equal(a.disconnects, 0, 'one session throughout');
  t.same(a.errors, []);
});

t.test('wrong paths and methods get 404 and 405 with a coded JSON body; preflight gets CORS headers', async (t) => {
  const base = `http://${web0}`;
  const nf = await http('GET', `${base}/nope`);
  t.equal(nf.status, 404);
  t.equal(codeOfBody(nf.body), ErrorCode.HTTP_NOT_FOUND);
  for (const [method, path, allow] of [['PUT', '/gravitas/up', 'POST, OPTIONS'], ['GET', '/gravitas/up', 'POST, OPTIONS'], ['POST', '/gravitas/down', 'GET, OPTIONS'], ['DELETE', '/gravitas', 'GET, OPTIONS']]) {
    const c = await RawHttp.open(web0);
    t.teardown(() => c.destroy());
    c.write(`${method} ${path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n`);
    const r = await c.response();
    t.equal(r.status, 405, `${method} ${path}`);
    t.equal(codeOfBody(r.body), ErrorCode.HTTP_METHOD_NOT_ALLOWED);
    t.equal(r.headers.allow, allow, `${method} ${path}: Allow names the methods that are`);
  }
  const noUpgrade = await http('GET', `${base}/gravitas`);
  t.equal(noUpgrade.status, 400);
  t.equal(codeOfBody(noUpgrade.body), ErrorCode.HTTP_BAD_REQUEST);
  const unknown = await RawHttp.open(web0);
  t.teardown(() => unknown.destroy());
  unknown.write(`POST /gravitas/up HTTP/1.1\r\nHost: x\r\n${STREAM_HEADER}: ${'ab'.repeat(16)}\r\nContent-Length: 0\r\n\r\n`);
  const u = await unknown.response();
  t.equal(u.status, 404);
  t.equal(codeOfBody(u.body), ErrorCode.STREAM_UNKNOWN);
  const inUrl = await RawHttp.open(web0);
  t.teardown(() => inUrl.destroy());
  inUrl.write(`POST /gravitas/up?sid=${'ab'.repeat(16)} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n`);
  const iu = await inUrl.response();
  t.equal(iu.status, 400, 'a stream id in the URL (where proxies log it) is refused');
  t.equal(codeOfBody(iu.body), ErrorCode.HTTP_BAD_REQUEST);
  const pre = await RawHttp.open(web0);
  t.teardown(() => pre.destroy());
  pre.write('OPTIONS /gravitas/up HTTP/1.1\r\nHost: x\r\nOrigin: http://app.example\r\nAccess-Control-Request-Method: POST\r\n\r\n');
  const p = await pre.response();
  t.equal(p.status, 204);
  t.equal(p.headers['access-control-allow-origin'], '*');
  t.match(p.headers['access-control-allow-methods'], /POST/);
  t.match(p.headers['access-control-allow-headers'], /x-gravitas-stream/, 'the stream header may be sent cross-origin');
});

t.test('a WebSocket message over the frame limit is closed with 1009; a neighbour on the cell chats on', async (t) => {
  const neighbour = await connectClient(t, { servers: [`ws://${web0}`], transports: ['ws'], serverPublicKey: pk, user: 'ws-neighbour' });
  const peer = await connectClient(t, { servers: [tcp0], serverPublicKey: pk, user: 'ws-peer' });
  const ws = new WebSocket(`ws://${web0}/gravitas`);
  t.teardown(() => ws.terminate());
  ws.on('error', () => undefined); // the close is what is checked
  await new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', reject);
  });
  const closed = new Promise<number>((resolve) => ws.once('close', (code) => resolve(code)));
  ws.send(Buffer.alloc(MAX_FRAME + 1));
  t.equal(await closed, 1009, 'closed: message too big');
  const r = await exchange(neighbour, peer, 'still here');
  t.equal(r.status, 'delivered');
  t.equal(neighbour.disconnects, 0);
  const m = await metricsText(node.adminUrl);
  t.ok((metricValue(m, 'gravitas_protocol_errors_total', { code: ErrorCode.FRAME_TOO_LARGE }) ?? 0) >= 1, 'counted as FRAME_TOO_LARGE');
});

t.test('a coded error on a WebSocket: the error frame first, then close 4000 with the code as its reason', async (t) => {
  const ws = new WebSocket(`ws://${web0}/gravitas`);
  t.teardown(() => ws.terminate());
  ws.on('error', () => undefined);
  const frames: Buffer[] = [];
  ws.on('message', (data: Buffer) => frames.push(Buffer.from(data)));
  await new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', reject);
  });
  const closed = new Promise<{ code: number; reason: string }>((resolve) => ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() })));
  ws.send('a text message is not a frame'); // docs/transports.md: a text message is DECODE_FAILED
  t.same(await closed, { code: 4000, reason: ErrorCode.DECODE_FAILED }, 'closed 4000, reason DECODE_FAILED');
  t.equal(frames.length, 1, 'one frame before the close');
  t.match(decodeServerHandshake(unpack(frames[0]!)), { t: 'error', code: ErrorCode.DECODE_FAILED }, 'the error frame went first');
});

t.test('chunked HTTP: an upstream for no open stream is 404 STREAM_UNKNOWN; a byte on the downstream ends its stream', async (t) => {
  t.same(await postUp(web1, 'ab'.repeat(16), new Uint8Array(0)), { status: 404, code: ErrorCode.STREAM_UNKNOWN }, 'a stream id nobody opened');
  const down = await RawDown.open(web1);
  t.teardown(() => down.destroy());
  t.match(down.sid, /^[0-9a-f]{32}$/, 'a stream was opened');
  down.conn.write('x'); // the client must never send on the downstream
  t.ok(await down.conn.closed(), 'the downstream was closed');
  t.same(await postUp(web1, down.sid, new Uint8Array(0)), { status: 404, code: ErrorCode.STREAM_UNKNOWN }, 'and its stream is gone: an upstream for it is STREAM_UNKNOWN');
});

t.test('a WebSocket from an origin outside web.corsOrigins is refused', async (t) => {
  const strict = await startNode(
    validateConfig(nodeConfig({ natsUrl: nats.url, nodeId: 'strict', dataDir: join(dir.path, 'strict'), keys, cells: 1, extra: { web: { corsOrigins: ['http://good.example'] } } })),
    () => undefined,
  );
  t.teardown(() => strict.stop());
  const addr = strict.webAddresses[0]!;
  const status = (origin: string): Promise<number> =>
    new Promise((resolve) => {
      const ws = new WebSocket(`ws://${addr}/gravitas`, { origin });
      ws.on('unexpected-response', (_req, res) => {
        resolve(res.statusCode ?? 0);
        ws.terminate();
      });
      ws.on('open', () => {
        resolve(101);
        ws.close();
      });
      ws.on('error', () => undefined);
    });
  t.equal(await status('http://evil.example'), 403);
  t.equal(await status('http://good.example'), 101);
});
