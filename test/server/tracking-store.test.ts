/*
 * The tracking tiers on their own (docs/campaigns.md "Tracking tiers"): the node's
 * LMDB store (idempotency by (user, eid) across threads, byte budget, eviction of
 * archived records only, outbox order, report queries) and the JetStream archive
 * against a real nats-server (de-duplication by record id, reads that end, the
 * scatter-gather subject not captured by the stream).
 */
import t from 'tap';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { connect } from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { ErrorCode, pack, ProtocolError, unpack } from '@gravitas/protocol';
import { Names } from '@gravitas/server';
import { NatsServer, tempDir } from '@gravitas/testkit';
import { idsOf } from '../fixtures/tracking.js';
import { recordId, TrackingStore } from '@gravitas/server/internal';
import { JetStreamArchive } from '@gravitas/server/internal';
import { LocalQueryResponder, LOCAL_PAGE, queryUnarchived } from '@gravitas/server/internal';
import type { TrackingRecord } from '@gravitas/server/internal';

const dir = await tempDir('gravitas-tracking-store-');
t.teardown(() => dir[Symbol.asyncDispose]());
let n = 0;
const fresh = (): string => join(dir.path, `store-${++n}`);

const DAY = 24 * 3600_000;
const rec = (u: string, eid: string, at: number, c = 'camp1', ev: TrackingRecord['ev'] = 'opened'): TrackingRecord => ({ eid, c, u, d: 'd1', ev, ts: at - 5, at, pv: 3 });

async function codeOfAsync(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'ok';
  } catch (err) {
    return err instanceof ProtocolError ? err.code : `not a ProtocolError: ${String(err)}`;
  }
}

t.test('put is idempotent by (user, eid); lookups, outbox order, archived marks, stats', async (t) => {
  const store = TrackingStore.open(fresh(), { maxAgeMs: DAY, maxBytes: 1024 ** 2 });
  t.teardown(() => store.close());
  t.equal(await store.put(rec('alice', 'e1', 300)), 'stored');
  t.equal(await store.put(rec('alice', 'e1', 999)), 'duplicate', 'the same event id of the same user again');
  t.equal(await store.put(rec('bob', 'e1', 100)), 'stored', 'another user may use the same event id: it does not shadow alice');
  t.equal(await store.put(rec('alice', 'e2', 200, 'camp2')), 'stored');
  await store.flushed();
  t.equal(store.lookup('alice', 'e1')?.record.at, 300, 'the first put is what is kept');
  t.same(store.unarchived(10).map(recordId), ['bob/e1', 'alice/e2', 'alice/e1'], 'the outbox is in `at` order');
  t.same(store.unarchived(2).map(recordId), ['bob/e1', 'alice/e2'], 'and limited');
  let s = store.stats();
  t.equal(s.records, 3);
  t.equal(s.unarchived, 3);
  t.equal(s.oldestUnarchivedAt, 100);
  t.ok(s.bytes > 0, `accounted bytes: ${s.bytes}`);
  t.equal(await store.markArchived([{ u: 'bob', eid: 'e1' }, { u: 'alice', eid: 'e2' }, { u: 'nobody', eid: 'x' }]), 2, 'only stored, unarchived records change');
  t.equal(await store.markArchived([{ u: 'bob', eid: 'e1' }]), 0, 'marking twice changes nothing');
  s = store.stats();
  t.equal(s.unarchived, 1);
  t.equal(s.oldestUnarchivedAt, 300);
  t.equal(store.lookup('bob', 'e1')?.archived, true);
  t.same(store.unarchived(10).map(recordId), ['alice/e1']);
  t.same(store.forUser('alice').map((r) => r.eid), ['e1', 'e2'], 'every local record of a user, archived or not, by campaign');
  t.same(store.forUser('alice', { campaign: 'camp2' }).map((r) => r.eid), ['e2'], 'of one campaign');
  t.same(store.forUser('alic').length, 0, 'a prefix of a name is another user');
  t.same(store.unarchivedFor({ user: 'alice' }, { limit: 10 }).records.map((r) => r.eid), ['e1']);
  t.same(store.unarchivedFor({ campaign: 'camp1' }, { limit: 10 }).records.map(recordId), ['alice/e1'], 'bob/e1 is archived');
  t.equal(await store.markArchived([{ u: 'alice', eid: 'e1' }]), 1);
  t.equal(store.stats().oldestUnarchivedAt, undefined, 'nothing waiting');
});

