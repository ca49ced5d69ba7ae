import { DiscardPolicy, RetentionPolicy, StorageType, type JetStreamClient, type JetStreamManager } from '@nats-io/jetstream';
import { pack, unpack, isName } from '@gravitas/protocol';
import { ensureStream } from '../infra/jetstream.js';
import type { Names } from '../infra/subjects.js';

/*
 * Campaign jobs on the work-queue stream `<prefix>_CWORK` (retention: work queue,
 * so each job is handed to one consumer and gone once acked). The admin API
 * enqueues `expand` when a campaign starts; the runner that takes it lists the
 * audience and enqueues one `send` job per batch, each with the earliest time it
 * may run, which paces the campaign cluster-wide at its rate.
 */

export type CampaignJob =
  | { k: 'expand'; c: string }
  | { k: 'send'; c: string; n: number; users: string[]; notBefore: number };

export function encodeJob(j: CampaignJob): Uint8Array {
  return pack(j);
}

export function decodeJob(data: Uint8Array): CampaignJob {
  const o = unpack(data) as Record<string, unknown> | null;
  if (typeof o === 'object' && o !== null && typeof o.c === 'string' && isName(o.c)) {
    if (o.k === 'expand') return { k: 'expand', c: o.c };
    if (o.k === 'send' && Number.isInteger(o.n) && Number.isFinite(o.notBefore) && Array.isArray(o.users) && o.users.every((u) => typeof u === 'string' && isName(u))) {
      return { k: 'send', c: o.c, n: o.n as number, users: o.users as string[], notBefore: o.notBefore as number };
    }
  }
  throw new TypeError('malformed campaign job');
}

/** Creates the work-queue stream, or brings it to this config. */
export async function ensureWorkStream(jsm: JetStreamManager, names: Names, replicas: number): Promise<void> {
  await ensureStream(jsm, {
    name: names.campaignWorkStream,
    subjects: [`${names.prefix}.cwork.>`],
    retention: RetentionPolicy.Workqueue,
    storage: StorageType.File,
    discard: DiscardPolicy.New,
    num_replicas: replicas,
    duplicate_window: 120 * 1e9,
  });
}

/**
 * Enqueues a job, acknowledged by JetStream. `msgId` de-duplicates a re-enqueue
 * within the stream's 2-minute window (a retried start, a re-run expansion).
 */
export async function enqueueJob(js: JetStreamClient, names: Names, job: CampaignJob, msgId: string): Promise<void> {
  await js.publish(names.campaignWorkSubject(job.c), encodeJob(job), { msgID: msgId });
}
