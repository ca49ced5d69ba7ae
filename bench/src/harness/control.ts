import { connect, type NatsConnection, type Subscription } from '@nats-io/transport-node';
import type { DriverCapabilities } from './driver.js';
import { HarnessError } from './errors.js';
import type { GeneratorSample, ProcSample } from './result.js';

/*
 * The control plane of a load run: the runner and its generators talk over core NATS, so
 * generators can run on other hosts (or as long-lived pods that any runner recruits). Subjects
 * and messages live here and nowhere else; both sides decode with `decode*`, which checks the
 * shape and throws CONTROL_MESSAGE_INVALID rather than trusting the wire.
 *
 *   gbench.recruit                 runner → idle generators (request; each answers `hello`)
 *   gbench.gen.<genId>             runner → one generator: assign, setup, provision, …, finish, abort
 *   gbench.run.<run>.up            generators → runner: ready, progress, interval, done, failed, beat
 *   gbench.run.<run>.clock         request/reply: the runner's clock, for the generators' offset
 *   gbench.run.<run>.beat          runner → generators, every second: a generator whose runner fell
 *                                  silent stops its load (an orphaned generator must not keep loading a cluster)
 *
 * JSON, not msgpack: a handful of messages per generator per interval, read by people debugging
 * with `nats sub`. The load itself never crosses this plane.
 */

export const SUBJECT = {
  recruit: 'gbench.recruit',
  gen: (genId: string): string => `gbench.gen.${genId}`,
  up: (run: string): string => `gbench.run.${run}.up`,
  clock: (run: string): string => `gbench.run.${run}.clock`,
  beat: (run: string): string => `gbench.run.${run}.beat`,
} as const;

/** Run ids and generator ids are NATS subject tokens: no dots, wildcards or spaces. */
export const TOKEN = /^[A-Za-z0-9_-]{1,64}$/;

/** How a generator reaches the system under test (what the runner started, or the scenario's remote target). */
export type DriverSpec =
  | { kind: 'gravitas'; addresses: string[]; serverPublicKey: string; registration: string }
  | { kind: 'xmpp'; host: string; port: number; domain: string; muc: string; register: boolean; ports?: number[]; mechanism?: 'PLAIN' | 'SCRAM-SHA-1' }
  | { kind: 'socketio'; urls: string[] };

// ---------- runner → generator ----------

export type ToGenerator =
  | { type: 'assign'; run: string; index: number; count: number }
  /** The scenario travels as its source text: the generator validates it itself (one validator, no trust). */
  | { type: 'setup'; source: { text: string; format: 'json' | 'yaml' }; namespace: string; runTag: string; driver: DriverSpec }
  | { type: 'provision' }
  | { type: 'createGroups'; groups: number[] }
  /** Every group's id, by group index ('' for a group that could not be created); the generator's users then join theirs (`groupsJoined`). */
  | { type: 'groups'; ids: string[] }
  /** Run time 0 on the runner's clock (epoch ms). */
  | { type: 'start'; t0: number }
  /** Drain is over: disconnect everything and send `done`. */
  | { type: 'finish' }
  | { type: 'abort'; reason: string };

// ---------- generator → runner ----------

/** What one generator saw in one interval (counts, not rates; the runner divides). */
export interface GeneratorInterval {
  /** Interval number: it ends at t0 + k × interval. */
  k: number;
  phase: 'run' | 'drain';
  sent: number;
  accepted: number;
  failed: number;
  /** Deliveries that arrived while their device was live, and their latency histogram (encoded). */
  received: number;
  latency: string;
  /** Deliveries of messages sent before their device's current connection (mailbox catch-up). */
  catchup: number;
  campaign: number;
  /** Campaign deliveries: time from the campaign's start (encoded histogram). */
  campaignReach: string;
  presence: number;
  /** Messages this generator's devices received that another run (or nobody) wrote. */
  stray: number;
  /** Actual − intended send time of this interval's sends (encoded): how late the generator itself was. */
  sendLag: string;
  connects: number;
  connectFailed: number;
  /** Session set-up time of this interval's connects (encoded). */
  connectTime: string;
  /** Devices connected at the end of the interval. */
  connected: number;
  /** Totals so far of what the driver's protocol may lose: accepted deliveries expected and unique ones received. */
  expected: number;
  receivedTotal: number;
  /** Sends still waiting for their outcome (their owed deliveries are not in `expected` yet). */
  pending: number;
  /** The last send ref the generator used by the end of the interval: places a lost message in its step. */
  lastRef?: number;
  errors: Record<string, number>;
  self: GeneratorSample;
  host: { name: string; sample: ProcSample & { cores: number } };
}

