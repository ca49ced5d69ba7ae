import type { NatsConnection, Subscription } from '@nats-io/transport-node';
import { isName, pack, unpack } from '@gravitas/protocol';
import type { TrackingConfig } from '../config/index.js';
import type { CellMetrics } from '../infra/metrics.js';
import type { Names } from '../infra/subjects.js';
import type { Archive } from './archive.js';
import { decodeRecord, type TrackingRecord } from './records.js';
import type { Cursor, LocalQuery, TrackingStore } from './tracking-store.js';

/*
 * Moves the node's tracking records from its LMDB outbox to the archive (cell 0
 * of each node), and answers the reports' scatter-gather for records not yet
 * archived (any cell of the node; one answers per node).
 */

/** Pause between rounds when the outbox is empty. */
const IDLE_MS = 250;
/** Batches shipped per round at most: a backlog is worked off in bounded steps, the event loop breathes in between. */
const MAX_BATCHES_PER_ROUND = 8;
/** Backoff after failed rounds: 250 ms doubling to 10 s, jittered ×0.5–1. */
const BACKOFF_MIN_MS = 250;
const BACKOFF_MAX_MS = 10_000;
/** Records per scatter-gather answer: ~400 bytes each packed, far below NATS's 1 MiB payload. */
export const LOCAL_PAGE = 500;

export class Shipper {
  private timer: NodeJS.Timeout | undefined;
  private round: Promise<void> | undefined;
  private stopped = false;
  private failures = 0;

  constructor(
    private readonly store: TrackingStore,
    private readonly archive: Archive,
    private readonly cfg: Pick<TrackingConfig, 'shipBatch'>,
    private readonly metrics: CellMetrics,
    private readonly log: (msg: string, err?: unknown) => void,
  ) {}

  start(): void {
    this.schedule(0);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    await this.round;
  }

  private schedule(ms: number): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      this.round = this.runRound().then((next) => this.schedule(next));
    }, ms);
  }

  /** One round: ship, evict, sample; returns the delay before the next round. */
  private async runRound(): Promise<number> {
    let next = IDLE_MS;
    try {
      if (await this.ship()) next = 0;
      if (this.failures > 0) this.log(`tracking archive reachable again after ${this.failures} failed rounds`);
      this.failures = 0;
    } catch (err) {
      this.failures++;
      this.metrics.trackingShipFailures.inc();
      if (this.failures === 1 || this.failures % 100 === 0) this.log(`shipping tracking records failed (${this.failures} in a row); retrying with backoff`, err);
      next = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** Math.min(16, this.failures - 1)) * (0.5 + Math.random() / 2);
    }
    try {
      // Eviction needs no archive: archived records age out while the archive is away too.
      if ((await this.store.evict(Date.now())) > 0 && next === IDLE_MS) next = 0;
    } catch (err) {
      this.log('evicting tracking records failed', err);
    }
    return next;
  }

  /** Ships up to MAX_BATCHES_PER_ROUND batches; true if the outbox may hold more. */
  private async ship(): Promise<boolean> {
    for (let i = 0; i < MAX_BATCHES_PER_ROUND && !this.stopped; i++) {
      const batch = this.store.unarchived(this.cfg.shipBatch);
      if (batch.length === 0) return false;
      // Marked only after every record is acknowledged: a crash in between re-ships, the stream drops the copies.
      await this.archive.append(batch);
      this.metrics.trackingShipped.inc(await this.store.markArchived(batch));
      if (batch.length < this.cfg.shipBatch) return false;
    }
    return !this.stopped;
  }

  /** Scrape time (Cell.sampleGauges): the gauges are as fresh as the scrape, even in the middle of a long round. */
  sample(): void {
    const s = this.store.stats();
    this.metrics.trackingUnarchived.set(s.unarchived);
    this.metrics.trackingLocalRecords.set(s.records);
    this.metrics.trackingLocalBytes.set(s.bytes);
    this.metrics.trackingArchiveLag.set(s.oldestUnarchivedAt === undefined ? 0 : Math.max(0, Date.now() - s.oldestUnarchivedAt) / 1000);
  }
}

// ---- scatter-gather -------------------------------------------------------------

/** `<prefix>.track.local` request: one user's or one campaign's unarchived records; `node` + `after` continue a page. */
export type LocalRequest = LocalQuery & { node?: string; after?: Cursor };
/** The answer of one node. `next`: ask that node again with `after: next` for more. */
export interface LocalReply { node: string; records: TrackingRecord[]; next?: Cursor; error?: string }

