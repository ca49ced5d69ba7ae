/*
 * Custody with real processes: one nats-server with JetStream and one node of two
 * cells. Offline recipients get `stored` and drain their mailbox in order; every
 * device of the recipient and the sender's other devices get each message; a
 * device that stays silent past the custody window gets it from its mailbox; late
 * acks, re-sends, receipts, expiry, the device limit and device removal.
 */
import t, { type Test } from 'tap';
import { join } from 'node:path';
import { connect } from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { ErrorCode, generateKeyPair, RemoteError, type KeyPair, type Receipt } from '@gravitas/protocol';
import { DeliveryError } from '@gravitas/client';
import { check, NatsServer, tempDir } from '@gravitas/testkit';
import {
  clusterKeys, connectClient, makeClient, metricsText, metricValue, nodeConfig, registered, spawnNode, writeNodeConfig,
  type ClusterKeys, type NodeProcess, type TestClient,
} from '../fixtures/cluster.js';
import { RawDevice } from '../fixtures/raw-device.js';

const PREFIX = 'gravitas';
const CUSTODY_MS = 600;
const RETENTION_MS = 3000;

interface Env { nats: NatsServer; node: NodeProcess; keys: ClusterKeys; servers: string[]; partitions: number }

async function setup(t: Test, extra: Record<string, unknown> = {}): Promise<Env> {
  const nats = await NatsServer.start();
  t.teardown(() => nats.stop());
  const dir = await tempDir('gravitas-custody-');
  t.teardown(() => dir[Symbol.asyncDispose]());
  const keys = clusterKeys();
  const config = nodeConfig({
    natsUrl: nats.url,
    nodeId: 'n1',
    dataDir: join(dir.path, 'n1'),
    keys,
    extra: { limits: { custodyWindowMs: CUSTODY_MS, maxDevicesPerUser: 3 }, mailbox: { partitions: 3 }, ...extra },
  });
  const node = await spawnNode(await writeNodeConfig(join(dir.path, 'n1.json'), config));
  t.teardown(() => node.stop(5000));
  const partitions = (extra as { mailbox?: { partitions?: number } }).mailbox?.partitions ?? 3;
  return { nats, node, keys, servers: node.clientAddresses, partitions };
}

function client(t: Test, env: Env, user: string, device = 'd1', extra: Partial<Parameters<typeof makeClient>[0]> = {}): Promise<TestClient> {
  return connectClient(t, { user, device, servers: env.servers, serverPublicKey: env.keys.serverPublicKey, ...extra });
}

/** Messages currently held by all mailbox partitions. */
async function mailboxCount(env: Env): Promise<number> {
  const nc = await connect({ servers: env.nats.url });
  try {
    const jsm = await jetstreamManager(nc);
    let n = 0;
    for (let k = 0; k < env.partitions; k++) n += (await jsm.streams.info(`${PREFIX}_MBOX_${k}`)).state.messages;
    return n;
  } finally {
    await nc.close();
  }
}

/** Deliveries to devices by path (local, cross_cell, mailbox), summed over the node's cells. */
async function deliveriesBy(env: Env, path: string): Promise<number> {
  return metricValue(await metricsText(env.node.adminUrl), 'gravitas_deliveries_total', { path }) ?? 0;
}

/** A raw device on cell `cell` (RawDevice: counts what the server wrote, no de-duplication). */
function raw(t: Test, env: Env, user: string, device: string, cell: number, o: { identity?: KeyPair; autoAck?: boolean } = {}): Promise<RawDevice> {
  return RawDevice.open(t, { address: env.servers[cell]!, serverPublicKey: env.keys.serverPublicKey, user, device, ...o });
}

/**
 * Lets what the server does in the background happen (a wake-up 100 ms after a store,
 * then a drain): the tests that use it check that something did NOT happen after it.
 */
const settle = (ms = 500): Promise<void> => new Promise((r) => setTimeout(r, ms));

function receipts(tc: TestClient): Receipt[] {
  const out: Receipt[] = [];
  tc.client.on('receipt', (r) => out.push(r));
  return out;
}

