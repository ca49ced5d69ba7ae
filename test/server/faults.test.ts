/*
 * Faults with real node processes: a cell that throws an uncaught exception (test
 * hook) with 2,000 messages flowing through it, and a node process killed with SIGKILL.
 */
import t, { type Test } from 'tap';
import { join } from 'node:path';
import { DeliveryError } from '@gravitas/client';
import { check, NatsServer, tempDir } from '@gravitas/testkit';
import { acceptedAtLeast, runTraffic, verifyExactlyOnce } from '../fixtures/traffic.js';
import {
  adminCells, clusterKeys, connectClient, exchange, http, metricsText, metricValue, nodeConfig, readyz, reconnected, spawnNode, writeNodeConfig,
  type ClusterKeys, type NodeProcess, type TestClient,
} from '../fixtures/cluster.js';

const HEARTBEAT_MS = 200;
const MEMBERSHIP_TIMEOUT_MS = 1000;
/** Short custody window: a message sent into a dead cell's inbox is stored after this. */
const CUSTODY_MS = 1000;
/** Messages moved through the cell crash (two senders, 64 unconfirmed each at a time). */
const CRASH_TRAFFIC = 2000;

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
    extra: { membership: { heartbeatMs: HEARTBEAT_MS, timeoutMs: MEMBERSHIP_TIMEOUT_MS }, limits: { custodyWindowMs: CUSTODY_MS, msgRatePerSec: 100_000, msgBurst: 100_000 } },
  });
  const node = await spawnNode(await writeNodeConfig(join(env.dir, `${nodeId}.json`), config));
  t.teardown(() => node.stop(5000));
  return node;
}

/**
 * Sends `count` messages one after the other and returns their statuses. Right after a
 * fault a message can still be routed into the dead cell until membership times it
 * out; custody then stores it after the window instead of losing it.
 */
async function sendAll(from: TestClient, to: string, label: string, count: number): Promise<Array<{ id: string; status: string }>> {
  const out: Array<{ id: string; status: string }> = [];
  for (let i = 0; i < count; i++) {
    try {
      out.push(await from.client.send(to, `${label} #${i}`));
    } catch (err) {
      out.push({ id: '?', status: err instanceof DeliveryError ? err.code : String(err) });
    }
  }
  return out;
}

/** Every id arrived at `to`'s application exactly once. */
async function receivedOnce(t: Test, to: TestClient, ids: string[], what: string): Promise<void> {
  await check(`${to.user} got all ${ids.length} (${what})`, () => ids.every((id) => to.inbox.some((m) => m.id === id)), { timeout: 15_000, interval: 20 });
  const counts = new Map<string, number>();
  for (const m of to.inbox) counts.set(m.id, (counts.get(m.id) ?? 0) + 1);
  t.ok(ids.every((id) => counts.get(id) === 1), `${to.user}: each of the ${ids.length} messages seen exactly once (${what})`);
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

  // Traffic through the crash: c0 sends from cell 0 (the origin cell that dies holds
  // its messages' custody), c1 from cell 1; both to alice (cell 0) and bob (cell 1).
  const c0 = await connectClient(t, { user: 'c0', servers: [a0], serverPublicKey: pk, maxOutbox: 4096 });
  const c1 = await connectClient(t, { user: 'c1', servers: [a1, a0], serverPublicKey: pk, maxOutbox: 4096 });
  const traffic = runTraffic([c0, c1], ['alice', 'bob'], CRASH_TRAFFIC / 2);
  await acceptedAtLeast(traffic, CRASH_TRAFFIC / 4);
  const inFlight = c0.client.pendingMessages().length;
  const crash = await http('POST', `${A.adminUrl}/admin/cells/0/crash`);
  t.equal(crash.status, 202, 'crash hook accepted');
  t.ok(inFlight > 0, `${inFlight} of c0's messages were unconfirmed on cell 0 when it crashed (${traffic.count()} accepted before)`);

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

  // What cell 0 held got no status: its SDK re-sends it after reconnecting, and every message settles.
  await check('every message in flight at the crash was re-sent and settled', () => traffic.count() + traffic.failures.length === CRASH_TRAFFIC, { timeout: 60_000, interval: 50 });
  t.ok(c0.disconnects >= 1, 'c0 lost its cell');
  await verifyExactlyOnce(t, traffic, new Map([['alice', [alice]], ['bob', [bob]]]), CRASH_TRAFFIC);

  t.equal((await exchange(alice, bob, 'after the crash')).status, 'delivered', 'alice → bob delivered');
  // bob's cell may still route to alice's dead cell for a moment: those are stored, never lost.
  const sent = await sendAll(bob, 'alice', 'bob → alice after the crash', 5);
  t.ok(sent.every((r) => r.status === 'delivered' || r.status === 'stored'), 'every message taken into custody', { sent });
  await receivedOnce(t, alice, sent.map((r) => r.id), 'after the crash');
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

  // carol is unreachable. Until membership declares her cell dead, a message may be
  // routed into it and is stored after the custody window; after that, at once.
  const toCarol = await sendAll(alice, 'carol', 'to carol after the kill', 4);
  t.ok(toCarol.every((r) => r.status === 'stored'), 'messages to carol are stored in her mailbox', { toCarol });
  t.notOk(carol.client.connected, 'carol has nowhere to go');
  t.ok(carol.disconnects >= 1);
  const stored = Date.now() - killedAt;
  t.ok(stored <= MEMBERSHIP_TIMEOUT_MS + HEARTBEAT_MS + 4 * CUSTODY_MS + 3000, `all stored within a bounded time (${stored} ms)`);

  // dave reconnects to node A by himself.
  await reconnected(dave, (c) => c.welcome?.node === 'nodeA');
  t.pass('dave reconnected to node A');
  t.ok(dave.disconnects >= 1, 'dave saw the disconnect');
  t.same(dave.errors, [], 'dave: no client errors');
  t.equal((await exchange(dave, alice, 'after the kill: dave → alice')).status, 'delivered', 'dave → alice delivered');
  const toDave = await sendAll(alice, 'dave', 'after the kill: alice → dave', 3);
  t.ok(toDave.every((r) => r.status === 'delivered' || r.status === 'stored'), 'alice → dave taken into custody', { toDave });
  await receivedOnce(t, dave, toDave.map((r) => r.id), 'after the kill');

  // carol comes back through node A: her mailbox drains, each message once.
  const carol2 = await connectClient(t, { user: 'carol', identity: carol.identity, servers: [a0, a1], serverPublicKey: pk });
  await receivedOnce(t, carol2, toCarol.map((r) => r.id), 'carol drained her mailbox');

  // The survivor is unaffected.
  t.equal(await readyz(A!.adminUrl), 200, 'node A stays ready');
  t.ok((await adminCells(A!.adminUrl)).every((c) => c.ready && c.generation === 0), 'node A: every cell ready, none restarted');
  t.equal(alice.disconnects, 0, 'alice was never disconnected');
});
