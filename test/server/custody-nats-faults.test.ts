/*
 * Custody when NATS itself fails, with real processes: the nats-server is
 * SIGKILLed and restarted mid-stream; and a 3-server NATS cluster with mailbox
 * streams replicated 3 times loses one server. Some recipients are offline during
 * the traffic, so the mailboxes take writes through the fault. By message id:
 * nothing accepted is lost, nothing reaches an application twice.
 */
import t, { type Test } from 'tap';
import { join } from 'node:path';
import { connect } from '@nats-io/transport-node';
import { jetstreamManager } from '@nats-io/jetstream';
import { generateKeyPair, type KeyPair } from '@gravitas/protocol';
import { check, NatsCluster, NatsServer, tempDir } from '@gravitas/testkit';
import { clusterKeys, connectClient, metricsText, metricValue, nodeConfig, spawnNode, writeNodeConfig, type ClusterKeys, type NodeProcess, type TestClient } from '../fixtures/cluster.js';
import { acceptedAtLeast, runTraffic, verifyExactlyOnce, type Traffic } from '../fixtures/traffic.js';

const TOTAL = 10_000;
const SENDERS = 8;
const ONLINE = 5;
const OFFLINE = 3;

async function nodes(t: Test, natsUrls: string[], extra: Record<string, unknown> = {}): Promise<{ keys: ClusterKeys; nodes: NodeProcess[] }> {
  const dir = await tempDir('gravitas-nats-faults-');
  t.teardown(() => dir[Symbol.asyncDispose]());
  const keys = clusterKeys();
  const list = await Promise.all(
    ['nodeA', 'nodeB'].map(async (nodeId, i) => {
      const config = nodeConfig({
        // Each node prefers a different server of the NATS cluster (if there are several).
        natsUrl: natsUrls[i % natsUrls.length]!,
        nodeId,
        dataDir: join(dir.path, nodeId),
        keys,
        extra: { nats: { servers: natsUrls.map((_, k) => natsUrls[(i + k) % natsUrls.length]!) }, limits: { custodyWindowMs: 1000, msgRatePerSec: 100_000, msgBurst: 100_000 }, ...extra },
      });
      const node = await spawnNode(await writeNodeConfig(join(dir.path, `${nodeId}.json`), config));
      t.teardown(() => node.stop(5000));
      return node;
    }),
  );
  return { keys, nodes: list };
}

interface People { senders: TestClient[]; receivers: Map<string, TestClient[]>; offline: Array<{ user: string; identity: KeyPair }>; recipients: string[] }

async function people(t: Test, keys: ClusterKeys, list: NodeProcess[]): Promise<People> {
  const cells = list.flatMap((n) => n.clientAddresses);
  const at = (i: number): string[] => cells.map((_, k) => cells[(i + k) % cells.length]!);
  const pk = keys.serverPublicKey;
  const senders = await Promise.all(Array.from({ length: SENDERS }, (_, i) => connectClient(t, { user: `s${i}`, servers: at(i), serverPublicKey: pk, maxOutbox: 4096 })));
  const receivers = new Map<string, TestClient[]>();
  for (let i = 0; i < ONLINE; i++) receivers.set(`r${i}`, [await connectClient(t, { user: `r${i}`, servers: at(i + 1), serverPublicKey: pk })]);
  // Registered, then gone: their messages go to the mailbox while NATS fails.
  const offline: People['offline'] = [];
  for (let i = 0; i < OFFLINE; i++) {
    const identity = generateKeyPair();
    const tc = await connectClient(t, { user: `o${i}`, identity, servers: at(i), serverPublicKey: pk });
    await tc.client.close();
    offline.push({ user: tc.user, identity });
  }
  return { senders, receivers, offline, recipients: [...receivers.keys(), ...offline.map((o) => o.user)] };
}

/** The offline recipients come online and drain. */
async function comeOnline(t: Test, keys: ClusterKeys, list: NodeProcess[], p: People): Promise<void> {
  const cells = list.flatMap((n) => n.clientAddresses);
  for (const o of p.offline) {
    const tc = await connectClient(t, { user: o.user, identity: o.identity, servers: cells, serverPublicKey: keys.serverPublicKey });
    p.receivers.set(o.user, [tc]);
  }
}

