import { setTimeout as sleep } from 'node:timers/promises';
import { Counter, Histogram } from 'prom-client';
import {
  AckPolicy, DeliverPolicy, jetstream, jetstreamManager,
  type Consumer, type ConsumerConfig, type JetStreamClient, type JetStreamManager, type JsMsg,
} from '@nats-io/jetstream';
import type { KV } from '@nats-io/kv';
import { ErrorCode, isName, MAX_ID_LENGTH, MAX_TEXT_LENGTH, pack, ProtocolError, unpack } from '@gravitas/protocol';
import type { Cell } from '../cell/cell.js';
import type { Settlement } from '../messaging/custody.js';
import type { ChatItem } from '../core/envelope.js';
import { API_TIMEOUT_MS, isNotFound, NS_PER_MS } from '../infra/jetstream.js';
import { isCasConflict, untilReady } from '../infra/nats.js';
import { campaignKey, decodeCampaign as decodeCampaignRecord, decodePublisher, openEngageBuckets, progressKey, publisherKey } from './campaign-store.js';
import { campaignMessageId, matches, systemSender, type Campaign, type CampaignProgress } from './campaign-types.js';
import { decodeJob, enqueueJob, ensureWorkStream, type CampaignJob } from './jobs.js';

/*
 * The campaign runner of a cell (docs/campaigns.md, "Delivery"). Every cell of
 * every node pulls jobs from the one durable consumer of the work queue, a few at
 * a time. `expand` lists the audience and enqueues paced `send` jobs; `send`
 * hands each recipient one message under custody and marks them in KV. A job is
 * acknowledged only when its work is complete, so a crash anywhere makes
 * JetStream hand it to another cell after the ack wait, and the markers, the
 * ledger and the deterministic message id make the re-run send nothing twice.
 */

/** The durable consumer every runner of the cluster shares. */
export const RUNNER_DURABLE = 'runners';
const ACK_WAIT_MS = 30_000;
/** In-progress acks while a job runs, well inside the ack wait. */
const WORKING_MS = 10_000;
/**
 * Delivered, unacknowledged jobs cluster-wide. Jobs waiting for their time (a
 * delayed nak) count too: a backlog of waiting jobs beyond this delays jobs
 * queued behind it (docs: "Limits").
 */
const MAX_ACK_PENDING = 10_000;
/** Jobs one cell works on at once: it pulls only for a free slot (backpressure). */
const JOBS_PER_CELL = 4;
/** Recipients of one send job in custody at once. */
const USERS_PER_JOB = 32;
const PULL_EXPIRES_MS = 5_000;
/** How often the jobs of a paused campaign that are due look at its state again. */
const PAUSED_RETRY_MS = 1_000;
/** An expansion job of a campaign that is still a draft is dropped after this (well past the 2-minute duplicate window). */
const DRAFT_JOB_MAX_AGE_MS = 10 * 60_000;
/** Retryable failures: the delay doubles with each delivery of the job, within these bounds. */
const RETRY_MIN_MS = 500;
const RETRY_MAX_MS = 30_000;
/** A running expansion writes a heartbeat this often; one silent for EXPAND_DEAD_MS is taken over. */
const EXPAND_BEAT_MS = 10_000;
const EXPAND_DEAD_MS = 45_000;
/** Batch numbers an expansion reserves in its ledger at a time. */
const RESERVE = 1024;
const CAS_ATTEMPTS = 50;
/** A recipient whose custody has not settled by then is retried with the batch. */
const SETTLE_TIMEOUT_MS = 60_000;
/** How long stop() lets running jobs finish before handing them back. */
const STOP_GRACE_MS = 3_000;
/** Settlement failures that are final for a recipient, as for the SDK (docs/custody.md). */
const FINAL_CODES: ReadonlySet<string> = new Set([ErrorCode.UNDELIVERABLE, ErrorCode.MAILBOX_FULL]);
/** The device name campaign messages come from. */
export const CAMPAIGN_DEVICE = 'campaign';
/** Warnings of one kind are logged at most this often (a failing batch must not flood the log). */
const WARN_EVERY_MS = 5_000;

/**
 * The event id of a `sent` record: `sent:<campaign>` (records are keyed by user and
 * event id). The colon keeps it out of reach of devices, whose event ids are
 * protocol names: a device cannot pre-empt its own `sent` record.
 */
