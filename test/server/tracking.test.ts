/*
 * The tracking tiers with real processes (docs/campaigns.md "Tracking tiers"): a
 * nats-server and `gravitas node` processes, SDK clients sending campaign
 * feedback. Records reach the node's LMDB store (answered only once flushed),
 * are shipped to the JetStream archive and age out of the node once archived;
 * reports find archive ∪ every node's unarchived records. Faults: the archive
 * refusing, the nats-server SIGKILLed and restarted, the local budget full of
 * unarchived records, a node SIGKILLed after answering. By record id: nothing
 * taken is lost, nothing is stored twice.
 */
import t, { type Test } from 'tap';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { jetstreamManager } from '@nats-io/jetstream';
import { ErrorCode, RemoteError, type RequestArgs } from '@gravitas/protocol';
import type { CampaignRef } from '@gravitas/client';
import { check, NatsServer, tempDir } from '@gravitas/testkit';
import {
  clusterKeys, connectClient, metricsText, metricValue, nodeConfig, spawnNode, writeNodeConfig, type ClusterKeys, type NodeProcess, type TestClient,
} from '../fixtures/cluster.js';
import { allTracked, archiveOf, collect, idsOf, localStore, names, outcomes, putCampaigns, recordId, trackMany, type Outcomes } from '../fixtures/tracking.js';
import { campaignProof } from '../fixtures/proofs.js';
import { queryUnarchived } from '@gravitas/server/internal';
import type { TrackingRecord } from '@gravitas/server/internal';

interface Env { nats: NatsServer; nc: NatsConnection; dir: string; keys: ClusterKeys; configs: Map<string, string> }

async function env(t: Test, campaigns: string[]): Promise<Env> {
  const nats = await NatsServer.start();
  t.teardown(() => nats.stop());
  const dir = await tempDir('gravitas-tracking-');
  t.teardown(() => dir[Symbol.asyncDispose]());
  const nc = await connect({ servers: nats.url, maxReconnectAttempts: -1, reconnectTimeWait: 250 });
  t.teardown(() => nc.close());
  await putCampaigns(nc, campaigns);
  return { nats, nc, dir: dir.path, keys: clusterKeys(), configs: new Map() };
}

const dataDir = (e: Env, nodeId: string): string => join(e.dir, nodeId);

async function node(t: Test, e: Env, nodeId: string, cells: number, extra: Record<string, unknown> = {}): Promise<NodeProcess> {
  let file = e.configs.get(nodeId);
  if (!file) {
    // Clients here send feedback far faster than a device would: the request limits must not be what is measured.
    const limits = { requestRatePerSec: 100_000, requestBurst: 100_000, accountRequestRatePerSec: 1_000_000 };
    file = await writeNodeConfig(join(e.dir, `${nodeId}.json`), nodeConfig({ natsUrl: e.nats.url, nodeId, dataDir: dataDir(e, nodeId), keys: e.keys, cells, extra: { limits, ...extra } }));
    e.configs.set(nodeId, file);
  }
  const n = await spawnNode(file);
  t.teardown(() => n.stop(5000));
  return n;
}

interface Person { tc: TestClient; o: Outcomes; ref(c: string): CampaignRef }

/**
 * A recipient. `ref(c)`: the campaign as the person would hold it after receiving its message — its id and
 * delivery proof (these campaigns are written into KV by hand and never sent, so the proof is computed).
 */
async function client(t: Test, e: Env, user: string, server: string, device = 'd1'): Promise<Person> {
  const tc = await connectClient(t, { user, device, servers: [server], serverPublicKey: e.keys.serverPublicKey });
  return { tc, o: outcomes(tc.client), ref: (c) => ({ c, rk: campaignProof(e.keys.serverKey, c, user) }) };
}

/** The coded answer of a raw `track` request (or 'ok' with its data); the person's proof is added unless `a` has one. */
async function track(p: Person, a: Record<string, unknown>): Promise<string> {
  try {
    const withProof = typeof a.c === 'string' && a.rk === undefined ? { ...a, rk: p.ref(a.c).rk } : a;
    const data = (await p.tc.client.request('track', withProof as unknown as RequestArgs['track'])) as { dup: boolean };
    return data.dup ? 'dup' : 'stored';
  } catch (err) {
    return err instanceof RemoteError ? err.code : `not a RemoteError: ${String(err)}`;
  }
}

async function metric(n: NodeProcess, name: string, labels: Record<string, string> = {}): Promise<number> {
  return metricValue(await metricsText(n.adminUrl), name, labels) ?? 0;
}

