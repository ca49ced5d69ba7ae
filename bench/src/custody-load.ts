import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import {
  MergeableHistogram, ST,
  type ConnectResult, type GenCommand, type GenReply, type GenUser, type Percentiles, type ProgressResult, type RunCmd, type RunSummary, type StepReport, type Who,
} from './custody-types.js';
import { procCpuSeconds, procSyscalls, sleep, type Child, type Resources } from './procs.js';

/*
 * The parent's side of the custody benchmark's load generators: spawns generator processes
 * (custody-gen.ts, IPC with structured clone), places users on them, runs steps on all of them
 * at once, and merges what they report into one exact account per step: every message id's
 * status at its sender against its count at the receiving application, wherever that was.
 */

const GEN_JS = fileURLToPath(new URL('./custody-gen.js', import.meta.url));

/**
 * A load-generator child process answering commands over IPC (structured clone) by
 * request id. `Cmd` is its command type; `script` the built module it runs.
 */
export class GenProcess<Cmd extends object = GenCommand> {
  private seq = 0;
  private readonly waiting = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();

  private constructor(readonly child: Child) {
    child.proc.on('message', (m: GenReply) => {
      const w = this.waiting.get(m.rid);
      this.waiting.delete(m.rid);
      if (m.ok) w?.resolve(m.result);
      else w?.reject(new Error(`${child.name}: ${m.error}`));
    });
    child.proc.once('exit', (code, sig) => {
      for (const w of this.waiting.values()) w.reject(new Error(`${child.name} exited (${code ?? sig}):\n${child.tail()}`));
      this.waiting.clear();
    });
  }

  get pid(): number {
    return this.child.pid;
  }

  static async start<C extends object = GenCommand>(res: Resources, name: string, script: string = GEN_JS): Promise<GenProcess<C>> {
    const proc = spawn(process.execPath, [script], { stdio: ['pipe', 'pipe', 'pipe', 'ipc'], serialization: 'advanced' });
    let tail = '';
    const keep = (d: Buffer): void => void (tail = (tail + d.toString()).slice(-4000));
    proc.stdout!.on('data', keep);
    proc.stderr!.on('data', keep);
    // 'exit', not 'close': after a parent-side disconnect() Node 20 never emits 'close' for a child with an IPC channel.
    const gone = new Promise<void>((r) => proc.once('exit', () => r()));
    const child: Child = {
      name,
      proc,
      pid: proc.pid ?? -1,
      tail: () => tail,
      async stop(graceMs = 5000) {
        if (proc.exitCode !== null || proc.signalCode !== null) return gone;
        if (proc.connected) proc.disconnect(); // the generator exits when its channel closes
        const t = setTimeout(() => proc.kill('SIGKILL'), graceMs);
        await gone;
        clearTimeout(t);
      },
    };
    res.add(child);
    await new Promise<void>((resolve, reject) => {
      let out = '';
      const t = setTimeout(() => reject(new Error(`${name} not ready after 10 s:\n${tail}`)), 10_000);
      proc.stdout!.on('data', (d: Buffer) => void ((out += d.toString()).includes('ready\n') && (clearTimeout(t), resolve())));
      proc.once('exit', (code) => (clearTimeout(t), reject(new Error(`${name} exited (${code}):\n${tail}`))));
    });
    return new GenProcess<C>(child);
  }

  call<T>(cmd: Cmd): Promise<T> {
    const rid = ++this.seq;
    return new Promise<T>((resolve, reject) => {
      this.waiting.set(rid, { resolve: resolve as (v: unknown) => void, reject });
      this.child.proc.send({ ...cmd, rid });
    });
  }
}

// ---------- merged results ----------

export interface StepResult {
  step: number;
  label: string;
  /** Offered msgs/s (open loop), or undefined (closed loop). */
  offered: number | undefined;
  sent: number;
  accepted: number;
  delivered: number;
  stored: number;
  failed: Record<string, number>;
  /** Sent, never got a status (nothing was promised: not "lost", but reported). */
  unconfirmed: number;
  skipped: number;
  retries: number;
  retryCodes: Record<string, number>;
  disconnects: number;
  /** Worst generator event-loop delay p99 / max (ms). */
  genLoopDelay: { p99: number; max: number };
  /** Accepted statuses inside the measured window, per second. */
  achievedPerSec: number;
  /** intended send → status (delivered or stored); and split by status. */
  status: Percentiles;
  statusDelivered: Percentiles;
  statusStored: Percentiles;
  /** intended send → first arrival at the receiving application. */
  recv: Percentiles;
  /** The same split by moves (gravity benchmark; NaN without moves): recipient or sender started a move within 5 s, and the rest. */
  recvMoved: Percentiles;
  recvStill: Percentiles;
  schedLag: Percentiles;
  /** Accepted (delivered/stored) and never seen by the receiving application. */
  lost: number;
  /** Seen more than once by the receiving application (after the SDK-equivalent de-duplication). */
  duplicated: number;
  /** Arrived on the wire more than once (re-deliveries the client's de-duplication dropped). */
  redelivered: number;
  /** Seen by the application although the sender got `failed` or no status (custody never promised it). */
  receivedNotAccepted: number;
  receivedUnique: number;
  /** Epoch ms of the first and last first-arrival. */
  firstAt: number;
  lastAt: number;
  /** Examples of lost ids (at most 10), to chase. */
  lostExamples: string[];
  /** CPU cores used per process while the step ran (schedule + settle). */
  cores: Record<string, number>;
}

