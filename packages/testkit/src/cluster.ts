import { randomBytes } from 'node:crypto';
import { check } from './check.js';
import { NatsClusterError } from './errors.js';
import { mergeConfig, NatsServer, type NatsConfig, type NatsServerOptions } from './server.js';

export interface NatsClusterOptions extends NatsServerOptions {
  /** How long to wait for the nodes to agree on a JetStream meta leader, in ms (default 30000). */
  leaderTimeout?: number;
}

/**
 * A JetStream cluster of real nats-server processes on loopback, each with its own store dir
 * and a unique `server_name` (JetStream clustering requires one).
 */
export class NatsCluster implements AsyncDisposable {
  private constructor(
    readonly name: string,
    readonly servers: NatsServer[],
    private readonly opts: NatsClusterOptions,
  ) {}

  static async start(size = 3, opts: NatsClusterOptions = {}): Promise<NatsCluster> {
    // A lone clustered node has no routes, and 2.9 will not run clustered JetStream without any.
    if (!Number.isInteger(size) || size < 2) throw new RangeError(`cluster size must be an integer >= 2, got ${size}`);
    const name = `gravitas-test-${randomBytes(4).toString('hex')}`;
    const { jetstream: userJs, ...userConfig } = opts.config ?? {};
    // Phase 1, JetStream off: nats-server 2.9 refuses to start clustered JetStream without routes
    // ("JetStream cluster requires configured routes"), and we do not know the route ports yet.
    const started = await Promise.allSettled(
      Array.from({ length: size }, (_, i) =>
        NatsServer.start({
          ...opts,
          jetstream: false,
          config: mergeConfig(userConfig, { server_name: `${name}-n${i}`, cluster: { name, listen: '127.0.0.1:-1' } }),
        }),
      ),
    );
    const servers = started.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
    const cluster = new NatsCluster(name, servers, opts);
    try {
      const failed = started.find((r) => r.status === 'rejected');
      if (failed) throw failed.reason;
      // Phase 2: same client/monitor/cluster ports, now with routes to every peer and JetStream on.
      const routes = servers.map((s) => `nats://127.0.0.1:${s.clusterPort}`);
      await Promise.all(servers.map((s) => s.stop({ keepData: true })));
      await Promise.all(
        servers.map((s, i) => {
          const patch: NatsConfig = { cluster: { routes: routes.filter((_, j) => j !== i) } };
          if (opts.jetstream !== false) {
            patch['jetstream'] = mergeConfig(typeof userJs === 'object' && userJs ? (userJs as NatsConfig) : {}, {
              store_dir: s.storeDir,
            });
          }
          return s.restart(patch);
        }),
      );
      if (opts.jetstream !== false) await cluster.waitForMetaLeader();
    } catch (err) {
      await cluster.stop();
      throw err;
    }
    return cluster;
  }

  get urls(): string[] {
    return this.servers.map((s) => s.url);
  }

  /** `server_name` of each node, by index. */
  get serverNames(): string[] {
    return this.servers.map((_, i) => `${this.name}-n${i}`);
  }

  /**
   * Waits until every running node reports the same JetStream meta leader and that leader is a
   * running node (after a kill the survivors report the dead leader until they re-elect).
   */
  async waitForMetaLeader(): Promise<{ name: string; index: number }> {
    const timeout = this.opts.leaderTimeout ?? 30_000;
    const names = this.serverNames;
    let seen: (string | undefined)[] = [];
    try {
      return await check(
        `cluster ${this.name} meta leader`,
        async () => {
          const running = this.servers.filter((s) => s.running);
          seen = await Promise.all(running.map((s) => s.jsz().then((j) => j.meta_cluster?.leader, () => undefined)));
          const leader = seen[0];
          const index = leader === undefined ? -1 : names.indexOf(leader);
          const agreed = seen.every((l) => l === leader) && index >= 0 && this.servers[index]?.running;
          return agreed ? { name: leader!, index } : undefined;
        },
        { timeout, interval: 100 },
      );
    } catch (err) {
      throw new NatsClusterError(
        `cluster ${this.name}: no agreed meta leader after ${timeout}ms (leaders seen: ${JSON.stringify(seen)})`,
        { cause: err },
      );
    }
  }

  /** Kill node i (SIGKILL by default), keeping its store so restart(i) can bring it back. */
  async kill(i: number, signal?: NodeJS.Signals): Promise<void> {
    await this.#server(i).kill(signal);
  }

  /** Restart node i on its old ports and store, and wait until it has rejoined (sees the meta leader). */
  async restart(i: number): Promise<NatsServer> {
    const server = await this.#server(i).restart();
    if (this.opts.jetstream !== false) await this.waitForMetaLeader();
    return server;
  }

  async stop(): Promise<void> {
    await Promise.all(this.servers.map((s) => s.stop()));
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
  }

  #server(i: number): NatsServer {
    const server = this.servers[i];
    if (!server) throw new RangeError(`no server ${i} in a cluster of ${this.servers.length}`);
    return server;
  }
}
