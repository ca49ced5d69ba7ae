/*
 * How a report merges the two tracking tiers (docs/campaigns.md "Reports": archive ∪ every node's
 * unarchived records, de-duplicated by (user, eid)), at the two moments a record is in flight
 * between them — which real runs hit only by chance:
 *   - shipped between the report's two reads: it must be found (records only move local → archive,
 *     so the local tier is read first; read the other way round it would be in neither);
 *   - in both tiers at once (archive acked, not marked archived yet; or taken by two nodes): once.
 * The local tier is the node's real LMDB store; the archive is an in-memory list (its JetStream
 * implementation is tested in tracking-store.test.ts). A "shipper" step moves records between them
 * after the report read its first tier and before it reads the second.
 */
import t, { type Test } from 'tap';
import { tempDir } from '@gravitas/testkit';
import { campaignReport, userReport, type ReportSources } from '@gravitas/server/internal';
import { TrackingStore, recordId } from '@gravitas/server/internal';
import type { TrackingRecord } from '@gravitas/server/internal';
import type { LocalQuery } from '@gravitas/server/internal';

const rec = (u: string, eid: string, ev: TrackingRecord['ev'], ts: number): TrackingRecord => ({ eid, c: 'spring', u, d: 'd1', ev, ts, at: ts, pv: 1 });

/** The local tier (a real store, one per node) and an archive; `betweenReads(f)`: f runs once, between the report's two reads. */
async function tiers(t: Test, nodes = 1) {
  const dir = await tempDir('gravitas-report-merge-');
  const stores = Array.from({ length: nodes }, (_, i) => TrackingStore.open(`${dir.path}/n${i}`, { maxAgeMs: 3_600_000, maxBytes: 16 << 20 }));
  t.teardown(async () => {
    await Promise.all(stores.map((s) => s.close()));
    await dir[Symbol.asyncDispose]();
  });
  const archive: TrackingRecord[] = [];
  // `between` runs when the report starts reading its second tier, after it read the first.
  let between: (() => Promise<void>) | undefined;
  let reads = 0;
  const tierRead = async (): Promise<void> => {
    if (++reads % 2 !== 0) return;
    const f = between;
    between = undefined;
    await f?.();
  };
  async function* read(pred: (r: TrackingRecord) => boolean): AsyncGenerator<TrackingRecord> {
    await tierRead();
    for (const r of archive.filter(pred)) yield r;
  }
  const sources: ReportSources = {
    archive: { readUser: (u) => read((r) => r.u === u), readCampaign: (c) => read((r) => r.c === c) },
    local: async (q: LocalQuery) => {
      await tierRead();
      return { records: stores.flatMap((s) => s.unarchivedFor(q, { limit: 500 }).records), nodes: stores.map((_, i) => `n${i}`) };
    },
    campaign: async (id) => ({ id, publisher: 'acme', name: id }) as unknown as Awaited<ReturnType<ReportSources['campaign']>>,
    profileAt: async (_u, version) => ({ version, attrs: {} }),
  };
  /** What the shipper does: append to the archive (acked), then mark archived in the store. */
  const ship = async (store: TrackingStore, mark = true): Promise<void> => {
    const batch = store.unarchived(500);
    archive.push(...batch.filter((r) => !archive.some((a) => recordId(a) === recordId(r))));
    if (mark) await store.markArchived(batch);
  };
  return { stores, archive, sources, ship, betweenReads: (f: () => Promise<void>) => void (between = f) };
}

const visible = { visible: () => true, withProfiles: false };

t.test('a record shipped between the report’s two reads is in the report', async (t) => {
  const x = await tiers(t);
  const [store] = x.stores as [TrackingStore];
  await store.put(rec('uma', 'e1', 'sent', 1000));
  await x.ship(store);
  await store.put(rec('uma', 'e2', 'opened', 2000));
  // e2 is shipped (archived and marked) while the report is between its two reads.
  x.betweenReads(() => x.ship(store));
  const r = await userReport(x.sources, 'uma', visible);
  t.same(r.campaigns.map((c) => c.events.map((e) => e.ev)), [['sent', 'opened']], 'user report: both records, the one in flight included');
  await store.put(rec('vic', 'e4', 'clicked', 4000));
  x.betweenReads(() => x.ship(store));
  const c = await campaignReport(x.sources, 'spring', 60_000);
  t.match(c.users, { sent: 1, opened: 1, clicked: 1 }, 'campaign report: the record in flight counted');
  t.same(x.stores[0]!.stats().unarchived, 0, 'everything was shipped meanwhile');
});

t.test('a record in both tiers (acked by the archive, not marked yet; or taken by two nodes) counts once', async (t) => {
  const x = await tiers(t, 2);
  const [a, b] = x.stores as [TrackingStore, TrackingStore];
  // The archive acknowledged e1 and e2; node A crashed before marking them: they are in both tiers.
  await a.put(rec('uma', 'e1', 'sent', 1000));
  await a.put(rec('uma', 'e2', 'opened', 2000));
  await x.ship(a, false);
  // e3 was taken by both nodes (the device moved between sends), neither shipped it yet.
  await a.put(rec('uma', 'e3', 'clicked', 3000));
  await b.put(rec('uma', 'e3', 'clicked', 3000));
  const r = await userReport(x.sources, 'uma', visible);
  t.same(r.campaigns.map((c) => c.events.map((e) => e.ev)), [['sent', 'opened', 'clicked']], 'user report: each record once');
  t.same(r.sources, { archived: 2, local: 4, nodes: ['n0', 'n1'] }, 'read 6 copies of 3 records');
  const c = await campaignReport(x.sources, 'spring', 60_000);
  t.same(c.overTime.map((b) => b.sent + b.opened + b.clicked), [3], 'campaign report: 3 events, not 6');
});
