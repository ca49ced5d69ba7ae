import type { NatsConnection } from '@nats-io/transport-node';
import { DiscardPolicy, jetstream, jetstreamManager, RetentionPolicy, StorageType, type JetStreamClient, type JetStreamManager } from '@nats-io/jetstream';
import { ErrorCode, pack, unpack } from '@gravitas/protocol';
import type { TrackingConfig } from '../config/index.js';
import { API_TIMEOUT_MS, deadline, DUPLICATE_WINDOW_MS, ensureStream, NS_PER_MS, StorageError } from '../infra/jetstream.js';
import type { Names } from '../infra/subjects.js';
import { decodeRecord, type TrackingRecord } from './records.js';
import { recordId } from './tracking-store.js';

/**
 * The long-term tier of tracking records. JetStream today; an object store or a
 * warehouse sink implements the same three calls.
 */
export interface Archive {
  /** Resolves only when every record is acknowledged by the archive; a retry with the same records must be harmless. */
  append(records: readonly TrackingRecord[]): Promise<void>;
  /** Every archived record of one user (a read ends: it stops at what was archived when it began). */
  readUser(user: string): AsyncIterable<TrackingRecord>;
  /** Every archived record of one campaign, likewise. */
  readCampaign(campaign: string): AsyncIterable<TrackingRecord>;
}

/** Publishes in flight at once per append. */
const PUBLISH_CONCURRENCY = 32;
/** Messages asked for per fetch of a read. */
const READ_BATCH = 256;
/** A fetch that brings nothing for this long while messages are pending is a stall. */
const READ_EXPIRES_MS = 5000;

/**
 * The archive on the stream `<prefix>_TRACKING`: one subject per (user,
 * campaign), `Nats-Msg-Id` = the record id, so a re-shipped batch is dropped by
 * the stream within its duplicate window (and by report de-duplication after it).
 */
export class JetStreamArchive implements Archive {
  private readonly js: JetStreamClient;
  private jsm: JetStreamManager | undefined;

  constructor(
    readonly nc: NatsConnection,
    readonly names: Names,
    readonly cfg: Pick<TrackingConfig, 'archiveMaxAgeMs'>,
    /** Copies of the stream (NodeConfig.replicas). */
    readonly replicas: number,
  ) {
    this.js = jetstream(nc, { timeout: API_TIMEOUT_MS });
  }

  /**
   * Creates the stream or brings it to this config. Subjects `…track.*.*`
   * exactly (user, campaign), not `…track.>`: the scatter-gather subject
   * `…track.local` must not be captured by the stream.
   */
  async start(): Promise<void> {
    await ensureStream(await this.manager(), {
      name: this.names.trackingStream,
      subjects: [`${this.names.prefix}.track.*.*`],
      retention: RetentionPolicy.Limits,
      storage: StorageType.File,
      num_replicas: this.replicas,
      discard: DiscardPolicy.New,
      max_age: this.cfg.archiveMaxAgeMs * NS_PER_MS,
      duplicate_window: DUPLICATE_WINDOW_MS * NS_PER_MS,
      allow_direct: false,
    });
  }

  async append(records: readonly TrackingRecord[]): Promise<void> {
    let next = 0;
    let failure: unknown;
    // Bounded concurrency; after a failure no new publish starts, the ones in flight finish.
    const worker = async (): Promise<void> => {
      while (failure === undefined && next < records.length) {
        const r = records[next++]!;
        try {
          await this.js.publish(this.names.trackingSubject(r.u, r.c), pack(r), {
            msgID: recordId(r),
            timeout: API_TIMEOUT_MS,
            expect: { streamName: this.names.trackingStream },
          });
        } catch (err) {
          failure ??= err;
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(PUBLISH_CONCURRENCY, records.length) }, worker));
    if (failure !== undefined) {
      throw new StorageError(ErrorCode.STORAGE_UNAVAILABLE, `cannot append to the tracking archive: ${(failure as Error).message}`, { cause: failure });
    }
  }

  readUser(user: string): AsyncIterable<TrackingRecord> {
    return this.read(this.names.trackingUserFilter(user));
  }

  readCampaign(campaign: string): AsyncIterable<TrackingRecord> {
    return this.read(this.names.trackingCampaignFilter(campaign));
  }

  private async manager(): Promise<JetStreamManager> {
    this.jsm ??= await jetstreamManager(this.nc, { timeout: API_TIMEOUT_MS });
    return this.jsm;
  }

  /**
   * An ordered consumer on `filter` (a single filter subject: nats-server 2.9
   * has no filter lists), read up to the stream's last sequence at the start,
   * so the read ends even while shippers keep appending. Messages that are not
   * records (a stray publish on a tracking subject) are skipped.
   */
  private async *read(filter: string): AsyncGenerator<TrackingRecord> {
    const jsm = await this.manager();
    const info = await deadline(jsm.streams.info(this.names.trackingStream), 'reading the tracking archive');
    const last = info.state.last_seq;
    if (info.state.messages === 0) return;
    const consumer = await deadline(this.js.consumers.get(this.names.trackingStream, { filter_subjects: filter }), 'opening a tracking archive reader');
    try {
      if ((await consumer.info(true)).num_pending === 0) return;
      for (;;) {
        const batch = await consumer.fetch({ max_messages: READ_BATCH, expires: READ_EXPIRES_MS });
        let got = 0;
        for await (const m of batch) {
          got++;
          if (m.seq > last) return;
          let rec: TrackingRecord | undefined;
          try {
            rec = decodeRecord(unpack(m.data));
          } catch {
            // not one of ours
          }
          if (rec) yield rec;
          if (m.seq === last || m.info.pending === 0) return;
        }
        if (got === 0) throw new StorageError(ErrorCode.STORAGE_UNAVAILABLE, 'the tracking archive stopped answering during a read');
      }
    } finally {
      consumer.delete().catch(() => undefined);
    }
  }
}
