/*
 * Faults with real node processes: a cell that throws an uncaught exception (test
 * hook) and a node process killed with SIGKILL.
 */
import t, { type Test } from 'tap';
import { join } from 'node:path';
import { ErrorCode } from '@gravitas/protocol';
import { DeliveryError } from '@gravitas/client';
import { check, NatsServer, tempDir } from '@gravitas/testkit';
import {
  adminCells, clusterKeys, connectClient, exchange, http, metricsText, metricValue, nodeConfig, readyz, reconnected, spawnNode, writeNodeConfig,
  type ClusterKeys, type NodeProcess, type TestClient,
} from '../fixtures/cluster.js';

const HEARTBEAT_MS = 200;
const MEMBERSHIP_TIMEOUT_MS = 1000;
/** Short custody window: a message sent into a dead cell's inbox fails after this, instead of 10 s. */
const CUSTODY_MS = 1000;

interface Env { nats: NatsServer; dir: string; keys: ClusterKeys }

async function setup(t: Test): Promise<Env> {
  const nats = await NatsServer.start();
  t.teardown(() => nats.stop());
  const dir = await tempDir('gravitas-faults-');
  t.teardown(() => dir[Symbol.asyncDispose]());
  return { nats, dir: dir.path, keys: clusterKeys() };
}

async function startNodeProcess(t: Test, env: Env, nodeId: string): Promise<NodeProcess> {
  const config = nodeConfig({
    natsUrl: env.nats.url,
    nodeId,
    dataDir: join(env.dir, nodeId),
    keys: env.keys,
    extra: { membership: { heartbeatMs: HEARTBEAT_MS, timeoutMs: MEMBERSHIP_TIMEOUT_MS }, limits: { custodyWindowMs: CUSTODY_MS } },
  });
  const node = await spawnNode(await writeNodeConfig(join(env.dir, `${nodeId}.json`), config));
  t.teardown(() => node.kill());
  return node;
}

/** The code of a failed send, or 'delivered'. */
async function trySend(from: TestClient, to: string, text: string): Promise<string> {
  try {
    return (await from.client.send(to, text)).status;
  } catch (err) {
    if (err instanceof DeliveryError) return err.code;
    throw err;
  }
}

/**
 * Right after a fault, a message can still be routed to the dead cell until membership
 * times it out (it then fails with DELIVERY_TIMEOUT after the custody window). Sends
 * until one is delivered and returns the failure codes seen on the way. The recipient
 * is online all along, so RECIPIENT_OFFLINE would be wrong.
 */
async function sendUntilDelivered(from: TestClient, to: TestClient, label: string): Promise<string[]> {
  const failures: string[] = [];
  let n = 0;
  const text = await check(
    `${from.user} → ${to.user} delivered (${label})`,
    async () => {
      const text = `${label} #${++n}`;
      const r = await trySend(from, to.user, text);
      if (r === 'delivered') return text;
      failures.push(r);
      return undefined;
    },
    { timeout: 15_000, interval: 20 },
  );
  const msg = await to.received((m) => m.text === text);
  if (msg.from !== from.user || msg.to !== to.user) throw new Error(`unexpected message ${JSON.stringify(msg)}`);
  return failures;
}

t.test('a cell crashes (uncaught exception): the supervisor restarts it, its clients come back', async (t) => {
  const env = await setup(t);
  const A = await startNodeProcess(t, env, 'nodeA');
  const [a0, a1] = A.clientAddresses as [string, string];
  const pk = env.keys.serverPublicKey;
  // alice knows only cell 0: she has to find the restarted cell at the same address.
  const alice = await connectClient(t, { user: 'alice', servers: [a0], serverPublicKey: pk });
  const bob = await connectClient(t, { user: 'bob', servers: [a1, a0], serverPublicKey: pk });
  const before = await adminCells(A.adminUrl);
  t.equal(alice.client.welcome?.cell, before[0]?.cellId, 'alice is on cell 0');
  t.equal(bob.client.welcome?.cell, before[1]?.cellId, 'bob is on cell 1');
  // Both directions once, so that each cell has the other user's location cached.
  t.equal((await exchange(alice, bob, 'before the crash')).status, 'delivered');
  t.equal((await exchange(bob, alice, 'before the crash')).status, 'delivered');

  const crash = await http('POST', `${A.adminUrl}/admin/cells/0/crash`);
  t.equal(crash.status, 202, 'crash hook accepted');

  const after = await check(
    'cell 0 restarted and ready',
    async () => {
      const cells = await adminCells(A.adminUrl);
      return cells[0] && cells[0].generation > before[0]!.generation && cells[0].ready ? cells : undefined;
    },
    { timeout: 10_000, interval: 50 },
  );
  t.equal(after[0]!.generation, before[0]!.generation + 1, '/admin/cells: generation of cell 0 went up by one');
  t.not(after[0]!.cellId, before[0]!.cellId, 'the new incarnation has a new cell id');
  t.equal(after[0]!.status?.address, a0, 'the restarted cell listens on its old address');
  t.equal(after[1]!.generation, before[1]!.generation, 'cell 1 was not restarted');
  t.equal(after[1]!.cellId, before[1]!.cellId);
  await check('/readyz back to 200', async () => (await readyz(A.adminUrl)) === 200, { timeout: 10_000, interval: 50 });
  t.pass('/readyz is 200 again');
  t.match(A.stderr(), /test hook: crash of nodeA-0/, 'the crash was logged');
  t.ok((metricValue(await metricsText(A.adminUrl), 'gravitas_cell_restarts_total') ?? 0) >= 1, 'gravitas_cell_restarts_total counts it');

  await reconnected(alice, (c) => c.welcome?.cell === after[0]!.cellId);
  t.pass('alice reconnected by herself to the new cell 0');
  t.ok(alice.disconnects >= 1, 'alice saw the disconnect');
  t.equal(bob.disconnects, 0, 'bob (cell 1) was not disturbed');
  t.same(alice.errors, [], 'no client errors');

  t.equal((await exchange(alice, bob, 'after the crash')).status, 'delivered', 'alice → bob delivered');
  const failures = await sendUntilDelivered(bob, alice, 'bob → alice after the crash');
  t.notOk(failures.includes(ErrorCode.RECIPIENT_OFFLINE), 'alice is online: never RECIPIENT_OFFLINE', { failures });
  t.pass(`bob → alice delivered (${failures.length} attempts fell into the dead cell's detection window)`);
  t.equal(await readyz(A.adminUrl), 200);
});

