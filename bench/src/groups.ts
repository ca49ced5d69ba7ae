import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import { connect, headers, type NatsConnection } from '@nats-io/transport-node';
import { pack } from 'msgpackr';
import { GravitasClient } from '@gravitas/client';
import { MAX_USERS_PER_REQUEST } from '@gravitas/protocol';
import { NatsServer } from '@gravitas/testkit';
import { LatencyHistogram, type LatencySummary } from './histogram.js';
import { BENCH_LIMITS, clusterKeys, type ClusterKeys, log, nativeKeyPair, procCpuSeconds, Resources, sleep, startGravitasNode, waitFor } from './procs.js';
import { makeResult, posInt, posNum, UsageError, type BenchOptions, type BenchResult, type Row } from './report.js';
import { parsePrometheus, sumSeries } from './harness/scrape.js';

/*
 * Groups, in two parts.
 *
 * layout: the storage cost of the two ways to hold a group message for N members,
 *   on raw JetStream in the same run: store once (one publish to the group's log;
 *   members keep cursors, written to KV coalesced) against per-recipient fan-out
 *   (N publishes, one per member mailbox subject as the mailboxes do, and N
 *   deletes when the members acknowledge).
 * live: a real node (nats-server + `gravitas node` child) with an N-member group
 *   whose members are all online (SDK clients spread over load-generator worker
 *   threads); group messages at a modest open-loop rate; send → received latency
 *   over every member, and whether every member got every message exactly once.
 */

export const name = 'groups';
export const description = 'group storage layouts (store once vs per-recipient fan-out on raw JetStream) and live fan-out to an N-member group on a real node';
export const defaultDurationS = 10;
export const flags = {
  members: 'group size in both parts (default 1024)',
  rate: 'live: group messages per second, open loop (default 5)',
  senders: 'live: members that send, in turn (default 4)',
  workers: 'live: load-generator threads holding the member connections (default 4)',
  cells: 'live: cells of the node (default 2)',
  'layout-duration': 'layout: seconds per measurement (default 3)',
  window: 'layout: JetStream requests in flight (default 256)',
  'text-bytes': 'message text size (default 100)',
  parts: 'comma list of layout, live (default both)',
} as const;

/** Target from the issue. */
const TARGET = { p99Ms: 50 };
const CONNECT_CONCURRENCY = 32;
const SETTLE_TIMEOUT_MS = 30_000;
const NS_PER_S = 1e9;

const epochMs = (): number => performance.timeOrigin + performance.now();

// ---------------------------------------------------------------------------------------------
// layout: raw JetStream

interface JsReply { error?: { code: number; description: string }; [k: string]: unknown }

async function jsApi(nc: NatsConnection, api: string, body: unknown = {}): Promise<JsReply> {
  const r = await nc.request(`$JS.API.${api}`, JSON.stringify(body), { timeout: 10_000 });
  const o = JSON.parse(new TextDecoder().decode(r.data)) as JsReply;
  if (o.error) throw new Error(`${api}: ${o.error.description} (${o.error.code})`);
  return o;
}

async function streamState(nc: NatsConnection, stream: string): Promise<{ messages: number; bytes: number }> {
  const info = await jsApi(nc, `STREAM.INFO.${stream}`);
  return (info as unknown as { state: { messages: number; bytes: number } }).state;
}

/**
 * Keeps `window` requests in flight for `ms` (or until `max` were issued), each
 * from `next(i)`; counts those acknowledged. A failed request counts in `errors`.
 */
async function pipeline(ms: number, window: number, next: (i: number) => Promise<unknown>, max = Number.POSITIVE_INFINITY): Promise<{ done: number; errors: number; seconds: number }> {
  let i = 0;
  let done = 0;
  let errors = 0;
  const t0 = performance.now();
  const end = t0 + ms;
  await Promise.all(
    Array.from({ length: window }, async () => {
      while (performance.now() < end && i < max) {
        try {
          await next(i++);
          done++;
        } catch {
          errors++;
        }
      }
    }),
  );
  return { done, errors, seconds: (performance.now() - t0) / 1000 };
}

const ackOk = (r: { data: Uint8Array }): void => {
  const o = JSON.parse(new TextDecoder().decode(r.data)) as JsReply;
  if (o.error) throw new Error(o.error.description);
};

