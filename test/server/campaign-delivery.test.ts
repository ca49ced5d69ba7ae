/*
 * Campaign delivery against real processes: one nats-server, two `gravitas node`
 * processes with two cells each, recipients as SDK clients. Publishers and
 * campaigns are written to KV directly and started as the admin API does.
 * Checked: each recipient's application sees the message once, with `c` set;
 * offline recipients get it from their mailbox; unknown users are counted as
 * failed; pacing by the jobs' notBefore; pause and resume; predicate audiences.
 * Timing is asserted only through the jobs' own times and the messages' `ts`.
 */
import t from 'tap';
import { pack } from '@gravitas/protocol';
import { check } from '@gravitas/testkit';
import type { TestClient } from '../fixtures/cluster.js';
import { enqueueJob } from '@gravitas/server/internal';
import {
  campaignCluster, campaignMsgs, metricSum, offlineRecipient, onlineRecipient, SENDER,
} from '../fixtures/campaigns.js';
import { watchWire } from '../fixtures/wire.js';

const BATCH = 4;

t.test('campaign delivery on two nodes × two cells', async (t) => {
  const env = await campaignCluster(t, { campaigns: { batchSize: BATCH } });
  const { admin } = env;

  t.test('online and offline recipients get it once; unknown users are counted as failed', async (t) => {
    const online = await Promise.all(Array.from({ length: 5 }, (_, i) => onlineRecipient(t, env, `on${i}`, i)));
    // What the server put on the wire, before the SDK's de-duplication.
    const wires = online.map(watchWire);
    const offline = await Promise.all(Array.from({ length: 3 }, (_, i) => offlineRecipient(t, env, `off${i}`, i)));
    const ghosts = ['ghost0', 'ghost1'];
    const storesBefore = await metricSum(env.nodes, 'gravitas_mailbox_stores_total');
    const users = [...online.map((c) => c.user), ...offline.map((o) => o.user), ...ghosts, 'on0'];
    await admin.start({ id: 'c1', audience: { users }, text: 'spring sale' });
    await admin.waitState('c1', 'done');

    t.same(await admin.progress('c1'), { batches: 3, batchesDone: 3, recipients: 10, sent: 8, failed: { UNDELIVERABLE: 2 } }, 'progress: 10 recipients (a repeated user once), 8 sent, 2 unknown');
    for (const c of online) {
      const got = await check(`${c.user} got the campaign`, () => campaignMsgs(c, 'c1')[0]);
      t.match(got, { from: SENDER, fd: 'campaign', id: '_c-c1', to: c.user, text: 'spring sale', c: 'c1', sys: 'campaign' }, `${c.user}: message from the publisher's sender`);
    }
    const later = await Promise.all(offline.map((o) => o.connect()));
    for (const c of later) await check(`${c.user} got the campaign from its mailbox`, () => campaignMsgs(c, 'c1').length > 0);
    await new Promise((r) => setTimeout(r, 500)); // room for a duplicate to show up
    for (const c of [...online, ...later]) t.equal(campaignMsgs(c, 'c1').length, 1, `${c.user} saw it exactly once`);
    // on0 is in the audience twice; each later client is new, so what its app saw is what came on the wire.
    t.same(wires.map((w) => w.countId('_c-c1')), [1, 1, 1, 1, 1], 'server side: one frame per online recipient (on0 listed twice included)');

    const markers = await admin.markers('c1');
    t.same(Object.fromEntries(markers), { ...Object.fromEntries([...online, ...offline].map((c) => [c.user, ''])), ghost0: 'UNDELIVERABLE', ghost1: 'UNDELIVERABLE' }, 'one marker per recipient, failures with their code');
    t.equal(await metricSum(env.nodes, 'gravitas_campaign_messages_sent_total'), 8, 'sent metric');
    t.equal(await metricSum(env.nodes, 'gravitas_campaign_messages_failed_total', { code: 'UNDELIVERABLE' }), 2, 'failed metric by code');
    t.equal(await metricSum(env.nodes, 'gravitas_campaign_jobs_total', { kind: 'send', result: 'ok' }), 3, 'three send jobs');
    t.equal(await metricSum(env.nodes, 'gravitas_campaign_jobs_total', { kind: 'expand', result: 'ok' }), 1, 'one expansion');
    t.equal(await metricSum(env.nodes, 'gravitas_campaign_sent_records_failed_total'), 0, 'every sent record was written');
    // Online devices acknowledged live: only the offline ones were written to mailboxes.
    t.equal((await metricSum(env.nodes, 'gravitas_mailbox_stores_total')) - storesBefore, offline.length, 'mailbox stores only for offline devices');
  });

  t.test('pacing: send jobs spaced by batchSize / rate, nobody sent before their batch time', async (t) => {
    const n = 24;
    const rate = 20; // 4 per batch → one batch every 200 ms
    const clients = await Promise.all(Array.from({ length: n }, (_, i) => onlineRecipient(t, env, `pace${i}`, i)));
    const jobs = admin.watchJobs();
    const c = await admin.start({ id: 'c2', audience: { users: clients.map((x) => x.user) }, ratePerSec: rate });
    await admin.waitState('c2', 'done');
    const sends = jobs.filter((j) => j.k === 'send' && j.c === 'c2').flatMap((j) => (j.k === 'send' ? [j] : [])).sort((a, b) => a.n - b.n);
    t.equal(sends.length, n / BATCH, `${n / BATCH} send jobs`);
    const interval = (BATCH / rate) * 1000;
    t.ok(Math.abs(sends[0]!.notBefore - c.startedAt!) <= 1, 'the first batch is due at the start');
    t.ok(sends.every((j, i) => Math.abs(j.notBefore - sends[0]!.notBefore - i * interval) <= 1), `batch i due at start + i × ${interval} ms`);
    const batchOf = new Map(sends.flatMap((j) => j.users.map((u) => [u, j] as const)));
    for (const x of clients) await check(`${x.user} got it`, () => campaignMsgs(x, 'c2').length === 1);
    const early = clients.filter((x) => campaignMsgs(x, 'c2')[0]!.ts < batchOf.get(x.user)!.notBefore);
    t.same(early.map((x) => x.user), [], 'no message was sent before its batch was due');
    const last = Math.max(...clients.map((x) => campaignMsgs(x, 'c2')[0]!.ts));
    t.ok(last - c.startedAt! >= (n / BATCH - 1) * interval, 'the campaign took at least its paced duration');
  });

  t.test('pause stops sending, resume continues at the same pace', async (t) => {
    const n = 20;
    const rate = 4; // one batch of 4 per second
    const clients = await Promise.all(Array.from({ length: n }, (_, i) => onlineRecipient(t, env, `pz${i}`, i)));
    const wires = clients.map(watchWire);
    const jobs = admin.watchJobs();
    await admin.start({ id: 'c3', audience: { users: clients.map((x) => x.user) }, ratePerSec: rate });
    const got = (): number => clients.filter((x) => campaignMsgs(x, 'c3').length > 0).length;
    await check('the first batch arrived', () => got() >= BATCH, { timeout: 20_000 });
    const pausedAt = Date.now();
    await admin.setState('c3', 'paused');
    // A batch already under way may finish; after that, nothing.
    await new Promise((r) => setTimeout(r, 1500));
    const during = got();
    const sentDuring = (await admin.progress('c3'))?.sent;
    await new Promise((r) => setTimeout(r, 2500));
    t.equal(got(), during, `nothing arrived while paused (${during} of ${n} before)`);
    t.equal((await admin.progress('c3'))?.sent, sentDuring, 'progress did not move while paused');
    t.ok(during < n, 'the pause came before the end');
    const resumedAt = Date.now();
    await admin.setState('c3', 'running');
    await admin.waitState('c3', 'done');
    for (const x of clients) await check(`${x.user} got it`, () => campaignMsgs(x, 'c3').length === 1);
    await new Promise((r) => setTimeout(r, 300));
    t.ok(clients.every((x) => campaignMsgs(x, 'c3').length === 1), 'everyone exactly once');
    // The job under way at the pause came back after the resume: it must not send to whom it had sent.
    t.same(clients.filter((_, i) => wires[i]!.countId('_c-c3') !== 1).map((x) => x.user), [], 'server side: one frame per recipient, across the pause and the resume');
    // Batches due after the pause began were moved back by (about) its length: no burst at resume.
    const pause = resumedAt - pausedAt;
    const batchOf = new Map(jobs.flatMap((j) => (j.k === 'send' && j.c === 'c3' ? j.users.map((u) => [u, j] as const) : [])));
    const late = clients.filter((x) => {
      const j = batchOf.get(x.user)!;
      const ts = campaignMsgs(x, 'c3')[0]!.ts;
      return j.notBefore > pausedAt + 1000 && ts < j.notBefore + pause - 1500;
    });
    t.same(late.map((x) => x.user), [], `batches after the pause kept their spacing (pause ${pause} ms)`);
    t.same(await admin.progress('c3'), { batches: n / BATCH, batchesDone: n / BATCH, recipients: n, sent: n, failed: {} }, 'progress complete');
  });

  t.test('predicate audience: users whose profile matches', async (t) => {
    const plans: Record<string, string | undefined> = { pr0: 'pro', pr1: 'free', pr2: 'pro', pr3: undefined, pr4: 'pro', pr5: 'free' };
    const clients = new Map<string, TestClient>();
    await Promise.all(Object.keys(plans).map(async (u, i) => clients.set(u, await onlineRecipient(t, env, u, i))));
    for (const [u, plan] of Object.entries(plans)) {
      if (plan) await admin.js.publish(admin.names.profileSubject(u), pack({ plan, age: 30 }));
    }
    await admin.start({ id: 'c4', audience: { where: { all: [{ attr: 'plan', op: 'eq', value: 'pro' }, { attr: 'age', op: 'gte', value: 18 }] } } });
    await admin.waitState('c4', 'done');
    const pro = Object.keys(plans).filter((u) => plans[u] === 'pro');
    for (const u of pro) await check(`${u} got it`, () => campaignMsgs(clients.get(u)!, 'c4').length === 1);
    await new Promise((r) => setTimeout(r, 500));
    t.same(
      Object.keys(plans).filter((u) => campaignMsgs(clients.get(u)!, 'c4').length > 0),
      pro,
      'exactly the matching users',
    );
    t.same(await admin.progress('c4'), { batches: 1, batchesDone: 1, recipients: 3, sent: 3, failed: {} }, 'progress');
  });

  t.test('a predicate on a prototype member name (constructor, toString…) reaches only profiles that hold it', async (t) => {
    const profiles: Record<string, Record<string, unknown> | undefined> = { px0: { constructor: 'own' }, px1: { plan: 'pro' }, px2: undefined };
    const clients = new Map<string, TestClient>();
    await Promise.all(Object.keys(profiles).map(async (u, i) => clients.set(u, await onlineRecipient(t, env, u, i))));
    for (const [u, attrs] of Object.entries(profiles)) if (attrs) await admin.js.publish(admin.names.profileSubject(u), pack(attrs));
    const names = ['constructor', 'toString', 'valueOf', 'hasOwnProperty'];
    await admin.start({ id: 'c4p', audience: { where: { any: names.map((attr) => ({ attr, op: 'exists' as const })) } } });
    await admin.waitState('c4p', 'done');
    await check('px0 got it', () => campaignMsgs(clients.get('px0')!, 'c4p').length === 1);
    t.same(await admin.progress('c4p'), { batches: 1, batchesDone: 1, recipients: 1, sent: 1, failed: {} }, 'one recipient: not every profile');
    t.same(['px1', 'px2'].filter((u) => campaignMsgs(clients.get(u)!, 'c4p').length > 0), [], 'profiles without such an attribute got nothing');
  });

  t.test('a start in the future; a job of an unknown campaign is dropped', async (t) => {
    await enqueueJob(admin.js, admin.names, { k: 'expand', c: 'nope' }, 'nope.expand');
    await check('the unknown campaign\'s job was dropped', async () => (await metricSum(env.nodes, 'gravitas_campaign_jobs_total', { kind: 'expand', result: 'unknown' })) === 1);
    const x = await onlineRecipient(t, env, 'fut0', 0);
    const startAt = Date.now() + 2000;
    await admin.start({ id: 'c5', audience: { users: [x.user] }, startAt });
    const m = await x.received((m) => m.c === 'c5', 20_000);
    t.ok(m.ts >= startAt, 'not sent before startAt');
    await admin.waitState('c5', 'done');
  });
});