function countIds(tc: TestClient): Map<string, number> {
  const counts = new Map<string, number>();
  for (const m of tc.inbox) counts.set(m.id, (counts.get(m.id) ?? 0) + 1);
  return counts;
}

t.test('mailboxes, multi-device fan-out, receipts and device management', async (t) => {
  const env = await setup(t);

  t.test('an offline recipient: stored, then drained in order, exactly once, and the mailbox empties', async (t) => {
    // bob registers, then leaves. He comes back as a raw device: what it counts is what the server wrote.
    const bobKey = generateKeyPair();
    const first = await client(t, env, 'bob', 'phone', { identity: bobKey });
    await first.client.close();
    const alice = await client(t, env, 'alice');
    // alice's second device, raw: it gets the copies of what her phone sends and every receipt, as written by the server.
    const aliceRaw = await raw(t, env, 'alice', 'raw', 1);
    const got = receipts(alice);
    const ids: string[] = [];
    for (let i = 0; i < 40; i++) {
      const r = await alice.client.send('bob', `offline #${i}`);
      t.equal(r.status, 'stored', `#${i} stored`);
      ids.push(r.id);
    }
    t.equal(await mailboxCount(env), 40, '40 items in the mailbox');
    const drainedBefore = await deliveriesBy(env, 'mailbox');
    const bob = await raw(t, env, 'bob', 'phone', 1, { identity: bobKey });
    await check('bob drained his mailbox', () => bob.messages.length >= 40, { timeout: 10_000 });
    t.same(bob.messages.map((m) => m.id), ids, 'the server wrote each once, in the order they were sent');
    t.match(bob.messages[0], { from: 'alice', fd: 'd1', to: 'bob', text: 'offline #0' });
    await check('acknowledged items leave the mailbox', async () => (await mailboxCount(env)) === 0, { timeout: 10_000 });
    t.pass('mailbox empty after the acks');
    t.equal((await deliveriesBy(env, 'mailbox')) - drainedBefore, 40, 'gravitas_deliveries_total{path="mailbox"}: 40 drained, none twice');
    // The sender was told `stored`; now each one became a delivery receipt.
    await check('alice got a delivery receipt per message', () => ids.every((id) => got.some((r) => r.ref === id && r.s === 'delivered')), { timeout: 10_000 });
    t.match(got[0], { by: 'bob', bd: 'phone', s: 'delivered' });
    t.equal(new Set(got.map((r) => r.id)).size, got.length, 'each receipt once');
    await check('alice\'s raw device got them too', () => ids.every((id) => aliceRaw.receipts.some((r) => r.ref === id)), { timeout: 10_000 });
    const perRef = new Map<string, number>();
    for (const r of aliceRaw.receipts) if (r.s === 'delivered') perRef.set(r.ref, (perRef.get(r.ref) ?? 0) + 1);
    t.same([...perRef.values()].filter((n) => n !== 1), [], 'the server wrote one delivery receipt per message to each of alice\'s devices');
    t.same(ids.map((id) => aliceRaw.count(id)), ids.map(() => 1), 'and one copy of each message to her other device');
    await check('receipts leave alice\'s mailbox too', async () => (await mailboxCount(env)) === 0, { timeout: 10_000 });
    // A reconnect finds nothing left: no acknowledged item is drained again.
    bob.close();
    const again = await raw(t, env, 'bob', 'phone', 0, { identity: bobKey });
    await again.ping();
    await settle();
    await again.ping();
    t.equal(again.messages.length, 0, 'bob\'s next session is written nothing (on another cell)');
    again.close();
  });

  t.test('fan-out to every device of the recipient and the sender\'s other devices', async (t) => {
    const carolTablet = generateKeyPair();
    const tablet0 = await client(t, env, 'carol', 'tablet', { identity: carolTablet });
    await tablet0.client.close(); // registered, now offline
    const carolPhone = await client(t, env, 'carol', 'phone');
    const daveLaptop = await client(t, env, 'dave', 'laptop');
    const davePhone = await client(t, env, 'dave', 'phone');
    const r = await davePhone.client.send('carol', 'to all of carol');
    t.equal(r.status, 'stored', 'stored: one of carol\'s devices is offline');
    const online = await carolPhone.received((m) => m.id === r.id);
    t.equal(online.text, 'to all of carol', 'carol\'s online phone got it live');
    const copy = await daveLaptop.received((m) => m.id === r.id);
    t.match(copy, { from: 'dave', fd: 'phone', to: 'carol' }, 'dave\'s laptop got the copy of what his phone sent');
    const tablet = await client(t, env, 'carol', 'tablet', { identity: carolTablet });
    const drained = await tablet.received((m) => m.id === r.id);
    t.equal(drained.text, 'to all of carol', 'carol\'s tablet got it from its mailbox');
    const both = await davePhone.client.send('carol', 'everyone online now');
    t.equal(both.status, 'delivered', 'delivered once every device acknowledged');
    await tablet.received((m) => m.id === both.id);
    await carolPhone.received((m) => m.id === both.id);
    await daveLaptop.received((m) => m.id === both.id);
    t.equal(countIds(carolPhone).get(both.id), 1);
  });

  t.test('a silent device: stored after the custody window, not drained to it again; its late ack deletes the copy', async (t) => {
    const erin = await raw(t, env, 'erin', 'd1', 1, { autoAck: false });
    const frank = await client(t, env, 'frank');
    const before = await mailboxCount(env);
    const r = await frank.client.send('erin', 'ack me later');
    t.equal(r.status, 'stored', 'erin never acked within the window: stored');
    t.equal(await mailboxCount(env), before + 1, 'one copy in erin\'s mailbox');
    // A store of it again after the Nats-Msg-Id window (2 min) has no msg id to stop it: the
    // per-item subject must (docs/custody.md, Mailbox layout). Publish the copy again as such a
    // late retry would: on <prefix>.mbox.<k>.<user>.<device>.<from>.<id>, without a msg id.
    const nc = await connect({ servers: env.nats.url });
    t.teardown(() => nc.close());
    const jsm = await jetstreamManager(nc);
    const on = await Promise.all(Array.from({ length: env.partitions }, async (_, k) => {
      const subject = `${PREFIX}.mbox.${k}.erin.d1.frank.${r.id}`;
      const m = await jsm.streams.getMessage(`${PREFIX}_MBOX_${k}`, { last_by_subj: subject }).catch(() => null);
      return m && { subject, data: m.data };
    }));
    const stored = on.filter((x) => x !== null);
    t.equal(stored.length, 1, 'the copy is on its own per-item subject');
    const late = await jetstream(nc).publish(stored[0]!.subject, stored[0]!.data).then(
      () => 'stored',
      (err: { code?: unknown; api_error?: { err_code?: number } }) => err.api_error?.err_code ?? Number(err.code),
    );
    t.equal(late, 10077, 'a late second store of the same item is refused by the stream (10077)');
    t.equal(await mailboxCount(env), before + 1, 'still one copy');
    // The store woke erin's drain; it finds the item in flight on her session and skips it.
    await settle();
    await erin.ping();
    t.equal(erin.count(r.id), 1, 'the server wrote it to erin once: the drain skipped what is in flight on her session');
    erin.ack(erin.messages.find((m) => m.id === r.id)!);
    await check('the late ack deleted the stored copy', async () => (await mailboxCount(env)) === before, { timeout: 10_000 });
    t.pass('mailbox back to where it was');
  });

  t.test('a re-sent id is answered, not delivered again', async (t) => {
    const gina = await client(t, env, 'gina');
    // hank is raw: the SDK would hide a second delivery.
    const hank = await raw(t, env, 'hank', 'd1', 0);
    const first = await gina.client.send('hank', 'once', 'fixed-id-1');
    t.equal(first.status, 'delivered');
    const again = await gina.client.send('hank', 'once', 'fixed-id-1');
    t.equal(again.status, 'delivered', 'the same status again');
    await hank.ping();
    t.equal(hank.count('fixed-id-1'), 1, 'the server wrote it to hank once');
    // A raw sender re-sending after the status (what an SDK does after a reconnect to the same cell).
    const gRaw = await raw(t, env, 'gina', 'raw', 0);
    gRaw.sendMessage('hank', 'fixed-id-3');
    t.equal((await gRaw.status('fixed-id-3')).s, 'delivered');
    gRaw.sendMessage('hank', 'fixed-id-3');
    gRaw.sendMessage('hank', 'fixed-id-3');
    await check('both re-sends answered', () => gRaw.statuses.filter((s) => s.id === 'fixed-id-3').length === 3, { timeout: 10_000 });
    t.same(gRaw.statuses.filter((s) => s.id === 'fixed-id-3').map((s) => s.s), ['delivered', 'delivered', 'delivered'], 'each re-send gets the same status');
    await hank.ping();
    t.equal(hank.count('fixed-id-3'), 1, 'the server wrote it to hank once, not three times');
    // Offline: the same id stored twice is one mailbox item.
    hank.close();
    await gina.client.close();
    await settle();
    const before = await mailboxCount(env);
    gRaw.sendMessage('hank', 'fixed-id-2');
    const s1 = await gRaw.status('fixed-id-2');
    gRaw.sendMessage('hank', 'fixed-id-2');
    await check('the re-send answered', () => gRaw.statuses.filter((s) => s.id === 'fixed-id-2').length === 2, { timeout: 10_000 });
    t.same(gRaw.statuses.filter((s) => s.id === 'fixed-id-2').map((s) => s.s), [s1.s, s1.s]);
    t.equal(s1.s, 'stored');
    t.equal(await mailboxCount(env), before + 2, 'stored once for hank\'s device and once for gina\'s offline phone');
  });

  t.test('a device that moves to another cell mid-traffic: nothing lost, nothing it acknowledged written again', async (t) => {
    const base = await mailboxCount(env);
    const mover = generateKeyPair();
    const before = await raw(t, env, 'mo', 'd1', 0, { identity: mover });
    const sender = await client(t, env, 'mo-s', 'd1', { servers: [...env.servers].reverse(), maxOutbox: 4096 });
    const N = 400;
    const sends = Array.from({ length: N }, (_, i) => sender.client.send('mo', `moving #${i}`));
    await check('part of the traffic reached the device', () => before.messages.length >= N / 4, { timeout: 15_000 });
    // The move: reading and acking on the old connection stops, and the device connects on cell 1
    // (what the SDK does with a connect hint). Its old session is ended by the new one.
    before.autoAck = false;
    const acked = new Set(before.messages.map((m) => m.id));
    const after = await raw(t, env, 'mo', 'd1', 1, { identity: mover });
    const sent = await Promise.all(sends);
    t.same([...new Set(sent.map((r) => r.status))].filter((s) => s !== 'delivered' && s !== 'stored'), [], 'every message taken into custody');
    await check('every message reached the device', () => sent.every((r) => acked.has(r.id) || after.count(r.id) > 0), { timeout: 15_000 });
    await settle();
    await after.ping();
    t.same(sent.filter((r) => acked.has(r.id) && after.count(r.id) > 0).map((r) => r.id), [], `none of the ${acked.size} acknowledged before the move was written to the new session`);
    t.same(sent.filter((r) => after.count(r.id) > 1).map((r) => r.id), [], 'the new session was written each at most once');
    t.ok(before.closed || before.frames.some((f) => f.t === 'bye'), 'the old session was ended by the move');
    await check('nothing of it left in the mailbox', async () => (await mailboxCount(env)) === base, { timeout: 10_000 });
  });

  t.test('read receipts travel under custody to the sender', async (t) => {
    const ivan = await client(t, env, 'ivan');
    const judy = await client(t, env, 'judy');
    const got = receipts(ivan);
    const r = await ivan.client.send('judy', 'read me');
    const m = await judy.received((x) => x.id === r.id);
    judy.client.markRead(m.id, m.from);
    const rr = await check('ivan got the read receipt', () => got.find((x) => x.ref === r.id && x.s === 'read'), { timeout: 10_000 });
    t.match(rr, { by: 'judy', s: 'read' });
    t.notOk('bd' in rr, 'a read receipt is about the user, not a device');
  });

  t.test('a sender who turned read receipts off gets none', async (t) => {
    // Fresh users: no cell has their preferences cached yet.
    const ria = await client(t, env, 'ria');
    const sam = await client(t, env, 'sam', 'd1', { servers: [...env.servers].reverse() });
    const ids = await raw(t, env, 'ria', 'raw', 1);
    await ria.client.request('prefs.set', { readReceipts: false });
    const m1 = await ria.client.send('sam', 'read me, quietly');
    sam.client.markRead(await sam.received((x) => x.id === m1.id));
    await sam.client.ping();
    await ria.client.request('prefs.set', { readReceipts: true });
    const m2 = await ria.client.send('sam', 'read me, loudly');
    sam.client.markRead(await sam.received((x) => x.id === m2.id));
    await check('the receipt once ria turned them back on', () => ids.receipts.some((x) => x.ref === m2.id && x.s === 'read'), { timeout: 10_000 });
    t.same(ids.receipts.filter((x) => x.ref === m1.id), [], 'none was written for the message read while they were off');
  });

  t.test('unknown recipient: UNDELIVERABLE', async (t) => {
    const kim = await client(t, env, 'kim');
    const err = await kim.client.send('nobody', 'hello?').catch((e: unknown) => e);
    t.type(err, DeliveryError);
    t.equal((err as DeliveryError).code, ErrorCode.UNDELIVERABLE);
  });

  t.test('device limit, device list, device removal', async (t) => {
    const keys = [generateKeyPair(), generateKeyPair(), generateKeyPair()];
    const d = await Promise.all(keys.map((identity, i) => client(t, env, 'leo', `dev${i}`, { identity })));
    const fourth = makeClient({ user: 'leo', device: 'dev3', servers: env.servers, serverPublicKey: env.keys.serverPublicKey, reconnect: false });
    const err = await fourth.client.connect().catch((e: unknown) => e);
    t.type(err, RemoteError);
    t.equal((err as RemoteError).code, ErrorCode.TOO_MANY_DEVICES, 'a fourth device is refused (limit 3)');
    const list = (await d[0]!.client.request('devices.list', {})) as { devices: Array<{ device: string }> };
    t.same(list.devices.map((x) => x.device).sort(), ['dev0', 'dev1', 'dev2']);
    // Something for dev2's mailbox, then remove dev2.
    await d[2]!.client.close();
    const mia = await client(t, env, 'mia');
    t.equal((await mia.client.send('leo', 'for all of leo')).status, 'stored');
    const before = await mailboxCount(env);
    await d[0]!.client.request('devices.remove', { device: 'dev2' });
    t.equal(await mailboxCount(env), before - 1, 'the removed device\'s mailbox is purged');
    const after = (await d[0]!.client.request('devices.list', {})) as { devices: Array<{ device: string }> };
    t.same(after.devices.map((x) => x.device).sort(), ['dev0', 'dev1']);
    const gone = await d[0]!.client.request('devices.remove', { device: 'dev2' }).catch((e: unknown) => e);
    t.equal((gone as RemoteError).code, ErrorCode.NOT_FOUND, 'removing it again: NOT_FOUND');
    // The freed slot takes a new device.
    await registered(await client(t, env, 'leo', 'dev3'));
    t.pass('a new device fits in the freed slot');
    const m = await metricsText(env.node.adminUrl);
    t.ok((metricValue(m, 'gravitas_mailbox_stores_total') ?? 0) > 40, 'mailbox stores are counted');
  });

  t.test('device names that are Object.prototype members are names like any other', async (t) => {
    const a = await registered(await client(t, env, 'nia', 'constructor'));
    await registered(await client(t, env, 'nia', 'toString'));
    const list = (await a.client.request('devices.list', {})) as { devices: Array<{ device: string }> };
    t.same(list.devices.map((x) => x.device).sort(), ['constructor', 'toString'], 'both registered, both listed');
  });
});

