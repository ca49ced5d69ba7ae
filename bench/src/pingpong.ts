import { connect as netConnect, type Socket } from 'node:net';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { GravitasClient } from '@gravitas/client';
import { NatsServer } from '@gravitas/testkit';
import { CEILING, measureNatsPubSub, measureSecretbox, measureX25519, type X25519Result } from './ceilings.js';
import { LatencyHistogram, type LatencySummary } from './histogram.js';
import { INSPECT_URL_RE, RemoteGc } from './inspector.js';
import { runHandshakeBench, type HsPhaseStats, type HsResult } from './hsload.js';
import {
  cellStatus, clusterKeys, log, nativeKeyPair, procCpuSeconds, procRssKiB, Resources, sleep, spawnNode, startGravitasNode, waitFor,
  BENCH_LIMITS, type Child, type ClusterKeys, type GravitasNode,
} from './procs.js';
import { cachingSuite, handshake, newHandshake, parseTarget } from './rawclient.js';
import { makeResult, numFlag, posInt, posNum, type BenchOptions, type BenchResult, type Row } from './report.js';

export const name = 'pingpong';
export const description =
  'cross-node 1:1 delivery (closed + open loop), handshakes/s and idle memory per session against real node processes, with ceilings';
export const defaultDurationS = 10;
export const flags = {
  pairs: 'sender/recipient pairs, sender on node 1, recipient on node 2 (default 50)',
  window: 'closed loop: messages in flight per pair (default 1)',
  rate: 'open loop: total msgs/s (default: half the closed-loop throughput)',
  handshakes: 'seconds per handshake phase (full, resumed) (default 3)',
  'hs-workers': 'handshake load generator worker threads (default 1)',
  'hs-concurrency': 'handshakes in flight per worker (default 32)',
  'hs-identities': 'devices the handshake phases cycle through (default 2000)',
  idle: 'idle sessions for the memory measurement (default 3000)',
  'idle-gc': 'force a full GC (inspector) in the measured process before each RSS reading: 1 (default) or 0 = settle only',
  'ceiling-duration': 'seconds per ceiling measurement (default 2)',
  'sdk-caps': 'protocol capabilities the SDK clients ask for: "all" (default), "none" (as before negotiation: secretbox, one frame per message) or a comma list',
} as const;

/** Targets from the issue. */
// Handshakes and the SDK: issue 17's targets (4,000 / 8,000 per node CPU-second, ≤ 30 µs per message).
const TARGET = { openP99Ms: 5, fullPerS: 4000, resumePerS: 8000, idleKiB: 6, sdkUsPerMsg: 30 };
const TEXT = 'x'.repeat(100);
const SETTLE_MS = 2000;
const IDLE_CONCURRENCY = 64;

const count = (errors: Record<string, number>, code: string): void => void (errors[code] = (errors[code] ?? 0) + 1);
const errCode = (e: unknown): string => (e as { code?: string }).code ?? (e as Error).message ?? String(e);
const sum = (r: Record<string, number>): number => Object.values(r).reduce((a, b) => a + b, 0);
const fmtErrors = (r: Record<string, number>): string =>
  Object.entries(r)
    .map(([k, v]) => `${k}×${v}`)
    .join(' ');

// ---------------------------------------------------------------------------------------------
// ping-pong

/** CPU cores used by each process, and this process's event-loop delay, while `fn` runs. */
export interface Usage {
  cores: Record<string, number>;
  /** Event-loop delay of the load generator (this process's main thread), ms. */
  genLoopDelay: { p99: number; max: number };
}

async function withUsage<T>(pids: Record<string, number | undefined>, fn: () => Promise<T>): Promise<[T, Usage]> {
  const read = (): Record<string, number> => {
    const out: Record<string, number> = {};
    for (const [k, pid] of Object.entries(pids)) if (pid !== undefined) out[k] = procCpuSeconds(pid);
    return out;
  };
  const h = monitorEventLoopDelay({ resolution: 1 });
  const c0 = read();
  const t0 = performance.now();
  h.enable();
  const r = await fn();
  h.disable();
  const s = (performance.now() - t0) / 1000;
  const c1 = read();
  const cores: Record<string, number> = {};
  for (const k of Object.keys(c1)) cores[k] = (c1[k]! - c0[k]!) / s;
  return [r, { cores, genLoopDelay: { p99: h.percentile(99) / 1e6, max: h.max / 1e6 } }];
}