async function archiveFor(e: Env, user: string): Promise<TrackingRecord[]> {
  return collect(archiveOf(e.nc).readUser(user));
}

/** Waits until the archive holds exactly `want` for `user` (by record id, each once). */
async function archiveHolds(t: Test, e: Env, user: string, want: string[], timeoutMs = 60_000): Promise<TrackingRecord[]> {
  const expected = [...want].sort();
  let last: TrackingRecord[] = [];
  await check(
    `the archive holds ${want.length} records of ${user}`,
    async () => {
      last = await archiveFor(e, user);
      return idsOf(last).ids.length >= expected.length;
    },
    { timeout: timeoutMs, interval: 250 },
  );
  const { ids, dups } = idsOf(last);
  t.same(ids, expected, `archive: every record of ${user}, none missing, none extra`);
  t.same(dups, [], `archive: no record of ${user} twice`);
  return last;
}

const ids = (user: string, eids: string[]): string[] => eids.map((eid) => recordId({ u: user, eid }));

t.test('two tiers: recent records local, older ones only archived; reports see the union; duplicates once; bad input refused', async (t) => {
  const e = await env(t, ['spring', 'summer']);
  const MAX_AGE = 10_000;
  const [A, B] = await Promise.all([node(t, e, 'nodeA', 2, { tracking: { maxAgeMs: MAX_AGE } }), node(t, e, 'nodeB', 1, { tracking: { maxAgeMs: MAX_AGE } })]);
  const alice = await client(t, e, 'alice', A!.clientAddresses[0]!);
  const bob = await client(t, e, 'bob', B!.clientAddresses[0]!);

  // ---- batch 1: archived, then aged out of the node
  const first = [...(await trackMany(alice.tc.client, alice.ref('spring'), 40, 'a1')), ...(await trackMany(alice.tc.client, alice.ref('summer'), 10, 'a1s'))];
  const bobs = await trackMany(bob.tc.client, bob.ref('spring'), 20, 'b1');
  await Promise.all([allTracked(alice.o, first), allTracked(bob.o, bobs)]);
  t.ok([...alice.o.tracked.values()].every((x) => !x.dup), 'every first send was stored (dup: false)');
  await archiveHolds(t, e, 'alice', ids('alice', first));
  const localA = localStore(dataDir(e, 'nodeA'));
  t.teardown(() => localA.close());
  await check('batch 1 aged out of node A', () => localA.forUser('alice').length === 0, { timeout: MAX_AGE + 15_000, interval: 200 });
  t.pass('records older than tracking.maxAgeMs left the node once archived');

  // ---- batch 2, under a new profile version
  const { version } = (await alice.tc.client.request('profile.set', { attrs: { tier: 'gold' } })) as { version: number };
  const second = await trackMany(alice.tc.client, alice.ref('spring'), 30, 'a2', 'clicked');
  await allTracked(alice.o, second);
  await check('batch 2 archived', () => localA.unarchivedFor({ user: 'alice' }, { limit: 100 }).records.length === 0, { timeout: 20_000, interval: 100 });
  const archived = await archiveHolds(t, e, 'alice', ids('alice', [...first, ...second]));
  const local = localA.forUser('alice');
  t.same(idsOf(local).ids, ids('alice', second).sort(), 'node A holds exactly the recent batch (archived, younger than maxAgeMs)');
  const union = idsOf([...archived, ...local]);
  t.same(union.ids, ids('alice', [...first, ...second]).sort(), 'archive ∪ local: everything, by record id');
  const byId = new Map(archived.map((r) => [recordId(r), r]));
  const r1 = byId.get('alice/a1-0')!;
  const r2 = byId.get('alice/a2-0')!;
  t.match(r1, { u: 'alice', d: 'd1', c: 'spring', ev: 'opened', pv: 0 }, 'a record: user and device from the session, campaign and event from the request, no profile yet');
  t.match(r2, { ev: 'clicked', pv: version }, `the profile version current when it was taken (${version})`);
  t.ok(r1.ts <= r1.at && r1.at - r1.ts < 60_000, 'ts is the device time, at the server time');
  const spring = idsOf(await collect(archiveOf(e.nc).readCampaign('spring')));
  t.same(spring.ids, [...ids('alice', [...first.slice(0, 40), ...second]), ...ids('bob', bobs)].sort(), 'the campaign read has both nodes\' records');

  // ---- the archive refuses (stream at its message limit): records wait in the node, reports find them by scatter-gather
  const jsm = await jetstreamManager(e.nc);
  const si = await jsm.streams.info(names.trackingStream);
  await jsm.streams.update(names.trackingStream, { ...si.config, max_msgs: si.state.messages });
  const failuresBefore = await metric(A!, 'gravitas_tracking_ship_failures_total');
  const third = await trackMany(alice.tc.client, alice.ref('summer'), 15, 'a3');
  await allTracked(alice.o, third);
  t.pass('the node takes feedback while the archive refuses it');
  await check('node A fails to ship', async () => (await metric(A!, 'gravitas_tracking_ship_failures_total')) > failuresBefore, { timeout: 10_000, interval: 100 });
  t.ok((await metric(A!, 'gravitas_tracking_unarchived_records')) >= 15, 'unarchived records metric');
  await check('archive lag grows', async () => (await metric(A!, 'gravitas_tracking_archive_lag_seconds')) > 0.2, { timeout: 10_000, interval: 100 });
  const sg = await queryUnarchived(e.nc, names, { user: 'alice' }, { expectNodes: 2, maxWaitMs: 3000 });
  t.same(sg.nodes.sort(), ['nodeA', 'nodeB'], 'one answer per node');
  t.same(idsOf(sg.records).ids, ids('alice', third).sort(), 'scatter-gather by user: the unarchived records');
  const sgc = await queryUnarchived(e.nc, names, { campaign: 'summer' }, { expectNodes: 2, maxWaitMs: 3000 });
  t.same(idsOf(sgc.records).ids, ids('alice', third).sort(), 'scatter-gather by campaign');
  const report = idsOf([...(await archiveFor(e, 'alice')), ...sg.records]);
  t.same(report.ids, ids('alice', [...first, ...second, ...third]).sort(), 'report = archive ∪ unarchived: nothing missing');
  await jsm.streams.update(names.trackingStream, { ...si.config, max_msgs: -1 });
  await archiveHolds(t, e, 'alice', ids('alice', [...first, ...second, ...third]), 30_000);
  t.equal((await queryUnarchived(e.nc, names, { user: 'alice' }, { expectNodes: 2, maxWaitMs: 3000 })).records.length, 0, 'once shipped, nothing is left unarchived');
  t.equal(await metric(A!, 'gravitas_tracking_archive_lag_seconds'), 0, 'lag back to 0');

  // ---- duplicates by event id
  const ts = Date.now();
  t.equal(await track(alice, { c: 'spring', ev: 'opened', eid: 'dupe-1', ts }), 'stored');
  t.equal(await track(alice, { c: 'spring', ev: 'opened', eid: 'dupe-1', ts }), 'dup', 'the same event id again: dup');
  t.equal(await track(bob, { c: 'spring', ev: 'opened', eid: 'dupe-1', ts }), 'stored', 'another user\'s event with the same id is its own');
  // Two sessions of alice on the two cells of node A race on the same ids.
  const alice2 = await client(t, e, 'alice', A!.clientAddresses[1]!, 'd2');
  const race = Array.from({ length: 20 }, (_, i) => `race-${i}`);
  const answers = await Promise.all(race.flatMap((eid) => [track(alice, { c: 'summer', ev: 'opened', eid, ts }), track(alice2, { c: 'summer', ev: 'opened', eid, ts })]));
  let once = 0;
  for (let i = 0; i < race.length; i++) if ([answers[2 * i], answers[2 * i + 1]].sort().join() === 'dup,stored') once++;
  t.equal(once, race.length, 'two cells of one node racing on an id: one stores it, the other answers dup');
  // The same id taken by two nodes (bob on both): each node stores it, the archive keeps it once.
  const bobOnA = await client(t, e, 'bob', A!.clientAddresses[1]!, 'd2');
  t.equal(await track(bob, { c: 'summer', ev: 'opened', eid: 'x-node', ts }), 'stored');
  t.equal(await track(bobOnA, { c: 'summer', ev: 'opened', eid: 'x-node', ts }), 'stored', 'node A had not seen it');
  await archiveHolds(t, e, 'bob', ids('bob', [...bobs, 'dupe-1', 'x-node']));
  t.pass('shipped by both nodes, archived once (Nats-Msg-Id = record id)');

  // ---- bad input: coded answers, and the session lives on
  const now = Date.now();
  const DAY = 24 * 3600_000;
  const cases: Array<[string, Record<string, unknown>, string]> = [
    ['an unknown event', { c: 'spring', ev: 'liked', eid: 'bad-1', ts: now }, ErrorCode.BAD_MESSAGE],
    ['an event id that is not a name', { c: 'spring', ev: 'opened', eid: 'a.b', ts: now }, ErrorCode.BAD_MESSAGE],
    ['no campaign', { ev: 'opened', eid: 'bad-2', ts: now }, ErrorCode.BAD_MESSAGE],
    ['a ts that is not an integer', { c: 'spring', ev: 'opened', eid: 'bad-3', ts: 'now' }, ErrorCode.BAD_MESSAGE],
    ['a negative ts', { c: 'spring', ev: 'opened', eid: 'bad-4', ts: -5 }, ErrorCode.BAD_MESSAGE],
    ['a ts two days ahead', { c: 'spring', ev: 'opened', eid: 'bad-5', ts: now + 2 * DAY }, ErrorCode.BAD_MESSAGE],
    ['a ts in 1970', { c: 'spring', ev: 'opened', eid: 'bad-6', ts: 1000 }, ErrorCode.BAD_MESSAGE],
    ['an unknown campaign', { c: 'autumn', ev: 'opened', eid: 'bad-7', ts: now }, ErrorCode.NOT_FOUND],
    ['no delivery proof', { c: 'spring', ev: 'opened', eid: 'bad-8', ts: now, rk: new Uint8Array(12) }, ErrorCode.NOT_ALLOWED],
    ["another recipient's proof", { c: 'spring', ev: 'opened', eid: 'bad-9', ts: now, rk: bob.ref('spring').rk }, ErrorCode.NOT_ALLOWED],
    ['the proof of another campaign', { c: 'spring', ev: 'opened', eid: 'bad-10', ts: now, rk: alice.ref('summer').rk }, ErrorCode.NOT_ALLOWED],
  ];
  for (const [what, a, code] of cases) t.equal(await track(alice, a), code, `${what}: ${code}`);
  await alice.tc.client.ping();
  t.equal(await track(alice, { c: 'spring', ev: 'converted', eid: 'good-after-bad', ts: now }), 'stored', 'the session lives on');
  t.notOk(localA.lookup('alice', 'bad-7'), 'nothing refused was stored');
  // The SDK reports final refusals as 'trackFailed' and keeps going.
  await alice.tc.client.track(alice.ref('autumn'), 'opened', 'sdk-unknown');
  await alice.tc.client.track(alice.ref('spring'), 'opened', 'sdk.bad.id');
  const after = await trackMany(alice.tc.client, alice.ref('spring'), 3, 'sdk-good');
  await check('SDK refusals reported', () => alice.o.failed.has('sdk-unknown') && alice.o.failed.has('sdk.bad.id'));
  t.equal((alice.o.failed.get('sdk-unknown')!.error as RemoteError).code, ErrorCode.NOT_FOUND, "'trackFailed' NOT_FOUND for an unknown campaign");
  t.equal((alice.o.failed.get('sdk.bad.id')!.error as RemoteError).code, ErrorCode.BAD_MESSAGE, "'trackFailed' BAD_MESSAGE for a malformed event");
  await allTracked(alice.o, after);
  t.equal(alice.tc.client.pendingFeedback().length, 0, 'nothing left queued');
  t.ok((await metric(A!, 'gravitas_tracking_intake_total', { result: 'not_found' })) >= 2, 'intake metric: not_found');
  t.ok((await metric(A!, 'gravitas_tracking_intake_total', { result: 'duplicate' })) >= 20, 'intake metric: duplicate');
  t.ok((await metric(A!, 'gravitas_tracking_evicted_total')) >= 50, 'evicted metric');
  t.ok((await metric(A!, 'gravitas_tracking_shipped_total')) >= 95, 'shipped metric');
});

