import { join } from 'node:path';
import { Kvm, type KV } from '@nats-io/kv';
import { ErrorCode, ProtocolError, unpack, type RequestArgs } from '@gravitas/protocol';
import type { CellContext } from '../core/context.js';
import type { ProfilesPort, RequestHandler } from '../core/ports.js';
import { DeliveryProofs } from '../core/proofs.js';
import type { DeviceSession } from '../core/session.js';
import { TtlCache, ReadThrough } from '../infra/ttl-cache.js';
import { JetStreamArchive } from './archive.js';
import type { TrackingRecord } from './records.js';
import { LocalQueryResponder, Shipper } from './shipper.js';
import { TrackingStore, type PutResult } from './tracking-store.js';

/** Positive answers of the campaigns bucket are kept this long (a deleted campaign is noticed after it). */
const CAMPAIGN_TTL_MS = 30_000;
const CAMPAIGN_CACHE_MAX = 10_000;
/**
 * Campaigns and profile versions seen recently are remembered this long as a
 * fallback while NATS is away: feedback keeps landing in the local tier during
 * an outage, which is what the local tier is for.
 */
const FALLBACK_TTL_MS = 24 * 3600_000;
const FALLBACK_MAX = 50_000;
/** A lookup slower than this counts as failed (NATS away: requests would wait out their own timeout). */
const LOOKUP_TIMEOUT_MS = 2000;

class LookupTimeout extends Error {
  override name = 'LookupTimeout';
}

function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new LookupTimeout(`${what} took longer than ${ms} ms`)), ms);
  });
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}

/** What the intake uses of other parts of the cell. */
export interface IntakeDeps {
  /** The delivery proofs of this cell's messages (a campaign message's `rk`). */
  proofs: Pick<DeliveryProofs, 'campaign'>;
  profiles: Pick<ProfilesPort, 'version'>;
}

/**
 * Campaign feedback into the node's tracking store (docs/campaigns.md): the
 * `track` request of every session of the cell, and the records the server
 * writes itself (the runner's `sent`). On cell 0 it also runs the shipper that
 * moves the node's records to the archive; every cell answers the reports'
 * scatter-gather (one per node).
 */
export class TrackingIntake implements RequestHandler {
  private store: TrackingStore | undefined;
  private campaigns: KV | undefined;
  private shipper: Shipper | undefined;
  private responder: LocalQueryResponder | undefined;
  private readonly known = new ReadThrough<string, true | undefined>(new TtlCache(CAMPAIGN_CACHE_MAX, CAMPAIGN_TTL_MS));
  private readonly knownBefore = new TtlCache<string, true>(CAMPAIGN_CACHE_MAX, FALLBACK_TTL_MS);
  private readonly versionBefore = new TtlCache<string, number>(FALLBACK_MAX, FALLBACK_TTL_MS);

  constructor(
    private readonly ctx: CellContext,
    private readonly deps: IntakeDeps,
  ) {}

  /** Idempotent: the cell retries its whole start-up step while JetStream elects leaders. */
  async start(): Promise<void> {
    const { config, metrics } = this.ctx;
    if (!this.store) {
      this.store = TrackingStore.open(join(config.dataDir, 'tracking'), config.tracking);
      this.store.onEvict = (n) => n > 0 && metrics.trackingEvicted.inc(n);
    }
    // Only opened (or created, with the settings of campaign-store.ts openEngageBuckets): the admin API writes its records.
    this.campaigns ??= await new Kvm(this.ctx.nc).create(this.ctx.names.campaignsBucket, { history: 1, replicas: config.replicas, allow_direct: false });
    if (this.ctx.index === 0 && !this.shipper) {
      const archive = new JetStreamArchive(this.ctx.nc, this.ctx.names, config.tracking, config.replicas);
      await archive.start();
      this.shipper = new Shipper(this.store, archive, config.tracking, metrics, this.ctx.log);
      this.shipper.start();
    }
    if (!this.responder) {
      this.responder = new LocalQueryResponder(this.ctx.nc, this.ctx.names, config.nodeId, this.store, this.ctx.log);
      this.responder.start();
    }
  }

