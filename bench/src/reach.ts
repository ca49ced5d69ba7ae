import { createECDH, randomBytes, type ECDH } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { GravitasClient, PeerLink, type TransportKind } from '@gravitas/client';
import { generateKeyPair } from '@gravitas/protocol';
import { NatsServer } from '@gravitas/testkit';
import { LatencyHistogram, type LatencySummary } from './histogram.js';
import { BENCH_LIMITS, CLI_BIN, clusterKeys, log, Resources, sleep, spawnNode, waitFor, type ClusterKeys } from './procs.js';
import { makeResult, posInt, posNum, type BenchOptions, type BenchResult, type Row } from './report.js';

/*
 * Issue 5: how fast an offline device is reached, and what the web transports cost.
 *  1. push:  a device with a Web Push target is offline; each message to it gives one push to a
 *            local push endpoint (loopback HTTP, payload decrypted with http_ece as a browser would).
 *  2. relay: a device without push target is woken by an online LAN peer (PeerLink on 127.0.0.1).
 *  3. transports: a send/ack stream between two clients of one cell over tcp, ws and http.
 * One node process (1 cell, web listener on), one nats-server.
 */

export const name = 'reach';
export const description = 'push latency (local Web Push endpoint), relayed wake-up latency, and tcp vs ws vs http throughput on one cell';
export const defaultDurationS = 2;
export const flags = {
  pushes: 'messages to the offline push device, one push each (default 50)',
  'push-gap': 'ms between those messages, beyond the coalescing window (default 20)',
  wakes: 'relayed wake-ups (default 20)',
  window: 'transport stream: messages in flight (default 16)',
} as const;

/** Targets from the issue. */
const TARGET = { pushP99Ms: 100, relayP99Ms: 500, wsRatio: 0.8, httpRatio: 0.5 };
const COALESCE_MS = 5;
const TEXT = 'x'.repeat(100);

// http_ece is CommonJS without types: the two parts used here.
const ece = createRequire(import.meta.url)('http_ece') as { decrypt(b: Buffer, p: { version: 'aes128gcm'; privateKey: ECDH; authSecret: Buffer }): Buffer };

const pass = (ok: boolean, target: string): string => `target ${target}: ${ok ? 'PASS' : 'FAIL'}`;

// ---------------------------------------------------------------------------------------------
// node

interface Node {
  pid: number;
  tcp: string;
  web: string;
  adminUrl: string;
  tail(): string;
}

function vapidKeys(): { publicKey: string; privateKey: string } {
  const e = createECDH('prime256v1');
  e.generateKeys();
  const priv = e.getPrivateKey();
  return { publicKey: e.getPublicKey().toString('base64url'), privateKey: Buffer.concat([Buffer.alloc(32 - priv.length), priv]).toString('base64url') };
}

/** Like procs.startGravitasNode, but with the web listener's address from the ready line. */
async function startNode(res: Resources, dir: string, natsUrl: string, keys: ClusterKeys, wakes: number): Promise<Node> {
  const vapid = vapidKeys();
  const config = {
    nodeId: 'reach-n1',
    nats: { servers: [natsUrl] },
    cells: 1,
    listen: { host: '127.0.0.1', basePort: 0, webBasePort: 0 },
    admin: { host: '127.0.0.1', port: 0 },
    dataDir: join(dir, 'reach-n1-data'),
    serverKey: keys.serverKey,
    ticketKeys: keys.ticketKeys,
    registration: { mode: 'open' },
    gravity: { enabled: false },
    push: {
      vapidPublicKey: vapid.publicKey, vapidPrivateKey: vapid.privateKey, vapidSubject: 'mailto:bench@example.com',
      allowHttp: true, coalesceMs: COALESCE_MS, dampingMaxWindowMs: COALESCE_MS, maxAttempts: 1,
    },
    relay: { perTargetPerWindow: Math.min(1000, wakes + 10), perRelayerPerWindow: Math.min(1000, wakes + 10), windowMs: 3_600_000, minReportIntervalMs: 0 },
    limits: BENCH_LIMITS,
  };
  const file = join(dir, 'reach-n1.json');
  await writeFile(file, JSON.stringify(config, null, 2));
  const { child, ready } = spawnNode('reach-n1', [CLI_BIN, 'node', '--config', file], /^ready client=(\S+) admin=(\S+?) web=(\S+)$/m);
  res.add(child);
  const m = await ready;
  return { pid: child.pid, tcp: (m[1] ?? '').split(',')[0] ?? '', adminUrl: m[2] ?? '', web: (m[3] ?? '').split(',')[0] ?? '', tail: () => child.tail() };
}

