import { spawn, type ChildProcess } from 'node:child_process';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { KeyPair } from '@gravitas/protocol';

/*
 * Child processes and temp files of a benchmark run, and /proc readings of them.
 * Everything started through a `Resources` is stopped by `close()` — called from the
 * benchmark's finally, from SIGINT/SIGTERM, and (SIGKILL only, synchronously) at exit.
 */

export const CLI_BIN = fileURLToPath(new URL('../../packages/cli/dist/bin.js', import.meta.url));

const log = (msg: string): void => void process.stderr.write(`  ${msg}\n`);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

// ---------- /proc ----------

/** sysconf(_SC_CLK_TCK): 100 on every Linux we run on (`getconf CLK_TCK`); /proc/<pid>/stat counts in these. */
const CLK_TCK = 100;

/** utime + stime of a process (all its threads), in seconds. */
export function procCpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // comm (field 2) may contain spaces and parentheses: split after the last ')'.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // fields[0] is field 3 (state); utime is field 14, stime field 15.
  return (Number(fields[11]) + Number(fields[12])) / CLK_TCK;
}

/** Read- and write-family system calls a process made so far (/proc/<pid>/io syscr, syscw): a socket write each. */
export function procSyscalls(pid: number): { r: number; w: number } {
  const io = readFileSync(`/proc/${pid}/io`, 'utf8');
  return { r: Number(/^syscr:\s+(\d+)/m.exec(io)?.[1] ?? NaN), w: Number(/^syscw:\s+(\d+)/m.exec(io)?.[1] ?? NaN) };
}

/** VmRSS of a process in KiB. */
export function procRssKiB(pid: number): number {
  const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(m[1]);
}

// ---------- keys ----------

/**
 * A fresh X25519 key pair in raw bytes. The keygen job encodes DER itself: exporting a generated
 * *private* KeyObject as JWK can self-deadlock in worker threads on node v20.20 (see ceilings.ts);
 * the raw keys are the last 32 bytes of the PKCS8 / SPKI encodings.
 */
export function nativeKeyPair(): KeyPair {
  const { privateKey, publicKey } = generateKeyPairSync('x25519', {
    privateKeyEncoding: { format: 'der', type: 'pkcs8' },
    publicKeyEncoding: { format: 'der', type: 'spki' },
  });
  return { secretKey: new Uint8Array(privateKey.subarray(-32)), publicKey: new Uint8Array(publicKey.subarray(-32)) };
}

// ---------- children ----------

export interface Child {
  readonly name: string;
  readonly proc: ChildProcess;
  readonly pid: number;
  /** Last stderr/stdout lines, for error messages. */
  tail(): string;
  /** SIGTERM, then SIGKILL after graceMs; resolves once the process is gone. */
  stop(graceMs?: number): Promise<void>;
}

function exited(proc: ChildProcess): boolean {
  return proc.exitCode !== null || proc.signalCode !== null;
}

/**
 * Spawns `node <args>` and resolves with the first stdout line matching `ready` (or rejects if the
 * process exits first or takes longer than `timeoutMs`).
 */
export function spawnNode(name: string, args: string[], ready: RegExp, timeoutMs = 30_000): { child: Child; ready: Promise<RegExpExecArray> } {
  const proc = spawn(process.execPath, args, { stdio: ['pipe', 'pipe', 'pipe'] });
  let tail = '';
  const keep = (d: Buffer): void => void (tail = (tail + d.toString()).slice(-4000));
  const gone = new Promise<void>((r) => proc.once('close', () => r()));
  const child: Child = {
    name,
    proc,
    pid: proc.pid ?? -1,
    tail: () => tail,
    async stop(graceMs = 15_000) {
      if (exited(proc)) return gone;
      proc.kill('SIGTERM');
      const t = setTimeout(() => proc.kill('SIGKILL'), graceMs);
      await gone;
      clearTimeout(t);
    },
  };
  proc.stderr!.on('data', keep);
  const readyP = new Promise<RegExpExecArray>((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`${name} not ready after ${timeoutMs} ms:\n${tail}`)), timeoutMs);
    proc.stdout!.on('data', (d: Buffer) => {
      keep(d);
      out += d.toString();
      const m = ready.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve(m);
      }
    });
    proc.once('error', (e) => (clearTimeout(timer), reject(e)));
    proc.once('exit', (code, sig) => (clearTimeout(timer), reject(new Error(`${name} exited (${code ?? sig}) before it was ready:\n${tail}`))));
  });
  return { child, ready: readyP };
}

