/*
 * Custody under faults, with real processes: 10,000 messages flow between clients
 * on two nodes while a node is SIGKILLed, a recipient stops reading, or senders
 * lose their connection between a send and its answer. By message id: nothing
 * whose custody the server accepted is lost, nothing reaches an application twice.
 */
import t, { type Test } from 'tap';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { check, NatsServer, tempDir } from '@gravitas/testkit';
import {
  clusterKeys, connectClient, metricSamples, metricsText, metricValue, nodeConfig, spawnNode, writeNodeConfig,
  type ClusterKeys, type NodeProcess, type TestClient,
} from '../fixtures/cluster.js';
import { acceptedAtLeast, runTraffic, socketOf, verifyExactlyOnce } from '../fixtures/traffic.js';

const TOTAL = 10_000;
const SENDERS = 8;

interface Env { nats: NatsServer; dir: string; keys: ClusterKeys; nodes: NodeProcess[] }

async function cluster(t: Test, extra: Record<string, unknown> = {}): Promise<Env> {
  const nats = await NatsServer.start();
  t.teardown(() => nats.stop());
  const dir = await tempDir('gravitas-custody-faults-');
  t.teardown(() => dir[Symbol.asyncDispose]());
  const keys = clusterKeys();
  const nodes = await Promise.all(
    ['nodeA', 'nodeB'].map(async (nodeId) => {
      const config = nodeConfig({
        natsUrl: nats.url,
        nodeId,
        dataDir: join(dir.path, nodeId),
        keys,
        extra: { limits: { custodyWindowMs: 1000, msgRatePerSec: 100_000, msgBurst: 100_000 }, ...extra },
      });
      const node = await spawnNode(await writeNodeConfig(join(dir.path, `${nodeId}.json`), config));
      t.teardown(() => node.stop(5000));
      return node;
    }),
  );
  return { nats, dir: dir.path, keys, nodes };
}

/** Users s0..s7 send to r0..r7; client i starts at cell i mod 4 and knows every cell. */
async function users(t: Test, env: Env, o: { receiverExtra?: Record<string, unknown> } = {}): Promise<{ senders: TestClient[]; receivers: Map<string, TestClient[]> }> {
  const cells = env.nodes.flatMap((n) => n.clientAddresses);
  const at = (i: number): string[] => cells.map((_, k) => cells[(i + k) % cells.length]!);
  const pk = env.keys.serverPublicKey;
  const senders = await Promise.all(Array.from({ length: SENDERS }, (_, i) => connectClient(t, { user: `s${i}`, servers: at(i), serverPublicKey: pk, maxOutbox: 4096 })));
  const receivers = new Map<string, TestClient[]>();
  await Promise.all(
    Array.from({ length: SENDERS }, async (_, i) => {
      const r = await connectClient(t, { user: `r${i}`, servers: at(i + 1), serverPublicKey: pk, ...o.receiverExtra });
      receivers.set(r.user, [r]);
    }),
  );
  return { senders, receivers };
}

function recipientNames(): string[] {
  return Array.from({ length: SENDERS }, (_, i) => `r${i}`);
}

t.test('a node is SIGKILLed mid-stream', async (t) => {
  const env = await cluster(t);
  const { senders, receivers } = await users(t, env);
  const traffic = runTraffic(senders, recipientNames(), TOTAL / SENDERS);
  await acceptedAtLeast(traffic, TOTAL / 4);
  const exit = await env.nodes[1]!.kill();
  t.same(exit, { code: null, signal: 'SIGKILL' }, `node B killed after ${traffic.count()} messages`);
  await verifyExactlyOnce(t, traffic, receivers, TOTAL);
  const moved = [...senders, ...[...receivers.values()].flat()].filter((c) => c.disconnects > 0).length;
  t.ok(moved > 0, `${moved} clients lost their node and moved over`);
});