t.test('unarchivedFor pages with a cursor', async (t) => {
  const store = TrackingStore.open(fresh(), { maxAgeMs: DAY, maxBytes: 1024 ** 2 });
  t.teardown(() => store.close());
  await Promise.all(Array.from({ length: 25 }, (_, i) => store.put(rec(`u${i % 5}`, `e${i}`, 1000 + i, 'big'))));
  await store.markArchived([{ u: 'u0', eid: 'e0' }, { u: 'u1', eid: 'e6' }]);
  const seen: string[] = [];
  let after: Array<string | number> | undefined;
  let pages = 0;
  do {
    const p = store.unarchivedFor({ campaign: 'big' }, { limit: 7, ...(after && { after }) });
    seen.push(...p.records.map(recordId));
    after = p.next;
    pages++;
  } while (after && pages < 10);
  t.equal(pages, 4, '23 records in pages of 7');
  t.equal(seen.length, 23);
  t.equal(new Set(seen).size, 23, 'no record twice');
  t.notOk(seen.includes('u0/e0') || seen.includes('u1/e6'), 'archived records are not listed');
  const u: string[] = [];
  after = undefined;
  do {
    const p = store.unarchivedFor({ user: 'u1' }, { limit: 2, ...(after && { after }) });
    u.push(...p.records.map((r) => r.eid));
    after = p.next;
  } while (after);
  t.same(u.sort(), ['e1', 'e11', 'e16', 'e21'], 'a user in pages of 2, without the archived e6');
  t.throws(() => store.unarchivedFor({ user: 'u2' }, { limit: 2, after: ['u1', 'big', 1001, 'e1'] }), TypeError, 'a cursor of another query is refused');
});

t.test('the byte budget: archived records make room oldest first, unarchived ones never; full means RETRY_LATER', async (t) => {
  const path = fresh();
  const maxBytes = 64 * 1024;
  const store = TrackingStore.open(path, { maxAgeMs: DAY, maxBytes });
  const evicted: number[] = [];
  store.onEvict = (k) => void (k > 0 && evicted.push(k));
  let i = 0;
  let refused = '';
  for (; i < 10_000; i++) {
    refused = await codeOfAsync(store.put(rec('u', `e${i}`, 1000 + i)));
    if (refused !== 'ok') break;
  }
  t.equal(refused, ErrorCode.RETRY_LATER, `full after ${i} unarchived records: RETRY_LATER`);
  const full = store.stats();
  t.ok(full.bytes <= maxBytes, `accounted ${full.bytes} ≤ ${maxBytes}`);
  t.equal(full.unarchived, i);
  t.same(evicted, [], 'nothing was evicted: nothing was archived');
  t.equal(await store.evict(Date.now()), 0, 'evict() does not touch unarchived records');
  // Archive the oldest ten: there is room again, taken from the oldest archived.
  await store.markArchived(Array.from({ length: 10 }, (_, k) => ({ u: 'u', eid: `e${k}` })));
  t.equal(await store.put(rec('u', 'late', 99_999)), 'stored', 'stored after archived records made room');
  t.ok(evicted.length > 0, 'by evicting archived records');
  t.equal(store.lookup('u', 'e0'), undefined, 'the oldest archived record went first');
  t.ok(store.lookup('u', 'e10'), 'the oldest unarchived record is still there');
  t.equal(store.stats().unarchived, i - 10 + 1);
  t.ok(store.stats().bytes <= maxBytes);
  await store.flushed();
  const before = store.stats();
  await store.close();
  // The accounting is part of the data: a reopened store agrees.
  const again = TrackingStore.open(path, { maxAgeMs: DAY, maxBytes });
  t.teardown(() => again.close());
  t.same(again.stats(), before, 'the same stats after reopening');
  t.equal(await codeOfAsync(again.put(rec('u', 'more', 100_000))), 'ok', 'room made by eviction');
  t.equal(again.unarchived(100_000).length, again.stats().unarchived, 'unarchived count matches the outbox');
});

