/**
 * Campaign feedback in the SDK (client.track, docs/sdk.md): a bounded queue,
 * persisted with a storage path, sent at least once as `track` requests with the
 * same event id until the server takes it. Against real processes: queued while
 * offline, the node SIGKILLed mid-stream and restarted on the same ports, the SDK
 * process SIGKILLed and restarted on its storage path. By record id in the
 * archive: every event stored once.
 */
import t, { type Test } from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { connect } from '@nats-io/transport-node';
import { generateKeyPair, toBase64Url } from '@gravitas/protocol';
import { ClientError, ClientErrorCode, GravitasClient, LmdbStore, MemoryStore, type CampaignRef, type ClientStore, type TrackFailed } from '@gravitas/client';
import { check, freePort, NatsServer, tempDir, trackChild } from '@gravitas/testkit';
import { cleanEnv, clusterKeys, connectClient, makeClient, nodeConfig, spawnNode, writeNodeConfig } from '../fixtures/cluster.js';
import { allTracked, archiveOf, collect, idsOf, outcomes, putCampaigns, recordId, trackMany } from '../fixtures/tracking.js';
import { campaignProof } from '../fixtures/proofs.js';

const dir = await tempDir('gravitas-feedback-');
t.teardown(() => dir[Symbol.asyncDispose]());
let n = 0;
const fresh = (name: string): string => join(dir.path, `${name}-${++n}`);

const codeOf = async (p: Promise<unknown>): Promise<string> => {
  try {
    await p;
    return 'ok';
  } catch (err) {
    return err instanceof ClientError ? err.code : String(err);
  }
};

// ---- the stores on their own -----------------------------------------------------------

function storeSuite(name: string, open: () => { store: ClientStore; reopen: () => ClientStore }): void {
  t.test(`${name}: feedback records in put order, removal`, async (t) => {
    const { store, reopen } = open();
    const f = (eid: string, ts: number) => ({ eid, c: 'camp', ev: 'opened' as const, ts, rk: new Uint8Array(12).fill(ts) });
    await Promise.all([store.putFeedback(f('z', 3)), store.putFeedback(f('a', 2)), store.putFeedback(f('m', 1))]);
    store.deleteFeedback('a');
    await store.putFeedback(f('b', 4));
    t.same(store.loadFeedback(), [f('z', 3), f('m', 1), f('b', 4)], 'oldest put first, whatever the ids and times');
    t.same(store.loadOutbox(), [], 'the outbox is separate');
    await store.close();
    const again = reopen();
    t.teardown(() => again.close());
    t.same(again.loadFeedback(), store.durable ? [f('z', 3), f('m', 1), f('b', 4)] : [], store.durable ? 'the same after reopening' : 'memory is gone');
  });
}
storeSuite('memory', () => ({ store: new MemoryStore(), reopen: () => new MemoryStore() }));
storeSuite('lmdb', () => {
  const path = fresh('store');
  return { store: LmdbStore.open(path), reopen: () => LmdbStore.open(path) };
});

/** A campaign message's id and proof, as the SDK queue keeps them (these clients never reach a server). */
const CAMP: CampaignRef = { c: 'camp', rk: new Uint8Array(12).fill(7) };

t.test('without a delivery proof there is nothing to send: NO_PROOF at once', async (t) => {
  const c = new GravitasClient({ servers: ['127.0.0.1:1'], serverPublicKey: generateKeyPair().publicKey, identity: generateKeyPair(), user: 'u', device: 'd', reconnect: false });
  t.teardown(() => c.close());
  t.equal(await codeOf(c.track('never-received', 'opened')), ClientErrorCode.NO_PROOF, 'track by id of a campaign whose message this client never got');
  t.throws(() => c.markRead('m1', 'alice'), { code: ClientErrorCode.NO_PROOF }, 'markRead of a message this client never got');
});