// ---------- resources ----------

export class Resources {
  private readonly children = new Set<Child>();
  private readonly dirs = new Set<string>();
  private readonly before: Array<() => Promise<void>> = [];
  private readonly after: Array<() => Promise<void>> = [];
  private closing: Promise<void> | undefined;
  private readonly onExit = (): void => {
    for (const c of this.children) if (!exited(c.proc)) c.proc.kill('SIGKILL');
  };
  private readonly onSignal = (sig: NodeJS.Signals): void => {
    process.stderr.write(`\n${sig}: stopping child processes…\n`);
    // Short grace: on Ctrl-C the whole process group got the signal and nats-server may be gone already.
    void this.close(3000).finally(() => process.exit(sig === 'SIGINT' ? 130 : 143));
  };

  constructor() {
    process.on('exit', this.onExit);
    process.on('SIGINT', this.onSignal);
    process.on('SIGTERM', this.onSignal);
  }

  add(child: Child): Child {
    this.children.add(child);
    child.proc.once('close', () => this.children.delete(child));
    return child;
  }

  /** Runs `fn` at close(), before child processes are stopped (newest first). */
  defer(fn: () => Promise<void>): void {
    this.before.push(fn);
  }

  /** Runs `fn` at close(), after child processes are stopped (e.g. the nats-server they use). */
  deferLast(fn: () => Promise<void>): void {
    this.after.push(fn);
  }

  async tempDir(prefix: string): Promise<string> {
    const d = await mkdtemp(join(tmpdir(), prefix));
    this.dirs.add(d);
    return d;
  }

  close(graceMs = 15_000): Promise<void> {
    this.closing ??= (async () => {
      const run = async (fns: Array<() => Promise<void>>): Promise<void> => {
        for (const fn of fns.reverse()) await fn().catch((e: Error) => log(`cleanup: ${e.message}`));
      };
      await run(this.before);
      await Promise.all([...this.children].map((c) => c.stop(graceMs)));
      await run(this.after);
      for (const d of this.dirs) await rm(d, { recursive: true, force: true });
      this.dirs.clear();
      process.off('exit', this.onExit);
      process.off('SIGINT', this.onSignal);
      process.off('SIGTERM', this.onSignal);
    })();
    return this.closing;
  }
}

// ---------- gravitas nodes ----------

export interface ClusterKeys {
  server: KeyPair;
  serverKey: string;
  ticketKeys: Array<{ id: number; key: string }>;
}

export function clusterKeys(): ClusterKeys {
  const server = nativeKeyPair();
  return { server, serverKey: Buffer.from(server.secretKey).toString('base64url'), ticketKeys: [{ id: 1, key: randomBytes(32).toString('base64url') }] };
}

export interface GravitasNode {
  child: Child;
  pid: number;
  nodeId: string;
  /** host:port of its first cell. */
  clientAddress: string;
  /** host:port of every cell, in cell order. */
  addrs: string[];
  adminUrl: string;
}

/** What a benchmark changes in the node: top-level config (limits are merged over BENCH_LIMITS), Node flags, patience. */
export interface NodeOptions {
  config?: Record<string, unknown> & { limits?: Record<string, unknown> };
  nodeArgs?: string[];
  readyTimeoutMs?: number;
}

/**
 * Limits high enough that the benchmark measures the node, not its rate limiting. The connection
 * cap stays at its default (15,000 per cell, lowered by the node to fit its fd limit when it has
 * several cells): a benchmark that needs more sets it, within the fd limit (20,000 here: up to
 * ~18,600 for a one-cell node, with web.maxConnections at BENCH_WEB_CONNECTIONS).
 */