// ---------------------------------------------------------------------------------------------
// clients

interface Opened {
  client: GravitasClient;
  errors: Error[];
}

function makeClient(node: Node, keys: ClusterKeys, user: string, transports: TransportKind[] = ['tcp'], extra: Partial<ConstructorParameters<typeof GravitasClient>[0]> = {}): Opened {
  const client = new GravitasClient({
    servers: [{ tcp: node.tcp, web: `http://${node.web}` }],
    transports,
    serverPublicKey: keys.server.publicKey,
    identity: generateKeyPair(),
    user,
    device: 'd1',
    registration: '',
    connectTimeoutMs: 5000,
    ...extra,
  });
  const errors: Error[] = [];
  client.on('error', (e) => errors.push(e));
  return { client, errors };
}

/** Connected, and registered in the directory (a ping answered proves it, see test/fixtures/cluster.ts). */
async function online(o: Opened): Promise<Opened> {
  await o.client.connect();
  await waitFor(`${o.client.options.user} registered`, () => o.client.ping().then(() => true, () => false), 30_000, 50);
  return o;
}

// ---------------------------------------------------------------------------------------------
// 1. push

interface PushSeen {
  /** performance.now() and Date.now() when the request body was in. */
  at: number;
  wall: number;
  payload: { ts?: number; text?: string; count?: number };
}

