import t from 'tap';
import { connect } from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { check, NatsCluster } from '@gravitas/testkit';

t.test('3-node JetStream cluster: meta leader, R3 stream, survives a kill, node rejoins', async (t) => {
  const cluster = await NatsCluster.start(3);
  t.teardown(() => cluster.stop());
  t.equal(cluster.servers.length, 3);
  t.equal(new Set(cluster.urls).size, 3);
  t.notOk(cluster.urls.some((u) => u.endsWith(':4222')));

  const meta = await cluster.waitForMetaLeader();
  t.equal(cluster.serverNames[meta.index], meta.name);
  for (const s of cluster.servers) t.equal((await s.jsz()).meta_cluster?.leader, meta.name, 'all nodes agree');

  const nc = await connect({ servers: cluster.urls, maxReconnectAttempts: -1, reconnectTimeWait: 50 });
  t.teardown(() => nc.close());
  const jsm = await jetstreamManager(nc);
  const js = jetstream(nc);
  const si = await jsm.streams.add({ name: 'R3', subjects: ['r3.>'], num_replicas: 3 });
  t.equal(si.config.num_replicas, 3);
  t.equal((await js.publish('r3.a', 'one')).seq, 1);

  // Kill the stream leader: the hardest case, a new leader must be elected before writes resume.
  const leaderName = (await jsm.streams.info('R3')).cluster?.leader;
  const victim = cluster.serverNames.indexOf(leaderName ?? '');
  t.ok(victim >= 0, `stream leader ${leaderName} is a cluster node`);
  await cluster.kill(victim);
  t.notOk(cluster.servers[victim]?.running);
  // Publishing during the election may time out or see 503 no responders: retry with the same
  // msgID so a publish stored despite a timeout is not duplicated.
  const ack = await check(
    'R3 writable with one node down',
    () => js.publish('r3.b', 'two', { msgID: 'two', timeout: 1000 }),
    { timeout: 30_000, interval: 200 },
  );
  t.equal(ack.seq, 2);

  const rejoined = await cluster.restart(victim);
  t.ok(rejoined.running);
  t.equal(rejoined.url, cluster.urls[victim], 'same URL after restart');
  const leaderNow = (await rejoined.jsz()).meta_cluster?.leader;
  const leaderAlive = leaderNow && cluster.servers[cluster.serverNames.indexOf(leaderNow)]?.running;
  t.ok(leaderAlive, 'rejoined node sees a live meta leader');
  // The restarted replica catches up from its peers.
  await check(
    'R3 replicas current again',
    async () => {
      const info = await jsm.streams.info('R3');
      const replicas = info.cluster?.replicas ?? [];
      return info.state.messages === 2 && replicas.length === 2 && replicas.every((r) => r.current && !r.offline);
    },
    { timeout: 30_000, interval: 200 },
  );
  t.pass('stream fully replicated again');
});

t.test('a cluster needs at least two nodes', async (t) => {
  await t.rejects(NatsCluster.start(1), RangeError);
});

t.test('restart(i) and kill(i) reject an unknown index', async (t) => {
  await using cluster = await NatsCluster.start(3);
  await t.rejects(cluster.restart(7), RangeError);
  await t.rejects(cluster.kill(-1), RangeError);
});
