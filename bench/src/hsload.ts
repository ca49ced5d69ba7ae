import { Worker } from 'node:worker_threads';
import type { LatencySummary } from './histogram.js';
import type { HsKind, HsRequest, HsResponse, HsWorkerData, PhaseResult } from './hsworker.js';
import { log, procCpuSeconds, sleep } from './procs.js';
import type { Target } from './rawclient.js';

/** Drives handshake load from worker threads and reads the server's CPU time around each timed window. */

export interface HsPhaseStats {
  kind: HsKind;
  completed: number;
  perSec: number;
  errors: Record<string, number>;
  /** Client hellos computed inside the timed window (precomputed pool ran dry). */
  onTheFly: number;
  prepared: number;
  latency: LatencySummary;
  /** CPU seconds used during the window by the node process, the nats-server and this (load generator) process. */
  cpu: { node: number; nats: number; generator: number };
  windowS: number;
  /** completed / node CPU seconds. */
  perServerCpuS: number;
}

export interface HsResult {
  register: { completed: number; perSec: number; errors: Record<string, number>; latency: LatencySummary };
  full: HsPhaseStats;
  resume: HsPhaseStats;
}

export interface HsOptions {
  target: Target;
  serverPublicKey: Uint8Array;
  nodePid: number;
  natsPid: number | undefined;
  durationMs: number;
  workers: number;
  concurrency: number;
  identities: number;
}

const MAX_PREPARED = 40_000;

type Call = HsRequest extends infer R ? (R extends { id: number } ? Omit<R, 'id'> : never) : never;

class HsWorker {
  private readonly w: Worker;
  private seq = 0;
  private readonly waiting = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();

  constructor(data: HsWorkerData) {
    this.w = new Worker(new URL('./hsworker.js', import.meta.url), { workerData: data });
    this.w.on('message', (m: HsResponse) => {
      const p = this.waiting.get(m.id);
      this.waiting.delete(m.id);
      if (m.ok) p?.resolve(m.result);
      else p?.reject(new Error(`handshake worker: ${m.error}`));
    });
    const failAll = (e: Error): void => {
      for (const p of this.waiting.values()) p.reject(e);
      this.waiting.clear();
    };
    this.w.on('error', failAll);
    this.w.on('exit', (code) => failAll(new Error(`handshake worker exited (${code})`)));
  }

  /** A wedged worker (e.g. a native deadlock) must fail the benchmark, not hang it: hence the timeout. */
  call<T>(req: Call, timeoutMs = 300_000): Promise<T> {
    const id = ++this.seq;
    return new Promise<T>((resolve, reject) => {
      const t = setTimeout(() => {
        this.waiting.delete(id);
        reject(new Error(`handshake worker did not answer ${req.cmd} within ${timeoutMs / 1000} s`));
      }, timeoutMs);
      this.waiting.set(id, { resolve: (v) => (clearTimeout(t), resolve(v as T)), reject: (e) => (clearTimeout(t), reject(e)) });
      this.w.postMessage({ ...req, id });
    });
  }

  terminate(): Promise<number> {
    return this.w.terminate();
  }
}

function mergeErrors(rs: Array<{ errors: Record<string, number> }>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const r of rs) for (const [k, v] of Object.entries(r.errors)) out[k] = (out[k] ?? 0) + v;
  return out;
}

/** Latencies of several workers: counts add; percentiles are approximated by the worst worker's. */
function mergeLatency(rs: PhaseResult[]): LatencySummary {
  const pick = (f: (l: LatencySummary) => number): number => Math.max(0, ...rs.map((r) => f(r.latency)));
  return { count: rs.reduce((a, r) => a + r.latency.count, 0), p50: pick((l) => l.p50), p99: pick((l) => l.p99), p999: pick((l) => l.p999), max: pick((l) => l.max) };
}

const selfCpuS = (): number => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
};

export async function runHandshakeBench(o: HsOptions): Promise<HsResult> {
  const perWorker = Math.ceil(o.identities / o.workers);
  const workers = Array.from(
    { length: o.workers },
    (_, i) => new HsWorker({ target: o.target, serverPublicKey: o.serverPublicKey, userPrefix: `hs${i}x`, identities: perWorker, concurrency: o.concurrency }),
  );
  try {
    log(`handshakes: registering ${perWorker * o.workers} devices (full handshakes with registration, untimed warmup)`);
    const t0 = performance.now();
    const reg = await Promise.all(workers.map((w) => w.call<PhaseResult>({ cmd: 'register' })));
    const regCompleted = reg.reduce((a, r) => a + r.completed, 0);
    const regRate = (regCompleted * 1000) / (performance.now() - t0);
    const register = { completed: regCompleted, perSec: regRate, errors: mergeErrors(reg), latency: mergeLatency(reg) };
    if (regCompleted === 0) throw new Error(`no handshake succeeded during registration: ${JSON.stringify(register.errors)}`);

    const phase = async (kind: HsKind, n: number): Promise<HsPhaseStats> => {
      const prep = await Promise.all(workers.map((w) => w.call<{ prepared: number; ms: number }>({ cmd: 'prepare', kind, n })));
      const prepared = prep.reduce((a, p) => a + p.prepared, 0);
      log(`handshakes.${kind}: ${prepared} client hellos precomputed in ${Math.round(Math.max(...prep.map((p) => p.ms)))} ms; running ${o.durationMs / 1000} s`);
      const startAt = Date.now() + 200;
      const runs = Promise.all(workers.map((w) => w.call<PhaseResult>({ cmd: 'run', kind, startAt, durationMs: o.durationMs })));
      runs.catch(() => undefined); // awaited below; don't let an early failure count as unhandled
      await sleep(startAt - Date.now());
      const c0 = { node: procCpuSeconds(o.nodePid), nats: o.natsPid ? procCpuSeconds(o.natsPid) : 0, gen: selfCpuS(), t: performance.now() };
      await sleep(o.durationMs);
      const c1 = { node: procCpuSeconds(o.nodePid), nats: o.natsPid ? procCpuSeconds(o.natsPid) : 0, gen: selfCpuS(), t: performance.now() };
      const rs = await runs;
      const completed = rs.reduce((a, r) => a + r.completed, 0);
      const windowS = (c1.t - c0.t) / 1000;
      const cpu = { node: c1.node - c0.node, nats: c1.nats - c0.nats, generator: c1.gen - c0.gen };
      return {
        kind,
        completed,
        perSec: completed / windowS,
        errors: mergeErrors(rs),
        onTheFly: rs.reduce((a, r) => a + r.onTheFly, 0),
        prepared,
        latency: mergeLatency(rs),
        cpu,
        windowS,
        perServerCpuS: cpu.node > 0 ? completed / cpu.node : NaN,
      };
    };

    // Enough precomputed hellos for ~3x the registration rate (registration also pays a KV create, so it's slower).
    const nFull = Math.min(MAX_PREPARED, Math.max(4000, Math.ceil((3 * regRate * o.durationMs) / 1000))) / o.workers;
    const full = await phase('full', Math.ceil(nFull));
    // Every ticket earned so far (registration + full phase), each used once; resumes chain on the fly after that.
    const resume = await phase('resume', Math.ceil(MAX_PREPARED / o.workers));
    return { register, full, resume };
  } finally {
    await Promise.all(workers.map((w) => w.terminate()));
  }
}
