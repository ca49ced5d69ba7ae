import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createPrivateKey, createPublicKey, diffieHellman, generateKeyPairSync, verify as cryptoVerify, type KeyObject } from 'node:crypto';
import { createServer, type AddressInfo } from 'node:net';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { DiscardPolicy, jetstream, jetstreamManager, RetentionPolicy, StorageType } from '@nats-io/jetstream';
import { pack, unpack } from 'msgpackr';
import nacl from 'tweetnacl';
import { ed25519Sign } from '@gravitas/protocol';
import { aeadRows, aeadTable, measureAeads, type AeadResult } from './aead.js';
import { LatencyHistogram, type LatencySummary } from './histogram.js';
import { makeResult, UsageError, type BenchOptions, type BenchResult, type Row } from './report.js';

export const name = 'ceilings';
export const description = 'raw ceilings: NATS pub/sub + request/reply, JetStream acked publishes, secretbox, X25519 and Ed25519 (tweetnacl vs native), msgpackr, transport AEADs (native vs JS)';
export const flags = { only: '"aead": only the transport-cipher table (no nats-server, no DH or signatures)' } as const;

/** Metric names of the ceiling rows, for other benchmarks' `ceiling` column. */
export const CEILING = {
  natsPubSub: 'nats.pubsub',
  natsReqRep: 'nats.reqrep',
  jsPublish: 'js.publish',
  secretbox: 'secretbox.seal_open',
  x25519Nacl: 'x25519.tweetnacl',
  x25519Native: 'x25519.native',
  x25519NativeFromRaw: 'x25519.native_from_raw',
  x25519NativeFromRawJwk: 'x25519.native_from_raw_jwk',
  x25519Keygen: 'x25519.native_keygen',
  ed25519SignNacl: 'ed25519.sign_tweetnacl',
  ed25519SignNative: 'ed25519.sign_native',
  ed25519VerifyNacl: 'ed25519.verify_tweetnacl',
  ed25519VerifyNative: 'ed25519.verify_native',
  msgpack: 'msgpackr.pack_unpack',
} as const;

const PAYLOAD_BYTES = 100;
const REQ_WINDOW = 32;

// ---------- helpers ----------

const log = (msg: string): void => void process.stderr.write(`  ${msg}\n`);
const yieldLoop = (): Promise<void> => new Promise((r) => setImmediate(r));
const warmupMs = (durationMs: number): number => Math.min(300, durationMs / 5);

/**
 * Runs `op` in batches until `durationMs` elapses and returns ops/s. The clock is read once per
 * batch so timing overhead stays negligible; a short warmup lets the JIT settle first.
 */
export function opsPerSec(durationMs: number, op: () => void, batch = 100): number {
  const warmEnd = performance.now() + warmupMs(durationMs);
  while (performance.now() < warmEnd) for (let i = 0; i < batch; i++) op();
  let n = 0;
  const t0 = performance.now();
  const end = t0 + durationMs;
  let t = t0;
  do {
    for (let i = 0; i < batch; i++) op();
    n += batch;
    t = performance.now();
  } while (t < end);
  return (n * 1000) / (t - t0);
}

export interface NatsServerHandle {
  url: string;
  port: number;
  stop(): Promise<void>;
}

/** Asks the OS for a free port; never 4222 so we can't collide with a developer's own server. */
async function freePort(): Promise<number> {
  for (;;) {
    const port = await new Promise<number>((resolve, reject) => {
      const s = createServer();
      s.once('error', reject);
      s.listen(0, '127.0.0.1', () => {
        const { port } = s.address() as AddressInfo;
        s.close(() => resolve(port));
      });
    });
    if (port !== 4222) return port;
  }
}

/**
 * Spawns a throwaway nats-server on 127.0.0.1 and resolves once it logs "Server is ready". With
 * `jetstream`, JetStream is on with a fresh store dir (removed at stop).
 */