t.test('the queue is bounded, ids are unique in it; closed without a storage path it ends in trackFailed CLOSED', async (t) => {
  const o = { servers: ['127.0.0.1:1'], serverPublicKey: generateKeyPair().publicKey, identity: generateKeyPair(), user: 'u', device: 'd', reconnect: false, maxFeedback: 3 };
  const mem = new GravitasClient(o);
  const failed: TrackFailed[] = [];
  mem.on('trackFailed', (f) => failed.push(f));
  t.equal(await mem.track(CAMP, 'opened', 'e1'), 'e1', 'resolves with the event id once queued');
  t.match(await mem.track(CAMP, 'clicked'), /^[A-Za-z0-9_-]{20,}$/, 'a generated event id is a protocol name');
  t.equal(await codeOf(mem.track(CAMP, 'opened', 'e1')), ClientErrorCode.DUPLICATE_ID);
  await mem.track(CAMP, 'dismissed', 'e3');
  t.equal(await codeOf(mem.track(CAMP, 'opened', 'e4')), ClientErrorCode.OUTBOX_FULL, 'maxFeedback queued: OUTBOX_FULL');
  const queued = mem.pendingFeedback().map((f) => f.eid);
  t.same([queued[0], queued[2]], ['e1', 'e3'], 'queued, oldest first');
  await mem.close();
  t.same(failed.map((f) => [f.eid, (f.error as ClientError).code]), queued.map((eid) => [eid, ClientErrorCode.CLOSED]), 'without a storage path, close ends every queued event');
  t.equal(await codeOf(mem.track(CAMP, 'opened')), ClientErrorCode.CLOSED);

  const path = fresh('client');
  const c1 = new GravitasClient({ ...o, storagePath: path });
  await c1.track(CAMP, 'opened', 'p1');
  await c1.track(CAMP, 'converted', 'p2');
  const c1Failed: TrackFailed[] = [];
  c1.on('trackFailed', (f) => c1Failed.push(f));
  await c1.close();
  t.same(c1Failed, [], 'with a storage path nothing is dropped at close');
  const c2 = new GravitasClient({ ...o, storagePath: path });
  t.same(c2.pendingFeedback().map(({ eid, ev }) => [eid, ev]), [['p1', 'opened'], ['p2', 'converted']], 'the next client on the path has them, in order, with their events');
  await c2.close();
});

// ---- against real processes ------------------------------------------------------------

const CHILD = fileURLToPath(new URL('../fixtures/feedback-child.mjs', import.meta.url));

interface ChildEvent { ev: string; eid?: string; eids?: string[]; dup?: boolean; code?: string }

