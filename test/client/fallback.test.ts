/**
 * Transport fallback in the Node SDK (docs/transports.md "Fallback"): TCP →
 * WebSocket → chunked HTTP when a transport cannot connect, the working one
 * remembered and reported, resumption by ticket across transports, and a connect
 * hint followed over a web transport.
 */
import t from 'tap';
import { join } from 'node:path';
import { fromBase64Url, hintKeyPair, signHint } from '@gravitas/protocol';
import { httpDialer, tcpDialer, wsDialer, type Dialer, type TransportKind } from '@gravitas/client';
import { startNode, validateConfig } from '@gravitas/server';
import { check, freePort, NatsServer, tempDir } from '@gravitas/testkit';
import { clusterKeys, connectClient, exchange, makeClient, nodeConfig, reconnected } from '../fixtures/cluster.js';

const nats = await NatsServer.start();
t.teardown(() => nats.stop());
const dir = await tempDir('gravitas-fallback-');
t.teardown(() => dir[Symbol.asyncDispose]());
const keys = clusterKeys();
const node = await startNode(validateConfig(nodeConfig({ natsUrl: nats.url, nodeId: 'fb', dataDir: join(dir.path, 'fb'), keys })), () => undefined);
t.teardown(() => node.stop());
const [tcp0, tcp1] = node.clientAddresses as [string, string];
const [web0, web1] = node.webAddresses as [string, string];
const pk = keys.serverPublicKey;
/** A TCP address nobody listens on. */
const closedTcp = `127.0.0.1:${await freePort()}`;

/** Dialers that count their attempts; `tcp` fails while `blockTcp.on`. */
function counting(blockTcp = { on: false }): { dialers: Record<TransportKind, Dialer>; tries: Record<TransportKind, number> } {
  const tries: Record<TransportKind, number> = { tcp: 0, ws: 0, http: 0 };
  const wrap = (k: TransportKind, d: Dialer): Dialer => (e, h, ms) => {
    tries[k]++;
    if (k === 'tcp' && blockTcp.on) return d({ tcp: closedTcp }, h, ms);
    return d(e, h, ms);
  };
  return { dialers: { tcp: wrap('tcp', tcpDialer), ws: wrap('ws', wsDialer), http: wrap('http', httpDialer) }, tries };
}

t.test('TCP refused: the SDK falls back to WebSocket, reports it, and tries it first next time', async (t) => {
  const { dialers, tries } = counting();
  const seen: TransportKind[] = [];
  const a = await connectClient(t, { servers: [{ tcp: closedTcp, web: `http://${web0}` }], dialers, serverPublicKey: pk, user: 'fb-ws' });
  a.client.on('transport', (k) => seen.push(k));
  const b = await connectClient(t, { servers: [tcp1], serverPublicKey: pk, user: 'fb-peer' });
  t.equal(a.client.transport, 'ws');
  t.same(tries, { tcp: 1, ws: 1, http: 0 }, 'TCP tried first, then WebSocket');
  t.equal((await exchange(a, b, 'over ws')).status, 'delivered');
  // Cut the connection: the reconnect goes straight to WebSocket.
  (a.client as unknown as { socket: { destroy(): void } }).socket.destroy();
  await check('a noticed the loss', () => !a.client.connected);
  await reconnected(a);
  t.same(seen, ['ws'], "the reconnect reported its transport ('transport' event)");
  t.equal(tries.tcp, 1, 'TCP not tried again');
  t.equal((await exchange(b, a, 'still ws')).status, 'delivered');
});

t.test('TCP refused and WebSocket not allowed: chunked HTTP', async (t) => {
  const a = await connectClient(t, { servers: [{ tcp: closedTcp, web: `http://${web1}` }], transports: ['tcp', 'http'], serverPublicKey: pk, user: 'fb-http' });
  const b = await connectClient(t, { servers: [tcp0], serverPublicKey: pk, user: 'fb-peer2' });
  t.equal(a.client.transport, 'http');
  t.equal((await exchange(a, b, 'over http')).status, 'delivered');
  t.equal((await exchange(b, a, 'back over http')).status, 'delivered');
});

t.test('nothing reachable: connect() rejects with CONNECT_FAILED after trying every transport', async (t) => {
  const { dialers, tries } = counting();
  const closedWeb = `http://127.0.0.1:${await freePort()}`;
  const c = makeClient({ servers: [{ tcp: closedTcp, web: closedWeb }], dialers, serverPublicKey: pk, user: 'fb-none', reconnect: false });
  await t.rejects(c.client.connect(), { code: 'CONNECT_FAILED' });
  t.same(tries, { tcp: 1, ws: 1, http: 1 });
  await c.client.close();
});

t.test('a session opened over TCP is resumed over chunked HTTP with its ticket', async (t) => {
  const block = { on: false };
  const { dialers, tries } = counting(block);
  // Only the TCP address is configured: the web address comes from the welcome's `wa`.
  const a = await connectClient(t, { servers: [tcp0], transports: ['tcp', 'http'], dialers, serverPublicKey: pk, user: 'fb-resume' });
  const b = await connectClient(t, { servers: [tcp1], serverPublicKey: pk, user: 'fb-resume-peer' });
  t.equal(a.client.transport, 'tcp');
  t.equal(a.client.welcome?.resumed, false);
  // TCP goes away (a firewall change); the connection drops; a message waits in the outbox.
  block.on = true;
  (a.client as unknown as { socket: { destroy(): void } }).socket.destroy();
  await check('a noticed the loss', () => !a.client.connected);
  const pending = a.client.send('fb-resume-peer', 'sent while offline');
  await reconnected(a);
  t.equal(a.client.transport, 'http');
  t.equal(a.client.welcome?.resumed, true, 'resumed by ticket, not a full handshake');
  t.ok(tries.tcp >= 2 && tries.http >= 1);
  const r = await pending;
  t.equal(r.status, 'delivered');
  t.ok(await b.received((m) => m.id === r.id));
});

t.test('a connect hint naming a web listener is followed over WebSocket', async (t) => {
  const cells = node.supervisor.statuses();
  const target = cells[1]!.cellId;
  const a = await connectClient(t, { servers: [`ws://${web0}`], transports: ['ws'], serverPublicKey: pk, user: 'fb-hint' });
  t.equal(a.client.welcome?.cell, cells[0]!.cellId);
  const moved = new Promise((resolve) => a.client.once('moved', resolve));
  const now = Date.now();
  const hint = signHint(
    { cell: target, addr: tcp1, web: web1, user: 'fb-hint', device: a.device, issuedAt: now, expiresAt: now + 30_000 },
    hintKeyPair(fromBase64Url(keys.serverKey, 32)).secretKey,
  );
  t.ok(a.client.followHint(hint));
  await moved;
  t.equal(a.client.welcome?.cell, target, 'now on the hinted cell');
  t.equal(a.client.transport, 'ws', 'still on WebSocket (TCP is not allowed for this client)');
});
