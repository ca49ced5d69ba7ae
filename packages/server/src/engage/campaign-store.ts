import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import type { NatsConnection } from '@nats-io/transport-node';
import type { JetStreamClient } from '@nats-io/jetstream';
import { Kvm, type KV, type KvEntry } from '@nats-io/kv';
import { isName, pack, unpack } from '@gravitas/protocol';
import type { NodeConfig } from '../config/index.js';
import { casModifyRev } from '../infra/kv.js';
import { Names } from '../infra/subjects.js';
import { isObj, type NewCampaign, type NewPublisher, type Obj } from './campaign-input.js';
import {
  CAMPAIGN_STATES, CampaignError, CampaignErrorCode, ROLES, systemSender, type Campaign, type CampaignProgress, type CampaignState, type Publisher, type Role,
} from './campaign-types.js';
import { enqueueJob } from './jobs.js';

/*
 * Publishers and campaign records in KV (layout in campaign-types.ts; what the
 * admin API may write into them is checked by campaign-input.ts). Policy-free:
 * who may do what is decided by the caller (admin/engage.ts); this module keeps
 * the records consistent (compare-and-set state changes, one expansion per start).
 */

// The admin API imports these from here.
export { CampaignError, CampaignErrorCode } from './campaign-types.js';
export { decodeNewCampaign, decodeNewPublisher, decodePredicate, type NewCampaign, type NewPublisher } from './campaign-input.js';

/** Campaign records one list call reads at most (it answers `next` to continue). */
const LIST_SCAN = 2000;
const ENQUEUE_ATTEMPTS = 3;

// ---- ids and keys ---------------------------------------------------------------

/** Time-ordered, fixed width: lexicographic order is creation order (base36 ms is 9 digits until 5188). */
function timeOrderedId(prefix: string, randomHexBytes: number): string {
  return `${prefix}${Date.now().toString(36).padStart(9, '0')}${randomBytes(randomHexBytes).toString('hex')}`;
}
/** Campaign ids: `c` + time + 10 hex (20 characters, so campaignMessageId(id) is a valid message id). */
export const newCampaignId = (): string => timeOrderedId('c', 5);
/** Publisher ids have no `_`: an API key `gk_<id>_<secret>` splits at the first `_` after `gk_`. */
export const newPublisherId = (): string => timeOrderedId('p', 3);

export const campaignKey = (id: string): string => `c.${id}`;
export const progressKey = (id: string): string => `progress.${id}`;
export const publisherKey = (id: string): string => `p.${id}`;

const API_KEY_RE = /^gk_([A-Za-z0-9-]{1,32})_([A-Za-z0-9_-]{16,128})$/;
const sha256 = (s: string): string => createHash('sha256').update(s).digest('hex');

/** Opens (or creates) the two buckets. Reads go to the stream leader: a state change must see the last one. */
export async function openEngageBuckets(nc: NatsConnection, cfg: Pick<NodeConfig, 'prefix' | 'replicas'>): Promise<{ campaigns: KV; publishers: KV }> {
  const kvm = new Kvm(nc);
  const n = new Names(cfg.prefix);
  const [campaigns, publishers] = await Promise.all([
    kvm.create(n.campaignsBucket, { history: 1, replicas: cfg.replicas, allow_direct: false }),
    kvm.create(n.publishersBucket, { history: 1, replicas: cfg.replicas, allow_direct: false }),
  ]);
  return { campaigns, publishers };
}

// ---- stored forms ------------------------------------------------------------------

const num = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);