const fmtUsage = (u: Usage): string =>
  `CPU cores: ${Object.entries(u.cores)
    .map(([k, v]) => `${k} ${v.toFixed(2)}`)
    .join(', ')}; generator loop delay p99 ${u.genLoopDelay.p99.toFixed(1)} ms`;

export interface Pair {
  a: GravitasClient;
  b: GravitasClient;
  to: string;
}

export interface LoopResult {
  sent: number;
  delivered: number;
  perSec: number;
  errors: Record<string, number>;
  /** send() (closed) or intended send time (open) → `delivered` status at the sender. */
  rtt: LatencySummary;
  /** send() / intended send time → `message` event at the recipient (same process clock). */
  oneway: LatencySummary;
}

export interface OpenLoopResult extends LoopResult {
  targetPerSec: number;
  /** How late the load generator actually called send() relative to the schedule. */
  schedLag: LatencySummary;
}

/** Closed- and open-loop ping-pong over SDK client pairs (reused by the custody benchmark). */
export class PingPong {
  private seq = 0;
  /** id → send time (performance.now()) and whether this message is measured. */
  private readonly sentAt = new Map<string, { t: number; rec: boolean }>();
  private rtt = new LatencyHistogram();
  private oneway = new LatencyHistogram();

  constructor(readonly pairs: Pair[]) {
    for (const p of pairs) {
      p.b.on('message', (m) => {
        const s = this.sentAt.get(m.id);
        if (s?.rec) this.oneway.recordSince(s.t);
      });
    }
  }

  private reset(): void {
    this.rtt = new LatencyHistogram();
    this.oneway = new LatencyHistogram();
  }

  private nextId(): string {
    return `m${(++this.seq).toString(36)}`;
  }

  /** One message per pair, retried until delivered: proves both nodes see each other's cells. */
  async probe(timeoutMs = 20_000): Promise<void> {
    const end = Date.now() + timeoutMs;
    await Promise.all(
      this.pairs.map(async (p) => {
        for (;;) {
          try {
            await p.a.send(p.to, 'probe');
            return;
          } catch (e) {
            if (Date.now() > end) throw new Error(`pair ${p.to} never delivered: ${errCode(e)}`);
            await sleep(200);
          }
        }
      }),
    );
  }

  async closedLoop(ms: number, window: number, record: boolean): Promise<LoopResult> {
    this.reset();
    const errors: Record<string, number> = {};
    let sent = 0;
    let delivered = 0;
    const t0 = performance.now();
    const end = t0 + ms;
    await Promise.all(
      this.pairs.flatMap((p) =>
        Array.from({ length: window }, async () => {
          while (performance.now() < end) {
            const id = this.nextId();
            const t = performance.now();
            this.sentAt.set(id, { t, rec: record });
            sent++;
            try {
              await p.a.send(p.to, TEXT, id);
              const now = performance.now();
              this.rtt.recordMicros((now - t) * 1000);
              if (now <= end) delivered++;
            } catch (e) {
              count(errors, errCode(e));
              await sleep(5); // no hot loop on a persistent failure
            } finally {
              this.sentAt.delete(id);
            }
          }
        }),
      ),
    );
    return { sent, delivered, perSec: (delivered * 1000) / ms, errors, rtt: this.rtt.summary(), oneway: this.oneway.summary() };
  }