t.test('eviction by age drops archived records older than maxAgeMs only', async (t) => {
  const store = TrackingStore.open(fresh(), { maxAgeMs: 1000, maxBytes: 1024 ** 2 });
  t.teardown(() => store.close());
  const now = 1_000_000;
  await Promise.all([rec('a', 'old1', now - 5000), rec('a', 'old2', now - 4000), rec('a', 'oldUnarchived', now - 3000), rec('a', 'new', now - 10)].map((r) => store.put(r)));
  await store.markArchived([{ u: 'a', eid: 'old1' }, { u: 'a', eid: 'old2' }, { u: 'a', eid: 'new' }]);
  t.equal(await store.evict(now), 2);
  t.same(store.forUser('a').map((r) => r.eid).sort(), ['new', 'oldUnarchived'], 'the old unarchived record stays until it is archived');
  t.equal(store.stats().records, 2);
  t.equal(await store.put(rec('a', 'old1', now)), 'stored', 'an evicted event id is stored again (the archive and reports de-duplicate it)');
});

t.test('two threads racing on the same event ids store each once', async (t) => {
  const path = fresh();
  const cfg = { maxAgeMs: DAY, maxBytes: 1024 ** 2 };
  const records = Array.from({ length: 200 }, (_, i) => rec(`u${i % 3}`, `race${i}`, 5000 + i));
  const run = (): Promise<Array<'stored' | 'duplicate'>> =>
    new Promise((resolve, reject) => {
      const w = new Worker(new URL('../fixtures/tracking-worker.mjs', import.meta.url), { workerData: { dir: path, cfg, records } });
      w.once('message', (m: { results: Array<'stored' | 'duplicate'> }) => resolve(m.results));
      w.once('error', reject);
    });
  const [a, b] = await Promise.all([run(), run()]);
  const stored = [...a!, ...b!].filter((r) => r === 'stored').length;
  t.equal(stored, records.length, 'exactly one of the two threads stored each record');
  for (let i = 0; i < records.length; i++) if (a![i] === b![i]) t.fail(`record ${i}: both threads said ${a![i]}`);
  const store = TrackingStore.open(path, cfg);
  t.teardown(() => store.close());
  t.equal(store.stats().records, records.length, 'and the accounting counted each once');
  t.equal(store.unarchived(1000).length, records.length);
});

t.test('the JetStream archive', async (t) => {
  const nats = await NatsServer.start();
  t.teardown(() => nats.stop());
  const nc = await connect({ servers: nats.url });
  t.teardown(() => nc.close());
  const names = new Names('arch');
  const archive = new JetStreamArchive(nc, names, { archiveMaxAgeMs: DAY }, 1);
  await archive.start();
  await archive.start(); // idempotent (every cell 0 of every node does it)
  const jsm = await jetstreamManager(nc);
  const info = await jsm.streams.info(names.trackingStream);
  t.same(info.config.subjects, ['arch.track.*.*'], 'one subject per (user, campaign)');
  t.equal(info.config.max_age, DAY * 1e6, 'max age tracking.archiveMaxAgeMs');
  t.equal(info.config.discard, 'new');

  const collect = async (it: AsyncIterable<TrackingRecord>): Promise<string[]> => {
    const out: string[] = [];
    for await (const r of it) out.push(recordId(r));
    return out;
  };
  t.same(await collect(archive.readUser('nobody')), [], 'an empty archive reads as nothing');

  const batch = Array.from({ length: 300 }, (_, i) => rec(`user${i % 4}`, `e${i}`, 10_000 + i, `c${i % 3}`));
  await archive.append(batch);
  await archive.append(batch.slice(0, 100)); // a re-shipped batch (marking archived failed, say)
  t.equal((await jsm.streams.info(names.trackingStream)).state.messages, 300, 'a re-append within the duplicate window is dropped by the stream');

  // A stray publish on a tracking subject is not a record; the scatter-gather subject is not captured.
  await jetstream(nc).publish(names.trackingSubject('user1', 'c0'), pack({ junk: true }));
  const r = await nc.request(names.trackingLocalQuery, pack({ user: 'x' }), { timeout: 500 }).then(
    () => 'answered',
    (err: Error) => err.message,
  );
  t.match(r, /no responders|503/i, 'nobody answers track.local: the stream did not capture it');

  const u1 = await collect(archive.readUser('user1'));
  t.same(u1.sort(), batch.filter((b) => b.u === 'user1').map(recordId).sort(), 'readUser: every record of the user, once, junk skipped');
  const c2 = await collect(archive.readCampaign('c2'));
  t.same(c2.sort(), batch.filter((b) => b.c === 'c2').map(recordId).sort(), 'readCampaign: every record of the campaign');

  // A read ends at the stream's last sequence when it began, even while appends go on.
  const more = Array.from({ length: 200 }, (_, i) => rec('user1', `later${i}`, 20_000 + i, 'c0'));
  const appending = archive.append(more);
  const during = await collect(archive.readUser('user1'));
  await appending;
  t.ok(during.length >= u1.length && during.length <= u1.length + more.length, `a read during appends ends (${during.length} records)`);
  t.equal((await collect(archive.readUser('user1'))).length, u1.length + more.length, 'and a later read sees everything');
  const consumers = await jsm.consumers.list(names.trackingStream).next();
  t.equal(consumers.length, 0, 'readers delete their consumers');
});

