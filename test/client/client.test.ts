/**
 * SDK behaviour against a real node: exactly-once presentation of re-delivered
 * messages, keepalive under the idle timeout, outbox re-send after a reconnect.
 * Where the promise is the server's (a re-send is not delivered again) or the
 * SDK's (a re-delivery is not shown again), the node's own counters say which
 * side did the work: an inbox count alone cannot tell them apart.
 */
import t from 'tap';
import { join } from 'node:path';
import { validateConfig, startNode } from '@gravitas/server';
import { NatsServer, tempDir, check } from '@gravitas/testkit';
import { clusterKeys, connectClient, metricsText, metricValue, nodeConfig } from '../fixtures/cluster.js';

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

/** Chat messages the node has written to devices, over all its cells (gravitas_messages_out_total). */
const written = async (): Promise<number> => metricValue(await metricsText(node.adminUrl), 'gravitas_messages_out_total') ?? 0;

t.test('a message re-sent with the same id is answered with its status, not delivered again, and reaches the application once', async (t) => {
  const a = await connectClient(t, { servers: [cell0], serverPublicKey: pk, user: 'dup-a' });
  const b = await connectClient(t, { servers: [cell1], serverPublicKey: pk, user: 'dup-b' });
  const before = await written();
  const first = await a.client.send('dup-b', 'once', 'fixed-id-1');
  const second = await a.client.send('dup-b', 'once', 'fixed-id-1');
  t.equal(first.status, 'delivered');
  t.equal(second.status, 'delivered', 'the re-send of a settled id gets the same status');
  await b.client.ping(); // everything before the pong has been handled
  t.equal(await written(), before + 1, 'the server wrote the message to dup-b once (custody, not the SDK, dropped the re-send)');
  t.equal(b.inbox.filter((m) => m.id === 'fixed-id-1').length, 1, 'the application saw it once');
});

t.test('a message the server delivers twice (its first delivery was never acknowledged) is shown once', async (t) => {
  const a = await connectClient(t, { servers: [cell0], serverPublicKey: pk, user: 'redl-a' });
  // No automatic ack: the first delivery stays unacknowledged when the connection drops.
  const b = await connectClient(t, { servers: [cell1], serverPublicKey: pk, user: 'redl-b', autoAck: false });
  const before = await written();
  const sent = a.client.send('redl-b', 'twice on the wire', 'redl-1');
  await b.received((x) => x.id === 'redl-1');
  (b.client as unknown as { socket: { destroy(): void } }).socket.destroy(); // cut before any ack
  // The SDK reconnects by itself; custody gives the unacknowledged item to the same client again.
  await check('the server wrote redl-1 to redl-b a second time', async () => (await written()) >= before + 2, { timeout: 15_000, interval: 50 });
  t.equal((await sent).status, 'stored', 'never acknowledged: it is in the mailbox');
  await b.client.ping(); // everything the session had sent before the pong has been handled
  t.equal(b.inbox.filter((x) => x.id === 'redl-1').length, 1, 'the application saw it once');
  b.client.ack('redl-1', 'redl-a');
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
  const sent = a.client.send('outbox-b', 'after reconnect');
  // Bounded waits: a message left in the outbox fails here, by name, instead of hanging the file.
  const m = await b.received((x) => x.text === 'after reconnect', 15_000);
  const r = await Promise.race([sent, new Promise<never>((_, reject) => setTimeout(() => reject(new Error('no status for the re-sent message')), 15_000).unref())]);
  t.equal(r.status, 'delivered');
  t.equal(m.id, r.id, 'the message that arrived is the one sent while disconnected');
});