export async function startNatsServer(bin = process.env['NATS_SERVER'] ?? 'nats-server', opts: { jetstream?: boolean } = {}): Promise<NatsServerHandle> {
  const port = await freePort();
  const storeDir = opts.jetstream ? mkdtempSync(join(tmpdir(), 'gravitas-ceil-js-')) : undefined;
  const removeStore = (): void => {
    if (storeDir !== undefined) rmSync(storeDir, { recursive: true, force: true });
  };
  const args = ['-a', '127.0.0.1', '-p', String(port), ...(storeDir !== undefined ? ['-js', '-sd', storeDir] : [])];
  const proc = spawn(bin, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  // Safety net: don't leak the server if we die before stop() runs.
  const killOnExit = (): void => void proc.kill('SIGKILL');
  process.once('exit', killOnExit);
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  let tail = '';
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`nats-server not ready after 5s:\n${tail}`)), 5000);
      proc.stderr.on('data', (d: Buffer) => {
        tail = (tail + d.toString()).slice(-4000); // keep draining so the pipe never blocks
        if (tail.includes('Server is ready')) clearTimeout(timer), resolve();
      });
      proc.once('error', (e) => (clearTimeout(timer), reject(e)));
      proc.once('exit', (code) => (clearTimeout(timer), reject(new Error(`nats-server exited (${code}):\n${tail}`))));
    });
  } catch (e) {
    proc.kill('SIGKILL');
    process.off('exit', killOnExit);
    // Not awaited: a binary that failed to spawn never emits 'exit' (its store dir is empty then).
    void exited.then(removeStore);
    throw e;
  }
  return {
    port,
    url: `nats://127.0.0.1:${port}`,
    async stop() {
      process.off('exit', killOnExit);
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill('SIGTERM');
        await exited;
      }
      removeStore();
    },
  };
}

/** Uses the caller's server if given, otherwise a private one (with JetStream if asked) for the duration of `fn`. */
async function withNats<T>(natsUrl: string | undefined, fn: (url: string) => Promise<T>, js = false): Promise<T> {
  if (natsUrl !== undefined) return fn(natsUrl);
  const srv = await startNatsServer(undefined, { jetstream: js });
  try {
    return await fn(srv.url);
  } finally {
    await srv.stop();
  }
}

async function withConns<T>(url: string, n: number, fn: (ncs: NatsConnection[]) => Promise<T>): Promise<T> {
  const ncs = await Promise.all(Array.from({ length: n }, () => connect({ servers: url })));
  try {
    return await fn(ncs);
  } finally {
    await Promise.all(ncs.map((nc) => nc.close()));
  }
}

// ---------- NATS ----------

/**
 * Core NATS pub/sub msgs/s counted at the subscriber (100 B payloads, separate pub and sub
 * connections). Starts its own nats-server unless `natsUrl` is given.
 */
export async function measureNatsPubSub(durationMs: number, natsUrl?: string): Promise<number> {
  const BATCH = 1000;
  const MAX_LAG = 50_000; // bounds server-side buffering so we measure sustained delivery
  return withNats(natsUrl, (url) =>
    withConns(url, 2, async ([pub, sub]) => {
      if (!pub || !sub) throw new Error('unreachable');
      const subject = 'bench.ceilings.pubsub';
      const payload = new Uint8Array(PAYLOAD_BYTES);
      let received = 0;
      let sent = 0;
      sub.subscribe(subject, { callback: () => void received++ });
      await sub.flush(); // SUB must reach the server before the first publish
      const pump = async (ms: number): Promise<void> => {
        const end = performance.now() + ms;
        while (performance.now() < end) {
          for (let i = 0; i < BATCH; i++) pub.publish(subject, payload);
          sent += BATCH;
          await pub.flush(); // PING/PONG: keeps the client's outbound buffer bounded
          while (sent - received > MAX_LAG) {
            if (sub.isClosed()) throw new Error('subscriber connection closed');
            await yieldLoop();
          }
        }
      };
      await pump(warmupMs(durationMs));
      const r0 = received;
      const t0 = performance.now();
      await pump(durationMs);
      return ((received - r0) * 1000) / (performance.now() - t0);
    }),
  );
}

export interface ReqRepResult {
  perSec: number;
  latency: LatencySummary;
}

/** Core NATS request/reply round trips/s with REQ_WINDOW requests in flight, plus latency. */
export async function measureNatsRequestReply(durationMs: number, natsUrl?: string, window = REQ_WINDOW): Promise<ReqRepResult> {
  return withNats(natsUrl, (url) =>
    withConns(url, 2, async ([requester, responder]) => {
      if (!requester || !responder) throw new Error('unreachable');
      const subject = 'bench.ceilings.reqrep';
      const payload = new Uint8Array(PAYLOAD_BYTES);
      responder.subscribe(subject, { callback: (_err, m) => void m.respond(m.data) });
      await responder.flush();
      const hist = new LatencyHistogram();
      // `window` sequential loops = a fixed number of requests in flight.
      const phase = async (ms: number): Promise<void> => {
        const end = performance.now() + ms;
        await Promise.all(
          Array.from({ length: window }, async () => {
            while (performance.now() < end) {
              const t = performance.now();
              await requester.request(subject, payload, { timeout: 5000 });
              hist.recordSince(t);
            }
          }),
        );
      };
      await phase(warmupMs(durationMs));
      hist.reset();
      const t0 = performance.now();
      await phase(durationMs);
      return { perSec: (hist.count * 1000) / (performance.now() - t0), latency: hist.summary() };
    }),
  );
}

