import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { get } from 'node:http';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { createInterface } from 'node:readline';
import { check } from './check.js';
import { NatsServerNotFoundError, NatsServerStartError } from './errors.js';
import { trackChild, trackDir, untrackDir } from './registry.js';
import { isExecutable } from './util.js';

export type NatsConfig = Record<string, unknown>;

export interface NatsServerOptions {
  /** Enable JetStream with a fresh store dir (default true). */
  jetstream?: boolean;
  /** Extra nats-server command-line arguments. */
  args?: string[];
  /** Extra nats-server config, deep-merged over the generated one (objects merge, arrays replace). */
  config?: NatsConfig;
  /** Turn on server debug/trace logging and echo the server's output to this process's stderr. */
  debug?: boolean;
  /** How long to wait for the server to become ready, in ms (default 20000). */
  startTimeout?: number;
  /**
   * The process stops this server itself on SIGINT/SIGTERM (after draining what uses it, as
   * `gravitas dev` does): a signal does not kill it at once; it is still killed when the process exits.
   */
  stopsItself?: boolean;
}

export interface StopOptions {
  /** Keep the temp dir (config, JetStream store) instead of removing it. */
  keepData?: boolean;
  /** How long to wait after SIGTERM before SIGKILL, in ms (default 5000). */
  graceMs?: number;
}

/** Subset of the `/jsz` monitoring answer that the kit relies on. */
export interface Jsz {
  server_id: string;
  streams?: number;
  messages?: number;
  meta_cluster?: { name?: string; leader?: string; cluster_size?: number };
  [key: string]: unknown;
}

type Exit = { code: number | null; signal: NodeJS.Signals | null; error?: Error };

const HOST = '127.0.0.1';
const LOG_LINES = 40;

/** Path of the nats-server binary: $NATS_SERVER_BIN, else PATH, /usr/sbin, /usr/local/bin. */
export function findNatsServer(): string {
  const fromEnv = process.env['NATS_SERVER_BIN'];
  if (fromEnv) {
    if (isExecutable(fromEnv)) return fromEnv;
    throw new NatsServerNotFoundError(`NATS_SERVER_BIN=${fromEnv} is not an executable file`);
  }
  const dirs = [...(process.env['PATH'] ?? '').split(delimiter), '/usr/sbin', '/usr/local/bin', '/usr/local/sbin'];
  for (const dir of dirs.filter(Boolean)) {
    const candidate = join(dir, 'nats-server');
    if (isExecutable(candidate)) return candidate;
  }
  throw new NatsServerNotFoundError();
}


function isRecord(v: unknown): v is NatsConfig {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Deep merge for config objects: nested objects merge, everything else (arrays too) replaces. */
export function mergeConfig(base: NatsConfig, over: NatsConfig): NatsConfig {
  const out: NatsConfig = { ...base };
  for (const [k, v] of Object.entries(over)) {
    const prev = out[k];
    out[k] = isRecord(prev) && isRecord(v) ? mergeConfig(prev, v) : v;
  }
  return out;
}

/** GET on the loopback monitoring port without connection pooling (a pooled socket would outlive the test). */
function httpGet(url: string, timeoutMs = 2000): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = get(url, { agent: false, timeout: timeoutMs }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (body += chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`GET ${url} timed out`)));
    req.on('error', reject);
  });
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const sock: Socket = connect({ host: HOST, port });
    sock.once('connect', () => {
      sock.destroy();
      resolve(true);
    });
    sock.once('error', () => resolve(false));
  });
}

function portOf(url: string | undefined): number | undefined {
  return url ? Number(new URL(url).port) : undefined;
}

/**
 * A real nats-server process for tests, on a free loopback port with its own temp dir and
 * JetStream store. `await using ns = await NatsServer.start()` stops it and removes the dir.
 */
export class NatsServer implements AsyncDisposable {
  /** Client port; fixed after the first start so restarts keep the same URL. */
  port = 0;
  monitorPort = 0;
  /** Cluster (route) port, when the config has a `cluster` block. */
  clusterPort: number | undefined;
  readonly configFile: string;
  readonly storeDir: string;
  #config: NatsConfig;
  #proc: ChildProcess | undefined;
  #exit: Exit | undefined;
  #exited: Promise<Exit> = Promise.resolve({ code: null, signal: null });
  #log: string[] = [];

  private constructor(
    readonly bin: string,
    readonly dir: string,
    config: NatsConfig,
    private readonly opts: NatsServerOptions,
  ) {
    this.configFile = join(dir, 'nats-server.conf');
    this.storeDir = join(dir, 'jetstream');
    this.#config = config;
  }

  static async start(opts: NatsServerOptions = {}): Promise<NatsServer> {
    const bin = findNatsServer();
    const dir = await mkdtemp(join(tmpdir(), 'gravitas-nats-'));
    trackDir(dir);
    const storeDir = join(dir, 'jetstream');
    // port -1: the server picks a free port (never 4222); the ports file tells us which.
    const base: NatsConfig = {
      listen: `${HOST}:-1`,
      http: `${HOST}:-1`,
      ports_file_dir: dir,
      ...(opts.jetstream !== false && { jetstream: { store_dir: storeDir } }),
      ...(opts.debug && { debug: true, trace: true }),
    };
    const server = new NatsServer(bin, dir, mergeConfig(base, opts.config ?? {}), opts);
    try {
      await server.#launch();
    } catch (err) {
      await server.stop();
      throw err;
    }
    return server;
  }

