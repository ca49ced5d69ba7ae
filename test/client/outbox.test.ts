/**
 * The SDK's storage (packages/client/src/store.ts, docs/sdk.md): the stores on
 * their own, the client's outbox across close/reopen, and real restarts: SDK
 * processes with a storage path SIGKILLed while sending or before acking, then
 * started again on the same path, against a real nats-server and `gravitas node`.
 */
import t from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { generateKeyPair, toBase64Url } from '@gravitas/protocol';
import { ClientError, ClientErrorCode, GravitasClient, LmdbStore, MemoryStore, type ClientStore, type Settled } from '@gravitas/client';
import { check, freePort, NatsServer, tempDir, trackChild } from '@gravitas/testkit';
import { cleanEnv, clusterKeys, connectClient, makeClient, nodeConfig, registered, spawnNode, writeNodeConfig } from '../fixtures/cluster.js';

const dir = await tempDir('gravitas-outbox-');
t.teardown(() => dir[Symbol.asyncDispose]());
let n = 0;
const fresh = (name: string): string => join(dir.path, `${name}-${++n}`);

const rec = (id: string, createdAt = 1) => ({ id, target: { to: 'bob' }, text: `text ${id}`, createdAt });

// ---- the stores on their own ---------------------------------------------------------

/** The same checks for both stores; `reopen` gives the store that a new process would get. */
function storeSuite(name: string, open: (maxSeen?: number) => { store: ClientStore; reopen: () => ClientStore }): void {
  t.test(`${name}: outbox records in put order, removal`, async (t) => {
    const { store, reopen } = open();
    await Promise.all([store.putOutbox(rec('z', 3)), store.putOutbox({ id: 'a', target: { g: 'team' }, text: 'to the group', createdAt: 3 }), store.putOutbox(rec('m', 1))]);
    store.deleteOutbox('a');
    await store.putOutbox(rec('b', 4));
    t.same(store.loadOutbox(), [rec('z', 3), rec('m', 1), rec('b', 4)], 'oldest put first, whatever the ids and times');
    await store.close();
    const again = reopen();
    t.teardown(() => again.close());
    t.same(again.loadOutbox(), store.durable ? [rec('z', 3), rec('m', 1), rec('b', 4)] : [], store.durable ? 'the same after reopening' : 'memory is gone');
  });

  t.test(`${name}: seen keys, duplicates in one batch, eviction of the oldest beyond the bound`, async (t) => {
    const { store, reopen } = open(3);
    t.same(await Promise.all(['a/1', 'a/2', 'a/1'].map((k) => store.markSeen(k))), [true, true, false], 'a duplicate in the same batch is caught');
    t.equal(await store.markSeen('a/2'), false);
    t.same(await Promise.all(['a/3', 'a/4'].map((k) => store.markSeen(k))), [true, true], 'a/1 evicted to keep 3');
    t.equal(await store.markSeen('a/1'), true, 'the oldest was dropped (and is recorded again now, evicting a/2)');
    t.equal(await store.markSeen('a/4'), false, 'the newest are kept');
    await store.close();
    if (!store.durable) return;
    const again = reopen();
    t.teardown(() => again.close());
    t.same(await Promise.all(['a/3', 'a/4', 'a/1'].map((k) => again.markSeen(k))), [false, false, false], 'the newest 3 survive reopening');
    t.same(await Promise.all(['a/5', 'a/2', 'a/3'].map((k) => again.markSeen(k))), [true, true, true], 'and the bound still holds: a/3 then a/4 went');
  });
}

storeSuite('memory', (maxSeen) => ({ store: new MemoryStore({ maxSeen }), reopen: () => new MemoryStore({ maxSeen }) }));
storeSuite('lmdb', (maxSeen) => {
  const path = fresh('store');
  return { store: LmdbStore.open(path, { maxSeen }), reopen: () => LmdbStore.open(path, { maxSeen }) };
});

t.test('a store that cannot be opened: ClientError STORAGE_FAILED, from the store and the client', async (t) => {
  const file = fresh('not-a-dir');
  await writeFile(file, 'x');
  const codeOf = (fn: () => unknown): string | undefined => {
    try {
      fn();
    } catch (err) {
      return err instanceof ClientError ? err.code : String(err);
    }
    return undefined;
  };
  t.equal(codeOf(() => LmdbStore.open(file)), ClientErrorCode.STORAGE_FAILED);
  const o = { servers: ['127.0.0.1:1'], serverPublicKey: generateKeyPair().publicKey, identity: generateKeyPair(), user: 'u', device: 'd' };
  t.equal(codeOf(() => new GravitasClient({ ...o, storagePath: join(file, 'sub') })), ClientErrorCode.STORAGE_FAILED);
  const path = fresh('in-use');
  const first = new GravitasClient({ ...o, storagePath: path });
  t.equal(codeOf(() => new GravitasClient({ ...o, storagePath: path })), ClientErrorCode.STORAGE_FAILED, 'one client per storage path');
  await first.close();
  const again = new GravitasClient({ ...o, storagePath: path });
  await again.close();
  t.pass('free again once the first client is closed');
});

