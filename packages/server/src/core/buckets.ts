import type { NatsConnection } from '@nats-io/transport-node';
import { Kvm, type KV } from '@nats-io/kv';
import type { NodeConfig } from '../config/index.js';
import { BUDGET_WINDOW_MS } from '../infra/rate.js';
import { Names } from '../infra/subjects.js';

/* The cluster's KV buckets: what each holds is documented with its store (architecture.md). */

export interface Buckets {
  cells: KV;
  directory: KV;
  accounts: KV;
  tickets: KV;
  social: KV;
  presence: KV;
  groups: KV;
  budgets: KV;
}

/** Creates (or binds to) the KV buckets of the cluster. Idempotent across cells and nodes. */
export async function openBuckets(nc: NatsConnection, cfg: NodeConfig): Promise<Buckets> {
  const kvm = new Kvm(nc);
  const n = new Names(cfg.prefix);
  // Every bucket is replicated: in a NATS cluster, a bucket whose only copy was on a
  // lost server would stop the whole cluster (accounts, directory).
  const replicas = cfg.replicas;
  const [cells, directory, accounts, tickets, social, presence, groups, budgets] = await Promise.all([
    kvm.create(n.cellsBucket, { history: 1, ttl: cfg.membership.timeoutMs * 2, replicas }),
    kvm.create(n.directoryBucket, { history: 1, replicas }),
    openAccountsBucket(nc, cfg),
    // Spent tickets, credentials and link approvals only need to be remembered while they could still be valid.
    kvm.create(n.ticketsBucket, { history: 1, ttl: spentTtl(cfg), replicas }),
    kvm.create(n.socialBucket, { history: 1, replicas }),
    kvm.create(n.presenceBucket, { history: 1, replicas }),
    kvm.create(n.groupsBucket, { history: 1, replicas }),
    // A window's counters matter for that window only.
    kvm.create(n.budgetsBucket, { history: 1, ttl: 3 * BUDGET_WINDOW_MS, replicas }),
  ]);
  return { cells, directory, accounts, tickets, social, presence, groups, budgets };
}

/**
 * The accounts bucket. Read at every handshake to refuse removed devices at once, so reads
 * go to the stream leader, never to a follower that may not have the removal yet (direct
 * gets may be served by any replica).
 */
export function openAccountsBucket(nc: NatsConnection, cfg: NodeConfig): Promise<KV> {
  return new Kvm(nc).create(new Names(cfg.prefix).accountsBucket, { history: 1, replicas: cfg.replicas, allow_direct: false });
}

/** How long a spent id must be remembered: longer than anything single-use can stay valid. */
function spentTtl(cfg: NodeConfig): number {
  const { credential, link } = cfg.registration;
  return Math.max(cfg.ticketLifetimeMs, credential ? credential.maxLifetimeMs + credential.clockToleranceMs : 0, link.ttlMs) + 60_000;
}
