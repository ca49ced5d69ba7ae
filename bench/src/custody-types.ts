import { build, decodeFromCompressedBase64, encodeIntoCompressedBase64, type Histogram } from 'hdr-histogram-js';

/*
 * What the custody benchmark's parent (custody.ts, custody-load.ts) and its load-generator
 * processes (custody-gen.ts) exchange, typed together in one file; plus the message-id scheme
 * and the mergeable latency histogram both sides use.
 *
 * Accounting is by message id. An id is `<step>-<sender>-<seq>` (base 36): the step it was sent
 * in, the global index of the sending user and its per-(step, sender) sequence number. The sender
 * keeps one status byte per seq, every receiver one count per (step, sender, seq); the parent adds
 * the receivers' counts and compares them with the statuses, so "lost" and "duplicated" are exact,
 * whichever process received what.
 */

// ---------- ids ----------

export function messageId(step: number, sender: number, seq: number): string {
  return `${step.toString(36)}-${sender.toString(36)}-${seq.toString(36)}`;
}

export interface ParsedId {
  step: number;
  sender: number;
  seq: number;
}

/** undefined for ids that are not ours (e.g. a probe sent with the SDK's own ids). */
export function parseMessageId(id: string): ParsedId | undefined {
  const a = id.indexOf('-');
  const b = id.indexOf('-', a + 1);
  if (a <= 0 || b <= a + 1) return undefined;
  const step = parseInt(id.slice(0, a), 36);
  const sender = parseInt(id.slice(a + 1, b), 36);
  const seq = parseInt(id.slice(b + 1), 36);
  if (!Number.isInteger(step) || !Number.isInteger(sender) || !Number.isInteger(seq)) return undefined;
  return { step, sender, seq };
}

/**
 * The text of a benchmark message: `<intended send time, epoch ms with µs>:<1 if its latency is
 * recorded>:` padded to `bytes`. The receiver (another process) computes send→received from it;
 * all processes run on one host, so `performance.timeOrigin + performance.now()` is one clock.
 * `moved` (gravity benchmark only) marks a recorded message whose sender moved cells shortly
 * before (`2` instead of `1`), so that the receiver can tell the latency of moves apart.
 */
export function messageText(intendedEpochMs: number, record: boolean, bytes: number, moved = false): string {
  const head = `${intendedEpochMs.toFixed(3)}:${record ? (moved ? 2 : 1) : 0}:`;
  return head.length >= bytes ? head : head + 'x'.repeat(bytes - head.length);
}

export function parseText(text: string): { intendedEpochMs: number; record: boolean; moved: boolean } | undefined {
  const a = text.indexOf(':');
  if (a <= 0 || text.length < a + 2) return undefined;
  const t = Number(text.slice(0, a));
  const f = text[a + 1];
  return Number.isFinite(t) ? { intendedEpochMs: t, record: f === '1' || f === '2', moved: f === '2' } : undefined;
}

/** Wall-clock ms with sub-ms precision, comparable across processes on this host. */
export const epochNow = (): number => performance.timeOrigin + performance.now();

// ---------- status bytes ----------

/** One byte per sent message at the sender. */
export const ST = { none: 0, delivered: 1, stored: 2, failed: 3 } as const;

/** A byte array that grows on write; `length` is one past the highest index written. */
export class GrowBytes {
  a = new Uint8Array(64);
  length = 0;

  set(i: number, v: number): void {
    this.ensure(i);
    this.a[i] = v;
  }

  /** Increments, saturating at 255. */
  inc(i: number): number {
    this.ensure(i);
    const v = this.a[i]!;
    if (v < 255) this.a[i] = v + 1;
    return v + 1;
  }

  get(i: number): number {
    return i < this.length ? this.a[i]! : 0;
  }

  /** A copy of the used part. */
  bytes(): Uint8Array {
    return this.a.slice(0, this.length);
  }

