import type { JetStreamClient } from '@nats-io/jetstream';
import { ErrorCode, isName } from '@gravitas/protocol';
import type { CampaignConfig } from '../config/index.js';
import type { Names } from '../infra/subjects.js';
import { matches, type Campaign } from './campaign-types.js';
import { enqueueJob } from './jobs.js';
import { answer, PAUSED_RETRY_MS, type JobRun } from './runner-job.js';
import { addCounts, type CampaignRecords, type Ledger } from './runner-ledger.js';

/*
 * The `expand` job of a campaign (docs/campaigns.md, "Delivery"): lists the
 * audience and enqueues its paced `send` jobs (runner-send.ts).
 */

/** An expansion job of a campaign that is still a draft is dropped after this (well past the 2-minute duplicate window). */
const DRAFT_JOB_MAX_AGE_MS = 10 * 60_000;
/** A running expansion writes a heartbeat this often; one silent for EXPAND_DEAD_MS is taken over. */
const EXPAND_BEAT_MS = 10_000;
const EXPAND_DEAD_MS = 45_000;
/** Batch numbers an expansion reserves in its ledger at a time. */
const RESERVE = 1024;
const EMPTY = new Uint8Array(0);

/** The latest profile of every user (engage/profiles.ts Profiles.all): a predicate audience's source. */
export interface ProfileSource {
  all(): AsyncIterable<{ user: string; attrs: Record<string, unknown> }>;
}

/** Thrown inside an expansion that another run took over. */
class Superseded extends Error {
  override name = 'Superseded';
}

export class Expansion {
  constructor(
    private readonly records: CampaignRecords,
    private readonly js: JetStreamClient,
    private readonly names: Names,
    private readonly config: CampaignConfig,
    private readonly profiles: ProfileSource,
  ) {}

  /**
   * Lists the audience and enqueues its send jobs in batches, each with the time
   * it may run. Acked once every batch is enqueued and counted in the ledger; a
   * run that dies midway is taken over by a new run with fresh batch numbers,
   * which makes the dead run's jobs no-ops (a predicate audience may list
   * differently the second time, so old and new batch contents cannot be matched).
   */
  async expand(id: string, r: JobRun): Promise<string> {
    const c = await this.records.campaign(id);
    if (!c) return answer(r, 'term', 'unknown');
    if (c.state === 'done') return answer(r, 'ack', 'done');
    // The admin API writes `running` before it enqueues, and back to draft if the enqueue failed (it may
    // have gone through all the same). Dropped only once a new start's job can no longer be taken for
    // this one by the work queue's de-duplication.
    if (c.state === 'draft') return answer(r, r.ageMs > DRAFT_JOB_MAX_AGE_MS ? 'term' : Math.min(60_000, PAUSED_RETRY_MS * r.deliveries), 'draft');
    let now = Date.now();
    // Expand when the campaign may start, so that its jobs do not wait in the queue holding ack slots.
    if (c.startAt !== undefined && c.startAt > now) return answer(r, c.startAt - now, 'early');
    // The sender name is fixed for the whole campaign: every retry must carry the same (sender, id).
    const sender = await this.records.senderOf(c.publisher);
    // Claim the expansion: the first run, or a new run over one whose heartbeat stopped.
    const claim: { run?: Ledger } = {};
    const l = await this.records.changeLedger(id, (cur) => {
      delete claim.run;
      if (cur && (cur.batches !== undefined || Date.now() - cur.beat < EXPAND_DEAD_MS)) return undefined;
      now = Date.now();
      // A first run paces from the start; a run taking over paces from now (the dead run's due batches are no-ops).
      const t0 = Math.max(cur ? now : c.startedAt ?? now, c.startAt ?? 0);
      const base = cur?.next ?? 0;
      claim.run = {
        run: (cur?.run ?? 0) + 1, base, next: base + RESERVE, t0, beat: now, from: cur?.from ?? sender, done: EMPTY, sent: 0, failed: {}, shift: 0,
        ...(c.state === 'paused' && { pausedSince: now }),
      };
      return claim.run;
    });
    const run = claim.run;
    if (!run) {
      if (l?.batches !== undefined) return this.records.settle(c, l, r, 'again'); // expanded already (the ack was lost)
      return answer(r, EXPAND_BEAT_MS, 'busy'); // another cell is expanding it right now
    }
    const { batchSize, maxRatePerSec } = this.config;
    const intervalMs = (batchSize / Math.min(c.ratePerSec, maxRatePerSec)) * 1000;
    let i = 0;
    let reserved = run.next - run.base;
    let beat = Date.now();
    let recipients = 0;
    let invalid = 0;
    /** Reserves batch numbers before they are used (a run taking over starts above them), and beats. */
    const keep = async (): Promise<void> => {
      if (i < reserved && Date.now() - beat < EXPAND_BEAT_MS) return;
      const n = run.base + i;
      const cur = await this.records.changeLedger(id, (x) => (x?.run !== run.run ? undefined : { ...x, next: Math.max(x.next, n + RESERVE), beat: Date.now() }));
      if (cur?.run !== run.run) throw new Superseded();
      reserved = cur.next - run.base;
      beat = Date.now();
    };
    const enqueue = async (users: string[]): Promise<void> => {
      await keep();
      const n = run.base + i;
      await enqueueJob(this.js, this.names, { k: 'send', c: id, n, users, notBefore: Math.round(run.t0 + i * intervalMs) }, `${id}.b${n}`);
      i++;
    };
    try {
      let batch: string[] = [];
      for await (const user of this.audience(c)) {
        await keep(); // also through long stretches of non-matching profiles
        recipients++;
        if (!isName(user)) {
          invalid++; // cannot be addressed: counted as failed, no job would carry it
          continue;
        }
        batch.push(user);
        if (batch.length >= batchSize) {
          await enqueue(batch);
          batch = [];
        }
      }
      if (batch.length > 0) await enqueue(batch);
    } catch (err) {
      if (err instanceof Superseded) return answer(r, 'leave', 'superseded');
      // Give up the claim, so that the retry starts a new run at once instead of waiting out the heartbeat.
      await this.records.changeLedger(id, (x) => (x?.run === run.run && x.batches === undefined ? { ...x, beat: 0 } : undefined)).catch(() => undefined);
      throw err;
    }
    const fin = await this.records.changeLedger(id, (x) =>
      x?.run !== run.run
        ? undefined
        : { ...x, batches: i, recipients, failed: invalid > 0 ? addCounts(x.failed, { [ErrorCode.UNDELIVERABLE]: invalid }) : x.failed, beat: Date.now() },
    );
    if (fin?.run !== run.run) return answer(r, 'leave', 'superseded');
    return this.records.settle(c, fin, r, 'ok');
  }

  /** The audience in listing order, each user once. */
  private async *audience(c: Campaign): AsyncGenerator<string> {
    const a = c.audience;
    if ('users' in a) {
      yield* new Set(a.users);
      return;
    }
    for await (const p of this.profiles.all()) if (matches(a.where, p.attrs)) yield p.user;
  }
}