export function decodeLocalRequest(v: unknown): LocalRequest {
  const o = v as Record<string, unknown> | null;
  if (typeof o !== 'object' || o === null) throw new TypeError('malformed local tracking query');
  const node = typeof o.node === 'string' && isName(o.node, 48) ? o.node : undefined;
  const after = Array.isArray(o.after) && o.after.length <= 4 && o.after.every((x) => typeof x === 'string' || (typeof x === 'number' && Number.isFinite(x))) ? (o.after as Cursor) : undefined;
  if (o.after !== undefined && !after) throw new TypeError('malformed cursor');
  const extra = { ...(node && { node }), ...(after && { after }) };
  if (typeof o.user === 'string' && isName(o.user)) return { user: o.user, ...extra };
  if (typeof o.campaign === 'string' && isName(o.campaign)) return { campaign: o.campaign, ...extra };
  throw new TypeError('a local tracking query names a user or a campaign');
}

export function decodeLocalReply(v: unknown): LocalReply {
  const o = v as Record<string, unknown> | null;
  if (typeof o !== 'object' || o === null || typeof o.node !== 'string' || !Array.isArray(o.records)) throw new TypeError('malformed local tracking reply');
  const next = Array.isArray(o.next) ? (o.next as Cursor) : undefined;
  return { node: o.node, records: o.records.map(decodeRecord), ...(next && { next }), ...(typeof o.error === 'string' && { error: o.error }) };
}

/**
 * Answers `<prefix>.track.local` for this node. Every cell subscribes in the
 * queue group named after the node: one cell per node answers, and the node
 * still answers while one of its cells restarts (they share the store).
 */
export class LocalQueryResponder {
  private sub: Subscription | undefined;

  constructor(
    private readonly nc: NatsConnection,
    private readonly names: Names,
    private readonly nodeId: string,
    private readonly store: TrackingStore,
    private readonly log: (msg: string, err?: unknown) => void,
  ) {}

  start(): void {
    this.sub = this.nc.subscribe(this.names.trackingLocalQuery, {
      queue: this.nodeId,
      callback: (err, msg) => {
        if (err || !msg.reply) return;
        let reply: LocalReply;
        try {
          const q = decodeLocalRequest(unpack(msg.data));
          if (q.node !== undefined && q.node !== this.nodeId) return; // a page asked of another node
          const page = this.store.unarchivedFor(q, { limit: LOCAL_PAGE, ...(q.after && { after: q.after }) });
          reply = { node: this.nodeId, ...page };
        } catch (e) {
          if (!(e instanceof TypeError)) this.log('local tracking query failed', e);
          reply = { node: this.nodeId, records: [], error: e instanceof TypeError ? 'BAD_MESSAGE' : 'INTERNAL' };
        }
        msg.respond(pack(reply));
      },
    });
  }

  stop(): void {
    this.sub?.unsubscribe();
  }
}

/**
 * Scatter-gather for reports: every node's records for `q` not yet archived,
 * following each node's pages. Waits `maxWaitMs` for the first answers (or
 * until `expectNodes` have answered). Returns the nodes that answered, so a
 * report can say when one was silent.
 */
export async function queryUnarchived(
  nc: NatsConnection,
  names: Names,
  q: LocalQuery,
  o: { maxWaitMs?: number; expectNodes?: number } = {},
): Promise<{ records: TrackingRecord[]; nodes: string[] }> {
  const maxWait = o.maxWaitMs ?? 1000;
  const records: TrackingRecord[] = [];
  const nodes: string[] = [];
  const more: LocalReply[] = [];
  try {
    const replies = await nc.requestMany(names.trackingLocalQuery, pack(q), {
      maxWait,
      ...(o.expectNodes !== undefined ? { strategy: 'count' as const, maxMessages: o.expectNodes } : { strategy: 'timer' as const }),
    });
    for await (const m of replies) {
      let r: LocalReply;
      try {
        r = decodeLocalReply(unpack(m.data));
      } catch {
        continue; // not an answer of ours
      }
      nodes.push(r.node);
      records.push(...r.records);
      if (r.next) more.push(r);
    }
  } catch (err) {
    // No node running: nothing is unarchived anywhere that could answer.
    if (!/no responders|503/i.test(`${(err as Error).name} ${(err as Error).message}`)) throw err;
  }
  for (let r of more) {
    while (r.next) {
      const m = await nc.request(names.trackingLocalQuery, pack({ ...q, node: r.node, after: r.next }), { timeout: maxWait });
      r = decodeLocalReply(unpack(m.data));
      records.push(...r.records);
    }
  }
  return { records, nodes };
}
