/*
 * Presence and typing with real processes: one nats-server, nodes A and B (two
 * cells each) and node C (one cell) that gets SIGKILLed. Watchers sit on node A,
 * the users they watch on B and C, so every view crosses nodes. Who sees what
 * follows the owner's contacts, blocks and preferences; a crashed node's users
 * turn offline within the membership bound; typing is ephemeral.
 */
import t, { type Test } from 'tap';
import { join } from 'node:path';
import { connect } from '@nats-io/transport-node';
import { Kvm, type KV } from '@nats-io/kv';
import { pack, unpack, type Presence, type TypingEvent } from '@gravitas/protocol';
import { check, NatsServer, tempDir } from '@gravitas/testkit';
import { clusterKeys, makeClient, nodeConfig, registered, spawnNode, writeNodeConfig, type MakeClientOptions, type NodeProcess, type TestClient } from '../fixtures/cluster.js';

const PREFIX = 'gravitas';
const HEARTBEAT_MS = 200;
const MEMBERSHIP_TIMEOUT_MS = 1000;
/** Generous: the documented bound is about timeoutMs + heartbeatMs (1.2 s here). */
const OFFLINE_WITHIN_MS = 15_000;
/** Small streams: JetStream reserves max_bytes up front, and test servers share one disk. */
const STREAM_BYTES = 64 * 1024 * 1024;

interface Watcher extends TestClient {
  pres: Presence[];
  typing: TypingEvent[];
  /** The latest presence this client was told about `user`. */
  latest(user: string): Presence | undefined;
}

/** Connects with presence and typing events recorded from the very first frame. */
async function join_(t: Test, o: MakeClientOptions): Promise<Watcher> {
  const tc = makeClient(o) as Watcher;
  tc.pres = [];
  tc.typing = [];
  tc.latest = (user) => tc.pres.filter((p) => p.user === user).at(-1);
  tc.client.on('presence', (p) => tc.pres.push(p));
  tc.client.on('typing', (e) => tc.typing.push(e));
  t.teardown(() => tc.client.close());
  await tc.client.connect();
  await registered(tc);
  return tc;
}

function seen(w: Watcher, user: string, pred: (p: Presence) => boolean, what: string, timeout = 10_000): Promise<Presence> {
  return check(`${w.user} sees ${user} ${what}`, () => {
    const p = w.latest(user);
    return p && pred(p) ? p : undefined;
  }, { timeout, interval: 20 });
}

/** The stored presence record of a user (the documented layout), for waiting on a write. */
async function stored(kv: KV, user: string): Promise<{ d: Record<string, { a: number; c: string }>; l?: number } | undefined> {
  const e = await kv.get(user);
  return e && e.operation === 'PUT' ? (unpack(e.value) as { d: Record<string, { a: number; c: string }>; l?: number }) : undefined;
}