// ---------- JetStream ----------

export interface JsPublishOptions {
  /** Publishes in flight on the one connection (pipelining); default JS_WINDOW. */
  window?: number;
  /** Payload size; default PAYLOAD_BYTES. */
  payloadBytes?: number;
  /**
   * `plain` (default): one subject. `mailbox`: a subject per message with `max_msgs_per_subject: 1`
   * and discard-new-per-subject — the layout of the mailbox streams (packages/server/src/messaging/mailbox.ts).
   */
  layout?: 'plain' | 'mailbox';
  /** Set `Nats-Msg-Id` on every publish (server-side de-duplication, as the mailbox does); default true. */
  msgId?: boolean;
}

export interface JsPublishResult {
  /** Acknowledged publishes per second. */
  perSec: number;
  /** publish() → ack. */
  latency: LatencySummary;
  window: number;
  payloadBytes: number;
  layout: 'plain' | 'mailbox';
  msgId: boolean;
}

const JS_WINDOW = 256;

/**
 * JetStream's ceiling for one Node client: acknowledged publishes/s on one connection, one
 * `js.publish` (one request, one ack) per message, `window` of them in flight. File storage,
 * 1 replica, a fresh stream (deleted afterwards, so a shared server is left as it was).
 * Starts its own JetStream-enabled nats-server unless `natsUrl` is given.
 */
export async function measureJetStreamPublish(durationMs: number, natsUrl?: string, opts: JsPublishOptions = {}): Promise<JsPublishResult> {
  const window = opts.window ?? JS_WINDOW;
  const payloadBytes = opts.payloadBytes ?? PAYLOAD_BYTES;
  const layout = opts.layout ?? 'plain';
  const msgId = opts.msgId ?? true;
  return withNats(
    natsUrl,
    (url) =>
      withConns(url, 1, async ([nc]) => {
        if (!nc) throw new Error('unreachable');
        const tag = `${Date.now().toString(36)}${Math.floor(Math.random() * 1e9).toString(36)}`;
        const stream = `BENCH_CEIL_${tag}`;
        const prefix = `bench.ceil.${tag}`;
        const jsm = await jetstreamManager(nc, { timeout: 10_000 });
        await jsm.streams.add({
          name: stream,
          subjects: [`${prefix}.>`],
          retention: RetentionPolicy.Limits,
          storage: StorageType.File,
          num_replicas: 1,
          duplicate_window: 120_000 * 1_000_000,
          ...(layout === 'mailbox' && { max_msgs_per_subject: 1, discard: DiscardPolicy.New, discard_new_per_subject: true }),
        });
        try {
          const js = jetstream(nc, { timeout: 10_000 });
          const payload = new Uint8Array(payloadBytes);
          const hist = new LatencyHistogram();
          let seq = 0;
          const phase = async (ms: number): Promise<void> => {
            const end = performance.now() + ms;
            await Promise.all(
              Array.from({ length: window }, async () => {
                while (performance.now() < end) {
                  const n = (++seq).toString(36);
                  const subject = layout === 'mailbox' ? `${prefix}.m.${n}` : `${prefix}.m`;
                  const t = performance.now();
                  await js.publish(subject, payload, msgId ? { msgID: n } : undefined);
                  hist.recordSince(t);
                }
              }),
            );
          };
          await phase(warmupMs(durationMs));
          hist.reset();
          const t0 = performance.now();
          await phase(durationMs);
          return { perSec: (hist.count * 1000) / (performance.now() - t0), latency: hist.summary(), window, payloadBytes, layout, msgId };
        } finally {
          await jsm.streams.delete(stream).catch(() => undefined);
        }
      }),
    true,
  );
}

// ---------- crypto ----------

