import { setTimeout as sleep } from 'node:timers/promises';
import { ErrorCode, isName, MAX_ID_LENGTH, MAX_TEXT_LENGTH, pack, ProtocolError, unpack } from '@gravitas/protocol';
import { casModify, type CasKv } from '../infra/kv.js';
import { campaignKey, decodeCampaign as decodeCampaignRecord, decodePublisher, progressKey, publisherKey } from './campaign-store.js';
import { campaignMessageId, systemSender, type Campaign, type CampaignProgress } from './campaign-types.js';
import { answer, PAUSED_RETRY_MS, type JobRun } from './runner-job.js';

/*
 * The records the campaign runner works from (campaigns bucket): the campaign,
 * the runner's ledger of it, the progress projected from the ledger, and the
 * publisher's sender name (publishers bucket). Every change is a
 * compare-and-set, so jobs running twice or side by side count once.
 */

/**
 * Compare-and-set attempts on one runner record, each after a short random pause.
 * More than CAS_ATTEMPTS (infra/kv.ts): every cell of the cluster finishes send
 * jobs of one campaign against the same ledger and progress keys (4 jobs per cell
 * at once), and giving up costs the whole batch's retry.
 */
const CAS_ATTEMPTS = 50;

/** The runner's record of a campaign, and a recipient's marker (campaigns bucket). */
export const ledgerKey = (c: string): string => `ledger.${c}`;

/** A job that cannot go on: BAD_MESSAGE is permanent (the job is dropped), anything else is retried. */
export class CampaignJobError extends ProtocolError {
  override name = 'CampaignJobError';
}

/**
 * The runner's own record of a campaign (`ledger.<id>` in the campaigns bucket):
 * the truth that `progress.<id>` is projected from. Batch completion and its
 * counts change in one compare-and-set, so a job that runs twice counts once.
 */
export interface Ledger {
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

const num = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);
const nat = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;

// ---- ledger bits and codecs ---------------------------------------------------------

export function testBit(bits: Uint8Array, i: number): boolean {
  return i >= 0 && (bits[i >> 3] ?? 0) & (1 << (i & 7)) ? true : false;
}

export function withBit(bits: Uint8Array, i: number): Uint8Array {
  const out = new Uint8Array(Math.max(bits.length, (i >> 3) + 1));
  out.set(bits);
  out[i >> 3]! |= 1 << (i & 7);
  return out;
}

export function countBits(bits: Uint8Array): number {
  let n = 0;
  for (let b of bits) for (; b; b &= b - 1) n++;
  return n;
}

export function addCounts(a: Record<string, number>, b: Record<string, number>): Record<string, number> {
  const out = { ...a };
  for (const [k, v] of Object.entries(b)) out[k] = (out[k] ?? 0) + v;
  return out;
}

function isCounts(v: unknown): v is Record<string, number> {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && Object.values(v).every(nat);
}

export function decodeLedger(data: Uint8Array): Ledger {
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

export function encodeLedger(l: Ledger): Uint8Array {
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

/** A short random pause after a conflict, so that writers that collided do not collide again at once. */
function jitter(attempt: number): Promise<void> {
  return sleep(Math.random() * 5 * Math.min(attempt + 1, 20));
}

// ---- the records --------------------------------------------------------------------

export class CampaignRecords {
  constructor(
    /** The campaigns bucket (campaign-store.ts openEngageBuckets: reads go to the leader). */
    readonly campaigns: CasKv,
    readonly publishers: Pick<CasKv, 'get'>,
  ) {}

  async campaign(id: string): Promise<Campaign | undefined> {
    const e = await this.campaigns.get(campaignKey(id));
    return e && e.operation === 'PUT' ? decodeCampaign(id, e.value) : undefined;
  }

  async ledger(id: string): Promise<Ledger | undefined> {
    const e = await this.campaigns.get(ledgerKey(id));
    return e && e.operation === 'PUT' ? decodeLedger(e.value) : undefined;
  }

  /** Compare-and-set on the ledger: `f` returns the new value, or undefined to leave it. Returns the value now stored. */
  changeLedger(id: string, f: (cur: Ledger | undefined) => Ledger | undefined): Promise<Ledger | undefined> {
    return casModify(
      this.campaigns,
      ledgerKey(id),
      (data) => {
        const cur = data === undefined ? undefined : decodeLedger(data);
        const next = f(cur);
        return next ? { write: encodeLedger(next), result: next } : { result: cur };
      },
      { attempts: CAS_ATTEMPTS, backoff: jitter, contended: () => new CampaignJobError(ErrorCode.BUSY, `ledger of campaign ${id} is too contended`) },
    );
  }

  /**
   * After the ledger changed: project it to `progress.<id>`, and once every batch
   * of the current run is finished, move the campaign from running to done. The
   * job is acked only after both; a paused campaign keeps its last job coming
   * back, so that it is done once resumed.
   */
  async settle(c: Campaign, l: Ledger, r: JobRun, result: string): Promise<string> {
    await this.project(c.id);
    if (l.batches === undefined || countBits(l.done) < l.batches) return answer(r, 'ack', result);
    const state = await this.finish(c.id);
    if (state === 'paused' || state === 'draft') return answer(r, PAUSED_RETRY_MS, 'paused');
    return answer(r, 'ack', result);
  }

  /** Writes the progress record from the ledger (read after progress, so a slower writer cannot regress it). */
  async project(id: string): Promise<void> {
    let l: Ledger | undefined;
    await casModify(
      this.campaigns,
      progressKey(id),
      (cur) => {
        if (!l) return { result: undefined };
        const p: CampaignProgress = {
          ...(l.batches !== undefined && { batches: l.batches }),
          batchesDone: countBits(l.done),
          recipients: l.recipients ?? 0,
          sent: l.sent,
          failed: l.failed,
        };
        const data = pack(p);
        return cur && Buffer.compare(cur, data) === 0 ? { result: undefined } : { write: data, result: undefined };
      },
      {
        attempts: CAS_ATTEMPTS,
        backoff: jitter,
        contended: () => new CampaignJobError(ErrorCode.BUSY, `progress of campaign ${id} is too contended`),
        // Each attempt reads the progress first, then the ledger it projects.
        read: async (key) => {
          const e = await this.campaigns.get(key);
          l = await this.ledger(id);
          return e;
        },
      },
    );
  }

  /** running → done (compare-and-set on the record the admin API also writes); returns the state it is in. */
  finish(id: string): Promise<string> {
    return casModify(
      this.campaigns,
      campaignKey(id),
      (cur) => {
        if (!cur) return { result: 'unknown' };
        const raw = unpack(cur) as Record<string, unknown>;
        if (raw.state !== 'running') return { result: String(raw.state) };
        return { write: pack({ ...raw, state: 'done', doneAt: Date.now() }), result: 'done' };
      },
      { attempts: CAS_ATTEMPTS, backoff: jitter, contended: () => new CampaignJobError(ErrorCode.BUSY, `campaign ${id} is too contended`) },
    );
  }

  /** The sender name of a publisher's campaign messages. */
  async senderOf(publisher: string): Promise<string> {
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
}