export const BENCH_LIMITS = {
  msgRatePerSec: 1_000_000,
  msgBurst: 1_000_000,
  fanoutRatePerSec: 10_000_000,
  fanoutBurst: 10_000_000,
  readRatePerSec: 1_000_000,
  readBurst: 1_000_000,
  requestRatePerSec: 1_000_000,
  requestBurst: 1_000_000,
  controlRatePerSec: 1_000_000,
  controlBurst: 1_000_000,
  accountMsgRatePerSec: 10_000_000,
  accountFanoutRatePerSec: 100_000_000,
  accountReadRatePerSec: 10_000_000,
  accountRequestRatePerSec: 10_000_000,
  cookieThresholdPerSec: 1_000_000,
  maxHandshakesInFlight: 10_000,
  // Idle sessions must survive the idle phase however long it takes to open them.
  idleTimeoutMs: 3_600_000,
} as const;

/** Raw web-listener connections per cell: the benchmarks' clients are TCP, so the fd budget goes to TCP. */
export const BENCH_WEB_CONNECTIONS = 1024;

/**
 * Per-source caps out of the way: these benchmarks' clients all connect from 127.0.0.1 and measure
 * throughput, not abuse (the caps have their tests). The load harness's local targets keep the
 * defaults: its generators spread their connections over loopback addresses (harness/sources.ts).
 */
export const BENCH_NETWORK = {
  maxConnectionsPerSource: 1_000_000,
  maxConnectionsPerPrefix: 1_000_000,
  maxHandshakesPerSource: 100_000,
  maxHandshakesPerPrefix: 100_000,
  maxPendingStreamsPerSource: 1_000_000,
  maxPendingStreamsPerPrefix: 1_000_000,
} as const;

/**
 * Extra node options for the gravitas node processes, e.g. for profiling:
 * GRAVITAS_BENCH_NODE_ARGS="--cpu-prof --cpu-prof-dir=/tmp/prof" (profiles every thread, written at exit).
 */
const NODE_ARGS = (process.env['GRAVITAS_BENCH_NODE_ARGS'] ?? '').split(/\s+/).filter(Boolean);

/** One `gravitas node` child (1 cell unless `o.config.cells` says otherwise), resolved once it printed its ready line. */
export async function startGravitasNode(res: Resources, dir: string, nodeId: string, natsUrl: string, keys: ClusterKeys, o: NodeOptions = {}): Promise<GravitasNode> {
  const { limits, ...extra } = o.config ?? {};
  const config = {
    nodeId,
    nats: { servers: [natsUrl] },
    cells: 1,
    listen: { host: '127.0.0.1', basePort: 0 },
    admin: { host: '127.0.0.1', port: 0 },
    dataDir: join(dir, `${nodeId}-data`),
    serverKey: keys.serverKey,
    ticketKeys: keys.ticketKeys,
    registration: { mode: 'open' },
    web: { maxConnections: BENCH_WEB_CONNECTIONS },
    network: BENCH_NETWORK,
    ...extra,
    limits: { ...BENCH_LIMITS, ...limits },
  };
  const file = join(dir, `${nodeId}.json`);
  await writeFile(file, JSON.stringify(config, null, 2));
  const { child, ready } = spawnNode(nodeId, [...NODE_ARGS, ...(o.nodeArgs ?? []), CLI_BIN, 'node', '--config', file], /^ready client=(\S+) admin=(\S+?)(?: web=\S+)?$/m, o.readyTimeoutMs);
  res.add(child);
  const m = await ready;
  const addrs = (m[1] ?? '').split(',').filter(Boolean);
  return { child, pid: child.pid, nodeId, clientAddress: addrs[0] ?? '', addrs, adminUrl: m[2] ?? '' };
}

/** Sessions and connections of the node's cells, from its admin API. */
export async function cellStatus(node: GravitasNode): Promise<{ sessions: number; connections: number }> {
  const res = await fetch(`${node.adminUrl}/admin/cells`);
  const body = (await res.json()) as { cells: Array<{ status?: { sessions: number; connections: number } }> };
  let sessions = 0;
  let connections = 0;
  for (const c of body.cells) {
    sessions += c.status?.sessions ?? 0;
    connections += c.status?.connections ?? 0;
  }
  return { sessions, connections };
}

/** Polls `fn` until it returns true; throws after `timeoutMs`. */
export async function waitFor(what: string, fn: () => boolean | Promise<boolean>, timeoutMs = 30_000, intervalMs = 100): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await fn())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(intervalMs);
  }
}

export { sleep, log };