export interface GeneratorTotals {
  /** Whole-run histograms (encoded): live latency, catch-up latency, campaign reach, send lag, connect time. */
  latency: string;
  catchupLatency: string;
  campaignReach: string;
  sendLag: string;
  connectTime: string;
  driverCounters: Record<string, number>;
  /** The final account, after every device left. */
  expected: number;
  receivedTotal: number;
  pending: number;
  /** `ledger` messages sent before this one (ledger.ts): the runner checks it got them all. */
  ledgerChunks: number;
}

export type FromGenerator =
  | { type: 'hello'; gen: string; host: string; pid: number; cpus: number }
  | { type: 'assigned'; gen: string; ok: boolean; reason?: string }
  | { type: 'ready'; gen: string; users: number; devices: number; clock: { offsetMs: number; rttMs: number }; capabilities: DriverCapabilities }
  | { type: 'progress'; gen: string; phase: 'provision' | 'groups' | 'join'; done: number; total: number; errors: Record<string, number> }
  | { type: 'provisioned'; gen: string; ms: number; errors: Record<string, number> }
  | { type: 'groupsCreated'; gen: string; ids: Record<string, string>; errors: Record<string, number> }
  /** After `groups`: this generator's users joined their groups (drivers where membership is by consent), with the errors by code. */
  | { type: 'groupsJoined'; gen: string; ms: number; joins: number; errors: Record<string, number> }
  | ({ type: 'interval'; gen: string } & GeneratorInterval)
  /** Part of the generator's delivery ledger (ledger.ts): ids its accepted sends owe, ids that arrived on its devices. */
  | { type: 'ledger'; gen: string; owed: number[]; received: number[] }
  | ({ type: 'done'; gen: string } & GeneratorTotals)
  | { type: 'failed'; gen: string; code: string; message: string }
  | { type: 'beat'; gen: string };

// ---------- codec ----------

const enc = new TextEncoder();
const dec = new TextDecoder();

export const encodeControl = (m: ToGenerator | FromGenerator | Record<string, unknown>): Uint8Array => enc.encode(JSON.stringify(m));

function invalid(what: string): never {
  throw new HarnessError('CONTROL_MESSAGE_INVALID', `control message: ${what}`);
}

function parse(data: Uint8Array): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(dec.decode(data));
  } catch {
    invalid('not JSON');
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) invalid('not an object');
  if (typeof (v as { type?: unknown }).type !== 'string') invalid('no type');
  return v as Record<string, unknown>;
}

const TO_GENERATOR = new Set(['assign', 'setup', 'provision', 'createGroups', 'groups', 'start', 'finish', 'abort']);
const FROM_GENERATOR = new Set(['hello', 'assigned', 'ready', 'progress', 'provisioned', 'groupsCreated', 'groupsJoined', 'interval', 'ledger', 'done', 'failed', 'beat']);

/**
 * Checks the fields each side acts on; the rest of a message (histograms, samples) is checked
 * where it is used (decodeHistogram throws HISTOGRAM_DECODE on garbage).
 */
