import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync } from 'node:fs';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { check, freePort, isExecutable, trackChild } from '@gravitas/testkit';
import { HarnessError } from './errors.js';
import { LocalProcess, removeTempDir, trackTempDir } from './local-proc.js';
import { answersXmpp } from './prosody.js';

/*
 * A private ejabberd (Debian's ejabberd 23.01 on Erlang/OTP 25) for one benchmark run or one test:
 * one BEAM node, or several joined into one cluster, in a fresh temp dir that holds each node's
 * config, Mnesia database and logs. Configured as /work/shared/PEERS.md says an operator would
 * run it for this workload (docs/benchmarking.md, "Peers"):
 * - the Debian service is not used: the nodes are started here, directly with `erl` (not through
 *   ejabberdctl, which switches to the `ejabberd` user with a 1,024 soft fd limit), with the fd
 *   soft limit raised to 65,536 (or the hard limit);
 * - their own Erlang port mapper on a free port (ERL_EPMD_PORT, never 4369) bound to 127.0.0.1,
 *   each node's distribution on one free port on 127.0.0.1; a second node joins with
 *   `ejabberd_ctl join_cluster` (what `ejabberdctl join_cluster` runs);
 * - `+sbwt none +sbwtdcpu none +sbwtdio none` (no scheduler busy-wait on shared cores), `+zdbbl`
 *   raised to 1 GiB (the distribution buffer's busy limit: below it ejabberd drops cross-node
 *   messages under overload);
 * - `c2s_shaper: none`, `s2s_shaper: none`, no listener shaper; no TLS on loopback;
 * - only what the workload uses: c2s, roster, disco, ping, in-band registration (open, with
 *   `registration_timeout: infinity`), offline storage, stream management; no fail2ban,
 *   pres_counter, BOSH, MQTT, MUC, HTTP API, push or shared roster;
 * - SCRAM storage (`auth_password_format: scram`, SHA-1) and SCRAM-SHA-1 logins;
 * - `restart()`: every node stopped and started again on the same database — after the accounts
 *   are registered, so registration-time memory is not counted.
 * Ready = each c2s port answers a stream header with features (not a sleep). `stop()` = SIGTERM,
 * SIGKILL after a grace period, for every node and the port mapper, then the temp dir goes.
 */

export interface EjabberdOptions {
  /** BEAM nodes in the cluster (default 1). */
  nodes?: number;
  /** XMPP domain (default `localhost`). */
  domain?: string;
  /** How long to wait for each node to answer, ms (default 60,000). */
  startTimeoutMs?: number;
  /** The erl executable (default $ERL_BIN, else /usr/bin/erl). */
  erl?: string;
}

export interface LocalEjabberd extends AsyncDisposable {
  readonly host: string;
  /** c2s port of each node, in node order. */
  readonly ports: number[];
  readonly domain: string;
  /** The BEAM processes by name (`ejabberd1`…), sampled for CPU and memory: current after restart(). */
  pids(): Record<string, number>;
  /** Stops every node and starts it again on the same database; resolves once all answer. */
  restart(): Promise<void>;
  stop(): Promise<void>;
  logTail(lines?: number): string;
}

const HOST = '127.0.0.1';
const EJABBERD_LIBS = '/usr/lib/x86_64-linux-gnu';
const INSTALL_HINT = 'apt-get install --no-install-recommends ejabberd (Debian/Ubuntu)';
/** +zdbbl in KiB: the distribution buffer's busy limit (default 1 MiB). */
const DIST_BUFFER_KIB = 1_048_576;

/** The node's config file (exported for tests and for the record in docs). */
export function ejabberdConfig(c: { domain: string; port: number }): string {
  return `# A private ejabberd node for a Gravitas benchmark run or test, written by bench/src/harness/ejabberd.ts.
hosts: [${JSON.stringify(c.domain)}]
loglevel: warning
log_rotate_count: 0
listen:
  -
    port: ${c.port}
    ip: "${HOST}"
    module: ejabberd_c2s
    access: c2s
    max_stanza_size: 262144
    # no shaper: the listener is not throttled
acl:
  loopback:
    ip: ["127.0.0.0/8"]
access_rules:
  c2s:
    allow: all
  register:
    allow: all
shaper: {}
shaper_rules:
  # Debian's default is "normal" = 3,000 bytes/s per connection: it would throttle every client.
  c2s_shaper: none
  s2s_shaper: none
  max_user_sessions: 10
  max_user_offline_messages: 5000
registration_timeout: infinity
auth_method: internal
auth_password_format: scram
auth_scram_hash: sha
modules:
  mod_disco: {}
  mod_ping: {}
  mod_register:
    ip_access: all
    access: register
  mod_roster: {}
  mod_offline: {}
  mod_stream_mgmt: {}
`;
}