/** Decodes a stored campaign (shared with the runner). Throws TypeError on a malformed record. */
export function decodeCampaign(data: Uint8Array): Campaign {
  const o = unpack(data) as Obj | null;
  if (
    isObj(o) && typeof o.id === 'string' && isName(o.id, 64) && typeof o.publisher === 'string' && typeof o.name === 'string' &&
    isObj(o.audience) && (Array.isArray(o.audience.users) || isObj(o.audience.where)) &&
    isObj(o.content) && typeof o.content.text === 'string' && typeof o.content.push === 'boolean' &&
    num(o.ratePerSec) && typeof o.state === 'string' && (CAMPAIGN_STATES as readonly string[]).includes(o.state) && num(o.createdAt) &&
    (o.startAt === undefined || num(o.startAt)) && (o.startedAt === undefined || num(o.startedAt)) && (o.doneAt === undefined || num(o.doneAt))
  ) {
    return o as unknown as Campaign;
  }
  throw new TypeError('malformed campaign record');
}

function decodeCampaignOrUndefined(data: Uint8Array): Campaign | undefined {
  try {
    return decodeCampaign(data);
  } catch {
    return undefined;
  }
}

export function decodePublisher(data: Uint8Array): Publisher {
  const o = unpack(data) as Obj | null;
  if (
    isObj(o) && typeof o.id === 'string' && typeof o.name === 'string' && typeof o.keyHash === 'string' && typeof o.sender === 'string' && num(o.createdAt) &&
    Array.isArray(o.roles) && o.roles.every((r) => (ROLES as readonly unknown[]).includes(r))
  ) {
    return { id: o.id, name: o.name, roles: o.roles as Role[], keyHash: o.keyHash, sender: o.sender, createdAt: o.createdAt };
  }
  throw new TypeError('malformed publisher record');
}

/** Progress as the runner wrote it; nothing written yet reads as zero. */
export function decodeProgress(data: Uint8Array | undefined): CampaignProgress {
  const p: CampaignProgress = { batchesDone: 0, recipients: 0, sent: 0, failed: {} };
  if (!data || data.length === 0) return p;
  let o: unknown;
  try {
    o = unpack(data);
  } catch {
    return p;
  }
  if (!isObj(o)) return p;
  if (num(o.batches)) p.batches = o.batches;
  if (num(o.batchesDone)) p.batchesDone = o.batchesDone;
  if (num(o.recipients)) p.recipients = o.recipients;
  if (num(o.sent)) p.sent = o.sent;
  if (isObj(o.failed)) for (const [k, v] of Object.entries(o.failed)) if (num(v) && k !== '__proto__') p.failed[k] = v;
  return p;
}

/** A publisher as shown by the API: never the key hash. */
export type PublicPublisher = Omit<Publisher, 'keyHash'>;
export const publicPublisher = ({ keyHash: _hash, ...p }: Publisher): PublicPublisher => p;

/** A NATS or JetStream failure as UNAVAILABLE (coded errors pass through). */
function unavailable(err: unknown, what: string): Error {
  if (err instanceof CampaignError) return err;
  return new CampaignError(CampaignErrorCode.UNAVAILABLE, `${what} failed: ${(err as Error).message}`, { cause: err });
}

async function keysOf(kv: KV, filter: string): Promise<string[]> {
  const out: string[] = [];
  for await (const k of await kv.keys(filter)) out.push(k);
  return out;
}

// ---- publishers --------------------------------------------------------------------

export class PublisherStore {
  constructor(readonly kv: KV) {}

  /** A new publisher and its API key (`gk_<id>_<secret>`): only sha256(secret) is kept, so the key is shown once. */
  async create(input: NewPublisher): Promise<{ publisher: Publisher; key: string }> {
    const id = newPublisherId();
    const secret = randomBytes(24).toString('base64url');
    const publisher: Publisher = { id, name: input.name, roles: input.roles, keyHash: sha256(secret), sender: systemSender(input.sender ?? `pub-${id}`), createdAt: Date.now() };
    try {
      await this.kv.create(publisherKey(id), pack(publisher));
    } catch (err) {
      throw unavailable(err, 'storing the publisher');
    }
    return { publisher, key: `gk_${id}_${secret}` };
  }

