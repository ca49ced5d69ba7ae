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
import { jetstreamManager } from '@nats-io/jetstream';
import { ErrorCode, generateKeyPair, RemoteError, type Receipt } from '@gravitas/protocol';
import { DeliveryError } from '@gravitas/client';
import { check, NatsServer, tempDir } from '@gravitas/testkit';
import {
  clusterKeys, connectClient, makeClient, metricsText, metricValue, nodeConfig, registered, spawnNode, writeNodeConfig,
  type ClusterKeys, type NodeProcess, type TestClient,
} from '../fixtures/cluster.js';

const PREFIX = 'gravitas';
const CUSTODY_MS = 600;
const RETENTION_MS = 3000;

interface Env { nats: NatsServer; node: NodeProcess; keys: ClusterKeys; servers: string[] }

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
  return { nats, node, keys, servers: node.clientAddresses };
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
    for (let k = 0; k < 3; k++) n += (await jsm.streams.info(`${PREFIX}_MBOX_${k}`)).state.messages;
    return n;
  } finally {
    await nc.close();
  }
}

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
    // bob registers, then leaves.
    const bobKey = generateKeyPair();
    const first = await client(t, env, 'bob', 'phone', { identity: bobKey });
    await first.client.close();
    const alice = await client(t, env, 'alice');
    const got = receipts(alice);
    const ids: string[] = [];
    for (let i = 0; i < 40; i++) {
      const r = await alice.client.send('bob', `offline #${i}`);
      t.equal(r.status, 'stored', `#${i} stored`);
      ids.push(r.id);
    }
    t.equal(await mailboxCount(env), 40, '40 items in the mailbox');
    const bob = await client(t, env, 'bob', 'phone', { identity: bobKey });
    await check('bob drained his mailbox', () => bob.inbox.length >= 40, { timeout: 10_000 });
    t.same(bob.inbox.map((m) => m.id), ids, 'in the order they were sent, each once');
    t.match(bob.inbox[0], { from: 'alice', fd: 'd1', to: 'bob', text: 'offline #0' });
    await check('acknowledged items leave the mailbox', async () => (await mailboxCount(env)) === 0, { timeout: 10_000 });
    t.pass('mailbox empty after the acks');
    // The sender was told `stored`; now each one became a delivery receipt.
    await check('alice got a delivery receipt per message', () => ids.every((id) => got.some((r) => r.ref === id && r.s === 'delivered')), { timeout: 10_000 });
    t.match(got[0], { by: 'bob', bd: 'phone', s: 'delivered' });
    t.equal(new Set(got.map((r) => r.id)).size, got.length, 'each receipt once');
    await check('receipts leave alice\'s mailbox too', async () => (await mailboxCount(env)) === 0, { timeout: 10_000 });
    await bob.client.close();
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

  t.test('a silent device: stored after the custody window; its late ack deletes the copy', async (t) => {
    const erin = await client(t, env, 'erin', 'd1', { autoAck: false });
    const frank = await client(t, env, 'frank');
    const before = await mailboxCount(env);
    const r = await frank.client.send('erin', 'ack me later');
    t.equal(r.status, 'stored', 'erin never acked within the window: stored');
    const m = await erin.received((x) => x.id === r.id);
    t.equal(await mailboxCount(env), before + 1, 'one copy in erin\'s mailbox');
    erin.client.ack(m.id, m.from);
    await check('the late ack deleted the stored copy', async () => (await mailboxCount(env)) === before, { timeout: 10_000 });
    t.pass('mailbox back to where it was');
  });

  t.test('a re-sent id is answered, not delivered again', async (t) => {
    const gina = await client(t, env, 'gina');
    const hank = await client(t, env, 'hank');
    const first = await gina.client.send('hank', 'once', 'fixed-id-1');
    t.equal(first.status, 'delivered');
    const again = await gina.client.send('hank', 'once', 'fixed-id-1');
    t.equal(again.status, 'delivered', 'the same status again');
    await hank.client.ping();
    t.equal(countIds(hank).get('fixed-id-1'), 1, 'hank saw it once');
    // Offline: the same id stored twice is one mailbox item.
    await hank.client.close();
    const before = await mailboxCount(env);
    const s1 = await gina.client.send('hank', 'twice?', 'fixed-id-2');
    const s2 = await gina.client.send('hank', 'twice?', 'fixed-id-2');
    t.same([s1.status, s2.status], ['stored', 'stored']);
    t.equal(await mailboxCount(env), before + 1, 'stored once');
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

t.test('retention: undelivered messages expire and the sender gets an expired receipt', async (t) => {
  const env = await setup(t, { mailbox: { partitions: 3, retentionMs: RETENTION_MS, sweepIntervalMs: 200 } });
  const nina = await client(t, env, 'nina');
  await nina.client.close();
  const ninaKey = nina.identity;
  const oscar = await client(t, env, 'oscar');
  const got = receipts(oscar);
  const sentAt = Date.now();
  const r = await oscar.client.send('nina', 'you will never read this');
  t.equal(r.status, 'stored');
  const x = await check('oscar is told it expired', () => got.find((g) => g.ref === r.id && g.s === 'expired'), { timeout: RETENTION_MS + 10_000 });
  t.match(x, { by: 'nina', s: 'expired' });
  // Not before the retention passed (the sweep compares JetStream's store time with the cell clock, same machine).
  t.ok(x.ts >= sentAt + RETENTION_MS - 100, `expired ${x.ts - sentAt} ms after the send (retention ${RETENTION_MS} ms)`);
  await check('the mailbox is empty again', async () => (await mailboxCount(env)) === 0, { timeout: 10_000 });
  const nina2 = await client(t, env, 'nina', 'd1', { identity: ninaKey });
  await nina2.client.ping();
  t.equal(nina2.inbox.length, 0, 'nina gets nothing after the expiry');
  const m = await metricsText(env.node.adminUrl);
  t.equal(metricValue(m, 'gravitas_mailbox_expired_total'), 1, 'one expiry counted');
});