t.test('the nats-server is SIGKILLed mid-stream: feedback lands in the node, the shipper catches up; a node SIGKILLed after ok keeps its records', async (t) => {
  const e = await env(t, ['fall']);
  const N = await node(t, e, 'nodeC', 2);
  const people = await Promise.all([client(t, e, 'carol', N.clientAddresses[0]!), client(t, e, 'dave', N.clientAddresses[1]!)]);
  // Warm: the cells have now seen the campaign and the profile versions (what they use while NATS is away).
  await Promise.all(people.map(async (p) => allTracked(p.o, await trackMany(p.tc.client, p.ref('fall'), 1, 'warm'))));

  const PER = 400;
  let outageFrom = 0;
  let outageTo = 0;
  const sent = people.map(() => [] as string[]);
  const senders = people.map(async (p, k) => {
    for (let i = 0; i < PER; i++) {
      sent[k]!.push(await p.tc.client.track(p.ref('fall'), 'delivered', `f-${i}`));
      if (i % 20 === 19) await sleep(40);
    }
  });
  await check('a quarter taken', () => people.reduce((s, p) => s + p.o.tracked.size, 0) >= PER / 2, { timeout: 30_000, interval: 10 });
  await e.nats.kill('SIGKILL');
  outageFrom = Date.now();
  const takenBefore = people.reduce((s, p) => s + p.o.tracked.size, 0);
  t.pass(`nats-server killed after ${takenBefore} events were taken`);
  await sleep(3000);
  const takenDuring = people.reduce((s, p) => s + p.o.tracked.size, 0) - takenBefore;
  await e.nats.restart();
  outageTo = Date.now();
  t.ok(takenDuring > 0, `${takenDuring} events were taken (flushed to the node's LMDB) while NATS was away (${outageTo - outageFrom} ms)`);
  await Promise.all(senders);
  await Promise.all(people.map((p, k) => allTracked(p.o, sent[k]!, 60_000)));
  for (const [k, p] of people.entries()) await archiveHolds(t, e, p.tc.user, ids(p.tc.user, ['warm-0', ...sent[k]!]));
  const local = localStore(dataDir(e, 'nodeC'));
  for (const [k, p] of people.entries()) t.same(idsOf(local.forUser(p.tc.user)).ids, ids(p.tc.user, ['warm-0', ...sent[k]!]).sort(), `the node still holds every record of ${p.tc.user} (younger than maxAgeMs)`);
  await local.close();
  t.ok((await metric(N, 'gravitas_tracking_ship_failures_total')) > 0, 'the shipper failed while NATS was away, and retried');

  // ---- SIGKILL after ok: answered means flushed
  await e.nats.kill('SIGKILL');
  const carol = people[0]!;
  const last = await trackMany(carol.tc.client, carol.ref('fall'), 100, 'k');
  await allTracked(carol.o, last);
  await N.kill();
  t.pass('node SIGKILLed right after its last ok (NATS away: nothing of these was shipped)');
  const after = localStore(dataDir(e, 'nodeC'));
  const kept = last.map((eid) => after.lookup('carol', eid));
  t.equal(kept.filter((x) => x && !x.archived).length, last.length, 'every answered record is in the node store after the kill, unarchived');
  await after.close();
  await e.nats.restart();
  await node(t, e, 'nodeC', 2);
  await archiveHolds(t, e, 'carol', ids('carol', ['warm-0', ...sent[0]!, ...last]));
  t.pass('the restarted node shipped them');
});