t.test('limits: in-flight cap, an ending session hands its items back, the drain window, a full mailbox', async (t) => {
  // A long custody window: whatever settles here before it ends was settled by the behaviour under test, not by the window.
  const WINDOW_MS = 30_000;
  const MAX_IN_FLIGHT = 4;
  const DRAIN_WINDOW = 4;
  const env = await setup(t, {
    limits: { custodyWindowMs: WINDOW_MS, maxInFlightPerSession: MAX_IN_FLIGHT, maxDevicesPerUser: 3, msgBurst: 1000 },
    mailbox: { partitions: 1, drainWindow: DRAIN_WINDOW, maxBytesPerPartition: 64 * 1024 },
  });
  // u1 sends from cell 0; u2 reads on cell 1: acks and hand-backs cross cells.
  const u1 = await raw(t, env, 'u1', 'd1', 0);
  const u2Key = generateKeyPair();
  const u2 = await raw(t, env, 'u2', 'd1', 1, { identity: u2Key, autoAck: false });
  const ids = (p: string, n: number): string[] => Array.from({ length: n }, (_, i) => `${p}${i}`);

  t.test('TOO_MANY_IN_FLIGHT: a sender with limits.maxInFlightPerSession unsettled messages is refused more', async (t) => {
    for (const id of ids('f', MAX_IN_FLIGHT)) u1.sendMessage('u2', id);
    await check('u2 was written the first ones', () => u2.messages.length === MAX_IN_FLIGHT, { timeout: 10_000 });
    u1.sendMessage('u2', 'over');
    t.match(await u1.status('over'), { s: 'failed', code: ErrorCode.TOO_MANY_IN_FLIGHT }, `the ${MAX_IN_FLIGHT + 1}th is refused`);
    t.same(u1.statuses.filter((s) => s.id !== 'over'), [], 'the others are still in flight (no status)');
    await u2.ping();
    t.equal(u2.count('over'), 0, 'the refused one was not delivered');
    u2.ack(u2.messages[0]!);
    t.equal((await u1.status('f0')).s, 'delivered', 'one acked: delivered');
    u1.sendMessage('u2', 'room');
    const room = await check('u2 was written the next one', () => u2.messages.find((m) => m.id === 'room'), { timeout: 10_000 });
    u2.ack(room);
    t.equal((await u1.status('room')).s, 'delivered', 'a slot freed: the next one is taken');
  });

  t.test('a session that ends with items unacknowledged hands them back at once: stored before the window', async (t) => {
    const held = ['f1', 'f2', 'f3'];
    t.same(u1.statuses.filter((s) => held.includes(s.id)), [], 'three items live and unacknowledged');
    const before = await mailboxCount(env);
    u2.close(); // the connection ends; its cell tells the origin cell "not here" for each
    for (const id of held) t.equal((await u1.status(id, WINDOW_MS / 3)).s, 'stored', `${id} stored long before the ${WINDOW_MS} ms window`);
    t.equal(await mailboxCount(env), before + held.length, 'in u2\'s mailbox');
  });

  t.test('the drain window: at most mailbox.drainWindow drained items unacknowledged per device', async (t) => {
    for (const id of ids('g', 4)) u1.sendMessage('u2', id);
    for (const id of ids('g', 4)) t.equal((await u1.status(id)).s, 'stored');
    const expected = ['f1', 'f2', 'f3', ...ids('g', 4)];
    t.equal(await mailboxCount(env), expected.length, `${expected.length} items waiting`);
    const back = await raw(t, env, 'u2', 'd1', 1, { identity: u2Key, autoAck: false });
    await check(`${DRAIN_WINDOW} items drained`, () => back.messages.length >= DRAIN_WINDOW, { timeout: 10_000 });
    await settle();
    await back.ping();
    t.equal(back.messages.length, DRAIN_WINDOW, `no more than ${DRAIN_WINDOW} until one is acknowledged`);
    back.ack(back.messages[0]!);
    await check('one ack lets one more through', () => back.messages.length === DRAIN_WINDOW + 1, { timeout: 10_000 });
    back.autoAck = true;
    for (const m of back.messages) back.ack(m);
    await check('the rest drains as acks come', () => back.messages.length >= expected.length, { timeout: 10_000 });
    await back.ping();
    t.same(back.messages.map((m) => m.id), expected, 'each written once, in store order');
    await check('the mailbox empties', async () => (await mailboxCount(env)) === 0, { timeout: 10_000 });
    const delivered = await check('u1 got a delivery receipt for each', () => (expected.every((id) => u1.receipts.some((r) => r.ref === id)) ? u1.receipts : undefined), { timeout: 10_000 });
    t.same(expected.map((id) => delivered.filter((r) => r.ref === id && r.s === 'delivered').length), expected.map(() => 1), 'one receipt each, as written by the server');
  });

  t.test('the per-cell drain cap: at most 32 drains run at once on a cell, the next waits for a slot', async (t) => {
    const CAP = 32; // messaging/drain.ts MAX_CONCURRENT_DRAINS, docs/custody.md "At most 32 drains run at once per cell"
    const users = Array.from({ length: CAP + 1 }, (_, i) => `dc${i}`);
    const keys = new Map(users.map((u) => [u, generateKeyPair()]));
    for (const u of users) (await raw(t, env, u, 'd1', 1, { identity: keys.get(u)! })).close();
    await settle();
    // Each of the first 32 gets one item more than its drain window: its drain fills the window and waits, holding a slot.
    const sentIds: string[] = [];
    for (const [i, u] of users.entries()) {
      for (let k = 0; k < (i < CAP ? DRAIN_WINDOW + 1 : 1); k++) {
        const id = `${u}-${k}`;
        u1.sendMessage(u, id);
        sentIds.push(id);
        if (sentIds.length % MAX_IN_FLIGHT === 0) for (const x of sentIds.slice(-MAX_IN_FLIGHT)) await u1.status(x);
      }
    }
    const notStored: unknown[] = [];
    for (const id of sentIds) { const st = await u1.status(id); if (st.s !== 'stored') notStored.push(st); }
    t.same(notStored, [], `all ${sentIds.length} stored`);
    const holders: RawDevice[] = [];
    for (const u of users.slice(0, CAP)) holders.push(await raw(t, env, u, 'd1', 1, { identity: keys.get(u)!, autoAck: false }));
    await check(`${CAP} drains each wrote a full window`, () => holders.every((h) => h.messages.length === DRAIN_WINDOW), { timeout: 15_000 });
    const last = await raw(t, env, users[CAP]!, 'd1', 1, { identity: keys.get(users[CAP]!)!, autoAck: false });
    await settle();
    await last.ping();
    t.equal(last.messages.length, 0, `one device more: its drain waits, every slot is held`);
    holders[0]!.close(); // its drain ends and frees a slot
    await check('the waiting drain got the slot', () => last.messages.length === 1, { timeout: 10_000 });
    t.equal(last.messages[0]!.id, `${users[CAP]}-0`);
    // Clean up for the next subtest: everything acknowledged, the mailbox empty again.
    for (const d of [...holders.slice(1), last]) {
      d.autoAck = true;
      for (const m of d.messages) d.ack(m);
    }
    const rest = await raw(t, env, users[0]!, 'd1', 1, { identity: keys.get(users[0]!)! });
    await check('the mailbox empties', async () => (await mailboxCount(env)) === 0, { timeout: 20_000 });
    rest.close();
  });

  t.test('MAILBOX_FULL: a store past mailbox.maxBytesPerPartition fails, and nothing is half-taken', async (t) => {
    const off = await raw(t, env, 'u3', 'd1', 0);
    off.close();
    await settle();
    const text = 'x'.repeat(8 * 1024);
    const statuses: string[] = [];
    for (let i = 0; i < 16; i++) {
      u1.sendMessage('u3', `big${i}`, text);
      const st = await u1.status(`big${i}`);
      statuses.push(st.s === 'failed' ? st.code! : st.s);
      if (st.s === 'failed') break;
    }
    t.equal(statuses.at(-1), ErrorCode.MAILBOX_FULL, `refused once the partition is full (${statuses.length - 1} stored first)`, { statuses });
    t.ok(statuses.slice(0, -1).length >= 2 && statuses.slice(0, -1).every((s) => s === 'stored'), 'what fit was stored');
    t.ok(statuses.length <= 9, '64 KiB holds at most 8 of these');
  });
});

