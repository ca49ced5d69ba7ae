import type { Socket } from 'node:net';
import { SEEN_MAX, SeenWindow, type RetryHandler } from '@gravitas/client/internal';
import type { KeyPair, Move, ResumptionState } from '@gravitas/protocol';
import { GrowBytes, MergeableHistogram, parseText, ST, type RecvReport, type SendReport } from './custody-types.js';
import type { SealedWriter, Target } from './rawclient.js';

/*
 * The custody load generator's state (custody-gen.ts): its users and their connections and
 * sends, and the accounting of every step — what each sender sent and what became of it,
 * what each receiver got on the wire and what its "application" saw — with the reports
 * built from it and the two pacing loops that drive a step.
 */

/**
 * Self-check of the accounting (never set in a real run): GRAVITAS_BENCH_GEN_FAULT=drop:N hides
 * every Nth received message from the "application" (acked, not recorded: the parent must report
 * it lost), dup:N records every Nth one twice (must be reported duplicated).
 */
const FAULT = /^(drop|dup):(\d+)$/.exec(process.env['GRAVITAS_BENCH_GEN_FAULT'] ?? '');
const FAULT_KIND = FAULT?.[1];
const FAULT_EVERY = Number(FAULT?.[2] ?? 0);
let faultCount = 0;

/** Whether this received message is one the fault self-check acts on. */
export function faultDue(): boolean {
  return FAULT_EVERY > 0 && ++faultCount % FAULT_EVERY === 0;
}

export interface Out {
  id: string;
  step: number;
  seq: number;
  /** Intended send time, performance.now() ms. */
  intended: number;
  rec: boolean;
  frame: { t: 'send'; id: string; to: string; text: string };
  attempts: number;
  /** performance.now() when its retry is due (the generator's RetryQueue); 0 when none is waiting. */
  due: number;
}

/** One connection of a user; after a move the old one lingers until it closes. */
export interface Conn {
  socket: Socket | undefined;
  write: SealedWriter | undefined;
  /** Left by a move: its close and its SESSION_REPLACED are expected. */
  left: boolean;
}

export interface User {
  i: number;
  name: string;
  target: Target;
  contacts: number[];
  keys: KeyPair;
  socket: Socket | undefined;
  write: SealedWriter | undefined;
  /** The connection `socket`/`write` belong to. */
  conn: Conn | undefined;
  /** From the latest welcome: the cell, the hint key, the resumption ticket (single use). */
  cell: string | undefined;
  hk: Uint8Array | undefined;
  ticket: ResumptionState | undefined;
  /** A move is under way: the new session opening, and a `move` that came on it before the switch. */
  moving: boolean;
  pending: Conn | undefined;
  deferred: Move | undefined;
  /** performance.now() when the user last started a move (-Infinity: never). */
  movedAt: number;
  /** Closed by us (disconnect command): not counted as a disconnect. */
  leaving: boolean;
  out: Map<string, Out>;
  /** The SDK's de-duplication window (custody.ts SeenWindow). */
  seen: SeenWindow;
}

export function newUser(g: { i: number; contacts: number[] }, name: string, target: Target, keys: KeyPair): User {
  return {
    i: g.i, name, target, contacts: g.contacts, keys,
    socket: undefined, write: undefined, conn: undefined, cell: undefined, hk: undefined, ticket: undefined,
    moving: false, pending: undefined, deferred: undefined, movedAt: Number.NEGATIVE_INFINITY, leaving: false,
    out: new Map(),
    seen: new SeenWindow(SEEN_MAX),
  };
}

/** A retry is due (the generator's RetryQueue): the same frame again on the user's current connection, or at the next one. */
export const RESEND: RetryHandler<User, Out> = {
  holds: (u, o) => u.out.get(o.id) === o,
  resend: (u, o) => u.write?.(o.frame),
};

export class SendStep {
  readonly status = new Map<number, GrowBytes>();
  private readonly seqs = new Map<number, number>();
  sent = 0;
  outstanding = 0;
  delivered = 0;
  stored = 0;
  acceptedInWindow = 0;
  failed: Record<string, number> = {};
  skipped = 0;
  retries = 0;
  retryCodes: Record<string, number> = {};
  windowStart = Infinity;
  windowEnd = -Infinity;
  readonly lat = new MergeableHistogram();
  readonly latDelivered = new MergeableHistogram();
  readonly latStored = new MergeableHistogram();
  readonly sched = new MergeableHistogram();
  /** Closed loop: called when a message of this step is settled. */
  onSettled: ((u: User) => void) | undefined;

  constructor(readonly step: number) {}

  /** A message of this step (sent by user `sender`) has its outcome. */
  settled(sender: number, out: Out, s: 'delivered' | 'stored' | 'failed', code: string | undefined): void {
    this.outstanding--;
    const now = performance.now();
    const status = this.status.get(sender);
    if (s === 'failed') {
      status?.set(out.seq, ST.failed);
      count(this.failed, code ?? 'UNKNOWN');
    } else {
      status?.set(out.seq, s === 'delivered' ? ST.delivered : ST.stored);
      if (s === 'delivered') this.delivered++;
      else this.stored++;
      if (now >= this.windowStart && now <= this.windowEnd) this.acceptedInWindow++;
      if (out.rec) {
        const ms = now - out.intended;
        this.lat.recordMs(ms);
        (s === 'delivered' ? this.latDelivered : this.latStored).recordMs(ms);
      }
    }
  }