export interface Placement {
  /** Generator index of each global user index. */
  gen: (i: number) => number;
}

/** Merges per-generator step reports into one exact account. */
export function mergeStep(step: number, label: string, offered: number | undefined, runs: RunSummary[], reports: StepReport[], cores: Record<string, number>): StepResult {
  const status = new Map<number, Uint8Array>();
  const app = new Map<number, Uint8Array>();
  const wire = new Map<number, Uint8Array>();
  const hs = { status: new MergeableHistogram(), delivered: new MergeableHistogram(), stored: new MergeableHistogram(), recv: new MergeableHistogram(), recvMoved: new MergeableHistogram(), recvStill: new MergeableHistogram(), sched: new MergeableHistogram() };
  const failed: Record<string, number> = {};
  const retryCodes: Record<string, number> = {};
  let sent = 0;
  let delivered = 0;
  let stored = 0;
  let unconfirmed = 0;
  let skipped = 0;
  let retries = 0;
  let firstAt = Infinity;
  let lastAt = 0;
  const addCounts = (into: Map<number, Uint8Array>, from: Array<[number, Uint8Array]>): void => {
    for (const [sender, a] of from) {
      const have = into.get(sender);
      if (!have) {
        into.set(sender, a.slice());
        continue;
      }
      const n = have.length >= a.length ? have : new Uint8Array(a.length);
      if (n !== have) n.set(have);
      for (let i = 0; i < a.length; i++) n[i] = Math.min(255, n[i]! + a[i]!);
      into.set(sender, n);
    }
  };
  for (const r of reports) {
    if (r.send) {
      for (const [sender, a] of r.send.status) status.set(sender, a);
      sent += r.send.sent;
      delivered += r.send.delivered;
      stored += r.send.stored;
      unconfirmed += r.send.unconfirmed;
      skipped += r.send.skipped;
      retries += r.send.retries;
      for (const [k, v] of Object.entries(r.send.failed)) failed[k] = (failed[k] ?? 0) + v;
      for (const [k, v] of Object.entries(r.send.retryCodes)) retryCodes[k] = (retryCodes[k] ?? 0) + v;
      hs.status.addEncoded(r.send.statusLatency);
      hs.delivered.addEncoded(r.send.statusLatencyDelivered);
      hs.stored.addEncoded(r.send.statusLatencyStored);
      hs.sched.addEncoded(r.send.schedLag);
    }
    addCounts(app, r.recv.app);
    addCounts(wire, r.recv.wire);
    hs.recv.addEncoded(r.recv.recvLatency);
    hs.recvMoved.addEncoded(r.recv.recvLatencyMoved ?? '');
    hs.recvStill.addEncoded(r.recv.recvLatencyStill ?? '');
    if (r.recv.firstAt > 0) firstAt = Math.min(firstAt, r.recv.firstAt);
    lastAt = Math.max(lastAt, r.recv.lastAt);
  }
  let lost = 0;
  let duplicated = 0;
  let redelivered = 0;
  let receivedNotAccepted = 0;
  let receivedUnique = 0;
  let accepted = 0;
  const lostExamples: string[] = [];
  for (const [sender, st] of status) {
    const a = app.get(sender);
    for (let seq = 0; seq < st.length; seq++) {
      const s = st[seq]!;
      const seen = a && seq < a.length ? a[seq]! : 0;
      const ok = s === ST.delivered || s === ST.stored;
      if (ok) accepted++;
      if (ok && seen === 0) {
        lost++;
        if (lostExamples.length < 10) lostExamples.push(`${step.toString(36)}-${sender.toString(36)}-${seq.toString(36)} (${s === ST.delivered ? 'delivered' : 'stored'})`);
      }
      if (!ok && seen > 0) receivedNotAccepted++;
    }
  }
  for (const [sender, a] of app) {
    const st = status.get(sender);
    for (let seq = 0; seq < a.length; seq++) {
      const n = a[seq]!;
      if (n > 0) receivedUnique++;
      if (n > 1) duplicated++;
      // Received, but its sender never recorded sending it: impossible unless ids collide.
      if (n > 0 && (!st || seq >= st.length)) receivedNotAccepted++;
    }
  }
  for (const a of wire.values()) for (const n of a) if (n > 1) redelivered++;
  const windowMs = runs.reduce((m, r) => Math.max(m, r.windowMs), 0);
  const inWindow = runs.reduce((s, r) => s + r.acceptedInWindow, 0);
  return {
    step,
    label,
    offered,
    sent,
    accepted,
    delivered,
    stored,
    failed,
    unconfirmed,
    skipped,
    retries,
    retryCodes,
    disconnects: runs.reduce((s, r) => s + r.disconnects, 0),
    genLoopDelay: { p99: Math.max(0, ...runs.map((r) => r.loopDelay.p99)), max: Math.max(0, ...runs.map((r) => r.loopDelay.max)) },
    achievedPerSec: windowMs > 0 ? (inWindow * 1000) / windowMs : 0,
    status: hs.status.summary(),
    statusDelivered: hs.delivered.summary(),
    statusStored: hs.stored.summary(),
    recv: hs.recv.summary(),
    recvMoved: hs.recvMoved.summary(),
    recvStill: hs.recvStill.summary(),
    schedLag: hs.sched.summary(),
    lost,
    duplicated,
    redelivered,
    receivedNotAccepted,
    receivedUnique,
    firstAt: firstAt === Infinity ? 0 : firstAt,
    lastAt,
    lostExamples,
    cores,
  };
}