t.test('a recipient stops reading: cut with SLOW_CONSUMER, memory bounded, nothing lost', async (t) => {
  const env = await cluster(t, { limits: { maxOutboundBytes: 64 * 1024, custodyWindowMs: 1000, msgRatePerSec: 100_000, msgBurst: 100_000 } });
  const { senders, receivers } = await users(t, env);
  const stalled = receivers.get('r0')![0]!;
  const socket = socketOf(stalled)!;
  socket.pause();
  const rssBefore = rssOf(env.nodes);
  // Bigger messages, so the stalled connection overflows its limit quickly.
  const traffic = runTraffic(senders, recipientNames(), TOTAL / SENDERS, 64, 8192);
  // While the connection is stalled, no cell ever holds more than the limit plus one frame for it.
  const LIMIT = 64 * 1024;
  let peak = 0;
  const cut = await check(
    'the server cut the stalled connection with SLOW_CONSUMER',
    async () => {
      let n = 0;
      for (const node of env.nodes) {
        const text = await metricsText(node.adminUrl);
        n += metricValue(text, 'gravitas_protocol_errors_total', { code: 'SLOW_CONSUMER' }) ?? 0;
        for (const s of metricSamples(text, 'gravitas_connection_outbound_max_bytes')) peak = Math.max(peak, s.value);
      }
      return n > 0 ? n : undefined;
    },
    { timeout: 60_000, interval: 20 },
  );
  t.pass(`SLOW_CONSUMER counted ${cut} time(s)`);
  // One frame here: an 8 KiB text, its ids and delivery proof, msgpack and secretbox overhead (< 9 KiB);
  // then the short SLOW_CONSUMER error frame. The gauge is the high-water mark since the previous scrape.
  const FRAME = 9 * 1024;
  const BOUND = LIMIT + FRAME + 256;
  t.ok(peak > LIMIT, `the stalled connection's backlog was seen past the limit before the cut (peak ${peak} bytes): the bound was tested`);
  t.ok(peak <= BOUND, `per-connection backlog stayed within the limit plus one frame (peak ${peak} bytes, bound ${BOUND})`);
  t.comment(`node RSS grew ${((rssOf(env.nodes) - rssBefore) / 1048576).toFixed(1)} MiB while moving ${TOTAL} messages of 8 KiB (informative only: the bound is the backlog above)`);
  socket.resume(); // the app reads again: its SDK sees the close and reconnects
  await verifyExactlyOnce(t, traffic, receivers, TOTAL);
  t.ok(stalled.connects >= 2, 'the stalled client reconnected');
  // What it did not acknowledge before the cut went to its mailbox and was drained from there.
  let drained = 0;
  for (const node of env.nodes) drained += metricValue(await metricsText(node.adminUrl), 'gravitas_deliveries_total', { path: 'mailbox' }) ?? 0;
  t.ok(drained > 0, `${drained} items reached devices through the mailbox path (stored at the cut, drained after the reconnect)`);
});

t.test('senders lose their connection between a send and its answer', async (t) => {
  const env = await cluster(t);
  const { senders, receivers } = await users(t, env);
  const traffic = runTraffic(senders, recipientNames(), TOTAL / SENDERS);
  let cuts = 0;
  // Every 150 ms one sender's connection dies right after it wrote sends: statuses are lost in flight.
  const cutter = setInterval(() => {
    const s = senders[cuts % senders.length]!;
    const socket = socketOf(s);
    if (socket) {
      cuts++;
      socket.destroy();
    }
  }, 150);
  await traffic.done;
  clearInterval(cutter);
  t.ok(cuts >= 5, `${cuts} connections cut mid-stream`);
  // The cuts had an effect: the SDKs saw them and came back, with sends unconfirmed to re-send.
  const disconnects = senders.reduce((n, s) => n + s.disconnects, 0);
  t.ok(disconnects >= 5, `${disconnects} sender disconnects seen by the SDKs`);
  const connects = senders.reduce((n, s) => n + s.connects, 0);
  t.ok(connects >= SENDERS + 5, `${connects - SENDERS} reconnects: the SDKs came back to re-send what was unconfirmed`);
  await verifyExactlyOnce(t, traffic, receivers, TOTAL);
});

/** Resident set of the node processes (bytes), from /proc. */
function rssOf(nodes: NodeProcess[]): number {
  let total = 0;
  for (const n of nodes) {
    const pid = n.pid;
    if (!pid) continue;
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    total += m ? Number(m[1]) * 1024 : 0;
  }
  return total;
}
