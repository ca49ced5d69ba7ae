/*
 * A fresh cluster where every cell starts at once: six cells on three nodes race
 * to create the same KV buckets and streams on an empty JetStream (2.9 answers
 * some of those races with "subjects overlap"). Every node must come up, and
 * the cluster must work.
 */
import t from 'tap';
import { join } from 'node:path';
import { NatsServer, tempDir } from '@gravitas/testkit';
import { clusterKeys, connectClient, exchange, nodeConfig, readyz, spawnNode, writeNodeConfig } from '../fixtures/cluster.js';

t.test('six cells create the cluster\'s buckets and streams at the same moment', async (t) => {
  const nats = await NatsServer.start();
  t.teardown(() => nats.stop());
  const dir = await tempDir('gravitas-startup-');
  t.teardown(() => dir[Symbol.asyncDispose]());
  const keys = clusterKeys();
  const configs = await Promise.all(
    ['n1', 'n2', 'n3'].map((nodeId) =>
      writeNodeConfig(join(dir.path, `${nodeId}.json`), nodeConfig({ natsUrl: nats.url, nodeId, dataDir: join(dir.path, nodeId), keys, extra: { mailbox: { partitions: 8 } } })),
    ),
  );
  const nodes = await Promise.all(configs.map((c) => spawnNode(c)));
  for (const n of nodes) t.teardown(() => n.stop(5000));
  for (const [i, n] of nodes.entries()) t.equal(await readyz(n.adminUrl), 200, `node ${i + 1}: /readyz 200`);
  const jsz = await nats.jsz();
  t.equal(jsz.streams, 8 * 2 + 3 + 13, 'each stream created once: 8 mailbox and 8 group-log partitions, profiles, tracking archive, campaign work queue, 13 buckets (incl. push targets, mutes, reach, account budgets)');
  const pk = keys.serverPublicKey;
  const a = await connectClient(t, { user: 'amy', servers: nodes[0]!.clientAddresses, serverPublicKey: pk });
  const b = await connectClient(t, { user: 'ben', servers: nodes[2]!.clientAddresses, serverPublicKey: pk });
  t.equal((await exchange(a, b, 'the cluster works')).status, 'delivered');
});