  /**
   * Open loop: each pair sends on a fixed schedule (pairs staggered evenly), whatever happened
   * to earlier messages. Latency counts from the intended send time, so a stall of the system
   * (or of this generator) shows up in the percentiles instead of silently lowering the rate.
   */
  openLoop(ratePerSec: number, ms: number, record: boolean): Promise<OpenLoopResult> {
    this.reset();
    const sched = new LatencyHistogram();
    const errors: Record<string, number> = {};
    const n = this.pairs.length;
    const interval = (1000 * n) / ratePerSec; // per pair
    const t0 = performance.now() + 5;
    const end = t0 + ms;
    const next = this.pairs.map((_, i) => t0 + (i / n) * interval);
    let sent = 0;
    let delivered = 0;
    let outstanding = 0;
    return new Promise((resolve) => {
      let ticking = true;
      const maybeDone = (): void => {
        if (ticking || outstanding > 0) return;
        resolve({ sent, delivered, perSec: (delivered * 1000) / ms, errors, rtt: this.rtt.summary(), oneway: this.oneway.summary(), targetPerSec: ratePerSec, schedLag: sched.summary() });
      };
      const send = (p: Pair, intended: number, now: number): void => {
        const id = this.nextId();
        this.sentAt.set(id, { t: intended, rec: record });
        sched.recordMicros((now - intended) * 1000);
        sent++;
        outstanding++;
        p.a.send(p.to, TEXT, id).then(
          () => {
            const done = performance.now();
            this.rtt.recordMicros((done - intended) * 1000);
            if (done <= end) delivered++;
          },
          (e: unknown) => count(errors, errCode(e)),
        ).finally(() => {
          this.sentAt.delete(id);
          outstanding--;
          maybeDone();
        });
      };
      const tick = (): void => {
        const now = performance.now();
        let soonest = Infinity;
        for (let i = 0; i < n; i++) {
          while (next[i]! <= now && next[i]! < end) {
            send(this.pairs[i]!, next[i]!, now);
            next[i]! += interval;
          }
          if (next[i]! < end) soonest = Math.min(soonest, next[i]!);
        }
        if (soonest === Infinity) {
          ticking = false;
          return maybeDone();
        }
        setTimeout(tick, Math.max(0, soonest - performance.now()));
      };
      setTimeout(tick, Math.max(0, t0 - performance.now()));
    });
  }
}

/** `n` SDK client pairs: A on `n1`, B on `n2` (any server speaking the client protocol), connected, B first. */
export async function connectPairs(
  res: Resources, n1: Pick<GravitasNode, 'clientAddress'>, n2: Pick<GravitasNode, 'clientAddress'>, keys: ClusterKeys, n: number, capabilities?: readonly string[],
): Promise<Pair[]> {
  const clients: GravitasClient[] = [];
  res.defer(async () => void (await Promise.all(clients.map((c) => c.close().catch(() => undefined)))));
  const mk = (server: string, user: string): GravitasClient => {
    const c = new GravitasClient({ servers: [server], serverPublicKey: keys.server.publicKey, identity: nativeKeyPair(), user, device: 'd', registration: '', reconnect: false, ...(capabilities && { capabilities }) });
    c.on('error', (e) => log(`client ${user}: ${e.message}`));
    clients.push(c);
    return c;
  };
  const pairs = Array.from({ length: n }, (_, i) => ({ a: mk(n1.clientAddress, `a${i}`), b: mk(n2.clientAddress, `b${i}`), to: `b${i}` }));
  // Recipients first, so that they are registered in the directory before anyone sends.
  await Promise.all(pairs.map((p) => p.b.connect()));
  await Promise.all(pairs.map((p) => p.a.connect()));
  return pairs;
}

// ---------------------------------------------------------------------------------------------
// idle memory

export interface MemResult {
  count: number;
  rssBeforeKiB: number;
  /** RSS after the first half was opened (and settled). */
  rssMidKiB: number;
  rssAfterKiB: number;
  /** (after − before) / count. */
  perKiB: number;
  /** (after − mid) / second half: the marginal cost once first-use growth is paid. */
  perKiBSecondHalf: number;
}

export interface IdleResult {
  sessions: MemResult;
  raw: MemResult;
  errors: Record<string, number>;
  /** Whether RSS was read after a forced full GC (else after settling only). */
  forcedGc: boolean;
}

/** Runs `fn(i)` for i in from..to-1 with at most `limit` running at once. */
async function pool(from: number, to: number, limit: number, fn: (i: number) => Promise<void>): Promise<void> {
  let i = from;
  await Promise.all(
    Array.from({ length: Math.max(0, Math.min(to - from, limit)) }, async () => {
      while (i < to) await fn(i++);
    }),
  );
}

/** Connects to the inspector of a child started with --inspect=127.0.0.1:0 (undefined if gc is off or it fails). */
async function remoteGc(child: Child, enabled: boolean): Promise<RemoteGc | undefined> {
  if (!enabled) return undefined;
  try {
    let url: string | undefined;
    await waitFor('inspector URL', () => (url = INSPECT_URL_RE.exec(child.tail())?.[1]) !== undefined, 5000, 50);
    return await RemoteGc.connect(url!);
  } catch (e) {
    log(`idle: no forced GC in ${child.name} (${(e as Error).message}); settling only`);
    return undefined;
  }
}