t.test('presence and typing across three nodes', async (t) => {
  const nats = await NatsServer.start();
  t.teardown(() => nats.stop());
  const dir = await tempDir('gravitas-presence-');
  t.teardown(() => dir[Symbol.asyncDispose]());
  const keys = clusterKeys();
  const start = async (nodeId: string, cells: number): Promise<NodeProcess> => {
    const config = nodeConfig({
      natsUrl: nats.url, nodeId, dataDir: join(dir.path, nodeId), keys, cells,
      extra: { membership: { heartbeatMs: HEARTBEAT_MS, timeoutMs: MEMBERSHIP_TIMEOUT_MS }, mailbox: { maxBytesPerPartition: STREAM_BYTES } },
    });
    const node = await spawnNode(await writeNodeConfig(join(dir.path, `${nodeId}.json`), config));
    t.teardown(() => node.stop(5000));
    return node;
  };
  const [A, B, C] = await Promise.all([start('nodeA', 2), start('nodeB', 2), start('nodeC', 1)]);
  const pk = keys.serverPublicKey;
  const [a0] = A!.clientAddresses as [string, string];
  const [b0] = B!.clientAddresses as [string, string];
  const [c0] = C!.clientAddresses as [string];
  const onA = (user: string) => join_(t, { user, servers: [a0], serverPublicKey: pk });
  const onB = (user: string) => join_(t, { user, servers: [b0], serverPublicKey: pk });

  const kvConn = await connect({ servers: nats.url });
  t.teardown(() => kvConn.close());
  const presenceKv = await new Kvm(kvConn).open(`${PREFIX}_presence`);

  // Watchers on node A (one cell, so one presence view reaches them all in one pass).
  const victor = await onA('victor'); // a contact of olga: sees her
  const nina = await onA('nina'); // lists olga, but olga does not list her
  const bert = await onA('bert'); // olga lists him but blocked him
  const olga = await onB('olga');
  await olga.client.request('contacts.add', { user: 'victor' });
  await olga.client.request('contacts.add', { user: 'bert' });
  await olga.client.request('contacts.block', { user: 'bert' });
  const ninaFriend = await onB('nina-friend'); // lists nina: nina's control that presence does reach her
  await ninaFriend.client.request('contacts.add', { user: 'nina' });
  for (const w of [victor, nina, bert]) await w.client.request('contacts.add', { user: 'olga' });
  await nina.client.request('contacts.add', { user: 'nina-friend' });

  t.test('a contact on another node sees online; a non-contact and a blocked user see nothing', async (t) => {
    const p = await seen(victor, 'olga', (x) => x.s === 'online', 'online');
    t.equal(p.last, undefined, 'no last seen while online');
    await seen(nina, 'nina-friend', (x) => x.s === 'online', 'online (control: nina does watch)');
    olga.client.setPresence('away');
    await seen(victor, 'olga', (x) => x.s === 'away', 'away');
    await nina.client.ping();
    await bert.client.ping();
    t.same(nina.pres.filter((x) => x.user === 'olga'), [], 'nina (not olga\'s contact) was told nothing about olga');
    t.same(bert.pres.filter((x) => x.user === 'olga'), [], 'bert (blocked by olga) was told nothing about olga');
    olga.client.setPresence('online');
    await seen(victor, 'olga', (x) => x.s === 'online', 'online again');
  });

  t.test('a second device: away only when every device is away', async (t) => {
    const olga2 = await join_(t, { user: 'olga', device: 'd2', servers: [B!.clientAddresses[1]!], serverPublicKey: pk });
    await check('olga d2 is online in the store', async () => (await stored(presenceKv, 'olga'))?.d.d2?.a === 0, { timeout: 10_000, interval: 20 });
    olga.client.setPresence('away');
    await check('olga d1 is away in the store', async () => (await stored(presenceKv, 'olga'))?.d.d1?.a === 1, { timeout: 10_000, interval: 20 });
    await victor.client.ping();
    t.equal(victor.latest('olga')?.s, 'online', 'still online while the second device is');
    olga2.client.setPresence('away');
    await seen(victor, 'olga', (x) => x.s === 'away', 'away once both devices are');
    await olga2.client.close();
    await check('olga d2 gone from the store', async () => (await stored(presenceKv, 'olga'))?.d.d2 === undefined, { timeout: 10_000, interval: 20 });
    t.equal(victor.latest('olga')?.s, 'away', 'one device left, still away: no offline in between');
    olga.client.setPresence('online');
    await seen(victor, 'olga', (x) => x.s === 'online', 'online');
    t.notOk(victor.pres.some((x) => x.user === 'olga' && x.s === 'offline'), 'never offline while a device was connected');
  });

  t.test("prefs.presence 'nobody' hides it from contacts too; 'contacts' shows it again", async (t) => {
    const before = victor.pres.length;
    await olga.client.request('prefs.set', { presence: 'nobody' });
    const hidden = await seen(victor, 'olga', (x) => x.s === 'offline', 'hidden (offline)');
    t.equal(hidden.last, undefined, 'hidden: offline without a last seen');
    // Changes while hidden must not reach victor: away, then online again (each waited for in the store).
    olga.client.setPresence('away');
    await check('olga away in the store', async () => (await stored(presenceKv, 'olga'))?.d.d1?.a === 1, { timeout: 10_000, interval: 20 });
    olga.client.setPresence('online');
    await check('olga online in the store', async () => (await stored(presenceKv, 'olga'))?.d.d1?.a === 0, { timeout: 10_000, interval: 20 });
    await olga.client.request('prefs.set', { presence: 'contacts' });
    await seen(victor, 'olga', (x) => x.s === 'online', 'online once visible again');
    await victor.client.ping();
    t.same(victor.pres.slice(before).filter((x) => x.user === 'olga').map((x) => x.s), ['offline', 'online'], 'hidden, then the current state: nothing in between');
  });

  t.test('blocking a watcher hides it from him at once; unblocking shows it again', async (t) => {
    await olga.client.request('contacts.block', { user: 'victor' });
    const p = await seen(victor, 'olga', (x) => x.s === 'offline', 'hidden after the block');
    t.equal(p.last, undefined);
    await olga.client.request('contacts.unblock', { user: 'victor' });
    await seen(victor, 'olga', (x) => x.s === 'online', 'online after the unblock');
  });

  t.test('typing reaches a session on another node; rate-limited; blocked typing never arrives', async (t) => {
    olga.client.typing({ to: 'victor' }, true);
    await check('victor sees olga typing', () => victor.typing.some((e) => e.from === 'olga' && e.on), { timeout: 10_000, interval: 20 });
    t.match(victor.typing.find((e) => e.from === 'olga'), { from: 'olga', on: true }, 'a user-to-user indicator carries no group');

    // A burst far over the rate: most are dropped, silently (the session lives on).
    const before = victor.typing.length;
    for (let i = 0; i < 60; i++) olga.client.typing({ to: 'victor' }, i % 2 === 0);
    const marker = await olga.client.send('victor', 'after the burst');
    await victor.received((m) => m.id === marker.id); // same path as the indicators, after them
    const got = victor.typing.length - before;
    t.ok(got >= 1 && got < 60, `some of the burst got through, the excess was dropped (${got} of 60)`);
    t.same(olga.errors, [], 'no error for the sender');

    // bert is blocked by olga: his indicator is dropped. After the unblock, 'off' ones get through.
    bert.client.typing({ to: 'olga' }, true);
    await bert.client.ping();
    await olga.client.request('contacts.unblock', { user: 'bert' });
    await check('olga sees bert typing after the unblock', () => {
      bert.client.typing({ to: 'olga' }, false);
      return olga.typing.some((e) => e.from === 'bert');
    }, { timeout: 10_000, interval: 300 });
    t.ok(olga.typing.filter((e) => e.from === 'bert').every((e) => !e.on), 'the indicator sent while blocked never arrived');
    await olga.client.request('contacts.block', { user: 'bert' });
  });

  t.test('typing is never stored: a recipient that connects later gets nothing', async (t) => {
    const zed = await onA('zed');
    await zed.client.close();
    await check('zed is offline in the store', async () => (await stored(presenceKv, 'zed'))?.d.d1 === undefined, { timeout: 10_000, interval: 20 });
    olga.client.typing({ to: 'zed' }, true);
    await olga.client.ping();
    const zedAgain = await join_(t, { user: 'zed', identity: zed.identity, servers: [a0], serverPublicKey: pk });
    const m = await olga.client.send('zed', 'are you there?');
    await zedAgain.received((x) => x.id === m.id);
    await zedAgain.client.ping();
    t.same(zedAgain.typing, [], 'no typing indicator was kept for zed');
  });

  t.test('last seen when the last device goes offline', async (t) => {
    const quinn = await onB('quinn');
    await quinn.client.request('contacts.add', { user: 'victor' });
    await victor.client.request('contacts.add', { user: 'quinn' });
    await seen(victor, 'quinn', (x) => x.s === 'online', 'online');
    const before = Date.now();
    await quinn.client.close();
    const p = await seen(victor, 'quinn', (x) => x.s === 'offline', 'offline');
    t.type(p.last, 'number', 'offline carries a last seen');
    t.ok(p.last! >= before - 5000 && p.last! <= Date.now() + 5000, 'last seen is about when quinn left');
    // A watcher that comes later reads it from the store.
    const rita = await onA('rita');
    await quinn.client.connect().then(() => quinn.client.request('contacts.add', { user: 'rita' })).then(() => quinn.client.close());
    await rita.client.request('contacts.add', { user: 'quinn' });
    const q = await seen(rita, 'quinn', (x) => x.s === 'offline' && x.last !== undefined, 'offline with last seen');
    t.ok(q.last! >= p.last!, 'the stored last seen');
  });

  t.test('a SIGKILLed node: its users turn offline for watchers within the bound', async (t) => {
    const kim = await join_(t, { user: 'kim', servers: [c0], serverPublicKey: pk, reconnect: false });
    await kim.client.request('contacts.add', { user: 'victor' });
    await kim.client.request('contacts.add', { user: 'walt' });
    await victor.client.request('contacts.add', { user: 'kim' });
    await seen(victor, 'kim', (x) => x.s === 'online', 'online (on node C)');
    const killedAt = Date.now();
    const exit = await C!.kill();
    t.equal(exit.signal, 'SIGKILL');
    const p = await seen(victor, 'kim', (x) => x.s === 'offline', 'offline after the crash', OFFLINE_WITHIN_MS);
    t.type(p.last, 'number', 'with a last seen');
    t.ok(p.last! >= killedAt - 5000, 'last seen is about the crash');
    // The repair is durable: a watcher that connects afterwards reads offline from the store.
    const walt = await onA('walt');
    await walt.client.request('contacts.add', { user: 'kim' });
    await seen(walt, 'kim', (x) => x.s === 'offline', 'offline (read from the store)');
    const rec = await stored(presenceKv, 'kim');
    t.same(Object.keys(rec?.d ?? {}), [], 'the crashed session is gone from the store');
  });

  t.test('an indicator left on is turned off when its session ends', async (t) => {
    const olga3 = await join_(t, { user: 'olga', device: 'd3', servers: [b0], serverPublicKey: pk });
    const before = victor.typing.length;
    olga3.client.typing({ to: 'victor' }, true);
    await check('victor sees d3 typing', () => victor.typing.slice(before).some((e) => e.from === 'olga' && e.on), { timeout: 10_000, interval: 20 });
    await olga3.client.close();
    await check('victor sees the indicator turned off', () => victor.typing.slice(before).some((e) => e.from === 'olga' && !e.on), { timeout: 10_000, interval: 20 });
    t.same(victor.typing.slice(before).map((e) => e.on), [true, false]);
  });

  t.test('malformed views and records are ignored; the cells carry on', async (t) => {
    // Garbage on olga's presence subject (every cell watching her gets it) and a broken stored record.
    kvConn.publish(`${PREFIX}.pres.olga`, new TextEncoder().encode('not msgpack'));
    kvConn.publish(`${PREFIX}.pres.olga`, pack({ s: 'online', r: Number.MAX_SAFE_INTEGER, c: 'not a list' }));
    kvConn.publish(`${PREFIX}.pres.olga`, pack({ s: 'dancing', r: Number.MAX_SAFE_INTEGER, c: [] }));
    await presenceKv.put('mallory', new TextEncoder().encode('\u00c1 broken'));
    const mallory = await onB('mallory-friend');
    await mallory.client.request('contacts.add', { user: 'mallory' });
    await victor.client.request('contacts.add', { user: 'mallory' });
    // olga's state still changes normally for victor.
    olga.client.setPresence('away');
    await seen(victor, 'olga', (x) => x.s === 'away', 'away after the garbage');
    olga.client.setPresence('online');
    await seen(victor, 'olga', (x) => x.s === 'online', 'online after the garbage');
    t.notOk(victor.pres.some((x) => (x.s as string) === 'dancing'), 'the bad view was not forwarded');
    t.notMatch(A!.stderr() + B!.stderr(), /crashed|exited \(code/, 'no cell crashed or restarted');
  });

  t.test('the nodes stayed healthy', async (t) => {
    for (const n of [A!, B!]) {
      t.ok(n.running, 'still running');
      t.notMatch(n.stderr(), /uncaught|session error/i, 'no uncaught errors in the log');
    }
    for (const w of [victor, nina, bert, olga]) t.same(w.errors, [], `${w.user}: no client errors`);
  });
});