  private ensure(i: number): void {
    if (i >= this.a.length) {
      let n = this.a.length;
      while (n <= i) n *= 2;
      const b = new Uint8Array(n);
      b.set(this.a);
      this.a = b;
    }
    if (i >= this.length) this.length = i + 1;
  }
}

// ---------- latency ----------

/** Percentiles in ms. */
export interface Percentiles {
  count: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
}

const HIGHEST_US = 600e6;

/**
 * Latency in integer µs (hdr-histogram), reported in ms with p90 (histogram.ts stops at p50/p99/
 * p99.9), and mergeable across processes: `encode()` in the generator, `addEncoded()` in the parent.
 */
export class MergeableHistogram {
  private readonly h: Histogram = MergeableHistogram.make();

  private static make(): Histogram {
    return build({ lowestDiscernibleValue: 1, highestTrackableValue: HIGHEST_US, numberOfSignificantValueDigits: 3, useWebAssembly: false });
  }

  recordMs(ms: number): void {
    this.h.recordValue(Math.min(HIGHEST_US, Math.max(1, Math.round(ms * 1000))));
  }

  get count(): number {
    return this.h.totalCount;
  }

  encode(): string {
    return encodeIntoCompressedBase64(this.h);
  }

  addEncoded(s: string): void {
    if (s === '') return;
    const other = decodeFromCompressedBase64(s, 32, false);
    this.h.add(other);
  }

  add(other: MergeableHistogram): void {
    this.h.add(other.h);
  }

  summary(): Percentiles {
    const ms = (us: number): number => us / 1000;
    if (this.h.totalCount === 0) return { count: 0, p50: NaN, p90: NaN, p99: NaN, max: NaN };
    return {
      count: this.h.totalCount,
      p50: ms(this.h.getValueAtPercentile(50)),
      p90: ms(this.h.getValueAtPercentile(90)),
      p99: ms(this.h.getValueAtPercentile(99)),
      max: ms(this.h.maxValue),
    };
  }
}

// ---------- parent ↔ generator ----------

/** One user hosted by a generator process. */
export interface GenUser {
  /** Global index (the `<sender>` part of ids). */
  i: number;
  /** Cell address (host:port) it connects to. */
  addr: string;
  /** Global indices of the users it sends to (chosen at random per message). */
  contacts: number[];
}

export interface SetupCmd {
  k: 'setup';
  serverPublicKey: Uint8Array;
  /** User name = prefix + global index in base 36. */
  prefix: string;
  textBytes: number;
  users: GenUser[];
  /** Messages a user may have without a status (the SDK's maxOutbox); beyond it a send is skipped and counted. */
  maxOutstanding: number;
  seed: number;
  /**
   * Follow `move` hints as the SDK does (gravitation: verify, resume on the hinted cell,
   * switch, re-send what has no status, `bye` the old session). Off (the custody benchmark):
   * a `move` is ignored, as before.
   */
  follow?: boolean;
}

export type Who = 'all' | number[];

export interface ConnectCmd {
  k: 'connect';
  users: Who;
  concurrency: number;
}

export interface DisconnectCmd {
  k: 'disconnect';
  users: Who;
}

export interface RunCmd {
  k: 'run';
  step: number;
  /** open: paced at `rate` msgs/s over this generator's senders; closed: `window` outstanding per sender. */
  mode: 'open' | 'closed';
  rate: number;
  window: number;
  senders: Who;
  warmupMs: number;
  durationMs: number;
  /** After the schedule: how long to wait for the last statuses. */
  settleMs: number;
}

export interface ProgressCmd {
  k: 'progress';
  steps: number[];
}

/** The steps' accounts so far; with `drop` their state is freed afterwards. */
export interface CollectCmd {
  k: 'collect';
  steps: number[];
  drop: boolean;
}

export type GenCommand = SetupCmd | ConnectCmd | DisconnectCmd | RunCmd | ProgressCmd | CollectCmd;

