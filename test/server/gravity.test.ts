/*
 * Gravitation on real cells: one nats-server, one `gravitas node` with four cells,
 * real SDK clients. Hints the SDK cannot verify are ignored; a hint to a dead cell
 * leaves the client where it is; an offline associate is sent to its sender's cell;
 * and split pairs of talking users converge onto shared cells while the load stays
 * within the tolerance, with every message delivered exactly once across the moves.
 */
import t, { type Test } from 'tap';
import { join } from 'node:path';
import { createServer, type AddressInfo } from 'node:net';
import { loadCap } from '@gravitas/placement';
import { ErrorCode, fromBase64Url, hintKeyPair, random, signHint, type Msg } from '@gravitas/protocol';
import { check, NatsServer, tempDir } from '@gravitas/testkit';
import {
  adminCells, clusterKeys, connectClient, exchange, makeClient, metricsText, metricValue, nodeConfig, registered, spawnNode, writeNodeConfig, type ClusterKeys, type NodeProcess, type TestClient,
} from '../fixtures/cluster.js';

async function fourCells(t: Test, gravity: Record<string, unknown>): Promise<{ node: NodeProcess; keys: ClusterKeys; addrs: string[]; cells: string[] }> {
  const nats = await NatsServer.start();
  t.teardown(() => nats.stop());
  const dir = await tempDir('gravitas-gravity-');
  t.teardown(() => dir[Symbol.asyncDispose]());
  const keys = clusterKeys();
  const file = await writeNodeConfig(join(dir.path, 'node.json'), nodeConfig({ natsUrl: nats.url, nodeId: 'g', dataDir: join(dir.path, 'data'), keys, cells: 4, extra: { gravity: { enabled: true, ...gravity } } }));
  const node = await spawnNode(file);
  t.teardown(() => node.stop(5000));
  const cells = (await adminCells(node.adminUrl)).map((c) => c.cellId);
  return { node, keys, addrs: node.clientAddresses, cells };
}

/** Every address, `first` first: the client lands there. */
const startingAt = (addrs: string[], first: number): string[] => addrs.map((_, i) => addrs[(first + i) % addrs.length]!);

const moves = (tc: TestClient): Array<{ cell: string; why: string }> => {
  const list: Array<{ cell: string; why: string }> = [];
  tc.client.on('moved', (m) => list.push(m));
  return list;
};