/** A Web Push endpoint that decrypts like a browser (no VAPID check: test/fixtures/push-service.ts does that in the tests). */
async function pushEndpoint(res: Resources): Promise<{ origin: string; sub: { endpoint: string; keys: { p256dh: string; auth: string } }; seen: PushSeen[]; errors: string[] }> {
  const ecdh = createECDH('prime256v1');
  ecdh.generateKeys();
  const auth = randomBytes(16);
  const seen: PushSeen[] = [];
  const errors: string[] = [];
  const server: Server = createServer((req, rsp) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const at = performance.now();
      const wall = Date.now();
      try {
        if (!/^vapid t=/.test(req.headers.authorization ?? '')) throw new Error('no VAPID authorization');
        const payload = JSON.parse(ece.decrypt(Buffer.concat(chunks), { version: 'aes128gcm', privateKey: ecdh, authSecret: auth }).toString('utf8')) as PushSeen['payload'];
        seen.push({ at, wall, payload });
        rsp.writeHead(201).end();
      } catch (e) {
        errors.push((e as Error).message);
        rsp.writeHead(400).end();
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  res.defer(async () => {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  });
  const a = server.address();
  const origin = `http://127.0.0.1:${typeof a === 'object' && a ? a.port : 0}`;
  return { origin, sub: { endpoint: `${origin}/wp/bench`, keys: { p256dh: ecdh.getPublicKey().toString('base64url'), auth: auth.toString('base64url') } }, seen, errors };
}

interface PushResult {
  sent: number;
  received: number;
  /** Payload ts (Date.now() at the cell when it accepted the message, before storing it: custody.ts) → push in at the endpoint (same host wall clock, ms resolution). */
  fromStamp: LatencySummary;
  /** send() called → push in (upper bound: includes the client → cell hop and the store). */
  fromSend: LatencySummary;
  /** send() resolved 'stored' → push in: may be negative (the push can beat the ack), clamped at 0 by the histogram. */
  fromStored: LatencySummary;
  negativeFromStored: number;
  decryptErrors: string[];
  statuses: Record<string, number>;
}

async function pushLatency(res: Resources, node: Node, keys: ClusterKeys, n: number, gapMs: number): Promise<PushResult> {
  const ep = await pushEndpoint(res);
  const dev = await online(makeClient(node, keys, 'reach-push-dev'));
  await dev.client.request('prefs.set', { pushPreview: true });
  await dev.client.registerPush({ kind: 'webpush', ...ep.sub });
  await dev.client.close();
  const sender = await online(makeClient(node, keys, 'reach-push-sender'));
  res.defer(() => sender.client.close());

  const fromStamp = new LatencyHistogram();
  const fromSend = new LatencyHistogram();
  const fromStored = new LatencyHistogram();
  const calls = new Map<string, { t0: number; stored?: number }>();
  const statuses: Record<string, number> = {};
  const pending: Array<Promise<void>> = [];
  log(`push: ${n} messages ${gapMs} ms apart to an offline device with a Web Push target (coalescing window ${COALESCE_MS} ms)`);
  for (let i = 0; i < n; i++) {
    const text = `m${i} ${TEXT}`;
    const c: { t0: number; stored?: number } = { t0: performance.now() };
    calls.set(`m${i}`, c);
    pending.push(
      sender.client.send('reach-push-dev', text).then(
        (r) => {
          statuses[r.status] = (statuses[r.status] ?? 0) + 1;
          c.stored = performance.now();
        },
        (e: Error) => void (statuses[(e as { code?: string }).code ?? e.message] = (statuses[(e as { code?: string }).code ?? e.message] ?? 0) + 1),
      ),
    );
    await sleep(gapMs);
  }
  await Promise.all(pending);
  await waitFor('pushes', () => ep.seen.length >= n, 10_000, 20).catch(() => log(`push: only ${ep.seen.length}/${n} pushes arrived`));
  let negative = 0;
  for (const s of ep.seen) {
    if (typeof s.payload.ts === 'number') fromStamp.recordMicros((s.wall - s.payload.ts) * 1000);
    const key = /^(m\d+) /.exec(s.payload.text ?? '')?.[1];
    const c = key === undefined ? undefined : calls.get(key);
    if (!c) continue;
    fromSend.recordMicros((s.at - c.t0) * 1000);
    if (c.stored !== undefined) {
      if (s.at < c.stored) negative++;
      fromStored.recordMicros((s.at - c.stored) * 1000);
    }
  }
  return { sent: n, received: ep.seen.length, fromStamp: fromStamp.summary(), fromSend: fromSend.summary(), fromStored: fromStored.summary(), negativeFromStored: negative, decryptErrors: ep.errors, statuses };
}

// ---------------------------------------------------------------------------------------------
// 2. relay

interface RelayResult {
  attempts: number;
  woken: number;
  /** Relayer's relayRequest event → target's connected event (same process clock). */
  requestToConnected: LatencySummary;
  /** Sender's send() called → target's connected event. */
  sendToConnected: LatencySummary;
  failed: number;
}

async function relayLatency(res: Resources, node: Node, keys: ClusterKeys, m: number): Promise<RelayResult> {
  // The target: registered once, offline, PeerLink listening on loopback. No push target.
  const target = makeClient(node, keys, 'reach-relay-target');
  res.defer(() => target.client.close());
  await online(target);
  // Its consent (docs/relay.md): the relayer is a contact.
  await target.client.request('contacts.add', { user: 'reach-relay-relayer' });
  await target.client.close();
  const tLink = new PeerLink(target.client, { host: '127.0.0.1', port: 0, timeoutMs: 5000 });
  res.defer(async () => tLink.close());
  await tLink.start();

  const relayer = await online(makeClient(node, keys, 'reach-relay-relayer'));
  res.defer(() => relayer.client.close());
  const rLink = new PeerLink(relayer.client, { host: '127.0.0.1', port: 0, timeoutMs: 5000 });
  res.defer(async () => rLink.close());
  await rLink.start();
  const reported = new Promise((r) => rLink.once('reported', r));
  await rLink.addPeer(tLink.address);
  await reported;

  const sender = await online(makeClient(node, keys, 'reach-relay-sender'));
  res.defer(() => sender.client.close());

  const reqToConn = new LatencyHistogram();
  const sendToConn = new LatencyHistogram();
  let requestAt: number | undefined;
  relayer.client.on('relayRequest', () => void (requestAt ??= performance.now()));
  let failed = 0;
  log(`relay: ${m} wake-ups of an offline device through an online LAN peer`);
  for (let i = 0; i < m; i++) {
    requestAt = undefined;
    const connected = new Promise<number>((r) => target.client.once('connected', () => r(performance.now())));
    const t0 = performance.now();
    const r = await sender.client.send('reach-relay-target', `wake ${i}`);
    const at = await Promise.race([connected, sleep(5000).then(() => undefined)]);
    if (at === undefined || r.status !== 'stored' || requestAt === undefined) {
      failed++;
      log(`relay: attempt ${i} ${r.status !== 'stored' ? `was ${r.status}` : at === undefined ? 'did not wake the target within 5 s' : 'connected without a relay request'}`);
    } else {
      reqToConn.recordMicros((at - requestAt) * 1000);
      sendToConn.recordMicros((at - t0) * 1000);
    }
    // Offline again before the next one (close says bye: the directory drops it at once).
    await waitFor('target woken', () => target.client.connected, 5000, 10).catch(() => undefined);
    await target.client.close();
    await sleep(100);
  }
  return { attempts: m, woken: reqToConn.count, requestToConnected: reqToConn.summary(), sendToConnected: sendToConn.summary(), failed };
}

// ---------------------------------------------------------------------------------------------
// 3. transports

interface StreamResult {
  transport: TransportKind;
  actual: string[];
  delivered: number;
  perSec: number;
  errors: Record<string, number>;
  rtt: LatencySummary;
}

/** a → b over one transport (both clients), `window` sends in flight, counting 'delivered' answers for `ms`. */
async function stream(node: Node, keys: ClusterKeys, kind: TransportKind, ms: number, window: number): Promise<StreamResult> {
  const a = await online(makeClient(node, keys, `reach-${kind}-a`, [kind]));
  const b = await online(makeClient(node, keys, `reach-${kind}-b`, [kind]));
  try {
    const actual = [a.client.transport, b.client.transport].map(String);
    const h = new LatencyHistogram();
    const errors: Record<string, number> = {};
    let delivered = 0;
    let measuring = false;
    let stop = false;
    const loop = async (): Promise<void> => {
      while (!stop) {
        const t0 = performance.now();
        try {
          const r = await a.client.send(b.client.options.user, TEXT);
          if (measuring && !stop && r.status === 'delivered') {
            delivered++;
            h.recordSince(t0);
          } else if (measuring && r.status !== 'delivered') errors[r.status] = (errors[r.status] ?? 0) + 1;
        } catch (e) {
          const k = (e as { code?: string }).code ?? (e as Error).message;
          errors[k] = (errors[k] ?? 0) + 1;
          await sleep(10);
        }
      }
    };
    const loops = Array.from({ length: window }, loop);
    await sleep(Math.min(500, ms / 4)); // warm-up
    measuring = true;
    const t0 = performance.now();
    await sleep(ms);
    stop = true;
    const s = (performance.now() - t0) / 1000;
    const perSec = delivered / s;
    await Promise.all(loops);
    return { transport: kind, actual, delivered, perSec, errors, rtt: h.summary() };
  } finally {
    await Promise.all([a.client.close(), b.client.close()]);
  }
}

// ---------------------------------------------------------------------------------------------
// run

const fmtErrors = (r: Record<string, number>): string =>
  Object.entries(r)
    .map(([k, v]) => `${k}×${v}`)
    .join(' ');

export async function run(opts: BenchOptions): Promise<BenchResult> {
  const startedAt = new Date();
  const nPush = posInt(opts, 'pushes', 50, 10_000);
  const gap = posNum(opts, 'push-gap', 20);
  const nWake = posInt(opts, 'wakes', 20, 990);
  const window = posInt(opts, 'window', 16, 1000);
  const ms = opts.durationMs;
  const params = { durationMs: ms, pushes: nPush, pushGapMs: gap, coalesceMs: COALESCE_MS, wakes: nWake, window, textBytes: TEXT.length, limits: BENCH_LIMITS };

  const res = new Resources();
  try {
    log('starting nats-server (JetStream)');
    const nats = await NatsServer.start({ jetstream: true });
    res.deferLast(() => nats.stop());
    const dir = await res.tempDir('gravitas-bench-reach-');
    const keys = clusterKeys();
    const node = await startNode(res, dir, nats.url, keys, nWake);
    log(`node pid ${node.pid}: tcp ${node.tcp}, web ${node.web}`);

    const push = await pushLatency(res, node, keys, nPush, gap);
    const relay = await relayLatency(res, node, keys, nWake);
    const streams: StreamResult[] = [];
    for (const kind of ['tcp', 'ws', 'http'] as const) {
      log(`transports: ${kind}, window ${window}, ${ms} ms`);
      streams.push(await stream(node, keys, kind, ms, window));
    }
    const tcp = streams[0]!.perSec;

    const rows: Row[] = [
      {
        metric: 'push.count',
        value: push.received,
        unit: 'pushes',
        note: `${push.sent} messages ${gap} ms apart, window ${COALESCE_MS} ms; send results ${fmtErrors(push.statuses)}${push.decryptErrors.length ? `; bad pushes ${push.decryptErrors.length}` : ''}`,
      },
      { metric: 'push.stamp_to_push.p50', value: push.fromStamp.p50, unit: 'ms', note: 'payload ts (stamped by the cell on accepting the message, before the store) → push in at the endpoint; wall clock, ms resolution; incl. store + window' },
      { metric: 'push.stamp_to_push.p99', value: push.fromStamp.p99, unit: 'ms', note: pass(push.fromStamp.p99 <= TARGET.pushP99Ms, `p99 ≤ ${TARGET.pushP99Ms} ms`) },
      { metric: 'push.send_to_push.p50', value: push.fromSend.p50, unit: 'ms', note: 'sender send() called → push in: an upper bound on stored → push' },
      { metric: 'push.send_to_push.p99', value: push.fromSend.p99, unit: 'ms' },
      { metric: 'push.stored_to_push.p50', value: push.fromStored.p50, unit: 'ms', note: `send() resolved 'stored' → push in; the push beat the ack ${push.negativeFromStored}× (clamped to 0)` },
      { metric: 'push.stored_to_push.p99', value: push.fromStored.p99, unit: 'ms' },
      { metric: 'relay.count', value: relay.woken, unit: 'wakes', note: `${relay.attempts} attempts, ${relay.failed} failed` },
      { metric: 'relay.request_to_connected.p50', value: relay.requestToConnected.p50, unit: 'ms', note: "relayer's relayRequest event → target's connected event (same process)" },
      { metric: 'relay.request_to_connected.p99', value: relay.requestToConnected.p99, unit: 'ms', note: pass(relay.requestToConnected.p99 <= TARGET.relayP99Ms, `p99 ≤ ${TARGET.relayP99Ms} ms`) },
      { metric: 'relay.send_to_connected.p50', value: relay.sendToConnected.p50, unit: 'ms', note: "sender's send() called → target connected" },
      { metric: 'relay.send_to_connected.p99', value: relay.sendToConnected.p99, unit: 'ms' },
      ...streams.map((s): Row => {
        const ratio = s.perSec / tcp;
        const target = s.transport === 'ws' ? TARGET.wsRatio : s.transport === 'http' ? TARGET.httpRatio : undefined;
        const notes = [
          `1 pair on one cell, window ${window}, rtt p50 ${s.rtt.p50.toFixed(2)} ms, p99 ${s.rtt.p99.toFixed(2)} ms; transports ${s.actual.join('/')}`,
          ...(target === undefined ? [] : [pass(ratio >= target, `≥ ${target * 100}% of tcp`)]),
          ...(Object.keys(s.errors).length ? [`errors ${fmtErrors(s.errors)}`] : []),
        ];
        return { metric: `transport.${s.transport}.delivered`, value: s.perSec, unit: 'msg/s', ...(s.transport !== 'tcp' && { ceiling: 'transport.tcp.delivered', ratio }), note: notes.join('; ') };
      }),
    ];
    const extra = { push, relay, streams, targets: TARGET, node: { pid: node.pid, tcp: node.tcp, web: node.web }, nodeLog: node.tail() };
    return makeResult(name, startedAt, params, rows, extra);
  } finally {
    log('stopping child processes');
    await res.close();
  }
}
