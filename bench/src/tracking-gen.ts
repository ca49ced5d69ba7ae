import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import { GravitasClient, type TrackFailed, type Tracked } from '@gravitas/client';
import type { CampaignEvent } from '@gravitas/protocol';
import { MergeableHistogram, type GenReply } from './custody-types.js';
import { nativeKeyPair } from './procs.js';

/*
 * Load-generator process of the tracking benchmark (started by tracking.ts with an IPC channel).
 * It hosts many SDK clients (GravitasClient, one session each, no storage path) and feeds campaign
 * feedback through `track()`: an event counts once the SDK emits `tracked` for it, i.e. once the
 * cell answered `ok` after its LMDB flush. Two modes:
 *   - closed loop: every client keeps `depth` events queued (a new track() per `tracked`);
 *     the parent opens and closes the measured window with `mark`;
 *   - burst: every client queues its share of a fixed number of events at once; the command
 *     resolves when every one of them is tracked (or failed for good).
 */

export interface TrackGenSetup {
  k: 'setup';
  /** Generator index (event ids are unique per generator). */
  gen: number;
  serverPublicKey: Uint8Array;
  /** One cell address per client (the parent spreads them over the cells), and the user's delivery proof of each campaign. */
  clients: Array<{ user: string; addr: string; proofs: Uint8Array[] }>;
  campaigns: string[];
  maxFeedback: number;
}
export type TrackGenCommand =
  | TrackGenSetup
  | { k: 'connect'; concurrency: number }
  | { k: 'start'; depth: number }
  | { k: 'mark'; record: boolean }
  | { k: 'stop'; timeoutMs: number }
  | { k: 'burst'; total: number; timeoutMs: number }
  | { k: 'close' };
export type TrackGenRequest = TrackGenCommand & { rid: number };

export interface ConnectSummary { connected: number; errors: Record<string, number>; ms: number }
export interface MarkSummary {
  /** Events tracked (acknowledged `ok`) since start, and at what time (performance.now of this process is useless to the parent: epoch ms). */
  tracked: number;
  at: number;
  /** Event-loop utilisation since the previous mark (0..1). */
  elu: number;
  /** Encoded track() → tracked latency histogram of the window that this mark closes (when it was recording). */
  latency: string;
  loopDelayP99Ms: number;
}
export interface StopSummary { tracked: number; failed: Record<string, number>; unsettled: number; dups: number; disconnects: number }
export interface BurstSummary {
  queued: number;
  tracked: number;
  failed: Record<string, number>;
  unsettled: number;
  dups: number;
  /** Epoch ms: first track() call, last `tracked`. */
  startAt: number;
  lastAt: number;
  latency: string;
  elu: number;
  /** CPU seconds of this process during the burst. */
  cpuS: number;
}

const EVENTS: readonly CampaignEvent[] = ['delivered', 'opened', 'clicked', 'dismissed', 'converted'];
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

class TrackGen {
  private gen = 0;
  private clients: GravitasClient[] = [];
  private campaigns: string[] = [];
  /** Per client, its delivery proof of each campaign (as if it had received their messages). */
  private proofs: Uint8Array[][] = [];
  private seq = 0;
  /** eid → performance.now() of its track() call, until it settles. */
  private readonly started = new Map<string, number>();
  private tracked = 0;
  private dups = 0;
  private disconnects = 0;
  private readonly failed: Record<string, number> = {};
  private depth = 0;
  private running = false;
  private recording = false;
  private hist = new MergeableHistogram();
  private readonly loop = monitorEventLoopDelay({ resolution: 10 });
  private elu = performance.eventLoopUtilization();
  private lastTrackedAt = 0;
  private closing = false;

  setup(c: TrackGenSetup): void {
    this.gen = c.gen;
    this.campaigns = c.campaigns;
    this.proofs = c.clients.map((x) => x.proofs);
    this.clients = c.clients.map(({ user, addr }, i) => {
      const client = new GravitasClient({ servers: [addr], serverPublicKey: c.serverPublicKey, identity: nativeKeyPair(), user, device: 'd', registration: '', maxFeedback: c.maxFeedback });
      client.on('error', () => undefined);
      client.on('disconnected', () => void (this.closing || this.disconnects++));
      client.on('tracked', (t) => this.onTracked(i, t));
      client.on('trackFailed', (f) => this.onFailed(f));
      return client;
    });
  }

  async connect(concurrency: number): Promise<ConnectSummary> {
    const t0 = performance.now();
    const errors: Record<string, number> = {};
    let connected = 0;
    let next = 0;
    await Promise.all(
      Array.from({ length: Math.min(concurrency, this.clients.length) }, async () => {
        while (next < this.clients.length) {
          const c = this.clients[next++]!;
          try {
            await c.connect();
            connected++;
          } catch (e) {
            const code = (e as { code?: string }).code ?? (e as Error).message;
            errors[code] = (errors[code] ?? 0) + 1;
          }
        }
      }),
    );
    return { connected, errors, ms: performance.now() - t0 };
  }

  /** An event id the size of the SDK's own (23 characters), unique per generator. */
  private nextEid(): string {
    return `g${this.gen.toString(36)}${(this.seq++).toString(36).padStart(21, '0')}`;
  }