t.test('hints: forged, expired and dead-cell hints are ignored safely; a good one moves the client', async (t) => {
  const { keys, addrs, cells } = await fourCells(t, { minDwellMs: 600_000 });
  const pk = keys.serverPublicKey;
  const signing = hintKeyPair(fromBase64Url(keys.serverKey, 32));
  const now = Date.now();
  const hintFor = (user: string, cell: number | { addr: string }, over: { expiresAt?: number; key?: Uint8Array } = {}): Uint8Array =>
    signHint(
      {
        cell: typeof cell === 'number' ? cells[cell]! : 'nowhere-0-000000',
        addr: typeof cell === 'number' ? addrs[cell]! : cell.addr,
        user,
        device: 'd1',
        issuedAt: now,
        expiresAt: over.expiresAt ?? now + 60_000,
      },
      over.key ?? signing.secretKey,
    );
  const alice = await connectClient(t, { user: 'alice', servers: startingAt(addrs, 0), serverPublicKey: pk });
  const bob = await connectClient(t, { user: 'bob', servers: startingAt(addrs, 1), serverPublicKey: pk });
  t.ok(alice.client.welcome?.hk instanceof Uint8Array, 'the welcome carries the hint key');
  const ignored: Error[] = [];
  alice.client.on('hintIgnored', (e) => ignored.push(e));
  const moved = moves(alice);

  t.equal(alice.client.followHint(hintFor('alice', 2, { key: hintKeyPair(random(32)).secretKey })), false, 'forged: refused');
  t.equal(alice.client.followHint(hintFor('alice', 2, { expiresAt: now - 1 })), false, 'expired: refused');
  t.equal(alice.client.followHint(hintFor('bob', 2)), false, 'someone else’s: refused');
  t.same(ignored.map((e) => (e as { code?: string }).code), [ErrorCode.HINT_INVALID, ErrorCode.HINT_EXPIRED, ErrorCode.HINT_INVALID]);
  t.equal(alice.client.welcome?.cell, cells[0], 'still on its cell');

  // A cell that is gone: a port that was just closed.
  const dead = createServer();
  await new Promise<void>((r) => dead.listen(0, '127.0.0.1', r));
  const deadAddr = `127.0.0.1:${(dead.address() as AddressInfo).port}`;
  await new Promise<void>((r) => dead.close(() => r()));
  t.equal(alice.client.followHint(hintFor('alice', { addr: deadAddr })), true, 'a valid hint to a dead cell is accepted…');
  await check('the failed move is reported', () => ignored.length === 4);
  t.equal(alice.client.connected, true, '…and the client stays connected where it was');
  t.equal(alice.client.welcome?.cell, cells[0]);
  await registered(alice);
  t.equal((await exchange(bob, alice, 'still here')).msg.text, 'still here');

  // A good hint, with sends in flight across the move.
  const sending = Array.from({ length: 20 }, (_, i) => bob.client.send('alice', `during ${i}`));
  t.equal(alice.client.followHint(hintFor('alice', 2)), true);
  await check('moved', () => moved.length === 1);
  t.same(moved[0], { cell: cells[2], addr: addrs[2], why: 'external' });
  t.equal(alice.client.welcome?.cell, cells[2], 'now on the hinted cell');
  await Promise.all(sending);
  await registered(alice);
  await check('every message arrived', () => alice.inbox.filter((m) => m.text.startsWith('during')).length >= 20);
  const ids = alice.inbox.map((m) => m.id);
  t.equal(new Set(ids).size, ids.length, 'nothing shown twice');
  t.equal((await exchange(alice, bob, 'from the new cell')).msg.text, 'from the new cell');
  t.same(alice.errors, [], 'no errors: the goodbye of the old session is not one');

  // Offline: the hint is kept for the next connect.
  const carol = makeClient({ user: 'carol', servers: startingAt(addrs, 0), serverPublicKey: pk, hintPublicKey: signing.publicKey });
  t.teardown(() => carol.client.close());
  t.equal(carol.client.followHint(hintFor('carol', 3)), true);
  const w = await carol.client.connect();
  t.equal(w.cell, cells[3], 'a hint received while offline picks the cell of the next connect');
});

t.test('an offline associate is sent to its sender’s cell when it comes back', async (t) => {
  const { node, keys, addrs, cells } = await fourCells(t, { minDwellMs: 600_000 });
  const pk = keys.serverPublicKey;
  const alice = await connectClient(t, { user: 'alice', servers: startingAt(addrs, 0), serverPublicKey: pk });
  const first = await connectClient(t, { user: 'bob', servers: startingAt(addrs, 2), serverPublicKey: pk });
  await first.client.close();
  const sent: string[] = [];
  for (let i = 0; i < 5; i++) {
    const r = await alice.client.send('bob', `while away ${i}`);
    t.equal(r.status, 'stored');
    sent.push(r.id);
  }
  const bob = makeClient({ user: 'bob', servers: startingAt(addrs, 2), serverPublicKey: pk, identity: first.identity });
  t.teardown(() => bob.client.close());
  const moved = moves(bob);
  await bob.client.connect();
  await check('bob moved', () => moved.length === 1);
  t.same(moved[0], { cell: cells[0], addr: addrs[0], why: 'associate' }, 'to alice’s cell');
  await check('bob has everything', () => sent.every((id) => bob.inbox.some((m: Msg) => m.id === id)));
  t.equal(bob.inbox.length, 5, 'each once');
  const text = await metricsText(node.adminUrl);
  t.equal(metricValue(text, 'gravitas_gravity_migrations_total', { why: 'associate' }), 1, 'one associate move on /metrics');
  t.equal(metricValue(text, 'gravitas_gravity_hints_followed_total'), 1, 'and it was followed');
});