/** secretbox seal + open of a 100 B message per second (tweetnacl). */
export function measureSecretbox(durationMs: number): number {
  const key = nacl.randomBytes(nacl.secretbox.keyLength);
  const nonce = nacl.randomBytes(nacl.secretbox.nonceLength);
  const msg = nacl.randomBytes(PAYLOAD_BYTES);
  return opsPerSec(durationMs, () => {
    const box = nacl.secretbox(msg, nonce, key);
    if (nacl.secretbox.open(box, nonce, key) === null) throw new Error('secretbox.open failed');
  });
}

const PKCS8_X25519 = Buffer.from('302e020100300506032b656e04220420', 'hex');
const SPKI_X25519 = Buffer.from('302a300506032b656e032100', 'hex');

/** Wraps a raw 32-byte X25519 private key in PKCS8 DER so node:crypto can import it. */
export function x25519PrivateKey(raw: Uint8Array): KeyObject {
  return createPrivateKey({ key: Buffer.concat([PKCS8_X25519, raw]), format: 'der', type: 'pkcs8' });
}

/** Wraps a raw 32-byte X25519 public key in SPKI DER so node:crypto can import it. */
export function x25519PublicKey(raw: Uint8Array): KeyObject {
  return createPublicKey({ key: Buffer.concat([SPKI_X25519, raw]), format: 'der', type: 'spki' });
}

/**
 * Same import via JWK. Node builds OKP keys from JWK with EVP_PKEY_new_raw_*_key, skipping the
 * OpenSSL 3 DER decoder lookup that dominates the DER path. Node requires `x` on private JWKs but
 * derives the public half from `d` (v20 ignores the value), so pass the known public key.
 */
export function x25519PrivateKeyJwk(raw: Uint8Array, rawPublic: Uint8Array): KeyObject {
  const b64 = (u: Uint8Array): string => Buffer.from(u).toString('base64url');
  return createPrivateKey({ key: { kty: 'OKP', crv: 'X25519', d: b64(raw), x: b64(rawPublic) }, format: 'jwk' });
}

export function x25519PublicKeyJwk(raw: Uint8Array): KeyObject {
  return createPublicKey({ key: { kty: 'OKP', crv: 'X25519', x: Buffer.from(raw).toString('base64url') }, format: 'jwk' });
}

export interface X25519Result {
  /** tweetnacl nacl.scalarMult ops/s */
  naclScalarMult: number;
  /** crypto.diffieHellman with pre-built KeyObjects */
  nativeDh: number;
  /** crypto.diffieHellman including KeyObject import of both raw keys (realistic server cost) */
  nativeDhFromRaw: number;
  /** same, importing both raw keys via JWK instead of DER */
  nativeDhFromRawJwk: number;
  /** crypto.generateKeyPairSync('x25519') */
  nativeKeygen: number;
}

export function measureX25519(durationMs: number): X25519Result {
  const a = nacl.box.keyPair();
  const b = nacl.box.keyPair();
  const privA = x25519PrivateKey(a.secretKey);
  const pubB = x25519PublicKey(b.publicKey);
  // Sanity: both implementations must derive the same shared secret from the same raw keys.
  const ref = nacl.scalarMult(a.secretKey, b.publicKey);
  const jwkShared = diffieHellman({ privateKey: x25519PrivateKeyJwk(a.secretKey, a.publicKey), publicKey: x25519PublicKeyJwk(b.publicKey) });
  if (!Buffer.from(ref).equals(diffieHellman({ privateKey: privA, publicKey: pubB })) || !Buffer.from(ref).equals(jwkShared)) {
    throw new Error('native X25519 disagrees with tweetnacl');
  }
  log('x25519.tweetnacl');
  const naclScalarMult = opsPerSec(durationMs, () => void nacl.scalarMult(a.secretKey, b.publicKey), 10);
  log('x25519.native');
  const nativeDh = opsPerSec(durationMs, () => void diffieHellman({ privateKey: privA, publicKey: pubB }));
  log('x25519.native_from_raw');
  const nativeDhFromRaw = opsPerSec(durationMs, () => {
    diffieHellman({ privateKey: x25519PrivateKey(a.secretKey), publicKey: x25519PublicKey(b.publicKey) });
  });
  log('x25519.native_from_raw_jwk');
  const nativeDhFromRawJwk = opsPerSec(durationMs, () => {
    diffieHellman({ privateKey: x25519PrivateKeyJwk(a.secretKey, a.publicKey), publicKey: x25519PublicKeyJwk(b.publicKey) });
  });
  // Keys are deliberately not exported as JWK here: on node v20.20 generateKeyPairSync keys +
  // export({format:'jwk'}) intermittently self-deadlock (GC runs KeyGenJob's destructor, which
  // takes the key mutex ExportJWKEdKey already holds).
  log('x25519.native_keygen');
  const nativeKeygen = opsPerSec(durationMs, () => void generateKeyPairSync('x25519'));
  return { naclScalarMult, nativeDh, nativeDhFromRaw, nativeDhFromRawJwk, nativeKeygen };
}