export interface LayoutResult {
  members: number;
  storeOnce: { writesPerSec: number; groupMsgsPerSec: number; bytesPerGroupMsg: number; errors: number };
  fanout: { writesPerSec: number; groupMsgsPerSec: number; bytesPerGroupMsg: number; errors: number };
  fanoutDeletes: { perSec: number; groupMsgsPerSec: number; errors: number };
  cursorPuts: { perSec: number; errors: number };
}

async function layout(nc: NatsConnection, members: number, ms: number, window: number, textBytes: number): Promise<LayoutResult> {
  const common = { storage: 'file', num_replicas: 1, retention: 'limits', discard: 'new', duplicate_window: 120 * NS_PER_S, allow_direct: true };
  await jsApi(nc, 'STREAM.CREATE.BENCH_GLOG', { name: 'BENCH_GLOG', subjects: ['bench.grp.>'], ...common });
  await jsApi(nc, 'STREAM.CREATE.BENCH_MBOX', { name: 'BENCH_MBOX', subjects: ['bench.mbox.>'], ...common, max_msgs_per_subject: 1, discard_new_per_subject: true });
  await jsApi(nc, 'STREAM.CREATE.KV_bench_cursors', {
    name: 'KV_bench_cursors', subjects: ['$KV.bench_cursors.>'], storage: 'file', num_replicas: 1, max_msgs_per_subject: 1, discard: 'new', allow_rollup_hdrs: true, deny_delete: true, allow_direct: true,
  });
  try {
    const text = 'x'.repeat(textBytes);
    const item = (id: string): Uint8Array => pack({ k: 'm', id, from: 'sender', fd: 'd1', to: 'grp0123456789abc', text, ts: Date.now(), g: 'grp0123456789abc' });
    const hdr = (id: string) => {
      const h = headers();
      h.set('Nats-Msg-Id', id);
      return h;
    };

    // Store once: one publish per group message.
    log(`layout: store once, ${ms / 1000} s`);
    const once = await pipeline(ms, window, async (i) => {
      const id = `m${i}`;
      ackOk(await nc.request('bench.grp.0.grp0123456789abc', item(id), { headers: hdr(`grp.sender.${id}`), timeout: 10_000 }));
    });
    const onceState = await streamState(nc, 'BENCH_GLOG');

    // Per-recipient fan-out: one publish per member (its own mailbox subject).
    log(`layout: per-recipient fan-out to ${members} members, ${ms / 1000} s`);
    const fan = await pipeline(ms, window, async (i) => {
      const msg = Math.floor(i / members);
      const u = i % members;
      const id = `m${msg}`;
      ackOk(await nc.request(`bench.mbox.0.u${u}.d1.sender.${id}`, item(id), { headers: hdr(`u${u}.d1.sender.${id}`), timeout: 10_000 }));
    });
    const fanState = await streamState(nc, 'BENCH_MBOX');

    // The fan-out layout deletes each copy when its member acknowledges.
    log(`layout: fan-out acknowledgements (deletes), ${ms / 1000} s`);
    const stored = fanState.messages;
    const del = await pipeline(ms, window, async (i) => jsApi(nc, 'STREAM.MSG.DELETE.BENCH_MBOX', { seq: i + 1, no_erase: true }), stored);

    // Store once: members' cursors (one KV value per device), what a coalesced flush writes.
    log(`layout: cursor writes (KV puts), ${ms / 1000} s`);
    const cursors = await pipeline(ms, window, async (i) => {
      ackOk(await nc.request(`$KV.bench_cursors.c.u${i % members}.d1`, pack({ c: { grp0123456789abc: i } }), { timeout: 10_000 }));
    });

    return {
      members,
      storeOnce: { writesPerSec: once.done / once.seconds, groupMsgsPerSec: once.done / once.seconds, bytesPerGroupMsg: onceState.bytes / Math.max(1, onceState.messages), errors: once.errors },
      fanout: {
        writesPerSec: fan.done / fan.seconds,
        groupMsgsPerSec: fan.done / fan.seconds / members,
        bytesPerGroupMsg: (fanState.bytes / Math.max(1, fanState.messages)) * members,
        errors: fan.errors,
      },
      fanoutDeletes: { perSec: del.done / del.seconds, groupMsgsPerSec: del.done / del.seconds / members, errors: del.errors },
      cursorPuts: { perSec: cursors.done / cursors.seconds, errors: cursors.errors },
    };
  } finally {
    for (const s of ['BENCH_GLOG', 'BENCH_MBOX', 'KV_bench_cursors']) await jsApi(nc, `STREAM.DELETE.${s}`).catch(() => undefined);
  }
}

