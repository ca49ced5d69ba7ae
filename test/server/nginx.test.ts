/**
 * The chunked-HTTP transport through a real nginx (docs/transports.md "Behind a
 * proxy"): nginx re-chunks the upstream POST and streams the downstream; the SDK
 * chats through it, falls back from WebSocket to chunked HTTP when the proxy does
 * not pass upgrades, rotates its upstream without losing a frame, and a hostile
 * upstream sent through the proxy is still cut with its coded error.
 */
import t from 'tap';
import { join } from 'node:path';
import { ErrorCode } from '@gravitas/protocol';
import { startNode, STREAM_HEADER, validateConfig } from '@gravitas/server';
import { NatsServer, tempDir } from '@gravitas/testkit';
import { clusterKeys, connectClient, exchange, nodeConfig } from '../fixtures/cluster.js';
import { Nginx, nginxBinary } from '../fixtures/nginx.js';
import { codeOfBody, RawDown, RawHttp } from '../fixtures/web.js';

if (!nginxBinary()) {
  t.plan(0, 'nginx is not installed (apt-get install nginx): the proxy tests need the real binary');
} else {
  const nats = await NatsServer.start();
  t.teardown(() => nats.stop());
  const dir = await tempDir('gravitas-nginx-node-');
  t.teardown(() => dir[Symbol.asyncDispose]());
  const keys = clusterKeys();
  // Pings stand in for many frames here: their rate limit is not what this tests.
  const limits = { controlRatePerSec: 1_000_000, controlBurst: 1_000_000 };
  const node = await startNode(validateConfig(nodeConfig({ natsUrl: nats.url, nodeId: 'px', dataDir: join(dir.path, 'px'), keys, extra: { limits } })), () => undefined);
  t.teardown(() => node.stop());
  const [web0, web1] = node.webAddresses as [string, string];
  const pk = keys.serverPublicKey;
  const proxy0 = await Nginx.start({ upstream: web0 });
  t.teardown(() => proxy0.stop());
  const proxy1 = await Nginx.start({ upstream: web1 });
  t.teardown(() => proxy1.stop());

  t.test('two devices chat over chunked HTTP, each through its own nginx', async (t) => {
    const a = await connectClient(t, { servers: [proxy0.url], transports: ['http'], serverPublicKey: pk, user: 'px-a' });
    const b = await connectClient(t, { servers: [proxy1.url], transports: ['http'], serverPublicKey: pk, user: 'px-b' });
    t.equal(a.client.transport, 'http');
    for (let i = 0; i < 20; i++) {
      t.equal((await exchange(a, b, `a→b ${i}`)).status, 'delivered');
      t.equal((await exchange(b, a, `b→a ${i}`)).status, 'delivered');
    }
    // A burst: frames travel in order through the proxy's re-chunking.
    const sent = await Promise.all(Array.from({ length: 200 }, (_, i) => a.client.send('px-b', `burst ${i} ${'x'.repeat(i * 37)}`)));
    t.ok(sent.every((r) => r.status === 'delivered'));
    await b.received((m) => m.text.startsWith('burst 199 '));
    const burst = b.inbox.filter((m) => m.text.startsWith('burst ')).map((m) => Number(m.text.split(' ')[1]));
    t.same(burst, [...burst].sort((x, y) => x - y), 'received in the order sent');
    t.equal(a.disconnects + b.disconnects, 0, 'no reconnects');
    t.same([...a.errors, ...b.errors], []);
  });

  t.test('a proxy that does not pass WebSocket upgrades: the SDK falls back to chunked HTTP', async (t) => {
    const a = await connectClient(t, { servers: [proxy0.url], serverPublicKey: pk, user: 'px-fallback' });
    const b = await connectClient(t, { servers: [node.clientAddresses[1]!], serverPublicKey: pk, user: 'px-fallback-peer' });
    t.equal(a.client.transport, 'http', 'WebSocket was refused through the proxy; chunked HTTP works');
    t.equal((await exchange(a, b, 'via fallback')).status, 'delivered');
    t.equal((await exchange(b, a, 'and back')).status, 'delivered');
  });

  t.test('a proxy that passes upgrades carries the WebSocket transport', async (t) => {
    const wsProxy = await Nginx.start({ upstream: web0, websocket: true });
    t.teardown(() => wsProxy.stop());
    const a = await connectClient(t, { servers: [wsProxy.url], serverPublicKey: pk, user: 'px-ws' });
    const b = await connectClient(t, { servers: [proxy1.url], transports: ['http'], serverPublicKey: pk, user: 'px-ws-peer' });
    t.equal(a.client.transport, 'ws');
    t.equal((await exchange(a, b, 'ws via nginx')).status, 'delivered');
    t.equal((await exchange(b, a, 'http via nginx')).status, 'delivered');
  });

  t.test('the downstream tells a proxy not to buffer it, even one with proxy_buffering on (X-Accel-Buffering: no)', async (t) => {
    // nginx consumes the header, so it is read at the web listener itself.
    const down = await RawDown.open(web0);
    t.teardown(() => down.destroy());
    t.equal(down.status, 200);
    const head = down.conn.data.toString('latin1', 0, down.conn.data.indexOf('\r\n\r\n'));
    t.match(head, /\r\nX-Accel-Buffering: no\r?$/im, 'the response head says X-Accel-Buffering: no');
  });

  t.test('the upstream rotates through the proxy without losing a frame', async (t) => {
    const a = await connectClient(t, { servers: [proxy0.url], transports: ['http'], serverPublicKey: pk, user: 'px-rot' });
    const b = await connectClient(t, { servers: [proxy1.url], transports: ['http'], serverPublicKey: pk, user: 'px-rot-peer' });
    await Promise.all(Array.from({ length: 5000 }, () => a.client.ping()));
    t.equal((await exchange(a, b, 'after many frames')).status, 'delivered');
    t.equal(a.disconnects, 0);
  });

  t.test('a hostile chunk sent through nginx is still cut with its code, and only its request', async (t) => {
    const proxyAddr = proxy0.url.replace('http://', '');
    const down = await RawDown.open(proxyAddr);
    t.teardown(() => down.destroy());
    t.equal(down.status, 200);
    t.equal(down.sid.length, 32, 'the stream id came through the proxy as the first frame');
    const up = await RawHttp.open(proxyAddr);
    t.teardown(() => up.destroy());
    // Whatever nginx does to the chunking, the cell decodes the same bytes: a frame
    // header announcing more than the frame limit, refused with that request.
    up.write(Buffer.from(`POST /gravitas/up HTTP/1.1\r\nHost: x\r\n${STREAM_HEADER}: ${down.sid}\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n\x7f\xff\xff\xff\r\n`, 'latin1'));
    const r = await up.response();
    t.equal(r.status, 413, 'the upstream request is refused');
    t.equal(codeOfBody(r.body), ErrorCode.FRAME_TOO_LARGE);
    t.equal(down.unread, 0, 'the stream got no error: a request of junk does not end it');
    t.notOk(down.conn.ended, 'and its downstream is still open');
  });
}