// ---------- Ed25519 (connect hints, wake tokens) ----------

export interface Ed25519Result {
  naclSign: number;
  /** The server's path: protocol's ed25519Sign (node:crypto, key imported once). */
  nativeSign: number;
  naclVerify: number;
  /** node:crypto verify with a KeyObject imported once (what the load driver checks hints with). */
  nativeVerify: number;
}

/** Signing and verifying a hint-sized message (120 bytes), tweetnacl against node:crypto. */
export function measureEd25519(durationMs: number): Ed25519Result {
  const kp = nacl.sign.keyPair();
  const msg = new Uint8Array(120).map((_, i) => i);
  const sig = nacl.sign.detached(msg, kp.secretKey);
  if (!Buffer.from(ed25519Sign(msg, kp.secretKey)).equals(Buffer.from(sig))) throw new Error('native Ed25519 disagrees with tweetnacl');
  const pub = createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: Buffer.from(kp.publicKey).toString('base64url') }, format: 'jwk' });
  if (!cryptoVerify(null, msg, pub, sig)) throw new Error('native Ed25519 does not verify tweetnacl\'s signature');
  log(CEILING.ed25519SignNacl);
  const naclSign = opsPerSec(durationMs, () => void nacl.sign.detached(msg, kp.secretKey), 1);
  log(CEILING.ed25519SignNative);
  const nativeSign = opsPerSec(durationMs, () => void ed25519Sign(msg, kp.secretKey));
  log(CEILING.ed25519VerifyNacl);
  const naclVerify = opsPerSec(durationMs, () => void nacl.sign.detached.verify(msg, sig, kp.publicKey), 1);
  log(CEILING.ed25519VerifyNative);
  const nativeVerify = opsPerSec(durationMs, () => void cryptoVerify(null, msg, pub, sig));
  return { naclSign, nativeSign, naclVerify, nativeVerify };
}

// ---------- msgpackr ----------

export const SAMPLE_CHAT_MSG = {
  t: 'msg',
  id: '01HZX3M5Q8R9T2V4W6Y8Z0A1B2',
  from: 'alice',
  to: 'bob',
  text: 'hello world',
  ts: Date.now(),
} as const;

/** msgpackr pack + unpack of a small chat message per second. */
export function measureMsgpack(durationMs: number): { perSec: number; encodedBytes: number } {
  const perSec = opsPerSec(durationMs, () => {
    if (unpack(pack(SAMPLE_CHAT_MSG)) === undefined) throw new Error('unpack failed');
  });
  return { perSec, encodedBytes: pack(SAMPLE_CHAT_MSG).length };
}

// ---------- all together ----------

export interface Ceilings {
  natsPubSub: number;
  natsReqRep: ReqRepResult;
  jsPublish: JsPublishResult;
  secretbox: number;
  x25519: X25519Result;
  ed25519: Ed25519Result;
  msgpack: { perSec: number; encodedBytes: number };
  aead: AeadResult[];
}

/** Measures every ceiling sequentially (each for `durationMs`); one nats-server is shared. */
export async function measureCeilings(durationMs: number, natsUrl?: string): Promise<Ceilings> {
  const nats = await withNats(natsUrl, async (url) => {
    log(CEILING.natsPubSub);
    const pubsub = await measureNatsPubSub(durationMs, url);
    log(CEILING.natsReqRep);
    const reqrep = await measureNatsRequestReply(durationMs, url);
    log(CEILING.jsPublish);
    return { pubsub, reqrep, jsPublish: await measureJetStreamPublish(durationMs, url) };
  }, true);
  log(CEILING.secretbox);
  const secretbox = measureSecretbox(durationMs);
  const x25519 = measureX25519(durationMs);
  const ed25519 = measureEd25519(durationMs);
  log(CEILING.msgpack);
  const msgpack = measureMsgpack(durationMs);
  const aead = measureAeads(aeadMs(durationMs), log);
  return { natsPubSub: nats.pubsub, natsReqRep: nats.reqrep, jsPublish: nats.jsPublish, secretbox, x25519, ed25519, msgpack, aead };
}