// ---------- a population of users over several generators ----------

export interface Population {
  prefix: string;
  users: GenUser[];
}

/** Runs steps over a set of generator processes; `pids` are the processes whose CPU is reported per step. */
export class Load {
  constructor(
    readonly gens: GenProcess[],
    readonly placement: Placement,
    readonly pids: Record<string, number | undefined>,
  ) {}

  private byGen(who: Who): Who[] {
    if (who === 'all') return this.gens.map(() => 'all');
    const out: number[][] = this.gens.map(() => []);
    for (const i of who) out[this.placement.gen(i)]!.push(i);
    return out;
  }

  /** `opts.follow`: the generators follow `move` hints (gravitation); off by default, as the custody benchmark runs. */
  async setup(pop: Population, serverPublicKey: Uint8Array, textBytes: number, maxOutstanding: number, seed: number, opts: { follow?: boolean } = {}): Promise<void> {
    const per: GenUser[][] = this.gens.map(() => []);
    for (const u of pop.users) per[this.placement.gen(u.i)]!.push(u);
    await Promise.all(
      this.gens.map((g, k) => g.call({ k: 'setup', serverPublicKey, prefix: pop.prefix, textBytes, users: per[k]!, maxOutstanding, seed: seed + k, ...(opts.follow && { follow: true }) })),
    );
  }

  async connect(who: Who, concurrency: number): Promise<ConnectResult> {
    const parts = this.byGen(who);
    const rs = await Promise.all(this.gens.map((g, k) => g.call<ConnectResult>({ k: 'connect', users: parts[k]!, concurrency })));
    const errors: Record<string, number> = {};
    for (const r of rs) for (const [c, n] of Object.entries(r.errors)) errors[c] = (errors[c] ?? 0) + n;
    return { connected: rs.reduce((s, r) => s + r.connected, 0), errors, ms: Math.max(...rs.map((r) => r.ms)), startedAt: Math.min(...rs.map((r) => r.startedAt)) };
  }

  async disconnect(who: Who): Promise<void> {
    const parts = this.byGen(who);
    await Promise.all(this.gens.map((g, k) => g.call({ k: 'disconnect', users: parts[k]! })));
  }