// ---------------------------------------------------------------------------------------------
// live: load-generator threads (this module, run as a worker)

interface GenData { role: 'groups-gen'; servers: string[]; serverPublicKey: Uint8Array; users: string[] }
type GenCmd = { cmd: 'connect' } | { cmd: 'accept'; g: string } | { cmd: 'count'; n: number } | { cmd: 'total' } | { cmd: 'report' } | { cmd: 'close' };
type GenReply =
  | { ok: true; cmd: 'connect'; connected: number; errors: string[] }
  | { ok: true; cmd: 'accept'; accepted: number; errors: string[] }
  | { ok: true; cmd: 'count'; members: number }
  | { ok: true; cmd: 'total'; received: number }
  | { ok: true; cmd: 'report'; latencies: Float64Array; received: number[][]; duplicates: number; foreign: number }
  | { ok: true; cmd: 'close' }
  | { ok: false; error: string };

/** What a member receives: `n` the message index (negative: warmup), `t` the send time (epoch ms). */
interface Tag { n: number; t: number }

function parseTag(text: string): Tag | undefined {
  const end = text.indexOf('}');
  if (end < 0) return undefined;
  try {
    const o = JSON.parse(text.slice(0, end + 1)) as Tag;
    return typeof o.n === 'number' && typeof o.t === 'number' ? o : undefined;
  } catch {
    return undefined;
  }
}

/** Receives for a set of members: latency of each first sighting, and which message indices each member got (and how often). */
class Receivers {
  readonly latencies: number[] = [];
  readonly got: Array<Map<number, number>>;
  duplicates = 0;
  foreign = 0;
  recording = false;

  constructor(readonly clients: GravitasClient[]) {
    this.got = clients.map(() => new Map());
    clients.forEach((c, i) => {
      c.on('message', (m) => {
        const now = epochMs();
        const tag = parseTag(m.text);
        if (!tag || m.g === undefined) {
          this.foreign++;
          return;
        }
        const seen = this.got[i]!;
        const k = seen.get(tag.n) ?? 0;
        seen.set(tag.n, k + 1);
        if (k > 0) this.duplicates++;
        else if (tag.n >= 0) this.latencies.push(now - tag.t);
      });
    });
  }

  /** Members that received message `n`. */
  count(n: number): number {
    let c = 0;
    for (const g of this.got) if (g.has(n)) c++;
    return c;
  }

  /** (member, message) pairs received, measured messages only. */
  total(): number {
    let c = 0;
    for (const g of this.got) for (const n of g.keys()) if (n >= 0) c++;
    return c;
  }

  /** Per member, the message indices (≥ 0) it received. */
  receivedLists(): number[][] {
    return this.got.map((g) => [...g.keys()].filter((n) => n >= 0));
  }
}

function makeMember(servers: string[], serverPublicKey: Uint8Array, user: string): GravitasClient {
  const c = new GravitasClient({ servers, serverPublicKey, identity: nativeKeyPair(), user, device: 'd1', registration: '', reconnect: false, connectTimeoutMs: 30_000 });
  c.on('error', () => undefined);
  return c;
}

/** `step` for every client, CONNECT_CONCURRENCY at a time; the failures, as "user: message". */
async function forEachClient(clients: GravitasClient[], step: (c: GravitasClient) => Promise<unknown>): Promise<string[]> {
  const errors: string[] = [];
  let i = 0;
  await Promise.all(
    Array.from({ length: Math.min(CONNECT_CONCURRENCY, clients.length) }, async () => {
      while (i < clients.length) {
        const c = clients[i++]!;
        await step(c).catch((e: Error) => errors.push(`${c.options.user}: ${e.message}`));
      }
    }),
  );
  return errors;
}

/** Every member accepts its invitation to `g` (membership is by consent). */
function acceptAll(clients: GravitasClient[], g: string): Promise<string[]> {
  return forEachClient(clients, (c) => c.acceptInvite(g));
}

/** Every client connected and registered (a ping answered). */
function connectAll(clients: GravitasClient[]): Promise<string[]> {
  return forEachClient(clients, async (c) => {
    await c.connect();
    await c.ping();
  });
}