t.test('client outbox: kept across close and a new client on the same path; without a path it ends with CLOSED', async (t) => {
  const path = fresh('client');
  const o = { servers: ['127.0.0.1:1'], serverPublicKey: generateKeyPair().publicKey, identity: generateKeyPair(), user: 'u', device: 'd', reconnect: false };
  const c1 = new GravitasClient({ ...o, storagePath: path });
  const sent = ['x1', 'x2', 'x3'].map((id) => c1.send('bob', `hi ${id}`, id).catch((e: unknown) => e));
  // A key LMDB cannot hold (its limit is 1978 bytes): the write fails, the send is refused.
  const failed: Settled[] = [];
  c1.once('settled', (s) => failed.push(s));
  const tooLong = await c1.send('bob', 'never stored', 'k'.repeat(3000)).catch((e: unknown) => e);
  t.equal((tooLong as ClientError).code, ClientErrorCode.STORAGE_FAILED, 'a failed outbox write rejects the send with STORAGE_FAILED');
  t.equal(failed.length === 1 && 'error' in failed[0]! && (failed[0].error as ClientError).code, ClientErrorCode.STORAGE_FAILED, "and settles it (event 'settled')");
  const dup = await c1.send('bob', 'again', 'x2').catch((e: unknown) => e);
  t.equal((dup as ClientError).code, ClientErrorCode.DUPLICATE_ID);
  await c1.flush();
  t.same(c1.pendingMessages().map((m) => m.id), ['x1', 'x2', 'x3']);
  const settled: Settled[] = [];
  c1.on('settled', (s) => settled.push(s));
  await c1.close();
  for (const e of await Promise.all(sent)) t.equal((e as ClientError).code, ClientErrorCode.CLOSED, 'the promise ends with CLOSED');
  t.same(settled, [], 'but the messages are not settled: they stay stored');
  t.equal(((await c1.connect().catch((e: unknown) => e)) as ClientError).code, ClientErrorCode.CLOSED, 'a closed client with a storage path is not reused');

  const c2 = new GravitasClient({ ...o, storagePath: path });
  t.same(
    c2.pendingMessages().map(({ id, target, text }) => ({ id, target, text })),
    ['x1', 'x2', 'x3'].map((id) => ({ id, target: { to: 'bob' }, text: `hi ${id}` })),
    'restored in order, with target and text',
  );
  t.equal(((await c2.send('bob', 'x', 'x1').catch((e: unknown) => e)) as ClientError).code, ClientErrorCode.DUPLICATE_ID, 'a restored id is still taken');
  await c2.close();

  const mem = new GravitasClient(o);
  const memSettled: Settled[] = [];
  mem.on('settled', (s) => memSettled.push(s));
  const p = mem.send('bob', 'hi', 'm1').catch((e: unknown) => e);
  t.same(mem.pendingMessages().map((m) => m.id), ['m1']);
  await mem.close();
  t.equal(((await p) as ClientError).code, ClientErrorCode.CLOSED);
  t.same(memSettled.map((s) => [s.id, 'error' in s && (s.error as ClientError).code]), [['m1', ClientErrorCode.CLOSED]], 'without a path the message is settled as CLOSED');
  t.same(mem.pendingMessages(), []);
});

// ---- real restarts -------------------------------------------------------------------

const CHILD = fileURLToPath(new URL('../fixtures/outbox-child.mjs', import.meta.url));

interface ChildEvent { ev: string; id?: string; ids?: string[]; status?: string; error?: string; code?: string; from?: string; text?: string }

interface Child {
  events: ChildEvent[];
  proc: ChildProcess;
  /** Waits for an event matching `pred` (events are kept, so one that came earlier counts). */
  waitFor(name: string, pred: (e: ChildEvent) => boolean, timeout?: number): Promise<ChildEvent>;
  kill(): Promise<void>;
  exited: Promise<number | null>;
}