t.test('retention: undelivered messages expire, the sender gets one expired receipt each, though two nodes sweep', async (t) => {
  const retention = { mailbox: { partitions: 3, retentionMs: RETENTION_MS, sweepIntervalMs: 100 }, limits: { custodyWindowMs: CUSTODY_MS, maxDevicesPerUser: 3, msgBurst: 1000 } };
  const env = await setup(t, retention);
  // A second node on the same NATS: its cell 0 sweeps the same partitions, racing the first.
  const dir = await tempDir('gravitas-custody-n2-');
  t.teardown(() => dir[Symbol.asyncDispose]());
  const config = nodeConfig({ natsUrl: env.nats.url, nodeId: 'n2', dataDir: join(dir.path, 'n2'), keys: env.keys, extra: retention });
  const n2 = await spawnNode(await writeNodeConfig(join(dir.path, 'n2.json'), config));
  t.teardown(() => n2.stop(5000));
  const nina = await client(t, env, 'nina');
  await nina.client.close();
  const ninaKey = nina.identity;
  const oscar = await client(t, env, 'oscar');
  // oscar's second device, raw and on the other node: it counts the receipts the server wrote.
  const oscarRaw = await RawDevice.open(t, { address: n2.clientAddresses[1]!, serverPublicKey: env.keys.serverPublicKey, user: 'oscar', device: 'raw' });
  const got = receipts(oscar);
  const sentAt = Date.now();
  // Sent together, so they expire together: one sweeper's walk over them outlasts the other's
  // sweep interval, and the second sweeper starts on items the first has not deleted yet.
  const sent = await Promise.all(Array.from({ length: 100 }, (_, i) => oscar.client.send('nina', `you will never read this #${i}`)));
  t.same(sent.map((r) => r.status), sent.map(() => 'stored'));
  const ids = sent.map((r) => r.id);
  const x = await check('oscar is told each expired', () => (ids.every((id) => got.some((g) => g.ref === id && g.s === 'expired')) ? got : undefined), { timeout: RETENTION_MS + 15_000 });
  t.match(x[0], { by: 'nina', s: 'expired' });
  // Not before the retention passed (the sweep compares JetStream's store time with the cell clock, same machine).
  const first = Math.min(...x.map((g) => g.ts));
  t.ok(first >= sentAt + RETENTION_MS - 100, `expired ${first - sentAt} ms after the send (retention ${RETENTION_MS} ms)`);
  await check('the mailbox is empty again', async () => (await mailboxCount(env)) === 0, { timeout: 10_000 });
  await oscarRaw.ping();
  t.same(ids.map((id) => oscarRaw.receipts.filter((r) => r.ref === id).length), ids.map(() => 1), 'the server wrote one expired receipt per message, however the sweepers raced');
  const nina2 = await client(t, env, 'nina', 'd1', { identity: ninaKey });
  await nina2.client.ping();
  t.equal(nina2.inbox.length, 0, 'nina gets nothing after the expiry');
  const expired = async (): Promise<number[]> => Promise.all([env.node, n2].map(async (n) => metricValue(await metricsText(n.adminUrl), 'gravitas_mailbox_expired_total') ?? 0));
  const counts = await expired();
  t.equal(counts[0]! + counts[1]!, ids.length, `each expiry counted once over both nodes (${counts.join(' + ')})`);
});