function runGenerator(d: GenData): void {
  const clients = d.users.map((u) => makeMember(d.servers, d.serverPublicKey, u));
  const rx = new Receivers(clients);
  const handle = async (c: GenCmd): Promise<GenReply> => {
    switch (c.cmd) {
      case 'connect': {
        const errors = await connectAll(clients);
        return { ok: true, cmd: 'connect', connected: clients.filter((x) => x.connected).length, errors: errors.slice(0, 5) };
      }
      case 'accept': {
        const errors = await acceptAll(clients, c.g);
        return { ok: true, cmd: 'accept', accepted: clients.length - errors.length, errors: errors.slice(0, 5) };
      }
      case 'count':
        return { ok: true, cmd: 'count', members: rx.count(c.n) };
      case 'total':
        return { ok: true, cmd: 'total', received: rx.total() };
      case 'report':
        return { ok: true, cmd: 'report', latencies: Float64Array.from(rx.latencies), received: rx.receivedLists(), duplicates: rx.duplicates, foreign: rx.foreign };
      case 'close':
        await Promise.all(clients.map((x) => x.close().catch(() => undefined)));
        return { ok: true, cmd: 'close' };
    }
  };
  parentPort!.on('message', (c: GenCmd) => {
    handle(c).then(
      (r) => parentPort!.postMessage(r),
      (e: Error) => parentPort!.postMessage({ ok: false, error: e.stack ?? e.message } satisfies GenReply),
    );
  });
}

if (!isMainThread && (workerData as { role?: string } | null)?.role === 'groups-gen') runGenerator(workerData as GenData);

/** A generator thread, driven one command at a time. */
class Gen {
  private readonly w: Worker;
  private queue: Array<{ resolve: (r: GenReply) => void; reject: (e: Error) => void }> = [];

  constructor(data: GenData) {
    this.w = new Worker(new URL(import.meta.url), { workerData: data });
    this.w.on('message', (r: GenReply) => {
      const p = this.queue.shift();
      if (r.ok) p?.resolve(r);
      else p?.reject(new Error(`group load generator: ${r.error}`));
    });
    const failAll = (e: Error): void => {
      for (const p of this.queue) p.reject(e);
      this.queue = [];
    };
    this.w.on('error', failAll);
    this.w.on('exit', (code) => failAll(new Error(`group load generator exited (${code})`)));
  }

  call<C extends GenCmd['cmd']>(c: Extract<GenCmd, { cmd: C }>): Promise<Extract<GenReply, { cmd: C }>> {
    return new Promise((resolve, reject) => {
      this.queue.push({ resolve: resolve as (r: GenReply) => void, reject });
      this.w.postMessage(c);
    });
  }

  terminate(): Promise<number> {
    return this.w.terminate();
  }
}

// ---------------------------------------------------------------------------------------------
// live: the run

export interface LiveResult {
  members: number;
  cells: number;
  messages: number;
  ratePerSec: number;
  /** Σ over messages of (members − 1): every member but the sender gets each message. */
  expected: number;
  received: number;
  missing: number;
  duplicates: number;
  /** Intended send time → member's message event (all members). */
  latency: LatencySummary;
  /** Intended send time → `stored` status at the sender. */
  stored: LatencySummary;
  sendErrors: Record<string, number>;
  setupMs: { connect: number; create: number; accept: number; attach: number };
  cpuCores: Record<string, number>;
  /** CPU time of the node per delivery (µs), measured phase. */
  nodeCpuPerDeliveryUs: number;
  /** Per cell and message: log verification + writing to all local members (server side of the latency). */
  cellFanout: { p50: number; p99: number };
  /** Server counters over the measured phase, per group message. */
  perMessage: { verifyReads: number; cursorWrites: number; deliveries: number };
  schedLagP99Ms: number;
}

async function metric(adminUrl: string, name: string, label?: string): Promise<number> {
  return sumSeries(parsePrometheus(await (await fetch(`${adminUrl}/metrics`)).text()), name, label);
}

/** Cumulative buckets of a Prometheus histogram (summed over cells): [upper bound in ms, count]. */
async function buckets(adminUrl: string, name: string): Promise<Array<[number, number]>> {
  const text = await (await fetch(`${adminUrl}/metrics`)).text();
  const out = new Map<number, number>();
  for (const m of text.matchAll(new RegExp(`^${name}_bucket\\{[^}]*le="([^"]+)"[^}]*\\} (\\S+)$`, 'gm'))) {
    const le = m[1] === '+Inf' ? Number.POSITIVE_INFINITY : Number(m[1]) * 1000;
    out.set(le, (out.get(le) ?? 0) + Number(m[2]));
  }
  return [...out].sort((a, b) => a[0] - b[0]);
}