  async get(id: string): Promise<Publisher | undefined> {
    if (!isName(id, 32)) return undefined;
    let e: KvEntry | null;
    try {
      e = await this.kv.get(publisherKey(id));
    } catch (err) {
      throw unavailable(err, 'reading a publisher');
    }
    if (!e || e.operation !== 'PUT') return undefined;
    try {
      return decodePublisher(e.value);
    } catch {
      return undefined;
    }
  }

  /** The publisher an API key belongs to, or undefined (malformed, unknown, wrong secret). */
  async authenticate(apiKey: string): Promise<Publisher | undefined> {
    const m = API_KEY_RE.exec(apiKey);
    if (!m) return undefined;
    const p = await this.get(m[1]!);
    if (!p) return undefined;
    const got = Buffer.from(sha256(m[2]!), 'hex');
    const want = Buffer.from(p.keyHash, 'hex');
    return got.length === want.length && timingSafeEqual(got, want) ? p : undefined;
  }

  /** Every publisher, oldest first (bounded by how many the admin creates). */
  async list(): Promise<Publisher[]> {
    try {
      const ids = (await keysOf(this.kv, 'p.*')).map((k) => k.slice(2)).sort();
      const all = await Promise.all(ids.map((id) => this.get(id)));
      return all.filter((p): p is Publisher => p !== undefined);
    } catch (err) {
      throw unavailable(err, 'listing publishers');
    }
  }
}

// ---- campaigns ---------------------------------------------------------------------

export type CampaignAction = 'start' | 'pause' | 'resume';
/** The state machine the API drives: draft → running ⇄ paused; the runner moves running to done. */
const TRANSITIONS: Record<CampaignAction, { from: CampaignState; to: CampaignState }> = {
  start: { from: 'draft', to: 'running' },
  pause: { from: 'running', to: 'paused' },
  resume: { from: 'paused', to: 'running' },
};

export interface CampaignPage { campaigns: Campaign[]; next?: string }

export class CampaignStore {
  constructor(
    readonly kv: KV,
    readonly js: JetStreamClient,
    readonly names: Names,
    /** Largest record KV takes (NATS max_payload less room for headers). */
    readonly maxRecordBytes: number,
  ) {}

  /** Stores a new draft owned by `publisher`. */
  async create(publisher: Publisher, input: NewCampaign): Promise<Campaign> {
    const c: Campaign = {
      id: newCampaignId(),
      publisher: publisher.id,
      name: input.name,
      audience: input.audience,
      content: input.content,
      ...(input.startAt !== undefined && { startAt: input.startAt }),
      ratePerSec: input.ratePerSec,
      state: 'draft',
      createdAt: Date.now(),
    };
    const data = pack(c);
    if (data.length > this.maxRecordBytes) {
      throw new CampaignError(CampaignErrorCode.PAYLOAD_TOO_LARGE, `the campaign record would take ${data.length} bytes, more than one KV value holds (${this.maxRecordBytes}); use audience.where or split the list`);
    }
    try {
      await this.kv.create(campaignKey(c.id), data);
    } catch (err) {
      throw unavailable(err, 'storing the campaign');
    }
    return c;
  }

  async get(id: string): Promise<Campaign | undefined> {
    if (!isName(id, 64)) return undefined;
    let e: KvEntry | null;
    try {
      e = await this.kv.get(campaignKey(id));
    } catch (err) {
      throw unavailable(err, 'reading a campaign');
    }
    return e && e.operation === 'PUT' ? decodeCampaignOrUndefined(e.value) : undefined;
  }