export function decodeToGenerator(data: Uint8Array): ToGenerator {
  const m = parse(data);
  if (!TO_GENERATOR.has(m['type'] as string)) invalid(`unknown type ${JSON.stringify(m['type'])}`);
  const num = (k: string): void => void (typeof m[k] === 'number' && Number.isFinite(m[k]) ? 0 : invalid(`${m['type'] as string}.${k} must be a number`));
  switch (m['type']) {
    case 'assign':
      if (typeof m['run'] !== 'string' || !TOKEN.test(m['run'])) invalid('assign.run must be a subject token');
      num('index');
      num('count');
      break;
    case 'setup': {
      const src = m['source'] as { text?: unknown; format?: unknown } | undefined;
      if (typeof src?.text !== 'string' || (src.format !== 'json' && src.format !== 'yaml')) invalid('setup.source must be {text, format}');
      if (typeof m['namespace'] !== 'string' || typeof m['runTag'] !== 'string') invalid('setup.namespace/runTag must be strings');
      const d = m['driver'] as { kind?: unknown } | undefined;
      if (d?.kind !== 'gravitas' && d?.kind !== 'xmpp' && d?.kind !== 'socketio') invalid('setup.driver.kind must be gravitas, xmpp or socketio');
      break;
    }
    case 'createGroups':
      if (!Array.isArray(m['groups']) || !m['groups'].every((g) => Number.isInteger(g) && g >= 0)) invalid('createGroups.groups must be group indices');
      break;
    case 'groups':
      if (!Array.isArray(m['ids']) || !m['ids'].every((g) => typeof g === 'string')) invalid('groups.ids must be strings');
      break;
    case 'start':
      num('t0');
      break;
  }
  return m as unknown as ToGenerator;
}

export function decodeFromGenerator(data: Uint8Array): FromGenerator {
  const m = parse(data);
  if (!FROM_GENERATOR.has(m['type'] as string)) invalid(`unknown type ${JSON.stringify(m['type'])}`);
  if (typeof m['gen'] !== 'string' || !TOKEN.test(m['gen'])) invalid('gen must be a subject token');
  if (m['type'] === 'interval' && (!Number.isInteger(m['k']) || typeof m['self'] !== 'object' || typeof m['host'] !== 'object')) invalid('interval needs k, self and host');
  const ids = (v: unknown): boolean => Array.isArray(v) && v.every((x) => Number.isSafeInteger(x) && x >= 0);
  if (m['type'] === 'ledger' && (!ids(m['owed']) || !ids(m['received']))) invalid('ledger needs owed and received delivery ids');
  return m as unknown as FromGenerator;
}

// ---------- connection ----------

/** A NATS connection for control traffic: reconnects forever (a control server restart must not end a run early). */
export async function connectControl(url: string, name: string): Promise<NatsConnection> {
  try {
    return await connect({ servers: url, name, maxReconnectAttempts: -1, reconnectTimeWait: 250 });
  } catch (e) {
    throw new HarnessError('CONTROL_UNAVAILABLE', `cannot reach the control NATS at ${url}: ${(e as Error).message}`, { cause: e });
  }
}

/**
 * Subscribes with a bounded backlog: messages are handled one at a time, in order, and at most
 * `max` wait; beyond that the oldest is dropped and counted (a runner that floods a generator
 * cannot make it grow without limit). Handler errors go to `onError`, never out of the callback.
 */
export function boundedSubscribe(
  nc: NatsConnection,
  subject: string,
  handle: (data: Uint8Array, reply: string | undefined) => Promise<void> | void,
  onError: (e: unknown) => void,
  max = 1024,
): { sub: Subscription; dropped: () => number } {
  const queue: Array<{ data: Uint8Array; reply: string | undefined }> = [];
  let running = false;
  let dropped = 0;
  const pump = async (): Promise<void> => {
    running = true;
    while (queue.length > 0) {
      const m = queue.shift()!;
      try {
        await handle(m.data, m.reply);
      } catch (e) {
        onError(e);
      }
    }
    running = false;
  };
  const sub = nc.subscribe(subject, {
    callback: (err, msg) => {
      if (err) return onError(err);
      if (queue.length >= max) {
        queue.shift();
        dropped++;
      }
      queue.push({ data: msg.data, reply: msg.reply });
      if (!running) void pump();
    },
  });
  return { sub, dropped: () => dropped };
}