/** Quantile q of the observations between two bucket snapshots, interpolated within its bucket (ms). */
function bucketQuantile(before: Array<[number, number]>, after: Array<[number, number]>, q: number): number {
  const prior = new Map(before);
  const diff = after.map(([le, c]) => [le, c - (prior.get(le) ?? 0)] as [number, number]);
  const total = diff[diff.length - 1]?.[1] ?? 0;
  if (total === 0) return NaN;
  let lower = 0;
  let below = 0;
  for (const [le, c] of diff) {
    if (c >= q * total) return le === Number.POSITIVE_INFINITY ? lower : lower + ((q * total - below) / Math.max(1, c - below)) * (le - lower);
    lower = le;
    below = c;
  }
  return lower;
}

async function startNode(res: Resources, dir: string, natsUrl: string, keys: ClusterKeys, cells: number, members: number): Promise<{ pid: number; addresses: string[]; adminUrl: string }> {
  const node = await startGravitasNode(res, dir, 'bench-groups', natsUrl, keys, { config: { cells, limits: { maxGroupSize: Math.max(1024, members) } } });
  return { pid: node.pid, addresses: node.addrs, adminUrl: node.adminUrl };
}

const tagText = (n: number, textBytes: number): string => {
  const head = JSON.stringify({ n, t: epochMs() });
  return head.length >= textBytes ? head : head + ' '.repeat(textBytes - head.length);
};