t.test('a node process is SIGKILLed: its users go offline in bounded time, its clients move over', async (t) => {
  const env = await setup(t);
  const [A, B] = await Promise.all([startNodeProcess(t, env, 'nodeA'), startNodeProcess(t, env, 'nodeB')]);
  const [a0, a1] = A!.clientAddresses as [string, string];
  const [b0, b1] = B!.clientAddresses as [string, string];
  const pk = env.keys.serverPublicKey;
  const alice = await connectClient(t, { user: 'alice', servers: [a0, a1], serverPublicKey: pk });
  // carol knows only node B: once it is gone she stays offline.
  const carol = await connectClient(t, { user: 'carol', servers: [b0], serverPublicKey: pk });
  // dave knows both nodes.
  const dave = await connectClient(t, { user: 'dave', servers: [b1, b0, a0, a1], serverPublicKey: pk });
  t.equal(carol.client.welcome?.node, 'nodeB');
  t.equal(dave.client.welcome?.node, 'nodeB');
  for (const [x, y] of [[alice, carol], [carol, alice], [alice, dave], [dave, alice]] as const) {
    t.equal((await exchange(x, y, `before the kill: ${x.user} → ${y.user}`)).status, 'delivered', `${x.user} → ${y.user} before the kill`);
  }

  const exit = await B!.kill();
  const killedAt = Date.now();
  t.same(exit, { code: null, signal: 'SIGKILL' }, 'node B is gone');

  // carol is unreachable: first the message may be routed to her dead cell (DELIVERY_TIMEOUT
  // after the custody window), then membership declares the cell dead and lookups skip it.
  const seen: string[] = [];
  let n = 0;
  await check(
    'a message to carol fails with RECIPIENT_OFFLINE',
    async () => {
      const r = await trySend(alice, 'carol', `to carol after the kill #${++n}`);
      seen.push(r);
      return r === ErrorCode.RECIPIENT_OFFLINE;
    },
    { timeout: 10_000, interval: 20 },
  );
  const offlineAfter = Date.now() - killedAt;
  t.ok(
    offlineAfter <= MEMBERSHIP_TIMEOUT_MS + HEARTBEAT_MS + CUSTODY_MS + 1500,
    `RECIPIENT_OFFLINE ${offlineAfter} ms after the kill (membership timeout ${MEMBERSHIP_TIMEOUT_MS} ms)`,
  );
  t.ok(seen.slice(0, -1).every((c) => c === ErrorCode.DELIVERY_TIMEOUT), 'before that only DELIVERY_TIMEOUT (routed into the dead cell)', { seen });
  t.notOk(carol.client.connected, 'carol has nowhere to go');
  t.ok(carol.disconnects >= 1);

  // dave reconnects to node A by himself.
  await reconnected(dave, (c) => c.welcome?.node === 'nodeA');
  t.pass('dave reconnected to node A');
  t.ok(dave.disconnects >= 1, 'dave saw the disconnect');
  t.same(dave.errors, [], 'dave: no client errors');
  t.equal((await exchange(dave, alice, 'after the kill: dave → alice')).status, 'delivered', 'dave → alice delivered');
  const failures = await sendUntilDelivered(alice, dave, 'after the kill: alice → dave');
  t.notOk(failures.includes(ErrorCode.RECIPIENT_OFFLINE), 'dave is online: never RECIPIENT_OFFLINE', { failures });

  // The survivor is unaffected.
  t.equal(await readyz(A!.adminUrl), 200, 'node A stays ready');
  t.ok((await adminCells(A!.adminUrl)).every((c) => c.ready && c.generation === 0), 'node A: every cell ready, none restarted');
  t.equal(alice.disconnects, 0, 'alice was never disconnected');
});
