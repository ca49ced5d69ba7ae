/**
 * SDK behaviour against a real node: exactly-once presentation of re-delivered
 * messages, keepalive under the idle timeout, outbox re-send after a reconnect.
 */
import t from 'tap';
import { join } from 'node:path';
import { validateConfig, startNode } from '@gravitas/server';
import { NatsServer, tempDir, check } from '@gravitas/testkit';
import { clusterKeys, connectClient, nodeConfig } from '../fixtures/cluster.js';

const nats = await NatsServer.start();
t.teardown(() => nats.stop());
const dir = await tempDir('gravitas-client-');
t.teardown(() => dir[Symbol.asyncDispose]());
const keys = clusterKeys();
const IDLE_MS = 1000;
const node = await startNode(
  validateConfig(nodeConfig({ natsUrl: nats.url, nodeId: 'sdk', dataDir: join(dir.path, 'sdk'), keys, extra: { limits: { idleTimeoutMs: IDLE_MS } } })),
  () => undefined,
);
t.teardown(() => node.stop());
const [cell0, cell1] = node.clientAddresses as [string, string];
const pk = keys.serverPublicKey;

t.test('a message re-sent with the same id reaches the application once, and is acknowledged both times', async (t) => {
  const a = await connectClient(t, { servers: [cell0], serverPublicKey: pk, user: 'dup-a' });
  const b = await connectClient(t, { servers: [cell1], serverPublicKey: pk, user: 'dup-b' });
  const first = await a.client.send('dup-b', 'once', 'fixed-id-1');
  const second = await a.client.send('dup-b', 'once', 'fixed-id-1');
  t.equal(first.status, 'delivered');
  t.equal(second.status, 'delivered', 'the recipient SDK still acks the duplicate');
  await b.client.ping(); // everything before the pong has been handled
  t.equal(b.inbox.filter((m) => m.id === 'fixed-id-1').length, 1);
});

t.test('keepalive pings hold an idle session open past the idle timeout; without them it is closed', async (t) => {
  const kept = await connectClient(t, { servers: [cell0], serverPublicKey: pk, user: 'idle-kept', keepaliveMs: IDLE_MS / 4 });
  const dropped = await connectClient(t, { servers: [cell0], serverPublicKey: pk, user: 'idle-dropped', keepaliveMs: 0, reconnect: false });
  await check('the silent client was disconnected for idleness', () => dropped.disconnects > 0, { timeout: IDLE_MS * 5 });
  t.equal(kept.disconnects, 0, 'the pinging client stayed connected');
  t.ok(kept.client.connected);
});

t.test('a message sent while disconnected waits in the outbox and goes out after the reconnect', async (t) => {
  const a = await connectClient(t, { servers: [cell0], serverPublicKey: pk, user: 'outbox-a' });
  const b = await connectClient(t, { servers: [cell1], serverPublicKey: pk, user: 'outbox-b' });
  // Drop a's connection under it; the SDK reconnects by itself.
  (a.client as unknown as { socket: import('node:net').Socket }).socket.destroy();
  await check('a noticed the loss', () => !a.client.connected);
  const r = await a.client.send('outbox-b', 'after reconnect');
  t.equal(r.status, 'delivered');
  t.ok(await b.received((m) => m.id === r.id && m.text === 'after reconnect'));
});