t.test('the byte budget: full of unarchived records the node answers RETRY_LATER, the SDK waits, archived records make room', async (t) => {
  const e = await env(t, ['winter']);
  const MAX_BYTES = 64 * 1024;
  const N = await node(t, e, 'nodeD', 1, { tracking: { maxBytes: MAX_BYTES } });
  const erin = await client(t, e, 'erin', N.clientAddresses[0]!);
  const warm = await trackMany(erin.tc.client, erin.ref('winter'), 1, 'warm');
  await allTracked(erin.o, warm);
  await archiveHolds(t, e, 'erin', ids('erin', warm));

  await e.nats.kill('SIGKILL');
  const TOTAL = 600;
  const all = await trackMany(erin.tc.client, erin.ref('winter'), TOTAL, 'w');
  await check('the node answers RETRY_LATER', async () => (await metric(N, 'gravitas_tracking_intake_total', { result: 'retry_later' })) > 0, { timeout: 30_000, interval: 100 });
  const local = localStore(dataDir(e, 'nodeD'));
  t.teardown(() => local.close());
  const full = local.stats();
  t.ok(full.bytes <= MAX_BYTES, `the store stays within its budget (${full.bytes} of ${MAX_BYTES} bytes)`);
  t.equal(full.unarchived, full.records, `full of unarchived records (${full.unarchived}); the archived warm-up record made room`);
  t.ok(full.unarchived < TOTAL, 'not everything fits');
  await sleep(1000);
  t.equal(erin.o.failed.size, 0, 'nothing was given up');
  t.equal(erin.tc.client.pendingFeedback().length, TOTAL - erin.o.tracked.size + warm.length, 'the rest waits in the SDK queue');

  await e.nats.restart();
  let maxBytes = 0;
  const sampling = setInterval(() => (maxBytes = Math.max(maxBytes, local.stats().bytes)), 50);
  await allTracked(erin.o, all, 120_000);
  clearInterval(sampling);
  t.ok(maxBytes <= MAX_BYTES, `within the budget throughout the catch-up (max ${maxBytes})`);
  await archiveHolds(t, e, 'erin', ids('erin', [...warm, ...all]));
  t.pass('every event reached the archive: no unarchived record was evicted');
  t.ok((await metric(N, 'gravitas_tracking_evicted_total')) > 0, 'archived records were evicted to make room');
  t.ok(local.stats().bytes <= MAX_BYTES);
});
