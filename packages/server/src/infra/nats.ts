import { connect, type NatsConnection } from '@nats-io/transport-node';
import './nats-request-patch.js';
import { Kvm, type KV } from '@nats-io/kv';
import type { NodeConfig } from '../config/index.js';
import { ServerError, ServerErrorCode } from './errors.js';
import { Names } from './subjects.js';
import { BUDGET_WINDOW_MS } from './rate.js';

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

/** How long a starting cell keeps trying to reach NATS before it gives up with NATS_UNAVAILABLE. */
export const FIRST_CONNECT_TIMEOUT_MS = 15_000;

/**
 * A long-lived connection: once up, never give up reconnecting (the client's
 * default gives up after 10 tries). At start-up, fail with a clear error instead
 * of waiting silently forever.
 */
export async function connectNats(cfg: NodeConfig, name: string): Promise<NatsConnection> {
  const deadline = Date.now() + FIRST_CONNECT_TIMEOUT_MS;
  for (;;) {
    try {
      return await connect({
        servers: cfg.nats.servers,
        name,
        maxReconnectAttempts: -1,
        reconnectTimeWait: 250,
        pingInterval: 10_000,
        // Stack traces for every request cost ~9-15% of a cell's CPU under handshake load.
        noAsyncTraces: true,
        ...(cfg.nats.token && { token: cfg.nats.token }),
        ...(cfg.nats.user && { user: cfg.nats.user, pass: cfg.nats.pass }),
      });
    } catch (err) {
      if (Date.now() >= deadline) {
        throw new ServerError(ServerErrorCode.NATS_UNAVAILABLE, `cannot reach NATS at ${cfg.nats.servers.join(', ')}: ${(err as Error).message}`, { cause: err });
      }
      await new Promise((r) => setTimeout(r, 500));
    }
  }
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

/** How long a starting cell retries creating its buckets and streams. */
export const SETUP_TIMEOUT_MS = 60_000;

/**
 * Retries an idempotent set-up step on timeouts and "no responders" (JetStream
 * electing leaders), and on the refusals 2.9 gives when two cells create the same
 * bucket at the same moment ("subjects overlap": the retry binds to the winner's),
 * until SETUP_TIMEOUT_MS; other errors fail at once.
 */
export async function untilReady<T>(step: () => Promise<T>, what: string): Promise<T> {
  const deadline = Date.now() + SETUP_TIMEOUT_MS;
  for (let wait = 250; ; wait = Math.min(wait * 2, 2000)) {
    try {
      return await step();
    } catch (err) {
      const text = `${(err as Error).name} ${(err as Error).message}`;
      if (!/timeout|no responders|503|leader|not available|jetstream is not enabled|subjects overlap|already in use/i.test(text) || Date.now() + wait > deadline) {
        throw new ServerError(ServerErrorCode.NATS_UNAVAILABLE, `cannot set up ${what}: ${(err as Error).message}`, { cause: err });
      }
      await new Promise((r) => setTimeout(r, wait));
    }
  }
}

export { isCasConflict } from './kv.js';
