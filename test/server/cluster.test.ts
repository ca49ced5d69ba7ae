/*
 * A real cluster: one nats-server, two `gravitas node` processes with two cells
 * each, four SDK clients placed so that there are same-cell, cross-cell and
 * cross-node pairs. Then a graceful SIGTERM of one node.
 */
import t from 'tap';
import { join } from 'node:path';
import { ErrorCode } from '@gravitas/protocol';
import { DeliveryError } from '@gravitas/client';
import { check, NatsServer, tempDir } from '@gravitas/testkit';
import { adminCells, clusterKeys, connectClient, exchange, metricSamples, metricsText, metricValue, nodeConfig, readyz, reconnected, spawnNode, writeNodeConfig, type TestClient } from '../fixtures/cluster.js';

t.test('two nodes × two cells: routing on every path, metrics, graceful stop', async (t) => {
  const nats = await NatsServer.start();
  t.teardown(() => nats.stop());
  const dir = await tempDir('gravitas-cluster-');
  t.teardown(() => dir[Symbol.asyncDispose]());
  const keys = clusterKeys();
  const [A, B] = await Promise.all(
    ['nodeA', 'nodeB'].map(async (nodeId) => {
      const file = await writeNodeConfig(join(dir.path, `${nodeId}.json`), nodeConfig({ natsUrl: nats.url, nodeId, dataDir: join(dir.path, nodeId), keys }));
      const node = await spawnNode(file);
      t.teardown(() => node.stop(5000));
      return node;
    }),
  );
  t.equal(A!.clientAddresses.length, 2, 'node A: two cell addresses in its ready line');
  t.equal(B!.clientAddresses.length, 2, 'node B: two cell addresses in its ready line');
  const [a0, a1] = A!.clientAddresses as [string, string];
  const [b0, b1] = B!.clientAddresses as [string, string];

  // Each client knows every cell; the first one listed is where it lands.
  // alice, bob: node A cell 0 (same cell). carol: node B cell 0, dave: node B cell 1 (cross cell).
  // Any A client with any B client: cross node.
  const pk = keys.serverPublicKey;
  const alice = await connectClient(t, { user: 'alice', servers: [a0, a1, b0, b1], serverPublicKey: pk });
  const bob = await connectClient(t, { user: 'bob', servers: [a0, a1, b0, b1], serverPublicKey: pk });
  const carol = await connectClient(t, { user: 'carol', servers: [b0, b1, a0, a1], serverPublicKey: pk });
  const dave = await connectClient(t, { user: 'dave', servers: [b1, b0, a0, a1], serverPublicKey: pk });
  const clients = [alice, bob, carol, dave];

  t.test('placement', async (t) => {
    // Cell ids are `<node>-<index>-<incarnation>`.
    const where = clients.map((c) => [c.user, c.client.welcome?.node, c.client.welcome?.cell?.replace(/-[0-9a-f]+$/, '')]);
    t.same(where, [
      ['alice', 'nodeA', 'nodeA-0'],
      ['bob', 'nodeA', 'nodeA-0'],
      ['carol', 'nodeB', 'nodeB-0'],
      ['dave', 'nodeB', 'nodeB-1'],
    ]);
    const cellsA = await adminCells(A!.adminUrl);
    t.equal(alice.client.welcome?.cell, cellsA[0]?.cellId, 'welcome names the cell that /admin/cells lists');
    t.equal(cellsA[0]?.status?.address, a0, '/admin/cells shows the address of the ready line');
  });

  const kind = (x: TestClient, y: TestClient): string =>
    x.client.welcome!.cell === y.client.welcome!.cell ? 'same cell' : x.client.welcome!.node === y.client.welcome!.node ? 'cross cell' : 'cross node';

  t.test('every pair, both ways: delivered, with exact text/from/to', async (t) => {
    const kinds = new Set<string>();
    for (let i = 0; i < clients.length; i++) {
      for (let j = i + 1; j < clients.length; j++) {
        for (const [x, y] of [[clients[i]!, clients[j]!], [clients[j]!, clients[i]!]] as const) {
          const text = `${x.user} → ${y.user}: héllo ✓ ${'x'.repeat(i + j)}`;
          const { status, msg } = await exchange(x, y, text);
          kinds.add(kind(x, y));
          t.equal(status, 'delivered', `${x.user} → ${y.user} (${kind(x, y)}) delivered`);
          t.match(msg, { text, from: x.user, to: y.user, fd: x.device }, `${y.user} got exactly what ${x.user} sent`);
        }
      }
    }
    t.same([...kinds].sort(), ['cross cell', 'cross node', 'same cell'], 'all three paths exercised');
    for (const c of clients) t.equal(c.inbox.length, 3, `${c.user} received one message from each other client, no duplicates`);
  });

  t.test('unknown recipient: UNDELIVERABLE', async (t) => {
    const err = await alice.client.send('nobody-here', 'hello?').then(
      () => undefined,
      (e: unknown) => e,
    );
    t.type(err, DeliveryError);
    t.equal((err as DeliveryError).code, ErrorCode.UNDELIVERABLE);
  });

  t.test('/metrics of a node', async (t) => {
    // On failure, show the samples that were there.
    const shown = (text: string, name: string) => ({ samples: metricSamples(text, name) });
    const text = await metricsText(A!.adminUrl);
    // The server's own count, not the SDKs' (which drop duplicates): the twelve messages
    // of the pairs above were each routed once and written to their recipient once.
    const local = metricValue(text, 'gravitas_deliveries_total', { path: 'local' }) ?? 0;
    const cross = metricValue(text, 'gravitas_deliveries_total', { path: 'cross_cell' }) ?? 0;
    t.equal(local, 2, 'node A: local deliveries (alice ↔ bob), each once', shown(text, 'gravitas_deliveries_total'));
    t.equal(cross, 4, 'node A: cross-cell deliveries (alice and bob to carol and dave), each once', shown(text, 'gravitas_deliveries_total'));
    t.equal(metricValue(text, 'gravitas_sessions'), 2, 'two sessions on node A (summed over its cells)');
    t.equal(metricValue(text, 'gravitas_handshakes_total', { kind: 'full', result: 'ok' }), 2, 'two full handshakes on node A', shown(text, 'gravitas_handshakes_total'));
    const textB = await metricsText(B!.adminUrl);
    t.equal(metricValue(textB, 'gravitas_sessions'), 2, 'two sessions on node B');
    t.equal(metricValue(textB, 'gravitas_deliveries_total', { path: 'cross_cell' }) ?? 0, 6, 'node B: cross-cell deliveries (carol ↔ dave, and both to alice and bob), each once', shown(textB, 'gravitas_deliveries_total'));
    t.equal((metricValue(text, 'gravitas_deliveries_total', { path: 'mailbox' }) ?? 0) + (metricValue(textB, 'gravitas_deliveries_total', { path: 'mailbox' }) ?? 0), 0, 'nothing went through a mailbox');
    t.equal((metricValue(text, 'gravitas_messages_out_total') ?? 0) + (metricValue(textB, 'gravitas_messages_out_total') ?? 0), 12, 'the server wrote each of the twelve messages to its recipient exactly once', {
      a: metricSamples(text, 'gravitas_messages_out_total'),
      b: metricSamples(textB, 'gravitas_messages_out_total'),
    });
    // The lag gauge is set once a second by each cell: poll until both cells have reported.
    const cellIds = (await adminCells(A!.adminUrl)).map((c) => c.cellId);
    const lag = await check(
      'event-loop lag gauge of both cells of node A',
      async () => {
        const samples = metricSamples(await metricsText(A!.adminUrl), 'gravitas_event_loop_lag_seconds');
        const values = cellIds.map((id) => samples.find((s) => s.labels.cell === id)?.value);
        return values.every((v) => v !== undefined) ? (values as number[]) : undefined;
      },
      { timeout: 5000, interval: 200 },
    );
    t.equal(lag.length, 2, 'one lag sample per cell, labelled with its cell id');
    for (const l of lag) t.ok(Number.isFinite(l) && l >= 0, `lag ${l} s is a non-negative number`);
  });

  t.test('/readyz', async (t) => {
    t.equal(await readyz(A!.adminUrl), 200);
    t.equal(await readyz(B!.adminUrl), 200);
  });

  t.test('SIGTERM on node B: exit 0, its clients move to node A and keep chatting', async (t) => {
    const before = { carol: carol.disconnects, dave: dave.disconnects };
    const exit = await B!.stop();
    t.same(exit, { code: 0, signal: null }, 'node B drained and exited 0');
    t.notMatch(B!.stderr(), /shutdown failed/);
    for (const c of [carol, dave]) {
      await reconnected(c, (cl) => cl.welcome?.node === 'nodeA');
      t.ok(c.disconnects > before[c.user as 'carol' | 'dave'], `${c.user} saw the disconnect`);
      t.equal(c.client.welcome?.node, 'nodeA', `${c.user} is now on node A (${c.client.welcome?.cell})`);
      t.same(c.errors, [], `${c.user}: no client errors`);
    }
    for (const [x, y] of [[carol, dave], [dave, carol], [dave, alice], [alice, dave], [bob, carol]] as const) {
      const text = `after the move: ${x.user} → ${y.user}`;
      const { status, msg } = await exchange(x, y, text);
      t.equal(status, 'delivered', `${x.user} → ${y.user} delivered`);
      t.match(msg, { text, from: x.user, to: y.user });
    }
    t.equal(await readyz(A!.adminUrl), 200, 'node A still ready');
    const text = await metricsText(A!.adminUrl);
    t.equal(metricValue(text, 'gravitas_sessions'), 4, 'node A now holds all four sessions');
    t.ok((metricValue(text, 'gravitas_handshakes_total', { kind: 'resume', result: 'ok' }) ?? 0) >= 2, 'the moved clients resumed with their tickets');
  });
});