async function live(res: Resources, nats: NatsServer, o: { members: number; rate: number; senders: number; workers: number; cells: number; ms: number; textBytes: number }): Promise<LiveResult> {
  const dir = await res.tempDir('gravitas-bench-groups-');
  const keys = clusterKeys();
  log(`live: starting a node with ${o.cells} cells`);
  const node = await startNode(res, dir, nats.url, keys, o.cells, o.members);
  const users = Array.from({ length: o.members }, (_, i) => `gm${i}`);
  // Members spread over the cells round robin; senders are the first members, held here.
  const serversOf = (i: number): string[] => [node.addresses[i % node.addresses.length]!];
  const senderClients = users.slice(0, o.senders).map((u, i) => makeMember(serversOf(i), keys.server.publicKey, u));
  const senderRx = new Receivers(senderClients);
  res.defer(async () => void (await Promise.all(senderClients.map((c) => c.close().catch(() => undefined)))));
  const rest = users.slice(o.senders);
  const nGen = Math.min(o.workers, Math.max(1, rest.length));
  const gens: Gen[] = [];
  res.defer(async () => void (await Promise.all(gens.map((g) => g.terminate()))));
  for (let w = 0; w < nGen; w++) {
    // Each generator holds every nGen-th member; generators (and so members) alternate over the cells.
    const mine = rest.filter((_, i) => i % nGen === w);
    gens.push(new Gen({ role: 'groups-gen', servers: serversOf(w), serverPublicKey: keys.server.publicKey, users: mine }));
  }

  const t0 = performance.now();
  log(`live: connecting ${o.members} members (${o.senders} senders here, the rest over ${nGen} generator threads)`);
  const [senderErrors, ...genResults] = await Promise.all([connectAll(senderClients), ...gens.map((g) => g.call({ cmd: 'connect' }))]);
  const connected = senderClients.filter((c) => c.connected).length + genResults.reduce((a, r) => a + r.connected, 0);
  const errs = [...senderErrors, ...genResults.flatMap((r) => r.errors)];
  if (connected < o.members) throw new Error(`only ${connected}/${o.members} members connected: ${errs.slice(0, 3).join('; ')}`);
  const tConnect = performance.now() - t0;

  log('live: creating the group');
  const creator = senderClients[0]!;
  const t1 = performance.now();
  const { g } = await creator.createGroup('bench', users.slice(1));
  const tCreate = performance.now() - t1;
  log(`live: ${o.members - 1} members accept their invitations`);
  const t3 = performance.now();
  const [acceptErrors, ...acceptResults] = await Promise.all([acceptAll(senderClients.slice(1), g), ...gens.map((x) => x.call({ cmd: 'accept', g }))]);
  const joined = senderClients.length - acceptErrors.length + acceptResults.reduce((a, r) => a + r.accepted, 0); // the creator included
  if (joined < o.members) throw new Error(`only ${joined}/${o.members} members joined: ${[...acceptErrors, ...acceptResults.flatMap((r) => r.errors)].slice(0, 3).join('; ')}`);
  const tAccept = performance.now() - t3;

  // Everyone attached: a warmup message reaches every other member.
  const allGot = async (n: number): Promise<number> => senderRx.count(n) + (await Promise.all(gens.map((x) => x.call({ cmd: 'count', n })))).reduce((a, r) => a + r.members, 0);
  log('live: waiting until every member receives a warmup message');
  const t2 = performance.now();
  for (let k = 1; k <= 3; k++) {
    const r = await creator.sendToGroup(g, tagText(-k, o.textBytes));
    if (r.status !== 'stored') throw new Error(`warmup: status ${r.status}`);
    await waitFor(`warmup ${k} at every member`, async () => (await allGot(-k)) >= o.members - 1, 60_000, 100);
  }
  const tAttach = performance.now() - t2;

  // Open loop at `rate`: message n from sender n % senders at its scheduled time.
  const n = Math.max(1, Math.round((o.rate * o.ms) / 1000));
  log(`live: ${n} group messages at ${o.rate}/s to ${o.members} members`);
  const stored = new LatencyHistogram();
  const sched = new LatencyHistogram();
  const sendErrors: Record<string, number> = {};
  const before = {
    verify: await metric(node.adminUrl, 'gravitas_group_log_reads_total', 'kind="verify"'),
    cursors: await metric(node.adminUrl, 'gravitas_group_cursor_writes_total'),
    deliveries: await metric(node.adminUrl, 'gravitas_group_deliveries_total'),
  };
  const fanout0 = await buckets(node.adminUrl, 'gravitas_group_fanout_seconds');
  const pids: Record<string, number | undefined> = { node: node.pid, nats: nats.pid, generator: process.pid };
  const cpu0 = Object.fromEntries(Object.entries(pids).map(([k, p]) => [k, p ? procCpuSeconds(p) : 0]));
  const c0 = performance.now();
  const start = epochMs() + 20;
  const sends: Array<Promise<void>> = [];
  for (let i = 0; i < n; i++) {
    const due = start + (i * 1000) / o.rate;
    const wait = due - epochMs();
    if (wait > 0) await sleep(wait);
    sched.recordMicros((epochMs() - due) * 1000);
    const sender = senderClients[i % senderClients.length]!;
    sends.push(
      sender.sendToGroup(g, tagText(i, o.textBytes)).then(
        () => stored.recordMicros((epochMs() - due) * 1000),
        (e: unknown) => void (sendErrors[(e as { code?: string }).code ?? String(e)] = (sendErrors[(e as { code?: string }).code ?? String(e)] ?? 0) + 1),
      ),
    );
  }
  await Promise.all(sends);
  log('live: waiting for the last deliveries');
  const expected = n * (o.members - 1);
  const total = async (): Promise<number> => senderRx.total() + (await Promise.all(gens.map((x) => x.call({ cmd: 'total' })))).reduce((a, r) => a + r.received, 0);
  await waitFor('every delivery', async () => (await total()) >= expected, SETTLE_TIMEOUT_MS, 250).catch((e: Error) => log(e.message));
  const secs = (performance.now() - c0) / 1000;
  const cpuCores = Object.fromEntries(Object.entries(pids).map(([k, p]) => [k, p ? (procCpuSeconds(p) - cpu0[k]!) / secs : 0]));
  // Cursors are written coalesced: give the last flush a moment before reading the counters.
  await sleep(1500);
  const after = {
    verify: await metric(node.adminUrl, 'gravitas_group_log_reads_total', 'kind="verify"'),
    cursors: await metric(node.adminUrl, 'gravitas_group_cursor_writes_total'),
    deliveries: await metric(node.adminUrl, 'gravitas_group_deliveries_total'),
  };
  const fanout1 = await buckets(node.adminUrl, 'gravitas_group_fanout_seconds');

  // Collect: latencies over all members, and exactly-once per (member, message).
  const reports = await Promise.all(gens.map((x) => x.call({ cmd: 'report' })));
  const latency = new LatencyHistogram();
  for (const v of senderRx.latencies) latency.recordMicros(v * 1000);
  for (const r of reports) for (const v of r.latencies) latency.recordMicros(v * 1000);
  let received = 0;
  let missing = 0;
  const lists = [...senderRx.receivedLists().map((l, i) => ({ l, sender: i })), ...reports.flatMap((r) => r.received.map((l) => ({ l, sender: -1 })))];
  for (const { l, sender } of lists) {
    const set = new Set(l);
    for (let i = 0; i < n; i++) {
      if (sender >= 0 && i % senderClients.length === sender) continue; // its own message
      if (set.has(i)) received++;
      else missing++;
    }
  }
  const duplicates = senderRx.duplicates + reports.reduce((a, r) => a + r.duplicates, 0);
  await Promise.all(gens.map((x) => x.call({ cmd: 'close' }).catch(() => undefined)));
  return {
    members: o.members,
    cells: o.cells,
    messages: n,
    ratePerSec: o.rate,
    expected,
    received,
    missing,
    duplicates,
    latency: latency.summary(),
    stored: stored.summary(),
    sendErrors,
    setupMs: { connect: tConnect, create: tCreate, accept: tAccept, attach: tAttach },
    cpuCores,
    cellFanout: { p50: bucketQuantile(fanout0, fanout1, 0.5), p99: bucketQuantile(fanout0, fanout1, 0.99) },
    nodeCpuPerDeliveryUs: (cpuCores['node']! * secs * 1e6) / Math.max(1, received),
    perMessage: { verifyReads: (after.verify - before.verify) / n, cursorWrites: (after.cursors - before.cursors) / n, deliveries: (after.deliveries - before.deliveries) / n },
    schedLagP99Ms: sched.summary().p99,
  };
}