/** Rows for a JetStream publish ceiling: rate, then ack latency p50/p99. */
export function jsPublishRows(j: JsPublishResult, metric: string = CEILING.jsPublish): Row[] {
  return [
    {
      metric,
      value: j.perSec,
      unit: 'msg/s',
      note: `acked, 1 conn, ${j.window} in flight, ${j.payloadBytes} B, file storage, ${j.layout === 'mailbox' ? 'subject per msg (mailbox layout)' : 'one subject'}${j.msgId ? ', Nats-Msg-Id' : ''}`,
    },
    { metric: `${metric}.p50`, value: j.latency.p50, unit: 'ms', note: 'publish → ack' },
    { metric: `${metric}.p99`, value: j.latency.p99, unit: 'ms' },
  ];
}

export function ceilingRows(c: Ceilings): Row[] {
  const lat = c.natsReqRep.latency;
  return [
    { metric: CEILING.natsPubSub, value: c.natsPubSub, unit: 'msg/s', note: `${PAYLOAD_BYTES} B, 1 pub + 1 sub conn` },
    { metric: CEILING.natsReqRep, value: c.natsReqRep.perSec, unit: 'req/s', note: `${REQ_WINDOW} in flight` },
    { metric: `${CEILING.natsReqRep}.p50`, value: lat.p50, unit: 'ms' },
    { metric: `${CEILING.natsReqRep}.p99`, value: lat.p99, unit: 'ms' },
    ...jsPublishRows(c.jsPublish),
    { metric: CEILING.secretbox, value: c.secretbox, unit: 'op/s', note: `${PAYLOAD_BYTES} B` },
    { metric: CEILING.x25519Nacl, value: c.x25519.naclScalarMult, unit: 'op/s' },
    { metric: CEILING.x25519Native, value: c.x25519.nativeDh, unit: 'op/s', note: 'pre-built KeyObjects' },
    { metric: CEILING.x25519NativeFromRaw, value: c.x25519.nativeDhFromRaw, unit: 'op/s', note: 'incl. raw→KeyObject import via DER' },
    { metric: CEILING.x25519NativeFromRawJwk, value: c.x25519.nativeDhFromRawJwk, unit: 'op/s', note: 'incl. raw→KeyObject import via JWK' },
    { metric: CEILING.x25519Keygen, value: c.x25519.nativeKeygen, unit: 'op/s', note: 'generateKeyPairSync' },
    { metric: CEILING.ed25519SignNacl, value: c.ed25519.naclSign, unit: 'op/s', note: '120 B' },
    { metric: CEILING.ed25519SignNative, value: c.ed25519.nativeSign, unit: 'op/s', note: 'protocol ed25519Sign (node:crypto), same bytes' },
    { metric: CEILING.ed25519VerifyNacl, value: c.ed25519.naclVerify, unit: 'op/s' },
    { metric: CEILING.ed25519VerifyNative, value: c.ed25519.nativeVerify, unit: 'op/s', note: 'node:crypto, KeyObject imported once' },
    { metric: CEILING.msgpack, value: c.msgpack.perSec, unit: 'op/s', note: `${c.msgpack.encodedBytes} B encoded` },
    ...aeadRows(c.aead),
  ];
}

/** 21 AEAD cells (7 ciphers × 3 sizes): each gets a third of --duration, at most a second. */
const aeadMs = (durationMs: number): number => Math.min(1000, durationMs / 3);

export async function run(opts: BenchOptions): Promise<BenchResult> {
  const startedAt = new Date();
  const only = opts.flags['only'];
  if (only !== undefined && only !== 'aead') throw new UsageError(`--only takes "aead", got ${String(only)}`);
  if (only === 'aead') {
    const aead = measureAeads(aeadMs(opts.durationMs), log);
    process.stdout.write(`${aeadTable(aead)}\n`);
    return makeResult(name, startedAt, { durationMs: opts.durationMs, only }, aeadRows(aead), { aead });
  }
  const c = await measureCeilings(opts.durationMs);
  process.stdout.write(`${aeadTable(c.aead)}\n`);
  return makeResult(name, startedAt, { durationMs: opts.durationMs, payloadBytes: PAYLOAD_BYTES, reqWindow: REQ_WINDOW }, ceilingRows(c), c);
}