function findErl(bin?: string): string {
  const erl = bin ?? process.env['ERL_BIN'] ?? '/usr/bin/erl';
  if (!isExecutable(erl)) throw new HarnessError('TARGET_UNAVAILABLE', `ejabberd is not installed: ${erl} is not an executable file; ${INSTALL_HINT}`);
  try {
    readFileSync(join(EJABBERD_LIBS, 'ejabberd-23.01', 'ebin', 'ejabberd.app'));
  } catch {
    throw new HarnessError('TARGET_UNAVAILABLE', `ejabberd is not installed: no ${EJABBERD_LIBS}/ejabberd-23.01; ${INSTALL_HINT}`);
  }
  return erl;
}

interface Node {
  name: string;
  port: number;
  distPort: number;
  config: string;
  log: string;
  db: string;
  proc?: LocalProcess;
}

class EjabberdCluster implements LocalEjabberd {
  readonly host = HOST;
  private epmd: LocalProcess | undefined;
  private epmdPort = 0;
  private readonly cookie = randomBytes(12).toString('hex');
  private readonly nodes: Node[] = [];
  private stopped = false;

  constructor(
    private readonly erl: string,
    readonly dir: string,
    readonly domain: string,
    private readonly timeoutMs: number,
  ) {}

  get ports(): number[] {
    return this.nodes.map((n) => n.port);
  }

  pids(): Record<string, number> {
    return Object.fromEntries(this.nodes.map((n, i) => [`ejabberd${i + 1}`, n.proc?.pid ?? -1]));
  }

  private env(): NodeJS.ProcessEnv {
    return { ...process.env, HOME: this.dir, ERL_EPMD_PORT: String(this.epmdPort), ERL_EPMD_ADDRESS: HOST, ERL_LIBS: EJABBERD_LIBS, ERL_CRASH_DUMP_BYTES: '0' };
  }

  async start(count: number): Promise<void> {
    this.epmdPort = await freePort(HOST);
    const epmdBin = join(this.erl, '..', 'epmd');
    this.epmd = new LocalProcess('epmd', isExecutable(epmdBin) ? epmdBin : 'epmd', ['-port', String(this.epmdPort), '-address', HOST], { cwd: this.dir, env: this.env() });
    await check('epmd listening', async () => (this.epmd!.exit ? this.epmd!.exit : (await portOpen(this.epmdPort)) || undefined), { timeout: 10_000, interval: 50 }).then((r) => {
      if (r !== true) throw new HarnessError('TARGET_UNAVAILABLE', `epmd exited at start-up: ${this.epmd!.tail()}`);
    });
    for (let i = 1; i <= count; i++) {
      const port = await freePort(HOST);
      const node: Node = { name: `ejabberd${i}@localhost`, port, distPort: await freePort(HOST), config: join(this.dir, `ejabberd${i}.yml`), log: join(this.dir, `ejabberd${i}.log`), db: join(this.dir, `db${i}`) };
      mkdirSync(node.db);
      await writeFile(node.config, ejabberdConfig({ domain: this.domain, port }));
      this.nodes.push(node);
    }
    // Every node up on its own, then each joins the first (join_cluster replaces its fresh database).
    await Promise.all(this.nodes.map((n) => this.launch(n)));
    for (const n of this.nodes.slice(1)) {
      await this.ctl(n, ['join_cluster', this.nodes[0]!.name]);
      await this.ready(n);
    }
  }

  private async launch(n: Node): Promise<void> {
    const args = [
      '-sname', n.name, '-setcookie', this.cookie, '-noinput', '-noshell',
      '+K', 'true', '+P', '250000',
      // Shared cores: no scheduler busy-wait. Distribution buffer: raised (PEERS.md).
      '+sbwt', 'none', '+sbwtdcpu', 'none', '+sbwtdio', 'none', '+zdbbl', String(DIST_BUFFER_KIB),
      '-kernel', 'inet_dist_listen_min', String(n.distPort), 'inet_dist_listen_max', String(n.distPort), 'inet_dist_use_interface', '{127,0,0,1}',
      '-mnesia', 'dir', JSON.stringify(n.db),
      '-s', 'ejabberd',
    ];
    const quoted = args.map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(' ');
    // exec keeps the pid: erl execs erlexec, which execs beam.smp.
    const script = `ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec ${JSON.stringify(this.erl)} ${quoted}`;
    n.proc = new LocalProcess(n.name, '/bin/sh', ['-c', script], {
      cwd: this.dir,
      env: { ...this.env(), EJABBERD_CONFIG_PATH: n.config, EJABBERD_LOG_PATH: n.log, ERL_MAX_PORTS: '65536', ERL_MAX_ETS_TABLES: '1400' },
    });
    await this.ready(n);
  }