function startChild(opts: Record<string, unknown>): { events: ChildEvent[]; proc: ChildProcess; waitFor: (name: string, pred: (e: ChildEvent) => boolean, timeout?: number) => Promise<ChildEvent>; kill: () => Promise<void>; exited: Promise<number | null> } {
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
    waitFor: (name, pred, timeout = 30_000) =>
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

t.test('against a node', async (t) => {
  const nats = await NatsServer.start();
  t.teardown(() => nats.stop());
  const nc = await connect({ servers: nats.url });
  t.teardown(() => nc.close());
  await putCampaigns(nc, ['promo']);
  const keys = clusterKeys();
  const pk = keys.serverPublicKey;
  // These clients send feedback far faster than a device would: the request limits are not what is tested.
  const FAST_FEEDBACK = { requestRatePerSec: 100_000, requestBurst: 100_000, accountRequestRatePerSec: 1_000_000 };
  /** The campaign as `user` holds it once its message arrived (written into KV by hand here, never sent). */
  const promo = (user: string): CampaignRef => ({ c: 'promo', rk: campaignProof(keys.serverKey, 'promo', user) });
  const basePort = await freePort();
  const file = await writeNodeConfig(fresh('node.json'), nodeConfig({ natsUrl: nats.url, nodeId: 'fb', dataDir: fresh('node-data'), keys, cells: 1, extra: { listen: { host: '127.0.0.1', basePort }, limits: FAST_FEEDBACK } }));
  let node = await spawnNode(file);
  t.teardown(() => node.stop(5000));
  const cell = node.clientAddresses[0]!;
  const archived = async (user: string): Promise<{ ids: string[]; dups: string[] }> => idsOf(await collect(archiveOf(nc).readUser(user)));
  const archiveHas = async (t: Test, user: string, eids: string[]): Promise<void> => {
    const want = eids.map((eid) => recordId({ u: user, eid })).sort();
    await check(`archive holds ${eids.length} events of ${user}`, async () => (await archived(user)).ids.length >= want.length, { timeout: 60_000, interval: 250 });
    const got = await archived(user);
    t.same(got.ids, want, `every event of ${user} in the archive, nothing else`);
    t.same(got.dups, [], 'none twice');
  };

  t.test('queued before connecting, sent once connected', async (t) => {
    const tc = makeClient({ servers: [cell], serverPublicKey: pk, user: 'fb-early' });
    t.teardown(() => tc.client.close());
    const o = outcomes(tc.client);
    const eids = await trackMany(tc.client, promo('fb-early'), 5, 'early');
    await sleep(100);
    t.equal(o.tracked.size, 0, 'nothing goes out while not connected');
    await tc.client.connect();
    await allTracked(o, eids);
    t.same([...o.tracked.values()].map((x) => x.dup), eids.map(() => false));
    await archiveHas(t, 'fb-early', eids);
  });

  t.test('the node is SIGKILLed mid-stream and restarted: the SDK sends the rest after reconnecting, each stored once', async (t) => {
    const tc = await connectClient(t, { servers: [cell], serverPublicKey: pk, user: 'fb-steady' });
    const o = outcomes(tc.client);
    // All 300 queued at once: the SDK keeps 32 requests in flight, so the kill lands with
    // events taken, events on the wire and events still queued.
    const eids = await Promise.all(Array.from({ length: 300 }, (_, i) => tc.client.track(promo('fb-steady'), 'delivered', `s-${i}`)));
    await check('some taken', () => o.tracked.size >= 60, { timeout: 20_000, interval: 10 });
    await node.kill();
    const takenAtKill = o.tracked.size;
    t.ok(takenAtKill < eids.length, `node SIGKILLed with ${eids.length - takenAtKill} of ${eids.length} events not yet answered`);
    await sleep(500);
    node = await spawnNode(file);
    t.equal(node.clientAddresses[0], cell, 'restarted on the same address');
    await allTracked(o, eids, 60_000);
    t.ok(tc.disconnects >= 1, 'the client lost its connection and reconnected');
    t.equal(o.failed.size, 0, 'nothing failed');
    await archiveHas(t, 'fb-steady', eids);
  });

  t.test('an SDK process with a storage path SIGKILLed with events queued and in flight, restarted: each stored once', async (t) => {
    const o = { servers: [cell], serverPublicKey: toBase64Url(pk), secretKey: toBase64Url(generateKeyPair().secretKey), user: 'fb-proc', device: 'd1', storagePath: fresh('proc') };
    const queued = Array.from({ length: 20 }, (_, i) => `q-${i}`);
    const offline = startChild({ ...o, servers: [`127.0.0.1:${await freePort()}`], connect: false, c: 'promo', rk: toBase64Url(promo('fb-proc').rk), eids: queued });
    await offline.waitFor('queued events durable', (e) => e.ev === 'durable');
    await offline.kill();
    t.notOk(offline.events.some((e) => e.ev === 'tracked'), 'nothing was taken before the kill');

    const flying = Array.from({ length: 200 }, (_, i) => `f-${i}`);
    const second = startChild({ ...o, connect: true, c: 'promo', rk: toBase64Url(promo('fb-proc').rk), eids: flying });
    const pending = await second.waitFor('restored queue', (e) => e.ev === 'pending');
    t.same(pending.eids, queued, 'the restarted process found every queued event, in order');
    await second.waitFor('durable', (e) => e.ev === 'durable');
    await second.kill(); // some taken, some on the wire, some not yet sent
    const takenBefore = second.events.filter((e) => e.ev === 'tracked').length;

    const third = startChild({ ...o, connect: true, untilTaken: true });
    const left = (await third.waitFor('restored queue', (e) => e.ev === 'pending')).eids!;
    t.comment(`${takenBefore} taken before the second kill, ${left.length} restored`);
    t.ok(left.every((eid) => queued.includes(eid) || flying.includes(eid)), 'only events of the earlier processes are restored');
    await third.waitFor('queue empty', (e) => e.ev === 'done', 60_000);
    t.equal(await third.exited, 0);
    t.same(third.events.filter((e) => e.ev === 'tracked').map((e) => e.eid).sort(), [...left].sort(), "a 'tracked' event for each restored event (dup: true if the server had it)");
    t.same([...second.events, ...third.events].filter((e) => e.ev === 'trackFailed' || e.ev === 'error'), []);
    await archiveHas(t, 'fb-proc', [...queued, ...flying]);
  });
});
