/*
 * Campaign delivery across crashes, with real processes. A node is SIGKILLed
 * while its cells hold send jobs mid-batch: the jobs come back to the other
 * node after the ack wait, and by recipient nobody is skipped and no
 * application sees the campaign twice. A node stopped gracefully hands its
 * unfinished jobs back at once. An expansion whose runner died is taken over by
 * a new run, whose batches replace the dead run's.
 */
import t from 'tap';
import { pack } from '@gravitas/protocol';
import { check } from '@gravitas/testkit';
import { enqueueJob } from '@gravitas/server/internal';
import { metricSamples, metricsText, type TestClient } from '../fixtures/cluster.js';
import { socketOf } from '../fixtures/traffic.js';
import { campaignCluster, campaignMsgs, metricSum, offlineRecipient, onlineRecipient } from '../fixtures/campaigns.js';
import { watchWire } from '../fixtures/wire.js';

const BATCH = 5;

t.test('a node is SIGKILLed mid-campaign: nobody skipped, nobody sent it twice', async (t) => {
  // A 3 s custody window: each batch has a silent device, so each takes 3 s and
  // about nine are in flight at any time, some of them on node B.
  const env = await campaignCluster(t, { campaigns: { batchSize: BATCH }, limits: { custodyWindowMs: 3000 } });
  const { admin } = env;
  const BATCHES = 30;
  // Each batch: one silent device (reads nothing, so its custody waits out the
  // window), three that acknowledge at once, one offline.
  const silent: TestClient[] = [];
  const online: TestClient[] = [];
  const offline: Array<Awaited<ReturnType<typeof offlineRecipient>>> = [];
  const users: string[] = [];
  for (let b = 0; b < BATCHES; b++) {
    const i = b * BATCH;
    const [s, o1, o2, o3, off] = await Promise.all([
      onlineRecipient(t, env, `s${b}`, i),
      onlineRecipient(t, env, `a${b}`, i + 1),
      onlineRecipient(t, env, `b${b}`, i + 2),
      onlineRecipient(t, env, `d${b}`, i + 3),
      offlineRecipient(t, env, `f${b}`, i + 4),
    ]);
    silent.push(s);
    online.push(o1, o2, o3);
    offline.push(off);
    users.push(s.user, o1.user, o2.user, o3.user, off.user);
  }
  for (const s of silent) socketOf(s)!.pause();
  const rate = 15; // 3 batches per second: the campaign takes 10 s
  await admin.start({ id: 'k1', audience: { users }, ratePerSec: rate });
  await check('a third of the campaign was sent', async () => ((await admin.progress('k1'))?.sent ?? 0) >= users.length / 3, { timeout: 60_000, interval: 20 });
  const before = await admin.progress('k1');
  const exit = await env.nodes[1]!.kill();
  t.same(exit, { code: null, signal: 'SIGKILL' }, `node B killed at ${before?.sent} of ${users.length} sent`);

  // Jobs node B held come back after the ack wait (30 s).
  const killedAt = Date.now();
  await admin.waitState('k1', 'done', 120_000);
  // Without a job held by node B the rest would take about 10 s; a held job waits out the 30 s ack wait.
  t.ok(Date.now() - killedAt >= 20_000, `jobs node B held came back after the ack wait (done ${Date.now() - killedAt} ms after the kill)`);
  t.same(await admin.progress('k1'), { batches: BATCHES, batchesDone: BATCHES, recipients: users.length, sent: users.length, failed: {} }, 'progress: every recipient sent, counted once');
  const markers = await admin.markers('k1');
  t.equal(markers.size, users.length, 'every recipient has a marker');
  t.ok([...markers.values()].every((v) => v === ''), 'every marker says sent');

  for (const s of silent) socketOf(s)?.resume();
  const back = await Promise.all(offline.map((o) => o.connect()));
  const everyone = [...silent, ...online, ...back];
  // Nobody skipped: the check fails the test unless every recipient's app got it.
  await check('every recipient got the campaign', () => everyone.every((c) => campaignMsgs(c, 'k1').length > 0), { timeout: 60_000, interval: 100 });
  await new Promise((r) => setTimeout(r, 1500)); // room for late duplicates (stored copies of live deliveries)
  t.equal(everyone.filter((c) => campaignMsgs(c, 'k1').length > 1).length, 0, 'seen twice by an application: 0');
  const jobs = metricSamples(await metricsText(env.nodes[0]!.adminUrl), 'gravitas_campaign_jobs_total');
  t.comment(`node A's jobs: ${jobs.map((s) => `${s.labels.kind}/${s.labels.result}=${s.value}`).join(' ')}`);
});