export interface ConnectResult {
  connected: number;
  errors: Record<string, number>;
  ms: number;
  /** Epoch ms when connecting started (the drain clock starts here). */
  startedAt: number;
}

/** The answer to `run`, as soon as the schedule ended and the last statuses came (or settleMs passed). */
export interface RunSummary {
  step: number;
  sent: number;
  /** delivered + stored so far. */
  accepted: number;
  /** Accepted statuses (delivered + stored) that arrived inside the measured window. */
  acceptedInWindow: number;
  windowMs: number;
  /** Still without a status. */
  outstanding: number;
  /** Sessions that closed (not by us) while the step ran. */
  disconnects: number;
  /** The generator's own event-loop delay while the step ran (ms): high means it was starved or overloaded itself. */
  loopDelay: { p99: number; max: number };
}

/** What a generator's senders did in one step, at `collect` (late statuses included). */
export interface SendReport {
  step: number;
  /** sender (global index) → status byte per seq (ST). */
  status: Array<[number, Uint8Array]>;
  sent: number;
  delivered: number;
  stored: number;
  failed: Record<string, number>;
  /** Sent, still no status at collect time. */
  unconfirmed: number;
  /** Not sent: the user had maxOutstanding messages without a status (the SDK's OUTBOX_FULL). */
  skipped: number;
  /** Re-sends after a retryable failure (BUSY, TOO_MANY_IN_FLIGHT, …), as the SDK does. */
  retries: number;
  /** The codes of those retryable failures. */
  retryCodes: Record<string, number>;
  /** intended send time → status (delivered or stored), measured messages only; encoded histogram. */
  statusLatency: string;
  statusLatencyDelivered: string;
  statusLatencyStored: string;
  /** How late the generator sent relative to the schedule. */
  schedLag: string;
}

export interface StepReport {
  /** Undefined if this generator sent nothing in the step. */
  send: SendReport | undefined;
  recv: RecvReport;
}

/** What a generator's receivers saw, per step. */
export interface RecvReport {
  step: number;
  /** sender → app-level count per seq (after the SDK's de-duplication window of 10,000 ids per device). */
  app: Array<[number, Uint8Array]>;
  /** sender → wire-level count per seq (every `msg` frame, including re-deliveries the client dropped). */
  wire: Array<[number, Uint8Array]>;
  /** intended send time → first arrival at the application, measured messages; encoded histogram. */
  recvLatency: string;
  /**
   * The same split by moves (gravity benchmark): messages whose recipient or sender started a
   * move within the last few seconds (`moved`), and the rest (`still`). Empty when nobody moved.
   */
  recvLatencyMoved?: string;
  recvLatencyStill?: string;
  firstAt: number;
  lastAt: number;
}

export interface ProgressResult {
  /** Unique messages the applications saw, per requested step. */
  appUnique: number[];
  outstanding: number;
  receipts: Record<string, number>;
  errors: Record<string, number>;
  /**
   * Connect hints since setup (with `follow`): `followed:<why>`, `rejected:<code>` (verifyHint
   * failed), `failed:<code>` (the hinted cell could not be reached: stayed), `same-cell`,
   * `busy` (a move already under way), `resume-fallback` (ticket refused: full handshake).
   */
  moves: Record<string, number>;
  /** Epoch ms of the latest first sight among the requested steps. */
  lastAt: number;
}

export type GenReply =
  | { rid: number; ok: true; result: unknown }
  | { rid: number; ok: false; error: string };

export type GenRequest = GenCommand & { rid: number };

/** mulberry32: a small seeded PRNG, so runs (contacts, recipients) are repeatable. */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A number for the log: grouped thousands, `d` decimals. */
export const fmt = (n: number, d = 0): string => (Number.isFinite(n) ? n.toLocaleString('en-US', { maximumFractionDigits: d, minimumFractionDigits: d }) : String(n));