/**
 * RSS of `pid` before, halfway and after `open(from, to)` has run for 0..n. Before each reading:
 * settle, then (if `gc`) a full GC of every thread of the process, then a short pause.
 */
async function measureMem(pid: number, n: number, gc: RemoteGc | undefined, open: (from: number, to: number) => Promise<number>): Promise<MemResult> {
  const settledRss = async (): Promise<number> => {
    await sleep(SETTLE_MS);
    if (gc) {
      await gc.collect();
      await sleep(500);
    }
    return procRssKiB(pid);
  };
  const rssBeforeKiB = await settledRss();
  const half = Math.floor(n / 2);
  const first = await open(0, half);
  const rssMidKiB = await settledRss();
  const second = await open(half, n);
  const rssAfterKiB = await settledRss();
  const count = first + second;
  return { count, rssBeforeKiB, rssMidKiB, rssAfterKiB, perKiB: (rssAfterKiB - rssBeforeKiB) / count, perKiBSecondHalf: (rssAfterKiB - rssMidKiB) / second };
}

async function idleMemory(res: Resources, node: GravitasNode, keys: ClusterKeys, n: number, forceGc: boolean): Promise<IdleResult> {
  const target = parseTarget(node.clientAddress);
  const sockets: Socket[] = [];
  const closeAll = async (): Promise<void> => {
    for (const s of sockets) s.destroy();
    sockets.length = 0;
  };
  res.defer(closeAll);
  const errors: Record<string, number> = {};
  const suite = cachingSuite();
  const base = await cellStatus(node);

  const gcNode = await remoteGc(node.child, forceGc);
  res.defer(async () => gcNode?.close());
  log(`idle: opening ${n} authenticated sessions to ${node.nodeId} (RSS before, halfway, after; ${SETTLE_MS} ms settle${gcNode ? ` + full GC of ${gcNode.workerCount + 1} threads` : ''} each)`);
  const sessions = await measureMem(node.pid, n, gcNode, async (from, to) => {
    const before = sockets.length;
    await pool(from, to, IDLE_CONCURRENCY, async (i) => {
      const id = { user: `idle${i}`, device: 'd', keys: nativeKeyPair() };
      const o = await handshake(target, newHandshake(keys.server.publicKey, id, suite), true);
      if (o.ok && o.socket) sockets.push(o.socket);
      else if (!o.ok) count(errors, o.code);
    });
    // The pong already proves registration; this also catches sessions the server dropped since.
    await waitFor('idle sessions to be registered', async () => (await cellStatus(node)).sessions >= base.sessions + sockets.length, 30_000, 250);
    return sockets.length - before;
  });
  await closeAll();

  log(`idle: raw net.Socket ceiling with ${n} sockets`);
  const { child, ready } = spawnNode('rawserver', [...(forceGc ? ['--inspect=127.0.0.1:0'] : []), fileURLToPath(new URL('./rawserver.js', import.meta.url))], /^ready (\d+)$/m, 10_000);
  res.add(child);
  const port = Number((await ready)[1]);
  const gcRaw = await remoteGc(child, forceGc);
  res.defer(async () => gcRaw?.close());
  const raw = await measureMem(child.pid, n, gcRaw, async (from, to) => {
    const before = sockets.length;
    await pool(from, to, 256, async () => {
      const s = netConnect({ host: '127.0.0.1', port, noDelay: true });
      s.on('error', () => undefined);
      const ok = await new Promise<boolean>((r) => s.once('connect', () => r(true)).once('error', () => r(false)));
      if (ok) sockets.push(s);
      else count(errors, 'RAW_CONNECT_FAILED');
    });
    return sockets.length - before;
  });
  await closeAll();
  gcRaw?.close();
  await child.stop(5000);
  return { sessions, raw, errors, forcedGc: gcNode !== undefined && gcRaw !== undefined };
}

// ---------------------------------------------------------------------------------------------
// rows

const mib = (kib: number): string => (kib / 1024).toFixed(1);
const sumCores = (u: Usage): number => Object.values(u.cores).reduce((a, b) => a + b, 0);
const pass = (ok: boolean, target: string): string => `target ${target}: ${ok ? 'PASS' : 'FAIL'}`;
/** The generator process's (the SDK clients') CPU µs per delivered message. */
const sdkUs = (u: Usage, perSec: number): number => ((u.cores['generator'] ?? NaN) * 1e6) / perSec;

