import type { Counter, Histogram } from 'prom-client';
import { ErrorCode, ProtocolError } from '@gravitas/protocol';
import type { ChatItem } from '../core/envelope.js';
import type { CustodyPort, Settlement, SocialGraph } from '../core/ports.js';
import { isCasConflict, type CasKv } from '../infra/kv.js';
import { campaignMessageId, type Campaign } from './campaign-types.js';
import type { CampaignJob } from './jobs.js';
import type { TrackingRecord } from './records.js';
import { answer, PAUSED_RETRY_MS, retryDelay, type JobRun, type Warnings } from './runner-job.js';
import { addCounts, testBit, withBit, type CampaignRecords } from './runner-ledger.js';

/*
 * The `send` job of a campaign (docs/campaigns.md, "Delivery"): one paced batch
 * of recipients, each handed one message under custody and marked in KV, then
 * counted in the ledger (runner-ledger.ts).
 */

/** Recipients of one send job in custody at once. */
const USERS_PER_JOB = 32;
/** A recipient whose custody has not settled by then is retried with the batch. */
const SETTLE_TIMEOUT_MS = 60_000;
/** Settlement failures that are final for a recipient, as for the SDK (docs/custody.md). */
const FINAL_CODES: ReadonlySet<string> = new Set([ErrorCode.UNDELIVERABLE, ErrorCode.MAILBOX_FULL]);
/** The device name campaign messages come from. */
export const CAMPAIGN_DEVICE = 'campaign';

/**
 * The event id of a `sent` record: `sent:<campaign>` (records are keyed by user and
 * event id). The colon keeps it out of reach of devices, whose event ids are
 * protocol names: a device cannot pre-empt its own `sent` record.
 */
export const sentEventId = (c: string): string => `sent:${c}`;
/** A recipient's marker (campaigns bucket): empty once sent, else the final failure code. */
export const markerKey = (c: string, user: string): string => `sent.${c}.${user}`;

const EMPTY = new Uint8Array(0);
const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder();

/** What became of one recipient of a batch. */
type Outcome = { s: 'sent' } | { s: 'failed'; code: string } | { s: 'retry'; code: string };

interface Tally { sent: number; failed: Record<string, number>; retry: number }

/** What sending uses of other parts of the cell. */
export interface SendDeps {
  custody: Pick<CustodyPort, 'submitSystem'>;
  social: Pick<SocialGraph, 'refuses'>;
  /** The current profile version a `sent` record carries (engage/profiles.ts). */
  profiles: { version(user: string): Promise<number> };
  /** Where the `sent` record goes (engage/intake.ts TrackingIntake.record). */
  intake: { record(rec: TrackingRecord): Promise<void> };
}

/** The runner's metrics that sending moves (runner.ts registers them). */
export interface SendMetrics {
  sent: Counter;
  failed: Counter<'code'>;
  lag: Histogram;
  recordFailures: Counter;
}

export class Sending {
  constructor(
    private readonly records: CampaignRecords,
    private readonly deps: SendDeps,
    private readonly metrics: SendMetrics,
    private readonly warnings: Warnings,
  ) {}

  private get campaigns(): CasKv {
    return this.records.campaigns;
  }

  async send(job: Extract<CampaignJob, { k: 'send' }>, r: JobRun): Promise<string> {
    const c = await this.records.campaign(job.c);
    if (!c) return answer(r, 'term', 'unknown');
    if (c.state === 'done') return answer(r, 'ack', 'done');
    let l = await this.records.ledger(c.id);
    if (!l) return answer(r, 'term', 'unknown');
    if (job.n < l.base) return answer(r, 'ack', 'stale'); // a batch of an expansion run that was taken over
    if (testBit(l.done, job.n - l.base)) return this.records.settle(c, l, r, 'again');
    const now = Date.now();
    if (c.state !== 'running') {
      if (c.state === 'paused' && l.pausedSince === undefined) {
        l = (await this.records.changeLedger(c.id, (x) => (x && x.pausedSince === undefined ? { ...x, pausedSince: now } : undefined))) ?? l;
      }
      // Look again in a second if the job was due when the pause began, else when it would be due then.
      const since = l.pausedSince ?? now;
      return answer(r, Math.max(PAUSED_RETRY_MS, job.notBefore + l.shift - since), 'paused');
    }
    if (l.pausedSince !== undefined) {
      // Resumed: the pause moves every later batch back by its length, so the rate holds after it.
      l = (await this.records.changeLedger(c.id, (x) => (x && x.pausedSince !== undefined ? { ...x, shift: x.shift + Math.max(0, now - x.pausedSince), pausedSince: undefined } : undefined))) ?? l;
    }
    const due = job.notBefore + l.shift;
    if (now < due) return answer(r, due - now, 'early');
    this.metrics.lag.observe((now - due) / 1000);
    const tally = await this.deliverBatch(c, l.from, job.users);
    if (tally.retry > 0) return answer(r, retryDelay(r.deliveries), 'retry');
    const done = await this.records.changeLedger(c.id, (x) => {
      if (!x || job.n < x.base || testBit(x.done, job.n - x.base)) return undefined;
      return { ...x, done: withBit(x.done, job.n - x.base), sent: x.sent + tally.sent, failed: addCounts(x.failed, tally.failed) };
    });
    if (!done) return answer(r, 'term', 'unknown');
    if (job.n < done.base) return answer(r, 'ack', 'stale');
    return this.records.settle(c, done, r, 'ok');
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
      if (await this.deps.social.refuses(user, sender)) return await this.mark(key, ErrorCode.UNDELIVERABLE);
      const item: ChatItem = { k: 'm', id: campaignMessageId(c.id), from: sender, fd: CAMPAIGN_DEVICE, to: user, text: c.content.text, ts: Date.now(), c: c.id, sys: 'campaign' };
      const st = await settleWithin(this.deps.custody.submitSystem(item), SETTLE_TIMEOUT_MS);
      if (st.s === 'failed') return FINAL_CODES.has(st.code) ? await this.mark(key, st.code) : { s: 'retry', code: st.code };
      await this.recordSent(c.id, user, item.ts);
      return await this.mark(key, '');
    } catch (err) {
      const code = err instanceof ProtocolError ? err.code : ErrorCode.STORAGE_UNAVAILABLE;
      this.warnings.warn(`${c.id}/deliver`, `campaign ${c.id}: sending to ${user} failed (${code}), the batch is retried`, err);
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
      const pv = await this.deps.profiles.version(user);
      await this.deps.intake.record({ eid: sentEventId(c), c, u: user, d: '_', ev: 'sent', ts, at: Date.now(), pv });
    } catch (err) {
      this.metrics.recordFailures.inc();
      this.warnings.warn(`${c}/record`, `campaign ${c}: the sent record of ${user} could not be written`, err);
    }
  }
}

/** A settlement, or a retryable failure if it takes too long (custody keeps the item; a retry joins it). */
function settleWithin(p: Promise<Settlement>, ms: number): Promise<Settlement> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<Settlement>((resolve) => {
    timer = setTimeout(() => resolve({ s: 'failed', code: ErrorCode.BUSY }), ms);
  });
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}