  /**
   * One step on every generator at once. `rateOf(k)` is generator k's share of an open-loop
   * rate. Returns the run summaries and the CPU cores each process used meanwhile.
   */
  async run(cmd: Omit<RunCmd, 'k' | 'senders' | 'rate'> & { senders: Who; rate: number }, share: (k: number) => number): Promise<{ runs: RunSummary[]; cores: Record<string, number>; cost: StepCost }> {
    const parts = this.byGen(cmd.senders);
    const pids: Record<string, number | undefined> = { ...this.pids };
    this.gens.forEach((g, k) => (pids[`gen${k}`] = g.pid));
    const cpu0 = readCpu(pids);
    const sys0 = readSyscalls(pids);
    const t0 = performance.now();
    const runs = await Promise.all(this.gens.map((g, k) => g.call<RunSummary>({ ...cmd, k: 'run', senders: parts[k]!, rate: cmd.rate * share(k) })));
    const s = (performance.now() - t0) / 1000;
    const cpu1 = readCpu(pids);
    const sys1 = readSyscalls(pids);
    const cores: Record<string, number> = {};
    for (const k of Object.keys(cpu1)) cores[k] = (cpu1[k]! - (cpu0[k] ?? 0)) / s;
    const sent = runs.reduce((a, r) => a + r.sent, 0);
    const cost: StepCost = { sent, cpuUs: {}, writes: {}, reads: {} };
    for (const k of Object.keys(cpu1)) cost.cpuUs[k] = sent ? ((cpu1[k]! - (cpu0[k] ?? 0)) * 1e6) / sent : NaN;
    for (const k of Object.keys(sys1)) {
      cost.writes[k] = sent ? (sys1[k]!.w - (sys0[k]?.w ?? 0)) / sent : NaN;
      cost.reads[k] = sent ? (sys1[k]!.r - (sys0[k]?.r ?? 0)) / sent : NaN;
    }
    return { runs, cores, cost };
  }

  async progress(steps: number[]): Promise<{ appUnique: number; outstanding: number; lastAt: number; receipts: Record<string, number>; errors: Record<string, number>; moves: Record<string, number> }> {
    const rs = await Promise.all(this.gens.map((g) => g.call<ProgressResult>({ k: 'progress', steps })));
    const receipts: Record<string, number> = {};
    const errors: Record<string, number> = {};
    const moves: Record<string, number> = {};
    for (const r of rs) {
      for (const [c, n] of Object.entries(r.receipts)) receipts[c] = (receipts[c] ?? 0) + n;
      for (const [c, n] of Object.entries(r.errors)) errors[c] = (errors[c] ?? 0) + n;
      for (const [c, n] of Object.entries(r.moves)) moves[c] = (moves[c] ?? 0) + n;
    }
    return {
      appUnique: rs.reduce((s, r) => s + r.appUnique.reduce((a, b) => a + b, 0), 0),
      outstanding: rs.reduce((s, r) => s + r.outstanding, 0),
      lastAt: Math.max(...rs.map((r) => r.lastAt)),
      receipts,
      errors,
      moves,
    };
  }

  /**
   * Waits until the applications saw `expected` unique messages of `steps` and no sender has a
   * message without a status, or until nothing moved for `idleMs`, or `timeoutMs` passed.
   */
  async awaitArrivals(steps: number[], expected: number, timeoutMs: number, idleMs = 3000): Promise<{ appUnique: number; lastAt: number; complete: boolean }> {
    const end = Date.now() + timeoutMs;
    let last = '';
    let lastChange = Date.now();
    for (;;) {
      const p = await this.progress(steps);
      if (p.appUnique >= expected && p.outstanding === 0) return { appUnique: p.appUnique, lastAt: p.lastAt, complete: true };
      const moved = `${p.appUnique}/${p.outstanding}`;
      if (moved !== last) {
        last = moved;
        lastChange = Date.now();
      }
      if (Date.now() > end || Date.now() - lastChange > idleMs) return { appUnique: p.appUnique, lastAt: p.lastAt, complete: false };
      await sleep(200);
    }
  }

  async collect(steps: number[], drop: boolean): Promise<StepReport[][]> {
    const per = await Promise.all(this.gens.map((g) => g.call<StepReport[]>({ k: 'collect', steps, drop })));
    // Regroup: one list of generator reports per step.
    return steps.map((_, j) => per.map((r) => r[j]!));
  }

  async stop(): Promise<void> {
    await Promise.all(this.gens.map((g) => g.child.stop(5000)));
  }
}

/**
 * What each process spent per message sent in a step (warmup, measurement and settle together, so
 * every message's work is in): CPU µs, and write and read system calls.
 */
export interface StepCost {
  sent: number;
  cpuUs: Record<string, number>;
  writes: Record<string, number>;
  reads: Record<string, number>;
  /** Per message sent: messages clients published to nats-server (envelopes, KV and JetStream requests, heartbeats). */
  natsMsgs?: number;
}

/** `read(pid)` for every process still there (one that exited is left out). */
function readEach<T>(pids: Record<string, number | undefined>, read: (pid: number) => T): Record<string, T> {
  const out: Record<string, T> = {};
  for (const [k, pid] of Object.entries(pids)) {
    if (pid === undefined) continue;
    try {
      out[k] = read(pid);
    } catch {
      // exited
    }
  }
  return out;
}

export function readSyscalls(pids: Record<string, number | undefined>): Record<string, { r: number; w: number }> {
  return readEach(pids, procSyscalls);
}

export function readCpu(pids: Record<string, number | undefined>): Record<string, number> {
  return readEach(pids, procCpuSeconds);
}