export const sentEventId = (c: string): string => `sent:${c}`;
/** The runner's record of a campaign, and a recipient's marker (campaigns bucket). */
export const ledgerKey = (c: string): string => `ledger.${c}`;
export const markerKey = (c: string, user: string): string => `sent.${c}.${user}`;

/** A job that cannot go on: BAD_MESSAGE is permanent (the job is dropped), anything else is retried. */
export class CampaignJobError extends ProtocolError {
  override name = 'CampaignJobError';
}

/**
 * The runner's own record of a campaign (`ledger.<id>` in the campaigns bucket):
 * the truth that `progress.<id>` is projected from. Batch completion and its
 * counts change in one compare-and-set, so a job that runs twice counts once.
 */
interface Ledger {
  /** Expansion runs started; a later run supersedes the batches of earlier ones. */
  run: number;
  /** First batch number of the current run; every run so far used numbers below `next`. */
  base: number;
  next: number;
  /** Pacing origin of the current run (ms). */
  t0: number;
  /** Heartbeat of the current run's expansion (ms). */
  beat: number;
  /** The sender name of the campaign's messages, fixed at its first expansion. */
  from: string;
  /** Set once the current run's expansion enqueued every batch. */
  batches?: number;
  recipients?: number;
  /** Bit i: batch base + i is finished. */
  done: Uint8Array;
  sent: number;
  failed: Record<string, number>;
  /** Paused time folded into pacing, and the start of a pause in progress (ms). */
  shift: number;
  pausedSince?: number;
}

/** What became of one recipient of a batch. */
type Outcome = { s: 'sent' } | { s: 'failed'; code: string } | { s: 'retry'; code: string };

interface Tally { sent: number; failed: Record<string, number>; retry: number }

/** What the runner uses of engage/profiles.ts: the latest profile of every user, and a user's current version. */
interface ProfileView { user: string; version: number; attrs: Record<string, unknown> }

const num = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);
const nat = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
const EMPTY = new Uint8Array(0);
const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder();

/** One delivered job: in-progress acks while it runs, and exactly one final answer. */
class JobRun {
  private answered = false;
  private readonly timer: NodeJS.Timeout;
  private ended!: () => void;
  readonly finished = new Promise<void>((resolve) => (this.ended = resolve));

  constructor(readonly m: JsMsg) {
    this.timer = setInterval(() => this.answered || m.working(), WORKING_MS);
    this.timer.unref();
  }

  get deliveries(): number {
    return this.m.info.deliveryCount;
  }
  /** Time since the job was enqueued. */
  get ageMs(): number {
    return Date.now() - this.m.info.timestampNanos / NS_PER_MS;
  }

  ack(): void {
    this.answer(() => this.m.ack());
  }
  /** Hands the job back, to be delivered again after `ms` (any cell). */
  nak(ms: number): void {
    this.answer(() => this.m.nak(Math.max(0, Math.round(ms))));
  }
  term(): void {
    this.answer(() => this.m.term());
  }
  /** Neither ack nor nak: another delivery owns the work (a late ack could confirm it unfinished). */
  leave(): void {
    this.answer(() => undefined);
  }

  private answer(f: () => void): void {
    if (this.answered) return;
    this.answered = true;
    clearInterval(this.timer);
    f();
  }

  end(): void {
    clearInterval(this.timer);
    this.ended();
  }
}

function retryDelay(deliveries: number): number {
  return Math.min(RETRY_MAX_MS, RETRY_MIN_MS * 2 ** Math.min(16, Math.max(0, deliveries - 1)));
}

// ---- ledger bits and codecs ---------------------------------------------------------

function testBit(bits: Uint8Array, i: number): boolean {
  return i >= 0 && (bits[i >> 3] ?? 0) & (1 << (i & 7)) ? true : false;
}

function withBit(bits: Uint8Array, i: number): Uint8Array {
  const out = new Uint8Array(Math.max(bits.length, (i >> 3) + 1));
  out.set(bits);
  out[i >> 3]! |= 1 << (i & 7);
  return out;
}

function countBits(bits: Uint8Array): number {
  let n = 0;
  for (let b of bits) for (; b; b &= b - 1) n++;
  return n;
}