function startChild(opts: Record<string, unknown>): Child {
  const proc = spawn(process.execPath, [CHILD, JSON.stringify(opts)], { env: cleanEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
  trackChild(proc);
  const events: ChildEvent[] = [];
  let stderr = '';
  proc.stderr!.setEncoding('utf8').on('data', (s: string) => (stderr += s));
  createInterface({ input: proc.stdout! }).on('line', (line) => events.push(JSON.parse(line) as ChildEvent));
  const exited = new Promise<number | null>((resolve) => proc.once('close', (code) => resolve(code)));
  let gone = false;
  void exited.then(() => (gone = true));
  return {
    events,
    proc,
    exited,
    waitFor: (name, pred, timeout = 20_000) =>
      check(
        name,
        () => {
          const e = events.find(pred);
          if (!e && gone) throw new Error(`child exited\n${stderr}`);
          return e;
        },
        { timeout, interval: 20 },
      ),
    kill: async () => {
      proc.kill('SIGKILL');
      await exited;
    },
  };
}

const countBy = (ids: string[]): Map<string, number> => {
  const m = new Map<string, number>();
  for (const id of ids) m.set(id, (m.get(id) ?? 0) + 1);
  return m;
};
const range = (prefix: string, count: number): string[] => Array.from({ length: count }, (_, i) => `${prefix}-${i}`);

t.test('restarts of SDK processes with a storage path', async (t) => {
  const nats = await NatsServer.start();
  t.teardown(() => nats.stop());
  const keys = clusterKeys();
  const file = await writeNodeConfig(
    fresh('node.json'),
    nodeConfig({ natsUrl: nats.url, nodeId: 'ob', dataDir: fresh('node-data'), keys, cells: 1, extra: { limits: { custodyWindowMs: 1000 } } }),
  );
  const node = await spawnNode(file);
  t.teardown(() => node.stop(5000));
  const cell = node.clientAddresses[0]!;
  const pk = keys.serverPublicKey;
  const base = (user: string, storagePath: string) => ({ servers: [cell], serverPublicKey: toBase64Url(pk), secretKey: toBase64Url(generateKeyPair().secretKey), user, device: 'd1', storagePath });

  t.test('sender queues while the server is unreachable, is SIGKILLed, restarts: every message arrives once', async (t) => {
    const bob = await connectClient(t, { servers: [cell], serverPublicKey: pk, user: 'ob-bob1' });
    const ids = range('q', 20);
    const o = base('ob-alice1', fresh('alice1'));
    const first = startChild({ ...o, servers: [`127.0.0.1:${await freePort()}`], connect: false, to: bob.user, ids });
    await first.waitFor('messages durable', (e) => e.ev === 'durable');
    await first.kill();
    t.notOk(first.events.some((e) => e.ev === 'settled'), 'nothing was settled before the kill');

    const second = startChild({ ...o, connect: true, untilSettled: true });
    const pending = await second.waitFor('restored outbox', (e) => e.ev === 'pending');
    t.same(pending.ids, ids, 'the restarted process found every message, in order');
    await second.waitFor('outbox empty', (e) => e.ev === 'done');
    t.equal(await second.exited, 0);
    const settled = second.events.filter((e) => e.ev === 'settled');
    t.same(settled.map((e) => [e.id, e.status]).sort(), ids.map((id) => [id, 'delivered']).sort(), "a 'settled' event for each restored message");

    await check('bob got them all', () => ids.every((id) => bob.inbox.some((m) => m.id === id)));
    await bob.client.ping();
    const got = countBy(bob.inbox.map((m) => m.id));
    t.same(ids.filter((id) => got.get(id) !== 1), [], 'each exactly once');
    t.same(bob.inbox.filter((m) => ids.includes(m.id)).map((m) => m.text), ids.map((id) => `text of ${id}`), 'same text, in the order sent');
    t.same(second.events.filter((e) => e.ev === 'error'), []);
  });

  t.test('sender SIGKILLed while its messages are in flight, restarts: every message arrives once', async (t) => {
    const bob = await connectClient(t, { servers: [cell], serverPublicKey: pk, user: 'ob-bob2' });
    const ids = range('f', 50);
    const o = base('ob-alice2', fresh('alice2'));
    const first = startChild({ ...o, connect: true, to: bob.user, ids });
    await first.waitFor('messages durable', (e) => e.ev === 'durable');
    await first.kill(); // some may be delivered, some on the wire, some not yet sent
    const settledBefore = first.events.filter((e) => e.ev === 'settled').length;

    const second = startChild({ ...o, connect: true, untilSettled: true });
    const pending = (await second.waitFor('restored outbox', (e) => e.ev === 'pending')).ids!;
    t.comment(`${settledBefore} settled before the kill, ${pending.length} restored`);
    t.ok(pending.every((id) => ids.includes(id)), 'only messages of the first process are restored');
    await second.waitFor('outbox empty', (e) => e.ev === 'done');
    const settled = second.events.filter((e) => e.ev === 'settled');
    t.same(settled.map((e) => [e.id, e.status]).sort(), pending.map((id) => [id, 'delivered']).sort(), 'each restored message settles, delivered (again, if it was before the kill)');

    await check('bob got them all', () => ids.every((id) => bob.inbox.some((m) => m.id === id)));
    await bob.client.ping();
    const got = countBy(bob.inbox.map((m) => m.id));
    t.same(ids.filter((id) => got.get(id) !== 1), [], 'each exactly once: none lost, none shown twice');
  });

  t.test('in one process: a receiver closed before acking; the next client on its path drops and acks the re-deliveries', async (t) => {
    const alice = await connectClient(t, { servers: [cell], serverPublicKey: pk, user: 'ob-alice4' });
    const path = fresh('dave');
    const identity = generateKeyPair();
    const first = makeClient({ servers: [cell], serverPublicKey: pk, user: 'ob-dave', identity, storagePath: path, autoAck: false });
    t.teardown(() => first.client.close());
    await first.client.connect();
    await registered(first);
    const ids = range('r', 3);
    const sent = ids.map((id) => alice.client.send('ob-dave', `text of ${id}`, id));
    for (const id of ids) await first.received((m) => m.id === id);
    await first.client.close();
    t.same((await Promise.all(sent)).map((r) => r.status), ids.map(() => 'stored'), 'never acked: stored');

    const second = makeClient({ servers: [cell], serverPublicKey: pk, user: 'ob-dave', identity, storagePath: path, autoAck: false });
    t.teardown(() => second.client.close());
    const acked: string[] = [];
    const ack = second.client.ack.bind(second.client);
    second.client.ack = (id, from) => {
      acked.push(id);
      ack(id, from);
    };
    await second.client.connect();
    await registered(second);
    await check('the re-deliveries were acked', () => ids.every((id) => acked.includes(id)));
    const fresh1 = await alice.client.send('ob-dave', 'new one', 'r-new');
    t.equal(fresh1.status, 'stored', 'autoAck off: a new message is shown but not acked by the SDK');
    await second.received((m) => m.id === 'r-new');
    t.same(second.inbox.map((m) => m.id), ['r-new'], 'only the new message is shown');
    t.same(second.errors, []);
  });

  t.test('receiver SIGKILLed after showing messages but before acking them, restarts: each shown exactly once', async (t) => {
    const o = base('ob-carol', fresh('carol'));
    const alice = await connectClient(t, { servers: [cell], serverPublicKey: pk, user: 'ob-alice3' });
    const first = startChild({ ...o, connect: true, autoAck: false });
    await first.waitFor('receiver registered', (e) => e.ev === 'connected');
    const early = range('e', 10);
    const earlySent = early.map((id) => alice.client.send(o.user, `text of ${id}`, id));
    for (const id of early) await first.waitFor(`shown ${id}`, (e) => e.ev === 'message' && e.id === id);
    await first.kill();
    t.same(first.events.filter((e) => e.ev === 'ack'), [], 'the first process acked nothing');

    // Unacknowledged, they end in the mailbox; more arrive while the receiver is down.
    t.same((await Promise.all(earlySent)).map((r) => r.status), early.map(() => 'stored'));
    const late = range('l', 5);
    t.same((await Promise.all(late.map((id) => alice.client.send(o.user, `text of ${id}`, id)))).map((r) => r.status), late.map(() => 'stored'));

    const second = startChild({ ...o, connect: true });
    for (const id of late) await second.waitFor(`shown ${id}`, (e) => e.ev === 'message' && e.id === id);
    for (const id of early) await second.waitFor(`re-delivered ${id} acked`, (e) => e.ev === 'ack' && e.id === id);
    await second.kill();

    const shown = [...first.events, ...second.events].filter((e) => e.ev === 'message').map((e) => e.id!);
    const got = countBy(shown);
    t.same([...early, ...late].filter((id) => got.get(id) !== 1), [], 'each shown once over both processes');
    t.same(shown.length, early.length + late.length, 'and nothing else');
    t.notOk(second.events.some((e) => e.ev === 'message' && early.includes(e.id!)), 're-deliveries of what the first process showed were dropped (and acked)');
    t.same([...first.events, ...second.events].filter((e) => e.ev === 'error'), []);
  });
});
