import { connect, type NatsConnection } from '@nats-io/transport-node';
import './nats-request-patch.js';
import { ServerError, ServerErrorCode } from './errors.js';

/** Where NATS is and how to log in (NodeConfig's `nats` section). */
export interface NatsSettings {
  servers: string[];
  token?: string | undefined;
  user?: string | undefined;
  pass?: string | undefined;
}

/** How long a starting cell keeps trying to reach NATS before it gives up with NATS_UNAVAILABLE. */
export const FIRST_CONNECT_TIMEOUT_MS = 15_000;

/**
 * A long-lived connection: once up, never give up reconnecting (the client's
 * default gives up after 10 tries). At start-up, fail with a clear error instead
 * of waiting silently forever.
 */
export async function connectNats(nats: NatsSettings, name: string): Promise<NatsConnection> {
  const deadline = Date.now() + FIRST_CONNECT_TIMEOUT_MS;
  for (;;) {
    try {
      return await connect({
        servers: nats.servers,
        name,
        maxReconnectAttempts: -1,
        reconnectTimeWait: 250,
        pingInterval: 10_000,
        // Stack traces for every request cost ~9-15% of a cell's CPU under handshake load.
        noAsyncTraces: true,
        ...(nats.token && { token: nats.token }),
        ...(nats.user && { user: nats.user, pass: nats.pass }),
      });
    } catch (err) {
      if (Date.now() >= deadline) {
        throw new ServerError(ServerErrorCode.NATS_UNAVAILABLE, `cannot reach NATS at ${nats.servers.join(', ')}: ${(err as Error).message}`, { cause: err });
      }
      await new Promise((r) => setTimeout(r, 500));
    }
  }
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