  /**
   * Campaigns newest first, those `visible` admits, after `before` (an id from a
   * previous page's `next`). Reads at most LIST_SCAN records per call, so a
   * publisher with few campaigns among many gets a `next` to go on with.
   */
  async list(visible: (c: Campaign) => boolean, limit: number, before?: string): Promise<CampaignPage> {
    let ids: string[];
    try {
      ids = (await keysOf(this.kv, 'c.*')).map((k) => k.slice(2)).sort().reverse();
    } catch (err) {
      throw unavailable(err, 'listing campaigns');
    }
    if (before !== undefined) ids = ids.filter((id) => id < before);
    const out: Campaign[] = [];
    let scanned = 0;
    while (scanned < ids.length && out.length < limit && scanned < LIST_SCAN) {
      const chunk = ids.slice(scanned, Math.min(scanned + 32, LIST_SCAN, ids.length));
      const recs = await Promise.all(chunk.map((id) => this.get(id)));
      for (let i = 0; i < recs.length; i++) {
        scanned++;
        const c = recs[i];
        if (c && visible(c)) out.push(c);
        if (out.length === limit) break;
      }
    }
    return { campaigns: out, ...(scanned < ids.length && { next: ids[scanned - 1]! }) };
  }

  /**
   * Moves a campaign along the state machine with compare-and-set, retried on a
   * concurrent write; a state the action does not start from is CONFLICT. `start`
   * then enqueues the expansion job (de-duplicated by its message id within the
   * work stream's window); if that cannot be done the state goes back to draft, so
   * a campaign never stays running without an expansion. Resume does not expand
   * again: the send jobs of a paused campaign are still queued.
   */
  async transition(id: string, action: CampaignAction): Promise<Campaign> {
    const { from, to } = TRANSITIONS[action];
    if (!isName(id, 64)) throw new CampaignError(CampaignErrorCode.NOT_FOUND, `no campaign ${id}`);
    let changed: { result: { before: Campaign; after: Campaign }; rev: number };
    try {
      changed = await casModifyRev(
        this.kv,
        campaignKey(id),
        (data) => {
          const before = data === undefined ? undefined : decodeCampaignOrUndefined(data);
          if (!before) throw new CampaignError(CampaignErrorCode.NOT_FOUND, `no campaign ${id}`);
          if (before.state !== from) throw new CampaignError(CampaignErrorCode.CONFLICT, `campaign ${id} is ${before.state}: ${action} needs it ${from}`);
          const after: Campaign = { ...before, state: to, ...(action === 'start' && { startedAt: Date.now() }) };
          return { write: pack(after), result: { before, after } };
        },
        {
          read: (key) => this.kv.get(key).catch((err: unknown) => {
            throw unavailable(err, 'reading a campaign');
          }),
          contended: () => new CampaignError(CampaignErrorCode.CONFLICT, `campaign ${id} is being changed concurrently; try again`),
        },
      );
    } catch (err) {
      throw unavailable(err, `${action} of the campaign`);
    }
    if (action === 'start') await this.enqueueExpansion(changed.result.before, changed.rev);
    return changed.result.after;
  }

  private async enqueueExpansion(draft: Campaign, rev: number): Promise<void> {
    let last: unknown;
    for (let i = 0; i < ENQUEUE_ATTEMPTS; i++) {
      try {
        await enqueueJob(this.js, this.names, { k: 'expand', c: draft.id }, `${draft.id}.expand`);
        return;
      } catch (err) {
        last = err;
        await new Promise((r) => setTimeout(r, 250 * (i + 1)));
      }
    }
    // Undo only our own write: if anything changed the record since, leave it.
    await this.kv.update(campaignKey(draft.id), pack(draft), rev).catch(() => undefined);
    throw new CampaignError(CampaignErrorCode.UNAVAILABLE, `cannot queue the campaign's expansion now (${(last as Error).message}); it stays a draft, start it again`, { cause: last });
  }

  async progress(id: string): Promise<CampaignProgress> {
    try {
      const e = await this.kv.get(progressKey(id));
      return decodeProgress(e?.operation === 'PUT' ? e.value : undefined);
    } catch (err) {
      throw unavailable(err, 'reading campaign progress');
    }
  }
}
