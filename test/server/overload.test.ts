/*
 * Overload, with real processes: a cell refuses what it cannot take early, with a
 * coded BUSY the SDK backs off from, instead of absorbing it until memory runs out;
 * and its own lag never expires a custody window, so an online device that reads is
 * never spilled to its mailbox because the server fell behind. By message id:
 * nothing is lost, nothing reaches an application twice.
 */
import t, { type Test } from 'tap';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { check, NatsServer, tempDir } from '@gravitas/testkit';
import { clusterKeys, connectClient, exchange, metricsText, metricValue, nodeConfig, spawnNode, writeNodeConfig, type NodeProcess, type TestClient } from '../fixtures/cluster.js';
import { runTraffic, verifyExactlyOnce } from '../fixtures/traffic.js';

const SENDERS = 8;
const PER_SENDER = 250;

async function node(t: Test, limits: Record<string, unknown>): Promise<{ node: NodeProcess; pk: Uint8Array }> {
  const nats = await NatsServer.start();
  t.teardown(() => nats.stop());
  const dir = await tempDir('gravitas-overload-');
  t.teardown(() => dir[Symbol.asyncDispose]());
  const keys = clusterKeys();
  const config = nodeConfig({
    natsUrl: nats.url,
    nodeId: 'solo',
    dataDir: join(dir.path, 'solo'),
    keys,
    cells: 1,
    extra: { limits: { msgRatePerSec: 100_000, msgBurst: 100_000, fanoutRatePerSec: 100_000, fanoutBurst: 100_000, accountMsgRatePerSec: 100_000, accountFanoutRatePerSec: 100_000, ...limits } },
  });
  const n = await spawnNode(await writeNodeConfig(join(dir.path, 'solo.json'), config));
  t.teardown(() => n.stop(5000));
  return { node: n, pk: keys.serverPublicKey };
}

async function pairs(t: Test, addr: string, pk: Uint8Array): Promise<{ senders: TestClient[]; receivers: Map<string, TestClient[]> }> {
  const senders = await Promise.all(Array.from({ length: SENDERS }, (_, i) => connectClient(t, { user: `s${i}`, servers: [addr], serverPublicKey: pk, maxOutbox: 4096 })));
  const receivers = new Map<string, TestClient[]>();
  for (let i = 0; i < SENDERS; i++) receivers.set(`r${i}`, [await connectClient(t, { user: `r${i}`, servers: [addr], serverPublicKey: pk })]);
  return { senders, receivers };
}

const counter = async (n: NodeProcess, name: string): Promise<number> => metricValue(await metricsText(n.adminUrl), name) ?? 0;
const rssMiB = (pid: number): number => Number(/^VmRSS:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]) / 1024;

t.test('a flood far past what the cell may hold under custody: BUSY early, nothing lost, nothing spilled, memory bounded, then normal again', async (t) => {
  // 16 messages under custody at most, against 8 senders with 64 in flight each.
  const { node: n, pk } = await node(t, { maxPendingPerCell: 16 });
  const { senders, receivers } = await pairs(t, n.clientAddresses[0]!, pk);
  const rss0 = rssMiB(n.pid);
  const traffic = runTraffic(senders, [...receivers.keys()], PER_SENDER, 64);
  // The high-water mark of messages under custody, scraped while the flood runs.
  let peak = 0;
  let flooding = true;
  const sampler = (async () => {
    while (flooding) {
      peak = Math.max(peak, metricValue(await metricsText(n.adminUrl), 'gravitas_custody_pending_max') ?? 0);
      await new Promise((r) => setTimeout(r, 50));
    }
  })();
  await verifyExactlyOnce(t, traffic, receivers, SENDERS * PER_SENDER);
  flooding = false;
  await sampler;
  t.ok(peak > 0 && peak <= 16, `never more than 16 messages under custody (peak ${peak}), with 512 offered at once`);
  const shed = await counter(n, 'gravitas_shed_total');
  t.ok(shed > 0, `the bound was reached: ${shed} sends refused with BUSY and sent again by the SDK`);
  t.equal(await counter(n, 'gravitas_mailbox_stores_total'), 0, 'no message for an online, reading recipient went to a mailbox');
  const grew = rssMiB(n.pid) - rss0;
  t.ok(grew < 96, `node RSS grew ${grew.toFixed(1)} MiB while ${SENDERS * PER_SENDER} messages were pushed at a 16-message bound`);
  // The flood is over: a message goes through at the first attempt.
  const r = await exchange(senders[0]!, receivers.get('r1')![0]!, 'after the flood');
  t.equal(r.status, 'delivered', 'delivered');
  t.equal(await counter(n, 'gravitas_shed_total'), shed, 'and nothing was refused for it');
});

t.test("the cell's own lag does not run out a custody window: a node stopped for 4 windows spills nothing", async (t) => {
  const { node: n, pk } = await node(t, { custodyWindowMs: 500 });
  const { senders, receivers } = await pairs(t, n.clientAddresses[0]!, pk);
  const traffic = runTraffic(senders, [...receivers.keys()], 100, 16);
  await check('traffic under way', () => traffic.count() >= 100, { timeout: 30_000, interval: 5 });
  // Every cell of the node stops mid-traffic (SIGSTOP): messages under custody wait 2 s, 4 windows,
  // while their recipients are online and reading — it is the server that fell behind.
  process.kill(n.pid, 'SIGSTOP');
  await new Promise((r) => setTimeout(r, 2000));
  process.kill(n.pid, 'SIGCONT');
  await verifyExactlyOnce(t, traffic, receivers, SENDERS * 100);
  t.equal(await counter(n, 'gravitas_mailbox_stores_total'), 0, 'no mailbox stores: the window does not count time the cell could not run');
});

t.test('a cell that sheds sheds group sends too: BUSY while custody is full, sent again by the SDK once it is not', async (t) => {
  // One message under custody at most, and a window long enough that only an ack frees it.
  const { node: n, pk } = await node(t, { maxPendingPerCell: 1, custodyWindowMs: 60_000 });
  const servers = [n.clientAddresses[0]!];
  const alice = await connectClient(t, { user: 'alice', servers, serverPublicKey: pk });
  const bob = await connectClient(t, { user: 'bob', servers, serverPublicKey: pk, autoAck: false });
  const carol = await connectClient(t, { user: 'carol', servers, serverPublicKey: pk });
  const { g } = await alice.client.createGroup('busy', ['carol']);
  await carol.client.acceptInvite(g);
  // bob reads without acknowledging: alice's message holds the cell's one custody slot.
  const held = alice.client.send('bob', 'held');
  const m = await bob.received((x) => x.text === 'held');
  const shed0 = await counter(n, 'gravitas_shed_total');
  const group = alice.client.sendToGroup(g, 'to the group');
  await check('the group send refused with BUSY', async () => (await counter(n, 'gravitas_shed_total')) > shed0, { timeout: 10_000, interval: 20 });
  t.notOk(carol.inbox.some((x) => x.text === 'to the group'), 'nothing reached the group while the cell shed');
  bob.client.ack(m.id, m.from);
  t.equal((await held).status, 'delivered', 'the held message is delivered once acknowledged');
  t.match(await group, { status: 'stored' }, 'the SDK sent the group message again after its backoff: the group log holds it');
  await carol.received((x) => x.text === 'to the group');
});