  /** The `track` request (arguments validated by decodeRequestArgs). Answers once the record is on disk. */
  async handle(s: DeviceSession, op: string, args: unknown): Promise<unknown> {
    if (op !== 'track') throw new ProtocolError(ErrorCode.UNKNOWN_TYPE, `no handler for ${op}`);
    const a = args as RequestArgs['track'];
    // Only a recipient the campaign's message reached holds its delivery proof (no lookup, no oracle).
    if (!DeliveryProofs.same(this.deps.proofs.campaign(a.c, s.user), a.rk)) {
      this.ctx.metrics.trackingIntake.inc({ result: 'not_allowed' });
      throw new ProtocolError(ErrorCode.NOT_ALLOWED, 'feedback needs the delivery proof (rk) of the campaign message you received');
    }
    const store = this.open();
    try {
      // A re-send of something already here needs no lookups (and works while NATS is away).
      if (store.lookup(s.user, a.eid)) {
        this.ctx.metrics.trackingIntake.inc({ result: 'duplicate' });
        return { dup: true };
      }
      const now = Date.now();
      const skew = a.ts - now;
      const max = this.ctx.config.tracking.maxClockSkewMs;
      if (Math.abs(skew) > max) {
        throw new ProtocolError(ErrorCode.BAD_MESSAGE, `ts is ${Math.round(Math.abs(skew) / 1000)} s ${skew > 0 ? 'ahead of' : 'behind'} the server clock; at most ${Math.round(max / 1000)} s either way is accepted`);
      }
      await this.requireCampaign(a.c);
      const pv = await this.profileVersion(s.user);
      const r = await this.write({ eid: a.eid, c: a.c, u: s.user, d: s.device, ev: a.ev, ts: a.ts, at: now, pv });
      this.ctx.metrics.trackingIntake.inc({ result: r });
      return { dup: r === 'duplicate' };
    } catch (err) {
      const code = err instanceof ProtocolError ? err.code : undefined;
      this.ctx.metrics.trackingIntake.inc({ result: code === ErrorCode.RETRY_LATER ? 'retry_later' : code === ErrorCode.BAD_MESSAGE ? 'bad_message' : code === ErrorCode.NOT_FOUND ? 'not_found' : 'error' });
      throw err;
    }
  }

  /**
   * Writes a record the server itself produces (the runner's `sent`); durable
   * when it resolves. A record already stored is not written again.
   * Throws TrackingFullError (RETRY_LATER) while the store is full.
   */
  async record(rec: TrackingRecord): Promise<void> {
    await this.write(rec);
  }

  /** Scrape time: the tracking gauges (cell 0 only, the one that ships). */
  sampleGauges(): void {
    this.shipper?.sample();
  }

  async stop(): Promise<void> {
    this.responder?.stop();
    await this.shipper?.stop();
    await this.store?.close();
  }

  private async write(rec: TrackingRecord): Promise<PutResult> {
    const store = this.open();
    const r = await store.put(rec);
    await store.flushed(); // "durable" means flushed (PITFALLS: a commit is not yet on disk)
    return r;
  }

  private open(): TrackingStore {
    if (!this.store) throw new ProtocolError(ErrorCode.RETRY_LATER, 'the tracking store is not open yet');
    return this.store;
  }

  /** NOT_FOUND for a campaign that does not exist; RETRY_LATER when that cannot be told now. */
  private async requireCampaign(c: string): Promise<void> {
    let found: true | undefined;
    try {
      found = await within(this.known.get(c, () => this.readCampaign(c)), LOOKUP_TIMEOUT_MS, 'reading the campaign');
    } catch (err) {
      if (this.knownBefore.get(c)) return;
      throw new ProtocolError(ErrorCode.RETRY_LATER, `campaign ${c} cannot be checked now: ${(err as Error).message}`, { cause: err });
    }
    if (!found) throw new ProtocolError(ErrorCode.NOT_FOUND, `no campaign ${c}`);
    this.knownBefore.set(c, true);
  }

  /** A campaign feedback can be for: one that exists and was started (running, paused or done; a draft sent nothing). */
  private async readCampaign(c: string): Promise<true | undefined> {
    if (!this.campaigns) throw new Error('campaigns bucket not open');
    const e = await this.campaigns.get(`c.${c}`);
    if (!e || e.operation !== 'PUT' || e.value.length === 0) return undefined;
    let state: unknown;
    try {
      state = (unpack(e.value) as { state?: unknown }).state;
    } catch {
      return undefined;
    }
    return state === 'running' || state === 'paused' || state === 'done' ? true : undefined;
  }

  /** The user's current profile version; while profiles cannot be read, the last one seen. */
  private async profileVersion(user: string): Promise<number> {
    try {
      const v = await within(this.deps.profiles.version(user), LOOKUP_TIMEOUT_MS, 'reading the profile version');
      this.versionBefore.set(user, v);
      return v;
    } catch (err) {
      const v = this.versionBefore.get(user);
      if (v !== undefined) return v;
      throw new ProtocolError(ErrorCode.RETRY_LATER, `the profile version of ${user} cannot be read now: ${(err as Error).message}`, { cause: err });
    }
  }
}
