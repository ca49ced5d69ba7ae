import { setTimeout as sleep } from 'node:timers/promises';
import { Counter, Histogram } from 'prom-client';
import {
  AckPolicy, DeliverPolicy, jetstream, jetstreamManager,
  type Consumer, type ConsumerConfig, type JetStreamClient, type JetStreamManager, type JsMsg,
} from '@nats-io/jetstream';
import { ErrorCode } from '@gravitas/protocol';
import type { CellContext } from '../core/context.js';
import { API_TIMEOUT_MS, isNotFound, NS_PER_MS } from '../infra/jetstream.js';
import { untilReady } from '../infra/nats.js';
import { openEngageBuckets } from './campaign-store.js';
import { decodeJob, ensureWorkStream, type CampaignJob } from './jobs.js';
import { Expansion, type ProfileSource } from './runner-expand.js';
import { JobRun, retryDelay, Warnings } from './runner-job.js';
import { CampaignJobError, CampaignRecords } from './runner-ledger.js';
import { Sending, type SendDeps, type SendMetrics } from './runner-send.js';

/*
 * The campaign runner of a cell (docs/campaigns.md, "Delivery"). Every cell of
 * every node pulls jobs from the one durable consumer of the work queue, a few at
 * a time. `expand` lists the audience and enqueues paced `send` jobs
 * (runner-expand.ts); `send` hands each recipient one message under custody and
 * marks them in KV (runner-send.ts). A job is acknowledged only when its work is
 * complete, so a crash anywhere makes JetStream hand it to another cell after
 * the ack wait, and the markers, the ledger (runner-ledger.ts) and the
 * deterministic message id make the re-run send nothing twice.
 */

/** The durable consumer every runner of the cluster shares. */
export const RUNNER_DURABLE = 'runners';
const ACK_WAIT_MS = 30_000;
/**
 * Delivered, unacknowledged jobs cluster-wide. Jobs waiting for their time (a
 * delayed nak) count too: a backlog of waiting jobs beyond this delays jobs
 * queued behind it (docs: "Limits").
 */
const MAX_ACK_PENDING = 10_000;
/** Jobs one cell works on at once: it pulls only for a free slot (backpressure). */
const JOBS_PER_CELL = 4;
const PULL_EXPIRES_MS = 5_000;
/** How long stop() lets running jobs finish before handing them back. */
const STOP_GRACE_MS = 3_000;

/** What the runner uses of other parts of the cell: custody, blocks, profiles and the tracking intake. */
export interface RunnerDeps extends SendDeps {
  profiles: SendDeps['profiles'] & ProfileSource;
}

export class CampaignRunner {
  private readonly metrics: SendMetrics & { jobs: Counter<'kind' | 'result'> };
  private readonly warnings: Warnings;
  private js!: JetStreamClient;
  private jsm!: JetStreamManager;
  private consumer!: Consumer;
  private expansion!: Expansion;
  private sending!: Sending;
  private stopping = false;
  private readonly active = new Set<JobRun>();

  constructor(
    private readonly ctx: CellContext,
    private readonly deps: RunnerDeps,
  ) {
    const registers = [ctx.metrics.registry];
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
    this.warnings = new Warnings(ctx.log);
  }

  async start(): Promise<void> {
    const { nc, names, config } = this.ctx;
    this.js = jetstream(nc, { timeout: API_TIMEOUT_MS });
    await untilReady(async () => {
      this.jsm = await jetstreamManager(nc, { timeout: API_TIMEOUT_MS });
      await ensureWorkStream(this.jsm, names, config.replicas);
      await this.ensureConsumer();
      // Shared with the admin API (same settings, whoever comes first creates them); reads go to the leader.
      const { campaigns, publishers } = await openEngageBuckets(nc, config);
      const records = new CampaignRecords(campaigns, publishers);
      this.expansion = new Expansion(records, this.js, names, config.campaigns, this.deps.profiles);
      this.sending = new Sending(records, this.deps, this.metrics, this.warnings);
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
    const stream = this.ctx.names.campaignWorkStream;
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
        this.warnings.warn('pull', 'pulling campaign jobs failed', err);
        await sleep(wait);
        // Someone deleted the consumer (or the stream): set them up again.
        if (isNotFound(err)) await ensureWorkStream(this.jsm, this.ctx.names, this.ctx.config.replicas).then(() => this.ensureConsumer()).catch(() => undefined);
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
      result = job.k === 'expand' ? await this.expansion.expand(job.c, r) : await this.sending.send(job, r);
    } catch (err) {
      if (err instanceof CampaignJobError && err.code === ErrorCode.BAD_MESSAGE) {
        // Nothing a retry can fix: the campaign stays as it is, and says why in the log.
        this.ctx.log(`campaign ${job.c}: ${job.k} job dropped`, err);
        r.term();
        result = 'malformed';
      } else {
        this.warnings.warn(`${job.c}/${job.k}`, `campaign ${job.c}: ${job.k} job failed, retried later`, err);
        r.nak(retryDelay(r.deliveries));
        result = 'error';
      }
    } finally {
      r.end();
      this.active.delete(r);
    }
    this.metrics.jobs.inc({ kind: job.k, result });
  }
}