  nextSeq(sender: number): number {
    const s = this.seqs.get(sender) ?? 0;
    this.seqs.set(sender, s + 1);
    let st = this.status.get(sender);
    if (!st) this.status.set(sender, (st = new GrowBytes()));
    st.set(s, ST.none);
    return s;
  }
}

export class RecvStep {
  readonly app = new Map<number, GrowBytes>();
  readonly wire = new Map<number, GrowBytes>();
  readonly lat = new MergeableHistogram();
  readonly latMoved = new MergeableHistogram();
  readonly latStill = new MergeableHistogram();
  unique = 0;
  firstAt = Infinity;
  lastAt = -Infinity;

  constructor(readonly step: number) {}

  /**
   * A message of this step from user `sender` reached the application (past the de-duplication) at
   * `now` (epoch ms); `movedRecently`: its receiver moved lately (the latency split of `follow`).
   */
  received(sender: number, seq: number, text: string, now: number, movedRecently: boolean, follow: boolean): void {
    let app = this.app.get(sender);
    if (!app) this.app.set(sender, (app = new GrowBytes()));
    if (faultDue()) {
      if (FAULT_KIND === 'drop') return;
      app.inc(seq);
    }
    if (app.inc(seq) === 1) {
      this.unique++;
      if (now < this.firstAt) this.firstAt = now;
      if (now > this.lastAt) this.lastAt = now;
      const t = parseText(text);
      if (t?.record) {
        const ms = now - t.intendedEpochMs;
        this.lat.recordMs(ms);
        if (follow) (t.moved || movedRecently ? this.latMoved : this.latStill).recordMs(ms);
      }
    }
  }
}

export const count = (r: Record<string, number>, k: string): void => void (r[k] = (r[k] ?? 0) + 1);
export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export function sendReport(st: SendStep): SendReport {
  return {
    step: st.step,
    status: [...st.status.entries()].map(([k, v]) => [k, v.bytes()]),
    sent: st.sent,
    delivered: st.delivered,
    stored: st.stored,
    failed: st.failed,
    unconfirmed: st.outstanding,
    skipped: st.skipped,
    retries: st.retries,
    retryCodes: st.retryCodes,
    statusLatency: st.lat.encode(),
    statusLatencyDelivered: st.latDelivered.encode(),
    statusLatencyStored: st.latStored.encode(),
    schedLag: st.sched.encode(),
  };
}

export function recvReport(s: number, r: RecvStep | undefined, follow: boolean): RecvReport {
  return r
    ? {
        step: s,
        app: [...r.app.entries()].map(([k, v]) => [k, v.bytes()]),
        wire: [...r.wire.entries()].map(([k, v]) => [k, v.bytes()]),
        recvLatency: r.lat.encode(),
        ...(follow && { recvLatencyMoved: r.latMoved.encode(), recvLatencyStill: r.latStill.encode() }),
        firstAt: r.firstAt === Infinity ? 0 : r.firstAt,
        lastAt: r.lastAt === -Infinity ? 0 : r.lastAt,
      }
    : { step: s, app: [], wire: [], recvLatency: '', firstAt: 0, lastAt: 0 };
}

/** Sends one message of step `st` for `u`, intended at `intended` (performance.now() ms). */
export type SendFn = (u: User, st: SendStep, intended: number, rec: boolean) => void;

/**
 * Open loop: the generator's messages are spaced evenly at `rate` and dealt to its senders in
 * turn, whatever happened to earlier ones. Latency counts from the intended send time, so a
 * stall (of the system or of this process) shows in the percentiles (no coordinated omission).
 */
export function openLoop(st: SendStep, senders: User[], rate: number, t0: number, end: number, send: SendFn): Promise<void> {
  const gap = 1000 / rate;
  let k = 0;
  return new Promise((resolve) => {
    const tick = (): void => {
      const now = performance.now();
      for (let t = t0 + k * gap; t <= now && t < end; t = t0 + k * gap) {
        const rec = t >= st.windowStart;
        if (rec) st.sched.recordMs(now - t);
        send(senders[k % senders.length]!, st, t, rec);
        k++;
      }
      const next = t0 + k * gap;
      if (next >= end) return resolve();
      setTimeout(tick, Math.max(0, next - performance.now()));
    };
    setTimeout(tick, Math.max(0, t0 - performance.now()));
  });
}

/** Closed loop: every sender keeps `window` messages without a status until the end. */
export async function closedLoop(st: SendStep, senders: User[], window: number, t0: number, end: number, send: SendFn): Promise<void> {
  await sleep(Math.max(0, t0 - performance.now()));
  st.onSettled = (u) => {
    const now = performance.now();
    if (now < end) send(u, st, now, now >= st.windowStart);
  };
  for (const u of senders) for (let w = 0; w < window; w++) send(u, st, performance.now(), false);
  await sleep(Math.max(0, end - performance.now()));
}