// ---------------------------------------------------------------------------------------------
// run

export async function run(opts: BenchOptions): Promise<BenchResult> {
  const startedAt = new Date();
  const members = posInt(opts, 'members', 1024, 10_000);
  const rate = posNum(opts, 'rate', 5);
  const senders = posInt(opts, 'senders', 4, 64);
  const workers = posInt(opts, 'workers', 4, 32);
  const cells = posInt(opts, 'cells', 2, 16);
  const layoutMs = posNum(opts, 'layout-duration', 3) * 1000;
  const window = posInt(opts, 'window', 256, 10_000);
  const textBytes = posInt(opts, 'text-bytes', 100, 16_000);
  const partsFlag = opts.flags['parts'];
  const parts = new Set(typeof partsFlag === 'string' ? partsFlag.split(',').map((p) => p.trim()) : ['layout', 'live']);
  for (const p of parts) if (p !== 'layout' && p !== 'live') throw new UsageError(`--parts: unknown part ${p}`);
  if (senders >= members) throw new UsageError('--senders must be below --members');
  const params = { members, rate, senders, workers, cells, durationMs: opts.durationMs, layoutMs, window, textBytes, parts: [...parts], limits: BENCH_LIMITS };

  const res = new Resources();
  try {
    log('starting nats-server (JetStream)');
    const nats = await NatsServer.start({ jetstream: true });
    res.deferLast(() => nats.stop());
    const rows: Row[] = [];
    const extra: { layout?: LayoutResult; live?: LiveResult } = {};

    if (parts.has('layout')) {
      const nc = await connect({ servers: nats.url });
      try {
        const l = (extra.layout = await layout(nc, members, layoutMs, window, textBytes));
        const kb = (b: number): number => b / 1024;
        rows.push(
          { metric: 'layout.store_once.writes', value: l.storeOnce.writesPerSec, unit: 'writes/s', note: `JetStream acks, ${window} in flight${l.storeOnce.errors ? `; ${l.storeOnce.errors} errors` : ''}` },
          { metric: 'layout.store_once.group_msgs', value: l.storeOnce.groupMsgsPerSec, unit: 'group msg/s', note: '1 write per group message' },
          { metric: 'layout.store_once.bytes', value: kb(l.storeOnce.bytesPerGroupMsg), unit: 'KiB/group msg' },
          { metric: 'layout.cursor.kv_puts', value: l.cursorPuts.perSec, unit: 'writes/s', note: `store once: member cursors (the server writes each device's at most every 5 s, and when its session ends)${l.cursorPuts.errors ? `; ${l.cursorPuts.errors} errors` : ''}` },
          { metric: 'layout.fanout.writes', value: l.fanout.writesPerSec, unit: 'writes/s', note: `${members} per group message${l.fanout.errors ? `; ${l.fanout.errors} errors` : ''}` },
          {
            metric: 'layout.fanout.group_msgs',
            value: l.fanout.groupMsgsPerSec,
            unit: 'group msg/s',
            ceiling: 'layout.store_once.group_msgs',
            ratio: l.fanout.groupMsgsPerSec / l.storeOnce.groupMsgsPerSec,
          },
          { metric: 'layout.fanout.bytes', value: kb(l.fanout.bytesPerGroupMsg), unit: 'KiB/group msg', ceiling: 'layout.store_once.bytes', ratio: l.fanout.bytesPerGroupMsg / l.storeOnce.bytesPerGroupMsg },
          { metric: 'layout.fanout.ack_deletes', value: l.fanoutDeletes.perSec, unit: 'deletes/s', note: `${members} per group message when acknowledged: ${l.fanoutDeletes.groupMsgsPerSec.toFixed(1)} group msg/s` },
        );
      } finally {
        await nc.close();
      }
    }

    if (parts.has('live')) {
      const r = (extra.live = await live(res, nats, { members, rate, senders, workers, cells, ms: opts.durationMs, textBytes }));
      const pass = r.latency.p99 <= TARGET.p99Ms;
      const cores = Object.entries(r.cpuCores)
        .map(([k, v]) => `${k} ${v.toFixed(2)}`)
        .join(', ');
      rows.push(
        {
          metric: 'live.deliveries',
          value: r.received,
          unit: 'deliveries',
          note: `${r.messages} msgs × ${r.members - 1} members = ${r.expected} expected; missing ${r.missing}, duplicates ${r.duplicates}: ${r.missing === 0 && r.duplicates === 0 ? 'EXACTLY ONCE' : 'FAIL'}`,
        },
        { metric: 'live.latency.p50', value: r.latency.p50, unit: 'ms', note: `intended send → member message event, all members, ${r.cells} cells` },
        { metric: 'live.latency.p99', value: r.latency.p99, unit: 'ms', note: `target p99 ≤ ${TARGET.p99Ms} ms: ${pass ? 'PASS' : 'FAIL'}` },
        { metric: 'live.latency.p999', value: r.latency.p999, unit: 'ms' },
        { metric: 'live.latency.max', value: r.latency.max, unit: 'ms' },
        { metric: 'live.cell_fanout.p50', value: r.cellFanout.p50, unit: 'ms', note: 'server side, per cell and message: verify in the log + write to every local member (from bucket counts)' },
        { metric: 'live.cell_fanout.p99', value: r.cellFanout.p99, unit: 'ms' },
        { metric: 'live.stored.p50', value: r.stored.p50, unit: 'ms', note: 'intended send → stored status at the sender' },
        { metric: 'live.stored.p99', value: r.stored.p99, unit: 'ms', note: Object.keys(r.sendErrors).length ? `send errors ${JSON.stringify(r.sendErrors)}` : '' },
        { metric: 'live.verify_reads_per_msg', value: r.perMessage.verifyReads, unit: 'reads/msg', note: 'direct gets by cell feeds (one per cell with members, per message)' },
        { metric: 'live.cursor_writes_per_msg', value: r.perMessage.cursorWrites, unit: 'writes/msg', note: 'coalesced KV cursor writes over the phase' },
        { metric: 'live.cpu', value: Object.values(r.cpuCores).reduce((a, b) => a + b, 0), unit: 'cores', note: cores },
        { metric: 'live.node_cpu_per_delivery', value: r.nodeCpuPerDeliveryUs, unit: 'µs', note: 'node CPU / deliveries (seal, socket write, the ack; log reads and cursors included)' },
        { metric: 'live.setup.connect', value: r.setupMs.connect, unit: 'ms', note: `${r.members} members connected (full handshakes with registration)` },
        { metric: 'live.setup.create', value: r.setupMs.create, unit: 'ms', note: `groups.create inviting ${r.members - 1} members (and groups.add past ${MAX_USERS_PER_REQUEST} per request)` },
        { metric: 'live.setup.accept', value: r.setupMs.accept, unit: 'ms', note: `${r.members - 1} members accept at once, ${CONNECT_CONCURRENCY} per thread` },
        { metric: 'live.setup.attach', value: r.setupMs.attach, unit: 'ms', note: '3 warmup messages, each awaited at every member' },
        { metric: 'live.sched_lag.p99', value: r.schedLagP99Ms, unit: 'ms', note: 'generator lateness vs schedule; part of the latencies' },
      );
    }
    return makeResult(name, startedAt, params, rows, extra);
  } finally {
    log('stopping child processes');
    await res.close();
  }
}