  private send(i: number): void {
    const eid = this.nextEid();
    const k = this.seq % this.campaigns.length;
    const ev = EVENTS[this.seq % EVENTS.length]!;
    this.started.set(eid, performance.now());
    this.clients[i]!.track({ c: this.campaigns[k]!, rk: this.proofs[i]![k]! }, ev, eid).catch((e: Error & { code?: string }) => {
      this.started.delete(eid);
      const code = `enqueue:${e.code ?? e.message}`;
      this.failed[code] = (this.failed[code] ?? 0) + 1;
    });
  }

  private onTracked(i: number, t: Tracked): void {
    const t0 = this.started.get(t.eid);
    this.started.delete(t.eid);
    this.tracked++;
    if (t.dup) this.dups++;
    this.lastTrackedAt = Date.now();
    if (this.recording && t0 !== undefined) this.hist.recordMs(performance.now() - t0);
    if (this.running) this.send(i);
  }

  private onFailed(f: TrackFailed): void {
    this.started.delete(f.eid);
    const code = (f.error as { code?: string }).code ?? f.error.message;
    this.failed[code] = (this.failed[code] ?? 0) + 1;
  }

  start(depth: number): void {
    this.depth = depth;
    this.running = true;
    this.loop.reset();
    this.loop.enable();
    this.elu = performance.eventLoopUtilization();
    for (let i = 0; i < this.clients.length; i++) for (let d = 0; d < this.depth; d++) this.send(i);
  }

  mark(record: boolean): MarkSummary {
    const now = performance.eventLoopUtilization();
    const elu = performance.eventLoopUtilization(now, this.elu).utilization;
    this.elu = now;
    const latency = this.hist.count > 0 ? this.hist.encode() : '';
    this.hist = new MergeableHistogram();
    const loopDelayP99Ms = this.loop.percentile(99) / 1e6;
    this.loop.reset();
    this.recording = record;
    return { tracked: this.tracked, at: Date.now(), elu, latency, loopDelayP99Ms };
  }

  /** Stops issuing; waits until everything queued settled. */
  async stop(timeoutMs: number): Promise<StopSummary> {
    this.running = false;
    this.recording = false;
    this.loop.disable();
    const end = Date.now() + timeoutMs;
    while (this.started.size > 0 && Date.now() < end) await sleep(50);
    return { tracked: this.tracked, failed: { ...this.failed }, unsettled: this.started.size, dups: this.dups, disconnects: this.disconnects };
  }

  async burst(total: number, timeoutMs: number): Promise<BurstSummary> {
    const tracked0 = this.tracked;
    const dups0 = this.dups;
    const failed0 = { ...this.failed };
    this.hist = new MergeableHistogram();
    this.recording = true;
    const elu0 = performance.eventLoopUtilization();
    const cpu0 = process.cpuUsage();
    const startAt = Date.now();
    const n = this.clients.length;
    // Queue in slices so that the first requests go out (and answers come back) while the rest is queued.
    let queued = 0;
    const SLICE = 2000;
    while (queued < total) {
      const until = Math.min(total, queued + SLICE);
      for (; queued < until; queued++) this.send(queued % n);
      await new Promise((r) => setImmediate(r));
    }
    const end = Date.now() + timeoutMs;
    while (this.started.size > 0 && Date.now() < end) await sleep(20);
    this.recording = false;
    const cpu = process.cpuUsage(cpu0);
    const failed: Record<string, number> = {};
    for (const [k, v] of Object.entries(this.failed)) if (v - (failed0[k] ?? 0) > 0) failed[k] = v - (failed0[k] ?? 0);
    return {
      queued,
      tracked: this.tracked - tracked0,
      failed,
      unsettled: this.started.size,
      dups: this.dups - dups0,
      startAt,
      lastAt: this.lastTrackedAt,
      latency: this.hist.count > 0 ? this.hist.encode() : '',
      elu: performance.eventLoopUtilization(performance.eventLoopUtilization(), elu0).utilization,
      cpuS: (cpu.user + cpu.system) / 1e6,
    };
  }

  async close(): Promise<void> {
    this.closing = true;
    this.running = false;
    await Promise.all(this.clients.map((c) => c.close().catch(() => undefined)));
  }
}

const gen = new TrackGen();

async function dispatch(req: TrackGenRequest): Promise<unknown> {
  switch (req.k) {
    case 'setup':
      return gen.setup(req);
    case 'connect':
      return gen.connect(req.concurrency);
    case 'start':
      return gen.start(req.depth);
    case 'mark':
      return gen.mark(req.record);
    case 'stop':
      return gen.stop(req.timeoutMs);
    case 'burst':
      return gen.burst(req.total, req.timeoutMs);
    case 'close':
      return gen.close();
  }
}

process.on('message', (req: TrackGenRequest) => {
  dispatch(req).then(
    (result) => process.send!({ rid: req.rid, ok: true, result } satisfies GenReply),
    (err: unknown) => process.send!({ rid: req.rid, ok: false, error: err instanceof Error ? (err.stack ?? err.message) : String(err) } satisfies GenReply),
  );
});
process.on('disconnect', () => process.exit(0));
process.stdout.write('ready\n');