async function counter(n: NodeProcess, name: string, labels: Record<string, string> = {}): Promise<number> {
  return metricValue(await metricsText(n.adminUrl), name, labels) ?? 0;
}

/** Items drained from mailboxes so far, over every node. */
async function drained(list: NodeProcess[]): Promise<number> {
  let n = 0;
  for (const node of list) n += await counter(node, 'gravitas_deliveries_total', { path: 'mailbox' });
  return n;
}

/** The offline recipients' messages really went through the mailbox: at least that many items were drained since they came online. */
async function mailboxPath(t: Test, list: NodeProcess[], p: People, traffic: Traffic, before: number): Promise<void> {
  const toOffline = p.offline.reduce((n, o) => n + (traffic.accepted.get(o.user)?.length ?? 0), 0);
  const after = await drained(list);
  t.ok(toOffline > 0 && after - before >= toOffline, `${after - before} items drained from mailboxes after the offline recipients came online (${toOffline} messages were sent to them)`);
}

t.test('the nats-server is SIGKILLed and restarted mid-stream', async (t) => {
  const nats = await NatsServer.start();
  t.teardown(() => nats.stop());
  const { keys, nodes: list } = await nodes(t, [nats.url]);
  const p = await people(t, keys, list);
  const traffic = runTraffic(p.senders, p.recipients, TOTAL / SENDERS);
  await acceptedAtLeast(traffic, TOTAL / 4);
  await nats.kill('SIGKILL');
  t.pass(`nats-server killed after ${traffic.count()} messages`);
  await new Promise((r) => setTimeout(r, 1500));
  await nats.restart();
  t.pass('nats-server restarted on the same port and store');
  await traffic.done;
  // The outage had an effect: every node's cells lost NATS and reconnected.
  for (const n of list) t.ok((await counter(n, 'gravitas_nats_reconnects_total')) > 0, `${n.adminUrl}: the cells reconnected to NATS`);
  const drainedBefore = await drained(list);
  await comeOnline(t, keys, list, p);
  await verifyExactlyOnce(t, traffic, p.receivers, TOTAL);
  await mailboxPath(t, list, p, traffic, drainedBefore);
});

t.test('a 3-server NATS cluster with replicated mailboxes loses one server', async (t) => {
  const cluster = await NatsCluster.start(3);
  t.teardown(() => cluster.stop());
  const { keys, nodes: list } = await nodes(t, cluster.urls, { replicas: 3, mailbox: { partitions: 3 } });
  const nc = await connect({ servers: cluster.urls });
  t.teardown(() => nc.close());
  const jsm = await jetstreamManager(nc);
  const info = await jsm.streams.info('gravitas_MBOX_0');
  t.equal(info.config.num_replicas, 3, 'mailbox streams have 3 replicas');
  const kv = await jsm.streams.info('KV_gravitas_accounts');
  t.equal(kv.config.num_replicas, 3, 'and so do the KV buckets');
  const p = await people(t, keys, list);
  const traffic = runTraffic(p.senders, p.recipients, TOTAL / SENDERS);
  await acceptedAtLeast(traffic, TOTAL / 4);
  // The server node A is connected to, which also leads some streams.
  await cluster.kill(0);
  t.pass(`NATS server 0 killed after ${traffic.count()} messages`);
  await traffic.done;
  // The loss had an effect on the mailboxes: every R3 stream had a replica on the killed server.
  const lostReplica = await check(
    'MBOX_0 reports a replica offline',
    async () => (await jsm.streams.info('gravitas_MBOX_0').catch(() => undefined))?.cluster?.replicas?.find((r) => r.offline || !r.current),
    { timeout: 30_000, interval: 500 },
  );
  t.ok(lostReplica, `the mailbox stream ran with a replica lost (${lostReplica.name})`);
  const drainedBefore = await drained(list);
  await comeOnline(t, keys, list, p);
  await verifyExactlyOnce(t, traffic, p.receivers, TOTAL);
  await mailboxPath(t, list, p, traffic, drainedBefore);
  // JetStream API calls can time out for a while after a server loss on 2.9: ask until answered.
  const leader = await check('the mailbox stream has a leader', async () => (await jsm.streams.info('gravitas_MBOX_0').catch(() => undefined))?.cluster?.leader, { timeout: 30_000, interval: 500 });
  t.ok(leader, `stream leader after the loss: ${leader}`);
});