function latencyRows(prefix: string, l: LatencySummary, notes: Partial<Record<keyof LatencySummary, string>> = {}): Row[] {
  return (['p50', 'p99', 'p999', 'max'] as const).map((k) => ({ metric: `${prefix}.${k}`, value: l[k], unit: 'ms', ...(notes[k] && { note: notes[k] }) }));
}

function hsRows(h: HsPhaseStats, x25519Ops: number, opsPerHandshake: number, target: number): Row[] {
  const ceil = x25519Ops / opsPerHandshake;
  const ceilName = `${CEILING.x25519Native}/${opsPerHandshake}`;
  const errs = sum(h.errors);
  return [
    {
      metric: `handshake.${h.kind}`,
      value: h.perSec,
      unit: 'hs/s',
      ceiling: ceilName,
      ratio: h.perSec / ceil,
      note: `wall clock, generator shares the cores; ${h.onTheFly > 0 ? `${h.onTheFly} hellos computed in the loop` : 'hellos precomputed'}${errs ? `; errors ${fmtErrors(h.errors)}` : ''}`,
    },
    {
      metric: `handshake.${h.kind}.per_node_cpu_s`,
      value: h.perServerCpuS,
      unit: 'hs/cpu-s',
      ceiling: ceilName,
      ratio: h.perServerCpuS / ceil,
      note: pass(h.perServerCpuS >= target, `≥ ${target}`),
    },
    { metric: `handshake.${h.kind}.node_cpu`, value: h.cpu.node / h.windowS, unit: 'cores', note: `nats-server ${(h.cpu.nats / h.windowS).toFixed(2)}, generator ${(h.cpu.generator / h.windowS).toFixed(2)} cores` },
    { metric: `handshake.${h.kind}.p50`, value: h.latency.p50, unit: 'ms', note: 'connect → pong' },
    { metric: `handshake.${h.kind}.p99`, value: h.latency.p99, unit: 'ms' },
  ];
}

// ---------------------------------------------------------------------------------------------
// run