function addCounts(a: Record<string, number>, b: Record<string, number>): Record<string, number> {
  const out = { ...a };
  for (const [k, v] of Object.entries(b)) out[k] = (out[k] ?? 0) + v;
  return out;
}

function isCounts(v: unknown): v is Record<string, number> {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && Object.values(v).every(nat);
}

function decodeLedger(data: Uint8Array): Ledger {
  const o = unpack(data) as Record<string, unknown> | null;
  if (
    typeof o === 'object' && o !== null &&
    nat(o.run) && nat(o.base) && nat(o.next) && num(o.t0) && num(o.beat) && num(o.shift) && typeof o.from === 'string' && isName(o.from) &&
    (o.batches === undefined || nat(o.batches)) && (o.recipients === undefined || nat(o.recipients)) &&
    o.done instanceof Uint8Array && nat(o.sent) && isCounts(o.failed) && (o.pausedSince === undefined || num(o.pausedSince))
  ) {
    return {
      run: o.run, base: o.base, next: o.next, t0: o.t0, beat: o.beat, from: o.from, shift: o.shift, done: o.done, sent: o.sent, failed: o.failed,
      ...(o.batches !== undefined && { batches: o.batches as number }),
      ...(o.recipients !== undefined && { recipients: o.recipients as number }),
      ...(o.pausedSince !== undefined && { pausedSince: o.pausedSince as number }),
    };
  }
  throw new CampaignJobError(ErrorCode.BAD_MESSAGE, 'malformed campaign ledger');
}

function encodeLedger(l: Ledger): Uint8Array {
  // Explicit fields: an `undefined` must not reach the encoder as a key.
  const { pausedSince, batches, recipients, ...rest } = l;
  return pack({ ...rest, ...(batches !== undefined && { batches }), ...(recipients !== undefined && { recipients }), ...(pausedSince !== undefined && { pausedSince }) });
}

/** A campaign record (campaign-store.ts decodes it), checked further where the runner relies on it. */
function decodeCampaign(id: string, data: Uint8Array): Campaign {
  let c: Campaign;
  try {
    c = decodeCampaignRecord(data);
  } catch (err) {
    throw new CampaignJobError(ErrorCode.BAD_MESSAGE, `campaign ${id}: malformed record`, { cause: err });
  }
  const bad = (why: string): never => {
    throw new CampaignJobError(ErrorCode.BAD_MESSAGE, `campaign ${id}: ${why}`);
  };
  if (c.id !== id) bad(`the record says id ${c.id}`);
  if ('users' in c.audience && !c.audience.users.every((u) => typeof u === 'string')) bad('audience.users holds a non-string');
  if (c.content.text.length > MAX_TEXT_LENGTH) bad(`text longer than ${MAX_TEXT_LENGTH}`);
  if (!(c.ratePerSec > 0)) bad('no rate');
  // The message id (campaignMessageId) must be a protocol id, which is shorter than a campaign id may be.
  if (campaignMessageId(id).length > MAX_ID_LENGTH) bad(`id longer than ${MAX_ID_LENGTH - campaignMessageId('').length} characters`);
  return c;
}

// ---- the runner ---------------------------------------------------------------------

export class CampaignRunner {
  private readonly metrics;
  private js!: JetStreamClient;
  private jsm!: JetStreamManager;
  private consumer!: Consumer;
  private campaigns!: KV;
  private publishers!: KV;
  private stopping = false;
  private readonly active = new Set<JobRun>();
  private readonly warned = new Map<string, { at: number; suppressed: number }>();