  get url(): string {
    return `nats://${this.hostport}`;
  }
  get hostport(): string {
    return `${HOST}:${this.port}`;
  }
  get pid(): number | undefined {
    return this.#proc?.pid;
  }
  get process(): ChildProcess | undefined {
    return this.#proc;
  }
  get running(): boolean {
    return this.#proc !== undefined && this.#exit === undefined;
  }
  /** A copy of the config the server runs with. */
  get config(): NatsConfig {
    return structuredClone(this.#config);
  }
  /** Last lines the server wrote to stdout/stderr. */
  get log(): readonly string[] {
    return [...this.#log];
  }

  /** GET a monitoring endpoint (e.g. `/jsz`, `/varz`) and parse the JSON answer. */
  async monitor<T = unknown>(path: string): Promise<T> {
    const { status, body } = await httpGet(`http://${HOST}:${this.monitorPort}${path}`);
    if (status !== 200) throw new Error(`GET ${path} on ${this.hostport}: HTTP ${status} ${body}`);
    return JSON.parse(body) as T;
  }

  jsz(): Promise<Jsz> {
    return this.monitor<Jsz>('/jsz');
  }

  /** SIGTERM, then SIGKILL after `graceMs`; removes the temp dir unless `keepData`. */
  async stop({ keepData = false, graceMs = 5000 }: StopOptions = {}): Promise<void> {
    if (this.running) {
      const proc = this.#proc!;
      proc.ref(); // we are waiting on it now, so keep the event loop alive until it is gone
      proc.kill('SIGTERM');
      const timer = setTimeout(() => proc.kill('SIGKILL'), graceMs);
      await this.#exited;
      clearTimeout(timer);
    }
    untrackDir(this.dir);
    if (!keepData) await rm(this.dir, { recursive: true, force: true });
  }

  /** Send `signal` (default SIGKILL) and wait for exit. No clean-up: the store stays for restart(). */
  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    if (!this.running) return;
    this.#proc!.ref();
    this.#proc!.kill(signal);
    await this.#exited;
  }

  /**
   * Start again on the same ports and store dir (stopping it first if it runs), so clients
   * reconnect to the same URL and JetStream data survives. `config` is merged in first.
   */
  async restart(config: NatsConfig = {}): Promise<this> {
    if (this.running) await this.stop({ keepData: true });
    const pinned: NatsConfig = { listen: this.hostport, http: `${HOST}:${this.monitorPort}` };
    const cluster = this.#config['cluster'];
    if (isRecord(cluster) && this.clusterPort) {
      const { host: _h, port: _p, ...rest } = cluster;
      pinned['cluster'] = { ...rest, listen: `${HOST}:${this.clusterPort}` };
    }
    this.#config = mergeConfig(mergeConfig(this.#config, pinned), config);
    await mkdir(this.dir, { recursive: true });
    trackDir(this.dir);
    await this.#launch();
    return this;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
  }

  get #jetstream(): boolean {
    const js = this.#config['jetstream'];
    return js !== undefined && js !== false && js !== 'disabled';
  }

  async #launch(): Promise<void> {
    await writeFile(this.configFile, JSON.stringify(this.#config, null, 2)); // the config format accepts JSON
    const proc = spawn(this.bin, ['-c', this.configFile, ...(this.opts.args ?? [])], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    trackChild(proc, this.opts.stopsItself === true);
    this.#proc = proc;
    this.#exit = undefined;
    this.#log = [];
    this.#exited = new Promise((resolve) => {
      // 'close' (not 'exit') comes after stdout/stderr are drained, so the log tail is complete.
      proc.once('close', (code, signal) => resolve((this.#exit = { code, signal })));
      proc.once('error', (error) => resolve((this.#exit = { code: null, signal: null, error })));
    });
    for (const stream of [proc.stdout!, proc.stderr!]) {
      createInterface({ input: stream }).on('line', (line) => {
        this.#log.push(line);
        if (this.#log.length > LOG_LINES) this.#log.shift();
        if (this.opts.debug) process.stderr.write(`[nats-server ${proc.pid}] ${line}\n`);
      });
      (stream as Socket).unref();
    }
    // A test that forgets stop() should still end; the registry's exit hook kills the server then.
    proc.unref();

    const timeout = this.opts.startTimeout ?? 20_000;
    let outcome: Exit | 'ready';
    try {
      outcome = await check<Exit | 'ready' | undefined>(
        `nats-server ${this.configFile} ready`,
        () => this.#exit ?? this.#probe(), // an early exit also ends the poll
        { timeout, interval: 25 },
      );
    } catch (err) {
      await this.kill();
      throw new NatsServerStartError(`nats-server not ready after ${timeout}ms`, this.log, { cause: err });
    }
    if (outcome !== 'ready') {
      const why = outcome.error?.message ?? `code ${outcome.code}, signal ${outcome.signal}`;
      throw new NatsServerStartError(`nats-server exited during start-up (${why})`, this.log, {
        cause: outcome.error,
      });
    }
  }

  /** Ready = ports file of this pid written, client port accepting, JetStream enabled (if configured). */
  async #probe(): Promise<'ready' | undefined> {
    const pid = this.#proc?.pid;
    const file = (await readdir(this.dir)).find((f) => f.endsWith(`_${pid}.ports`));
    if (!file) return undefined;
    const ports = JSON.parse(await readFile(join(this.dir, file), 'utf8')) as Record<string, string[] | undefined>;
    this.port = portOf(ports['nats']?.[0]) ?? 0;
    this.monitorPort = portOf(ports['monitoring']?.[0]) ?? 0;
    this.clusterPort = portOf(ports['cluster']?.[0]);
    if (!(await canConnect(this.port))) return undefined;
    if (this.#jetstream) {
      // js-enabled-only: JetStream is up; a clustered node may still be waiting for its meta leader.
      const res = await httpGet(`http://${HOST}:${this.monitorPort}/healthz?js-enabled-only=true`);
      if (res.status !== 200) return undefined;
    }
    return 'ready';
  }
}