t.test('a node stopped gracefully mid-campaign hands its jobs back at once', async (t) => {
  const env = await campaignCluster(t, { campaigns: { batchSize: BATCH }, limits: { custodyWindowMs: 3000 } });
  const { admin } = env;
  const BATCHES = 10;
  const clients: TestClient[] = [];
  const silent: TestClient[] = [];
  for (let b = 0; b < BATCHES; b++) {
    const batch = await Promise.all(Array.from({ length: BATCH }, (_, k) => onlineRecipient(t, env, `g${b}x${k}`, b * BATCH + k)));
    silent.push(batch[0]!);
    clients.push(...batch);
  }
  for (const s of silent) socketOf(s)!.pause();
  await admin.start({ id: 'k3', audience: { users: clients.map((c) => c.user) }, ratePerSec: 5 }); // a batch per second, each 3 s long
  await check('some of the campaign was sent', async () => ((await admin.progress('k3'))?.sent ?? 0) >= 10, { timeout: 60_000, interval: 20 });
  const stoppedAt = Date.now();
  const exit = await env.nodes[1]!.stop(15_000);
  t.equal(exit.signal, null, `node B drained and exited by itself (code ${exit.code})`);
  await admin.waitState('k3', 'done', 120_000);
  // Jobs it did not finish were handed back (nak), not left to the 30 s ack wait.
  t.ok(Date.now() - stoppedAt < 25_000, `done ${Date.now() - stoppedAt} ms after the stop`);
  for (const s of silent) socketOf(s)?.resume();
  await check('every recipient got the campaign', () => clients.every((c) => campaignMsgs(c, 'k3').length > 0), { timeout: 60_000, interval: 100 });
  await new Promise((r) => setTimeout(r, 1500));
  t.equal(clients.filter((c) => campaignMsgs(c, 'k3').length > 1).length, 0, 'seen twice by an application: 0');
  t.same(await admin.progress('k3'), { batches: BATCHES, batchesDone: BATCHES, recipients: clients.length, sent: clients.length, failed: {} }, 'progress complete');
});

t.test('an expansion whose runner died is taken over; whom it marked sent gets nothing more on the wire', async (t) => {
  const env = await campaignCluster(t, { campaigns: { batchSize: BATCH } });
  const { admin } = env;
  const clients = await Promise.all(Array.from({ length: 7 }, (_, i) => onlineRecipient(t, env, `t${i}`, i)));
  // Counted before the SDK's de-duplication: a second send would show here even though the app never sees it.
  const wires = clients.map(watchWire);
  const users = clients.map((c) => c.user);
  // What a run that died midway leaves: its ledger, with an old heartbeat, one batch it enqueued,
  // and the markers of the two recipients it had sent to (t5, t6: their copies were "delivered"
  // by that run; here nothing reached them, so any frame they get is a second send).
  const now = Date.now();
  await admin.campaigns.put('ledger.k2', pack({ run: 1, base: 0, next: 1024, t0: now, beat: now - 120_000, from: 'pub-acme', done: new Uint8Array(0), sent: 0, failed: {}, shift: 0 }));
  await enqueueJob(admin.js, admin.names, { k: 'send', c: 'k2', n: 0, users: users.slice(0, 2), notBefore: now }, 'k2.b0');
  for (const u of ['t5', 't6']) await admin.campaigns.put(`sent.k2.${u}`, new Uint8Array(0));
  await admin.start({ id: 'k2', audience: { users } });
  await admin.waitState('k2', 'done');
  const fresh = clients.slice(0, 5);
  for (const c of fresh) await check(`${c.user} got it`, () => campaignMsgs(c, 'k2').length > 0);
  await new Promise((r) => setTimeout(r, 500));
  t.ok(fresh.every((c) => campaignMsgs(c, 'k2').length === 1), 'every recipient not marked: the app saw it once');
  t.same(wires.slice(0, 5).map((w) => w.countId('_c-k2')), [1, 1, 1, 1, 1], 'server side: one frame each (the stale batch sent nothing)');
  t.same(wires.slice(5).map((w) => w.countId('_c-k2')), [0, 0], 'server side: the recipients the dead run marked got no frame from the new run');
  t.same(await admin.progress('k2'), { batches: 2, batchesDone: 2, recipients: 7, sent: 7, failed: {} }, 'progress of the new run: every recipient once, the marked ones counted from their markers');
  t.equal((await admin.markers('k2')).size, 7, 'every recipient has a marker');
  t.equal(await metricSum(env.nodes, 'gravitas_campaign_messages_sent_total'), 5, 'server side: 5 recipients marked sent by this run, none twice');
});