  constructor(readonly cell: Cell) {
    const registers = [cell.metrics.registry];
    this.metrics = {
      sent: new Counter({ name: 'gravitas_campaign_messages_sent_total', help: 'Campaign recipients marked sent (custody settled delivered or stored), each once cluster-wide', registers }),
      failed: new Counter({ name: 'gravitas_campaign_messages_failed_total', help: 'Campaign recipients that could not be sent to, by code', labelNames: ['code'] as const, registers }),
      jobs: new Counter({ name: 'gravitas_campaign_jobs_total', help: 'Campaign jobs handled, by kind and result', labelNames: ['kind', 'result'] as const, registers }),
      lag: new Histogram({
        name: 'gravitas_campaign_send_lag_seconds',
        help: 'How late a send job started after its pacing time (notBefore, shifted by pauses)',
        buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 15, 60, 300],
        registers,
      }),
      recordFailures: new Counter({ name: 'gravitas_campaign_sent_records_failed_total', help: 'Campaign messages sent whose `sent` tracking record could not be written', registers }),
    };
  }

  async start(): Promise<void> {
    const { nc, names, config } = this.cell;
    this.js = jetstream(nc, { timeout: API_TIMEOUT_MS });
    await untilReady(async () => {
      this.jsm = await jetstreamManager(nc, { timeout: API_TIMEOUT_MS });
      await ensureWorkStream(this.jsm, names, config.replicas);
      await this.ensureConsumer();
      // Shared with the admin API (same settings, whoever comes first creates them); reads go to the leader.
      ({ campaigns: this.campaigns, publishers: this.publishers } = await openEngageBuckets(nc, config));
      this.consumer = await this.js.consumers.get(names.campaignWorkStream, RUNNER_DURABLE);
    }, 'campaign work queue');
    for (let i = 0; i < JOBS_PER_CELL; i++) void this.pull();
  }

  /** Stops pulling; jobs still running after a short grace are handed back at once (never acked later). */
  async stop(): Promise<void> {
    this.stopping = true;
    const grace = sleep(STOP_GRACE_MS, undefined, { ref: false });
    await Promise.race([Promise.all([...this.active].map((r) => r.finished)), grace]);
    for (const r of this.active) r.nak(0);
  }

  private async ensureConsumer(): Promise<void> {
    const stream = this.cell.names.campaignWorkStream;
    const cfg: Partial<ConsumerConfig> = {
      durable_name: RUNNER_DURABLE,
      ack_policy: AckPolicy.Explicit,
      deliver_policy: DeliverPolicy.All,
      ack_wait: ACK_WAIT_MS * NS_PER_MS,
      max_ack_pending: MAX_ACK_PENDING,
      // Unlimited: a paused campaign's jobs come back again and again, and must not be dropped.
      max_deliver: -1,
    };
    try {
      await this.jsm.consumers.add(stream, cfg);
    } catch (err) {
      // Another cell created it first, possibly with an older config: bring it to ours.
      const exists = await this.jsm.consumers.info(stream, RUNNER_DURABLE).then(() => true, () => false);
      if (!exists) throw err;
      await this.jsm.consumers.update(stream, RUNNER_DURABLE, { ack_wait: cfg.ack_wait!, max_ack_pending: MAX_ACK_PENDING, max_deliver: -1 });
    }
  }

  /** One of JOBS_PER_CELL loops: pull one job, work it, pull the next. */
  private async pull(): Promise<void> {
    let wait = 0;
    while (!this.stopping) {
      let m: JsMsg | null;
      try {
        m = await this.consumer.next({ expires: PULL_EXPIRES_MS });
        wait = 0;
      } catch (err) {
        if (this.stopping) return;
        wait = Math.min(Math.max(wait * 2, 250), 5_000);
        this.warn('pull', 'pulling campaign jobs failed', err);
        await sleep(wait);
        // Someone deleted the consumer (or the stream): set them up again.
        if (isNotFound(err)) await ensureWorkStream(this.jsm, this.cell.names, this.cell.config.replicas).then(() => this.ensureConsumer()).catch(() => undefined);
        continue;
      }
      if (!m) continue;
      if (this.stopping) {
        m.nak();
        return;
      }
      await this.run(m);
    }
  }

  private async run(m: JsMsg): Promise<void> {
    let job: CampaignJob;
    try {
      job = decodeJob(m.data);
    } catch {
      m.term();
      this.metrics.jobs.inc({ kind: 'unknown', result: 'malformed' });
      return;
    }
    const r = new JobRun(m);
    this.active.add(r);
    let result: string;
    try {
      result = job.k === 'expand' ? await this.expand(job.c, r) : await this.send(job, r);
    } catch (err) {
      if (err instanceof CampaignJobError && err.code === ErrorCode.BAD_MESSAGE) {
        // Nothing a retry can fix: the campaign stays as it is, and says why in the log.
        this.cell.log(`campaign ${job.c}: ${job.k} job dropped`, err);
        r.term();
        result = 'malformed';
      } else {
        this.warn(`${job.c}/${job.k}`, `campaign ${job.c}: ${job.k} job failed, retried later`, err);
        r.nak(retryDelay(r.deliveries));
        result = 'error';
      }
    } finally {
      r.end();
      this.active.delete(r);
    }
    this.metrics.jobs.inc({ kind: job.k, result });
  }

  // ---- expansion ----------------------------------------------------------------------

  /**
   * Lists the audience and enqueues its send jobs in batches, each with the time
   * it may run. Acked once every batch is enqueued and counted in the ledger; a
   * run that dies midway is taken over by a new run with fresh batch numbers,
   * which makes the dead run's jobs no-ops (a predicate audience may list
   * differently the second time, so old and new batch contents cannot be matched).
   */
  private async expand(id: string, r: JobRun): Promise<string> {
    const c = await this.campaign(id);
    if (!c) return this.answer(r, 'term', 'unknown');
    if (c.state === 'done') return this.answer(r, 'ack', 'done');
    // The admin API writes `running` before it enqueues, and back to draft if the enqueue failed (it may
    // have gone through all the same). Dropped only once a new start's job can no longer be taken for
    // this one by the work queue's de-duplication.
    if (c.state === 'draft') return this.answer(r, r.ageMs > DRAFT_JOB_MAX_AGE_MS ? 'term' : Math.min(60_000, PAUSED_RETRY_MS * r.deliveries), 'draft');
    let now = Date.now();
    // Expand when the campaign may start, so that its jobs do not wait in the queue holding ack slots.
    if (c.startAt !== undefined && c.startAt > now) return this.answer(r, c.startAt - now, 'early');
    // The sender name is fixed for the whole campaign: every retry must carry the same (sender, id).
    const sender = await this.senderOf(c.publisher);
    // Claim the expansion: the first run, or a new run over one whose heartbeat stopped.
    const claim: { run?: Ledger } = {};
    const l = await this.changeLedger(id, (cur) => {
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
      if (l?.batches !== undefined) return this.settle(c, l, r, 'again'); // expanded already (the ack was lost)
      return this.answer(r, EXPAND_BEAT_MS, 'busy'); // another cell is expanding it right now
    }
    const { batchSize, maxRatePerSec } = this.cell.config.campaigns;
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
      const cur = await this.changeLedger(id, (x) => (x?.run !== run.run ? undefined : { ...x, next: Math.max(x.next, n + RESERVE), beat: Date.now() }));
      if (cur?.run !== run.run) throw new Superseded();
      reserved = cur.next - run.base;
      beat = Date.now();
    };
    const enqueue = async (users: string[]): Promise<void> => {
      await keep();
      const n = run.base + i;
      await enqueueJob(this.js, this.cell.names, { k: 'send', c: id, n, users, notBefore: Math.round(run.t0 + i * intervalMs) }, `${id}.b${n}`);
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
      if (err instanceof Superseded) return this.answer(r, 'leave', 'superseded');
      // Give up the claim, so that the retry starts a new run at once instead of waiting out the heartbeat.
      await this.changeLedger(id, (x) => (x?.run === run.run && x.batches === undefined ? { ...x, beat: 0 } : undefined)).catch(() => undefined);
      throw err;
    }
    const fin = await this.changeLedger(id, (x) =>
      x?.run !== run.run
        ? undefined
        : { ...x, batches: i, recipients, failed: invalid > 0 ? addCounts(x.failed, { [ErrorCode.UNDELIVERABLE]: invalid }) : x.failed, beat: Date.now() },
    );
    if (fin?.run !== run.run) return this.answer(r, 'leave', 'superseded');
    return this.settle(c, fin, r, 'ok');
  }

  /** The audience in listing order, each user once. */
  private async *audience(c: Campaign): AsyncGenerator<string> {
    const a = c.audience;
    if ('users' in a) {
      yield* new Set(a.users);
      return;
    }
    for await (const p of this.profiles()) if (matches(a.where, p.attrs)) yield p.user;
  }

  // ---- sending ------------------------------------------------------------------------

  private async send(job: Extract<CampaignJob, { k: 'send' }>, r: JobRun): Promise<string> {
    const c = await this.campaign(job.c);
    if (!c) return this.answer(r, 'term', 'unknown');
    if (c.state === 'done') return this.answer(r, 'ack', 'done');
    let l = await this.ledger(c.id);
    if (!l) return this.answer(r, 'term', 'unknown');
    if (job.n < l.base) return this.answer(r, 'ack', 'stale'); // a batch of an expansion run that was taken over
    if (testBit(l.done, job.n - l.base)) return this.settle(c, l, r, 'again');
    const now = Date.now();
    if (c.state !== 'running') {
      if (c.state === 'paused' && l.pausedSince === undefined) {
        l = (await this.changeLedger(c.id, (x) => (x && x.pausedSince === undefined ? { ...x, pausedSince: now } : undefined))) ?? l;
      }
      // Look again in a second if the job was due when the pause began, else when it would be due then.
      const since = l.pausedSince ?? now;
      return this.answer(r, Math.max(PAUSED_RETRY_MS, job.notBefore + l.shift - since), 'paused');
    }
    if (l.pausedSince !== undefined) {
      // Resumed: the pause moves every later batch back by its length, so the rate holds after it.
      l = (await this.changeLedger(c.id, (x) => (x && x.pausedSince !== undefined ? { ...x, shift: x.shift + Math.max(0, now - x.pausedSince), pausedSince: undefined } : undefined))) ?? l;
    }
    const due = job.notBefore + l.shift;
    if (now < due) return this.answer(r, due - now, 'early');
    this.metrics.lag.observe((now - due) / 1000);
    const tally = await this.deliverBatch(c, l.from, job.users);
    if (tally.retry > 0) return this.answer(r, retryDelay(r.deliveries), 'retry');
    const done = await this.changeLedger(c.id, (x) => {
      if (!x || job.n < x.base || testBit(x.done, job.n - x.base)) return undefined;
      return { ...x, done: withBit(x.done, job.n - x.base), sent: x.sent + tally.sent, failed: addCounts(x.failed, tally.failed) };
    });
    if (!done) return this.answer(r, 'term', 'unknown');
    if (job.n < done.base) return this.answer(r, 'ack', 'stale');
    return this.settle(c, done, r, 'ok');
  }

  /** Every recipient of a batch, USERS_PER_JOB at a time. */
  private async deliverBatch(c: Campaign, sender: string, users: string[]): Promise<Tally> {
    const tally: Tally = { sent: 0, failed: {}, retry: 0 };
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < users.length) {
        const o = await this.deliverOne(c, sender, users[next++]!);
        if (o.s === 'sent') tally.sent++;
        else if (o.s === 'failed') tally.failed[o.code] = (tally.failed[o.code] ?? 0) + 1;
        else tally.retry++;
      }
    };
    await Promise.all(Array.from({ length: Math.min(USERS_PER_JOB, users.length) }, worker));
    return tally;
  }

  /**
   * One recipient: skipped if marked; else the message under custody, and once it
   * settled, the `sent` record and then the marker. Every step is safe to repeat:
   * the same (sender, id) is refused by the mailbox and hidden by the SDK, and
   * the tracking tiers de-duplicate the record by its event id.
   */
  private async deliverOne(c: Campaign, sender: string, user: string): Promise<Outcome> {
    const key = markerKey(c.id, user);
    try {
      const marked = await this.marker(key);
      if (marked) return marked;
      // A recipient who blocked the sender name gets nothing, as with a user's message.
      if (await this.cell.social.refuses(user, sender)) return await this.mark(key, ErrorCode.UNDELIVERABLE);
      const item: ChatItem = { k: 'm', id: campaignMessageId(c.id), from: sender, fd: CAMPAIGN_DEVICE, to: user, text: c.content.text, ts: Date.now(), c: c.id, sys: 'campaign' };
      const st = await settleWithin(this.cell.custody.submitSystem(item), SETTLE_TIMEOUT_MS);
      if (st.s === 'failed') return FINAL_CODES.has(st.code) ? await this.mark(key, st.code) : { s: 'retry', code: st.code };
      await this.recordSent(c.id, user, item.ts);
      return await this.mark(key, '');
    } catch (err) {
      const code = err instanceof ProtocolError ? err.code : ErrorCode.STORAGE_UNAVAILABLE;
      this.warn(`${c.id}/deliver`, `campaign ${c.id}: sending to ${user} failed (${code}), the batch is retried`, err);
      return { s: 'retry', code };
    }
  }

  /** The recipient's marker as an outcome: empty value = sent, else the failure code. */
  private async marker(key: string): Promise<Outcome | undefined> {
    const e = await this.campaigns.get(key);
    if (!e || e.operation !== 'PUT') return undefined;
    return e.value.length === 0 ? { s: 'sent' } : { s: 'failed', code: fromUtf8.decode(e.value) };
  }

  /** Creates the marker; if another runner made it first, its value is the outcome (counted once, by whoever made it). */
  private async mark(key: string, code: string): Promise<Outcome> {
    try {
      await this.campaigns.create(key, code === '' ? EMPTY : utf8.encode(code));
    } catch (err) {
      if (!isCasConflict(err)) throw err;
      const o = await this.marker(key);
      if (o) return o;
      throw err;
    }
    if (code === '') this.metrics.sent.inc();
    else this.metrics.failed.inc({ code });
    return code === '' ? { s: 'sent' } : { s: 'failed', code };
  }

  /** The `sent` tracking record. A failure does not undo or repeat the send: it is logged and counted. */
  private async recordSent(c: string, user: string, ts: number): Promise<void> {
    try {
      const pv = await this.profileVersion(user);
      await this.cell.intake.record({ eid: sentEventId(c), c, u: user, d: '_', ev: 'sent', ts, at: Date.now(), pv });
    } catch (err) {
      this.metrics.recordFailures.inc();
      this.warn(`${c}/record`, `campaign ${c}: the sent record of ${user} could not be written`, err);
    }
  }

  // ---- progress and completion --------------------------------------------------------

  /**
   * After the ledger changed: project it to `progress.<id>`, and once every batch
   * of the current run is finished, move the campaign from running to done. The
   * job is acked only after both; a paused campaign keeps its last job coming
   * back, so that it is done once resumed.
   */
  private async settle(c: Campaign, l: Ledger, r: JobRun, result: string): Promise<string> {
    await this.project(c.id);
    if (l.batches === undefined || countBits(l.done) < l.batches) return this.answer(r, 'ack', result);
    const state = await this.finish(c.id);
    if (state === 'paused' || state === 'draft') return this.answer(r, PAUSED_RETRY_MS, 'paused');
    return this.answer(r, 'ack', result);
  }

  /** Writes the progress record from the ledger (read after progress, so a slower writer cannot regress it). */
  private async project(id: string): Promise<void> {
    const key = progressKey(id);
    for (let attempt = 0; attempt < CAS_ATTEMPTS; attempt++) {
      const cur = await this.campaigns.get(key);
      const l = await this.ledger(id);
      if (!l) return;
      const p: CampaignProgress = {
        ...(l.batches !== undefined && { batches: l.batches }),
        batchesDone: countBits(l.done),
        recipients: l.recipients ?? 0,
        sent: l.sent,
        failed: l.failed,
      };
      const data = pack(p);
      if (cur?.operation === 'PUT' && Buffer.compare(cur.value, data) === 0) return;
      try {
        if (cur) await this.campaigns.update(key, data, cur.revision);
        else await this.campaigns.create(key, data);
        return;
      } catch (err) {
        if (!isCasConflict(err)) throw err;
        await jitter(attempt);
      }
    }
    throw new CampaignJobError(ErrorCode.BUSY, `progress of campaign ${id} is too contended`);
  }

  /** running → done (compare-and-set on the record the admin API also writes); returns the state it is in. */
  private async finish(id: string): Promise<string> {
    const key = campaignKey(id);
    for (let attempt = 0; attempt < CAS_ATTEMPTS; attempt++) {
      const e = await this.campaigns.get(key);
      if (!e || e.operation !== 'PUT') return 'unknown';
      const raw = unpack(e.value) as Record<string, unknown>;
      if (raw.state !== 'running') return String(raw.state);
      try {
        await this.campaigns.update(key, pack({ ...raw, state: 'done', doneAt: Date.now() }), e.revision);
        return 'done';
      } catch (err) {
        if (!isCasConflict(err)) throw err;
        await jitter(attempt);
      }
    }
    throw new CampaignJobError(ErrorCode.BUSY, `campaign ${id} is too contended`);
  }

  // ---- records ------------------------------------------------------------------------

  private async campaign(id: string): Promise<Campaign | undefined> {
    const e = await this.campaigns.get(campaignKey(id));
    return e && e.operation === 'PUT' ? decodeCampaign(id, e.value) : undefined;
  }

  private async ledger(id: string): Promise<Ledger | undefined> {
    const e = await this.campaigns.get(ledgerKey(id));
    return e && e.operation === 'PUT' ? decodeLedger(e.value) : undefined;
  }

  /** Compare-and-set on the ledger: `f` returns the new value, or undefined to leave it. Returns the value now stored. */
  private async changeLedger(id: string, f: (cur: Ledger | undefined) => Ledger | undefined): Promise<Ledger | undefined> {
    const key = ledgerKey(id);
    for (let attempt = 0; attempt < CAS_ATTEMPTS; attempt++) {
      const e = await this.campaigns.get(key);
      const cur = e && e.operation === 'PUT' ? decodeLedger(e.value) : undefined;
      const next = f(cur);
      if (!next) return cur;
      try {
        if (e) await this.campaigns.update(key, encodeLedger(next), e.revision);
        else await this.campaigns.create(key, encodeLedger(next));
        return next;
      } catch (err) {
        if (!isCasConflict(err)) throw err;
        await jitter(attempt);
      }
    }
    throw new CampaignJobError(ErrorCode.BUSY, `ledger of campaign ${id} is too contended`);
  }

  /** The sender name of a publisher's campaign messages. */
  private async senderOf(publisher: string): Promise<string> {
    const e = await this.publishers.get(publisherKey(publisher));
    // Missing or unreadable: perhaps not written yet, or being fixed; the job comes back with backoff.
    if (!e || e.operation !== 'PUT') throw new CampaignJobError(ErrorCode.NOT_FOUND, `publisher ${publisher} does not exist`);
    let sender: string;
    try {
      sender = decodePublisher(e.value).sender;
    } catch (err) {
      throw new CampaignJobError(ErrorCode.NOT_FOUND, `publisher ${publisher}: malformed record`, { cause: err });
    }
    // Records from before the system namespace get its `_` here: a client can never hold the name.
    if (!isName(sender, MAX_ID_LENGTH - 1)) throw new CampaignJobError(ErrorCode.NOT_FOUND, `publisher ${publisher} has no valid sender name`);
    return systemSender(sender);
  }

  // ---- profiles -------------------------------------------------------------------------

  private profiles(): AsyncIterable<ProfileView> {
    return this.cell.profiles.store.all();
  }

  private profileVersion(user: string): Promise<number> {
    return this.cell.profiles.version(user);
  }

  // ---- helpers --------------------------------------------------------------------------

  /** Answers the job and returns the result label for the jobs metric. */
  private answer(r: JobRun, how: 'ack' | 'term' | 'leave' | number, result: string): string {
    if (how === 'ack') r.ack();
    else if (how === 'term') r.term();
    else if (how === 'leave') r.leave();
    else r.nak(how);
    return result;
  }

  private warn(kind: string, msg: string, err: unknown): void {
    const now = Date.now();
    const w = this.warned.get(kind);
    if (w && now - w.at < WARN_EVERY_MS) {
      w.suppressed++;
      return;
    }
    if (this.warned.size > 1_000) this.warned.clear();
    this.warned.set(kind, { at: now, suppressed: 0 });
    this.cell.log(w?.suppressed ? `${msg} (and ${w.suppressed} more like it)` : msg, err);
  }
}

/** Thrown inside an expansion that another run took over. */
class Superseded extends Error {
  override name = 'Superseded';
}

function jitter(attempt: number): Promise<void> {
  return sleep(Math.random() * 5 * Math.min(attempt + 1, 20));
}

/** A settlement, or a retryable failure if it takes too long (custody keeps the item; a retry joins it). */
function settleWithin(p: Promise<Settlement>, ms: number): Promise<Settlement> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<Settlement>((resolve) => {
    timer = setTimeout(() => resolve({ s: 'failed', code: ErrorCode.BUSY }), ms);
  });
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}
