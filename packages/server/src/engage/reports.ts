import type { Campaign } from './campaign-types.js';
import type { Archive } from './archive.js';
import type { TrackingEvent, TrackingRecord } from './records.js';
import { recordId, type LocalQuery } from './tracking-store.js';

/*
 * Reports (docs/campaigns.md, "Reports"): the archive merged with what every
 * node holds locally and has not archived yet, de-duplicated by record id (a
 * record can be in both while its archive ack is on its way back).
 */

/** What a report reads from; the admin API passes the real tiers, tests may pass others. */
export interface ReportSources {
  archive: Pick<Archive, 'readUser' | 'readCampaign'>;
  /** Every node's unarchived records for the query, and which nodes answered. */
  local(q: LocalQuery): Promise<{ records: TrackingRecord[]; nodes: string[] }>;
  campaign(id: string): Promise<Campaign | undefined>;
  profileAt(user: string, version: number): Promise<{ version: number; attrs: Record<string, unknown> }>;
}

export interface ReportEvent { ev: TrackingEvent; device: string; ts: number; at: number; profileVersion: number }

export interface UserCampaignRecord {
  campaign: string;
  /** Undefined when the campaign record is gone (its tracking data outlives it). */
  name?: string;
  publisher?: string;
  /** Events in time order. */
  events: ReportEvent[];
  firstAt: number;
  lastAt: number;
  /** The user's profile version when the campaign first reached them (its first event). */
  profileVersion: number;
  /** That version's attributes (with `profiles`), and those of any later version seen in its events. */
  profiles?: Record<string, Record<string, unknown>>;
}

export interface Provenance {
  /** Records read from the archive and from nodes' local tiers (before de-duplication). */
  archived: number;
  local: number;
  /** Nodes that answered the scatter-gather. */
  nodes: string[];
}

export interface UserReport { user: string; campaigns: UserCampaignRecord[]; sources: Provenance }

/**
 * Both tiers for one query, de-duplicated. The local tiers are read first and the
 * archive after: records only ever move from local to archive, so one shipped
 * between the two reads is in the second — read the other way round, it would be
 * in neither.
 */
async function gather(src: ReportSources, q: LocalQuery): Promise<{ records: TrackingRecord[]; sources: Provenance }> {
  const local = await src.local(q);
  const archived: TrackingRecord[] = [];
  for await (const r of 'user' in q ? src.archive.readUser(q.user) : src.archive.readCampaign(q.campaign)) archived.push(r);
  const seen = new Map<string, TrackingRecord>();
  for (const r of archived) seen.set(recordId(r), r);
  for (const r of local.records) if (!seen.has(recordId(r))) seen.set(recordId(r), r);
  const records = [...seen.values()].sort((a, b) => a.ts - b.ts || a.at - b.at);
  return { records, sources: { archived: archived.length, local: local.records.length, nodes: local.nodes } };
}

/**
 * For every campaign `user` interacted with (and `visible` allows), its events
 * and the profile version of the time; with `withProfiles`, the attributes of
 * each version involved.
 */
export async function userReport(src: ReportSources, user: string, o: { visible: (c: Campaign | undefined) => boolean; withProfiles: boolean }): Promise<UserReport> {
  const { records, sources } = await gather(src, { user });
  const byCampaign = new Map<string, TrackingRecord[]>();
  for (const r of records) {
    let list = byCampaign.get(r.c);
    if (!list) byCampaign.set(r.c, (list = []));
    list.push(r);
  }
  const campaigns: UserCampaignRecord[] = [];
  for (const [id, list] of byCampaign) {
    const c = await src.campaign(id);
    if (!o.visible(c)) continue;
    const events = list.map((r) => ({ ev: r.ev, device: r.d, ts: r.ts, at: r.at, profileVersion: r.pv }));
    const entry: UserCampaignRecord = {
      campaign: id,
      ...(c && { name: c.name, publisher: c.publisher }),
      events,
      firstAt: events[0]!.ts,
      lastAt: events[events.length - 1]!.ts,
      profileVersion: events[0]!.profileVersion,
    };
    if (o.withProfiles) {
      entry.profiles = {};
      for (const v of new Set(events.map((e) => e.profileVersion))) entry.profiles[v] = (await src.profileAt(user, v)).attrs;
    }
    campaigns.push(entry);
  }
  campaigns.sort((a, b) => a.firstAt - b.firstAt);
  return { user, campaigns, sources };
}

/** The funnel, in order: each stage counts distinct users who reached it. */
export const FUNNEL: readonly TrackingEvent[] = ['sent', 'delivered', 'opened', 'clicked', 'converted'];

export interface CampaignReport {
  campaign: string;
  /** Distinct users per event (dismissed included, beside the funnel). */
  users: Record<TrackingEvent, number>;
  /** Each funnel stage over the one before it (sent: 1). */
  conversion: Record<string, number>;
  /** Events per time bucket (by event time), oldest first. */
  overTime: Array<{ from: number } & Record<TrackingEvent, number>>;
  bucketMs: number;
  sources: Provenance;
}

const zero = (): Record<TrackingEvent, number> => ({ sent: 0, delivered: 0, opened: 0, clicked: 0, dismissed: 0, converted: 0 });

/** Funnel sent → delivered → opened → clicked → converted over time, from both tiers. */
export async function campaignReport(src: ReportSources, campaign: string, bucketMs: number): Promise<CampaignReport> {
  const { records, sources } = await gather(src, { campaign });
  const users = new Map<TrackingEvent, Set<string>>();
  const buckets = new Map<number, Record<TrackingEvent, number>>();
  for (const r of records) {
    let u = users.get(r.ev);
    if (!u) users.set(r.ev, (u = new Set()));
    u.add(r.u);
    const from = Math.floor(r.ts / bucketMs) * bucketMs;
    let b = buckets.get(from);
    if (!b) buckets.set(from, (b = zero()));
    b[r.ev]++;
  }
  const counts = zero();
  for (const [ev, set] of users) counts[ev] = set.size;
  const conversion: Record<string, number> = {};
  FUNNEL.forEach((ev, i) => {
    const before = i === 0 ? counts[ev] : counts[FUNNEL[i - 1]!];
    conversion[ev] = before > 0 ? counts[ev] / before : 0;
  });
  const overTime = [...buckets.entries()].sort((a, b) => a[0] - b[0]).map(([from, b]) => ({ from, ...b }));
  return { campaign, users: counts, conversion, overTime, bucketMs, sources };
}