t.test('scatter-gather: one answer per node, pages followed to the end, malformed queries answered', async (t) => {
  const nats = await NatsServer.start({ jetstream: false });
  t.teardown(() => nats.stop());
  const nc = await connect({ servers: nats.url });
  t.teardown(() => nc.close());
  const names = new Names('sg');
  t.same(await queryUnarchived(nc, names, { user: 'u' }, { maxWaitMs: 300 }), { records: [], nodes: [] }, 'no node running: nothing, no error');
  const stores = ['n1', 'n2'].map(() => TrackingStore.open(fresh(), { maxAgeMs: DAY, maxBytes: 64 * 1024 ** 2 }));
  for (const s of stores) t.teardown(() => s.close());
  // n1: 1200 records of campaign big (more than two pages), n2: 30; some archived.
  await Promise.all(Array.from({ length: 1200 }, (_, i) => stores[0]!.put(rec(`u${i % 7}`, `a${i}`, 1000 + i, 'big'))));
  await Promise.all(Array.from({ length: 30 }, (_, i) => stores[1]!.put(rec(`u${i % 7}`, `b${i}`, 1000 + i, 'big'))));
  await stores[0]!.markArchived(Array.from({ length: 100 }, (_, i) => ({ u: `u${i % 7}`, eid: `a${i}` })));
  // Two responders (two cells) per node: the queue group makes one of them answer.
  const responders = [0, 0, 1, 1].map((k) => new LocalQueryResponder(nc, names, `n${k + 1}`, stores[k]!, () => undefined));
  for (const r of responders) {
    r.start();
    t.teardown(() => r.stop());
  }
  await nc.flush();
  const all = await queryUnarchived(nc, names, { campaign: 'big' }, { expectNodes: 2, maxWaitMs: 2000 });
  t.same(all.nodes.sort(), ['n1', 'n2'], 'each node answered once');
  const { ids, dups } = idsOf(all.records);
  t.equal(ids.length, 1100 + 30, `every unarchived record of the campaign (${LOCAL_PAGE} per page)`);
  t.same(dups, []);
  const u3 = await queryUnarchived(nc, names, { user: 'u3' }, { expectNodes: 2, maxWaitMs: 2000 });
  t.equal(u3.records.length, [...Array(1200).keys()].filter((i) => i % 7 === 3 && i >= 100).length + [...Array(30).keys()].filter((i) => i % 7 === 3).length, 'by user');
  const bad = unpack((await nc.request(names.trackingLocalQuery, pack({ user: 'no.dots' }), { timeout: 1000 })).data) as { error?: string };
  t.equal(bad.error, 'BAD_MESSAGE', 'a malformed query gets a coded answer');
});