  private async ready(n: Node): Promise<void> {
    const p = n.proc!;
    let r: boolean | 'exited';
    try {
      r = await check<boolean | 'exited' | undefined>(`ejabberd ${n.name} ready`, async () => (p.exit ? 'exited' : (await answersXmpp(n.port, this.domain)) || undefined), { timeout: this.timeoutMs, interval: 100 });
    } catch (e) {
      throw new HarnessError('TARGET_UNAVAILABLE', `ejabberd ${n.name} did not answer on ${HOST}:${n.port} within ${this.timeoutMs} ms\n${this.logTail()}`, { cause: e });
    }
    if (r === 'exited') throw new HarnessError('TARGET_UNAVAILABLE', `ejabberd ${n.name} exited during start-up (${p.exit?.error?.message ?? `code ${p.exit?.code}`})\n${this.logTail()}`);
  }

  /** `ejabberd_ctl` against node `n` (what ejabberdctl runs), from a hidden node that listens nowhere. */
  private async ctl(n: Node, cmd: string[]): Promise<void> {
    const args = ['-sname', `ctl${randomBytes(3).toString('hex')}@localhost`, '-setcookie', this.cookie, '-hidden', '-noinput', '-dist_listen', 'false', '-s', 'ejabberd_ctl', '-extra', n.name, ...cmd];
    const child = spawn(this.erl, args, { cwd: this.dir, env: this.env(), stdio: ['ignore', 'pipe', 'pipe'] });
    trackChild(child);
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), this.timeoutMs);
    const code = await new Promise<number | null>((resolve) => child.once('close', resolve));
    clearTimeout(timer);
    if (code !== 0) throw new HarnessError('TARGET_UNAVAILABLE', `ejabberdctl ${cmd.join(' ')} on ${n.name} failed (${code}): ${out.trim()}\n${this.logTail()}`);
  }

  async restart(): Promise<void> {
    await Promise.all(this.nodes.map(async (n) => n.proc?.stop(20_000)));
    // Together: each node's Mnesia waits for the other's tables.
    await Promise.all(this.nodes.map((n) => this.launch(n)));
  }

  logTail(lines = 30): string {
    const out: string[] = [];
    for (const n of this.nodes) {
      const log = tailOf(n.log, lines);
      if (log) out.push(`-- ${n.name} log:`, log);
      const t = n.proc?.tail(lines);
      if (t) out.push(`-- ${n.name} output:`, t);
    }
    const err = tailOf(join(this.dir, 'error.log'), lines);
    if (err) out.push('-- error.log:', err);
    return out.join('\n');
  }

  async stop(): Promise<void> {
    await Promise.all(this.nodes.map(async (n) => n.proc?.stop(10_000)));
    await this.epmd?.stop(2000);
    if (this.stopped) return;
    this.stopped = true;
    await removeTempDir(this.dir);
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.stop();
  }
}

function tailOf(file: string, lines: number): string {
  try {
    return readFileSync(file, 'utf8').split('\n').filter(Boolean).slice(-lines).join('\n');
  } catch {
    return '';
  }
}

async function portOpen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host: HOST, port });
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

/**
 * Starts a private ejabberd of `nodes` BEAM nodes (joined into one cluster) and resolves once
 * every node's c2s port answers. Throws HarnessError('TARGET_UNAVAILABLE') when ejabberd is not
 * installed or does not come up (with the tail of its logs).
 */
export async function startEjabberd(opts: EjabberdOptions = {}): Promise<LocalEjabberd> {
  const erl = findErl(opts.erl);
  const dir = await mkdtemp(join(tmpdir(), 'gravitas-ejabberd-'));
  trackTempDir(dir);
  const c = new EjabberdCluster(erl, dir, opts.domain ?? 'localhost', opts.startTimeoutMs ?? 60_000);
  try {
    await c.start(Math.max(1, opts.nodes ?? 1));
    return c;
  } catch (e) {
    await c.stop();
    throw e;
  }
}