export async function run(opts: BenchOptions): Promise<BenchResult> {
  const startedAt = new Date();
  const nPairs = posInt(opts, 'pairs', 50, 5000);
  const window = posInt(opts, 'window', 1, 1000);
  const rateFlag = opts.flags['rate'] === undefined ? undefined : posNum(opts, 'rate', 1);
  const hsMs = posNum(opts, 'handshakes', 3) * 1000;
  const hsWorkers = posInt(opts, 'hs-workers', 1, 16);
  const hsConcurrency = posInt(opts, 'hs-concurrency', 32, 5000);
  const hsIdentities = posInt(opts, 'hs-identities', 2000, 100_000);
  const nIdle = posInt(opts, 'idle', 3000, 15_000);
  const ceilMs = posNum(opts, 'ceiling-duration', 2) * 1000;
  const idleGc = numFlag(opts, 'idle-gc', 1) !== 0;
  const capsFlag = opts.flags['sdk-caps'];
  const sdkCaps = capsFlag === undefined || capsFlag === 'all' ? undefined : capsFlag === true || capsFlag === 'none' ? [] : capsFlag.split(',');
  const ms = opts.durationMs;
  const warmMs = Math.min(2000, ms / 5);
  const params = { sdkCaps: sdkCaps ?? 'all', durationMs: ms, warmupMs: warmMs, pairs: nPairs, window, rate: rateFlag ?? 'half of closed-loop', handshakeMs: hsMs, hsWorkers, hsConcurrency, hsIdentities, idle: nIdle, idleGc, ceilingMs: ceilMs, textBytes: TEXT.length, limits: BENCH_LIMITS };

  const res = new Resources();
  try {
    // ---- ceilings (nothing else running yet) ----
    log('starting nats-server (JetStream)');
    const nats = await NatsServer.start({ jetstream: true });
    res.deferLast(() => nats.stop());
    log(`ceiling ${CEILING.natsPubSub}`);
    const natsPubSub = await measureNatsPubSub(ceilMs, nats.url);
    log(`ceiling ${CEILING.secretbox}`);
    const secretbox = measureSecretbox(ceilMs);
    const x25519: X25519Result = measureX25519(ceilMs);

    // ---- cluster ----
    const dir = await res.tempDir('gravitas-bench-');
    const keys = clusterKeys();
    log('starting 2 node processes (1 cell each)');
    const [n1, n2] = await Promise.all([startGravitasNode(res, dir, 'bench-n1', nats.url, keys), startGravitasNode(res, dir, 'bench-n2', nats.url, keys, { nodeArgs: idleGc ? ['--inspect=127.0.0.1:0'] : [] })]);
    if (!n1 || !n2) throw new Error('unreachable');
    log(`node 1 pid ${n1.pid} at ${n1.clientAddress}, node 2 pid ${n2.pid} at ${n2.clientAddress}`);

    // ---- ping-pong ----
    log(`pingpong: connecting ${nPairs} pairs`);
    const pairs = await connectPairs(res, n1, n2, keys, nPairs, sdkCaps);
    const pp = new PingPong(pairs);
    await pp.probe();
    log(`pingpong closed loop: warmup ${warmMs} ms, measure ${ms} ms, window ${window}`);
    await pp.closedLoop(warmMs, window, false);
    const pids = { node1: n1.pid, node2: n2.pid, nats: nats.pid, generator: process.pid };
    const [closed, closedUsage] = await withUsage(pids, () => pp.closedLoop(ms, window, true));
    log(fmtUsage(closedUsage));
    const rate = rateFlag ?? Math.max(1, Math.round(closed.perSec / 2));
    log(`pingpong open loop at ${rate} msg/s: warmup ${warmMs} ms, measure ${ms} ms`);
    await pp.openLoop(rate, warmMs, false);
    const [open, openUsage] = await withUsage(pids, () => pp.openLoop(rate, ms, true));
    log(fmtUsage(openUsage));
    await Promise.all(pairs.flatMap((p) => [p.a.close(), p.b.close()]));

    // ---- handshakes against node 1 ----
    const hs: HsResult = await runHandshakeBench({
      target: parseTarget(n1.clientAddress),
      serverPublicKey: keys.server.publicKey,
      nodePid: n1.pid,
      natsPid: nats.pid,
      durationMs: hsMs,
      workers: hsWorkers,
      concurrency: hsConcurrency,
      identities: hsIdentities,
    });

    // ---- idle memory on node 2 (it only served the recipients so far) ----
    const idle = await idleMemory(res, n2, keys, nIdle, idleGc);

    // ---- table ----
    const rows: Row[] = [
      { metric: CEILING.natsPubSub, value: natsPubSub, unit: 'msg/s', note: '100 B, 1 pub + 1 sub conn' },
      { metric: CEILING.secretbox, value: secretbox, unit: 'op/s', note: '100 B, tweetnacl' },
      { metric: CEILING.x25519Native, value: x25519.nativeDh, unit: 'op/s', note: 'pre-built KeyObjects' },
      { metric: CEILING.x25519NativeFromRaw, value: x25519.nativeDhFromRaw, unit: 'op/s', note: 'incl. raw→KeyObject import' },
      ...(x25519.nativeDhFromRawJwk === undefined ? [] : [{ metric: CEILING.x25519NativeFromRawJwk, value: x25519.nativeDhFromRawJwk, unit: 'op/s', note: 'incl. raw→KeyObject import via JWK' }]),
      { metric: CEILING.x25519Keygen, value: x25519.nativeKeygen, unit: 'op/s', note: 'generateKeyPairSync' },
      { metric: CEILING.x25519Nacl, value: x25519.naclScalarMult, unit: 'op/s' },
      {
        metric: 'pingpong.closed.delivered',
        value: closed.perSec,
        unit: 'msg/s',
        ceiling: CEILING.natsPubSub,
        ratio: closed.perSec / natsPubSub,
        note: `${nPairs} pairs × window ${window}; each msg = 2 NATS msgs (dlv + ack)${sum(closed.errors) ? `; errors ${fmtErrors(closed.errors)}` : ''}`,
      },
      { metric: 'pingpong.closed.cpu', value: sumCores(closedUsage), unit: 'cores', note: fmtUsage(closedUsage) },
      ...latencyRows('pingpong.closed.rtt', closed.rtt, { p50: 'send() → delivered (incl. recipient ack)' }),
      ...latencyRows('pingpong.closed.oneway', closed.oneway, { p50: 'send() → recipient message event' }),
      {
        metric: 'pingpong.open.delivered',
        value: open.perSec,
        unit: 'msg/s',
        note: `target rate ${rate} msg/s${rateFlag === undefined ? ' (half of closed loop)' : ''}; sent ${open.sent}${sum(open.errors) ? `; errors ${fmtErrors(open.errors)}` : ''}`,
      },
      ...latencyRows('pingpong.open.rtt', open.rtt, { p50: 'intended send time → delivered', p99: pass(open.rtt.p99 <= TARGET.openP99Ms, `p99 ≤ ${TARGET.openP99Ms} ms`) }),
      ...latencyRows('pingpong.open.oneway', open.oneway, { p50: 'intended send time → recipient', p99: pass(open.oneway.p99 <= TARGET.openP99Ms, `p99 ≤ ${TARGET.openP99Ms} ms`) }),
      { metric: 'pingpong.open.cpu', value: sumCores(openUsage), unit: 'cores', note: fmtUsage(openUsage) },
      {
        // Issue 17's SDK target: client CPU per message, the sending and the receiving device together.
        metric: 'pingpong.sdk_us_per_msg',
        value: sdkUs(openUsage, open.perSec),
        unit: 'µs',
        note: `${pass(sdkUs(openUsage, open.perSec) <= TARGET.sdkUsPerMsg, `≤ ${TARGET.sdkUsPerMsg} µs`)}; the generator process's CPU (${nPairs * 2} SDK clients, both ends of every message, and the benchmark's own bookkeeping) per message delivered in the open loop; closed loop: ${sdkUs(closedUsage, closed.perSec).toFixed(0)} µs`,
      },
      { metric: 'pingpong.open.sched_lag.p99', value: open.schedLag.p99, unit: 'ms', note: `generator lateness vs schedule (max ${open.schedLag.max.toFixed(2)} ms); part of the latencies above` },
      {
        metric: 'handshake.register',
        value: hs.register.perSec,
        unit: 'hs/s',
        note: `first-time full handshakes incl. KV registration (${hs.register.completed}, untimed warmup)${sum(hs.register.errors) ? `; errors ${fmtErrors(hs.register.errors)}` : ''}`,
      },
      ...hsRows(hs.full, x25519.nativeDh, 5, TARGET.fullPerS),
      ...hsRows(hs.resume, x25519.nativeDh, 2, TARGET.resumePerS),
      {
        metric: 'idle.session_mem',
        value: idle.sessions.perKiB,
        unit: 'KiB/session',
        ceiling: 'idle.raw_socket_mem',
        ratio: idle.sessions.perKiB / idle.raw.perKiB,
        note: `${pass(idle.sessions.perKiB <= TARGET.idleKiB, `≤ ${TARGET.idleKiB} KiB`)}; ${idle.sessions.count} sessions, RSS ${mib(idle.sessions.rssBeforeKiB)} → ${mib(idle.sessions.rssAfterKiB)} MiB${sum(idle.errors) ? `; errors ${fmtErrors(idle.errors)}` : ''}`,
      },
      { metric: 'idle.session_mem.2nd_half', value: idle.sessions.perKiBSecondHalf, unit: 'KiB/session', note: `marginal: (after − halfway) / second half; RSS read after ${idle.forcedGc ? 'a forced full GC' : 'settling only (no GC)'}` },
      { metric: 'idle.raw_socket_mem', value: idle.raw.perKiB, unit: 'KiB/socket', note: `plain net server child, ${idle.raw.count} sockets, RSS ${mib(idle.raw.rssBeforeKiB)} → ${mib(idle.raw.rssAfterKiB)} MiB` },
      { metric: 'idle.raw_socket_mem.2nd_half', value: idle.raw.perKiBSecondHalf, unit: 'KiB/socket' },
    ];
    const extra = {
      ceilings: { natsPubSub, secretbox, x25519 },
      nodes: { node1: { pid: n1.pid, address: n1.clientAddress }, node2: { pid: n2.pid, address: n2.clientAddress } },
      pingpong: { closed: { ...closed, usage: closedUsage }, open: { ...open, usage: openUsage } },
      handshakes: hs,
      idle,
      targets: TARGET,
      // stderr/stdout tails of the node processes (server-side errors would show here)
      nodeLogs: { node1: n1.child.tail(), node2: n2.child.tail() },
    };
    for (const [k, tail] of Object.entries(extra.nodeLogs)) {
      if (/error|crash|fail/i.test(tail)) log(`${k} logged errors (tail in the JSON's extra.nodeLogs):\n${tail.split('\n').slice(-10).join('\n')}`);
    }
    return makeResult(name, startedAt, params, rows, extra);
  } finally {
    log('stopping child processes');
    await res.close();
  }
}