t.test('rebalancing: split talking pairs converge onto shared cells, balance holds, nothing lost or doubled', async (t) => {
  const epsilon = 0.25;
  const { node, keys, addrs, cells } = await fourCells(t, { intervalMs: 300, cooldownMs: 600, minDwellMs: 500, halfLifeMs: 5000, minGain: 1, epsilon, hintTtlMs: 5000 });
  const pk = keys.serverPublicKey;
  // Eight pairs, each split over two neighbouring cells: locality starts at 0.
  const pairs: Array<[TestClient, TestClient]> = [];
  for (let i = 0; i < 8; i++) {
    const a = await connectClient(t, { user: `a${i}`, servers: startingAt(addrs, i % 4), serverPublicKey: pk });
    const b = await connectClient(t, { user: `b${i}`, servers: startingAt(addrs, (i + 1) % 4), serverPublicKey: pk });
    pairs.push([a, b]);
  }
  const all = pairs.flat();
  for (const c of all) t.not(c.client.welcome?.cell, undefined);
  t.ok(pairs.every(([a, b]) => a.client.welcome!.cell !== b.client.welcome!.cell), 'every pair starts split');
  const moved = all.map(moves);

  // Both sides of each pair keep talking until every pair shares a cell.
  const accepted = new Map<string, string[]>(all.map((c) => [c.user, []]));
  let talking = true;
  const failures: string[] = [];
  const talk = async (from: TestClient, to: TestClient): Promise<void> => {
    for (let i = 0; talking; i++) {
      try {
        const r = await from.client.send(to.user, `${from.user} ${i}`);
        accepted.get(to.user)!.push(r.id);
      } catch (err) {
        failures.push((err as Error).message);
      }
      await new Promise((r) => setTimeout(r, 5));
    }
  };
  const loops = pairs.flatMap(([a, b]) => [talk(a, b), talk(b, a)]);
  const together = (): boolean => pairs.every(([a, b]) => a.client.connected && b.client.connected && a.client.welcome!.cell === b.client.welcome!.cell);
  // Loads: within the tolerance. Hints decided on heartbeat loads (up to a beat old) can
  // overshoot the cap for a moment, and the exchanges that shed the excess may part a pair
  // again for a while: converged is every pair together with every cell within the cap.
  const cap = loadCap(4, epsilon);
  const loads = await check('converged: pairs together, every cell within the cap', async () => {
    const l = (await adminCells(node.adminUrl)).map((c) => c.status?.sessions ?? 0);
    return together() && l.reduce((x, y) => x + y, 0) === 16 && Math.max(...l) <= cap ? l : undefined;
  }, { timeout: 90_000, interval: 250 });
  t.ok(Math.max(...loads) <= cap, `max sessions per cell ${Math.max(...loads)} ≤ (1 + ε) × mean = ${cap}`, { loads });

  talking = false;
  await Promise.all(loops);
  t.same(failures, [], 'no send failed');

  // Exactly once across every move.
  await check('every accepted message arrived', () => all.every((c) => accepted.get(c.user)!.every((id) => c.inbox.some((m) => m.id === id))), { timeout: 30_000 });
  let duplicates = 0;
  for (const c of all) duplicates += c.inbox.length - new Set(c.inbox.map((m) => `${m.from}/${m.id}`)).size;
  t.equal(duplicates, 0, 'no application saw a message twice');
  // Rebalancing moves; a device that finds a stored message at its new cell may also follow its sender (associate).
  t.ok(moved.flat().some((m) => m.why === 'rebalance'), 'rebalancing moved clients');
  t.ok(moved.flat().every((m) => cells.includes(m.cell)), 'every move went to a live cell', { moved: moved.flat() });

  // After convergence: measured locality of a new burst.
  const before = await metricsText(node.adminUrl);
  for (const [a, b] of pairs) for (let i = 0; i < 10; i++) await exchange(a, b, `after ${i}`);
  const after = await metricsText(node.adminUrl);
  const delta = (path: string): number => (metricValue(after, 'gravitas_deliveries_total', { path }) ?? 0) - (metricValue(before, 'gravitas_deliveries_total', { path }) ?? 0);
  const locality = delta('local') / (delta('local') + delta('cross_cell'));
  t.ok(locality >= 0.85, `locality after convergence ${locality.toFixed(2)} ≥ 0.85`);
  t.ok((metricValue(after, 'gravitas_gravity_migrations_total', { why: 'rebalance' }) ?? 0) > 0, 'migrations on /metrics');
  t.ok((metricValue(after, 'gravitas_gravity_hints_followed_total') ?? 0) > 0, 'followed hints on /metrics');
  // The gauge is each cell's view of the heartbeats (up to a beat old), and the burst above may
  // still move a session: the promise is that it settles within the tolerance, not an instant.
  const balance = await check('balance gauge within the tolerance', async () => {
    const v = metricValue(await metricsText(node.adminUrl), 'gravitas_gravity_balance') ?? 99;
    return v <= 1 + epsilon ? v : undefined;
  }, { timeout: 15_000, interval: 250 });
  t.pass(`balance gauge ${balance.toFixed(2)} within 1 + ε`);
});
