/*
 * Hostile and broken clients against a real node (in-process startNode, real
 * nats-server), speaking the framing by hand over node:net. Every case checks the
 * error code the server answers with, whether it closes the connection, and that
 * the node is still healthy afterwards.
 */
import t, { type Test } from 'tap';
import { join } from 'node:path';
import {
  ClientHandshake, encodeFrame, ErrorCode, fromBase64Url, generateKeyPair, pack, random, sealTicket, TICKET_ID_BYTES, type ClientHandshakeOptions, type ErrorMsg,
} from '@gravitas/protocol';
import { validateConfig, startNode, type RunningNode } from '@gravitas/server';
import { GravitasClient, RemoteError } from '@gravitas/client';
import { NatsServer, tempDir } from '@gravitas/testkit';
import { clusterKeys, connectClient, exchange, metricsText, metricValue, nodeConfig, readyz } from '../fixtures/cluster.js';
import { RawConn, rawHandshake } from '../fixtures/raw.js';

const nats = await NatsServer.start();
t.teardown(() => nats.stop());
const dir = await tempDir('gravitas-proto-');
t.teardown(() => dir[Symbol.asyncDispose]());
const keys = clusterKeys();
const nodeLog: string[] = [];
const HANDSHAKE_TIMEOUT_MS = 1000;
const node = await startNode(
  validateConfig(nodeConfig({ natsUrl: nats.url, nodeId: 'proto', dataDir: join(dir.path, 'proto'), keys, extra: { limits: { handshakeTimeoutMs: HANDSHAKE_TIMEOUT_MS } } })),
  (m) => void nodeLog.push(m),
);
t.teardown(() => node.stop());
const [cell0, cell1] = node.clientAddresses as [string, string];
const pk = keys.serverPublicKey;

let seq = 0;
/** Options of a full handshake for a fresh user with open registration. */
function fresh(over: Partial<ClientHandshakeOptions> = {}): ClientHandshakeOptions {
  return { serverPublicKey: pk, identity: generateKeyPair(), user: `u${++seq}`, device: 'raw', registration: '', ...over };
}

/** After every case: the node is still ready and a fresh pair of SDK clients can chat across its cells. */
async function healthy(t: Test, n: RunningNode = node): Promise<void> {
  t.equal(await readyz(n.adminUrl), 200, 'node still ready');
  const [c0, c1] = n.clientAddresses as [string, string];
  const x = await connectClient(t, { user: `ok${++seq}`, servers: [c0, c1], serverPublicKey: pk });
  const y = await connectClient(t, { user: `ok${++seq}`, servers: [c1, c0], serverPublicKey: pk });
  const { status, msg } = await exchange(x, y, 'still fine');
  t.equal(status, 'delivered', 'a fresh SDK client can still connect and chat');
  t.equal(msg.text, 'still fine');
  await Promise.all([x.client.close(), y.client.close()]);
}

async function open(t: Test, address = cell0): Promise<RawConn> {
  const conn = await RawConn.open(address);
  t.teardown(() => conn.destroy());
  return conn;
}

/** Reads a plaintext error frame, checks its code, and whether the server then closes. */
async function expectPlainError(t: Test, conn: RawConn, code: ErrorCode, closes = true): Promise<ErrorMsg> {
  const m = await conn.nextPlain();
  t.match(m, { t: 'error', code }, `plaintext error ${code}`);
  if (closes) t.ok(await conn.serverClosed(), 'then the server closes the connection');
  return m as ErrorMsg;
}

async function expectSealedError(t: Test, conn: RawConn, channel: Parameters<RawConn['nextSealed']>[0], code: ErrorCode, closes = true): Promise<void> {
  const m = await conn.nextSealed(channel);
  t.match(m, { t: 'error', code }, `sealed error ${code}`);
  if (closes) t.ok(await conn.serverClosed(), 'then the server closes the connection');
}

async function session(t: Test, address = cell0, opts = fresh()) {
  const s = await rawHandshake(address, opts);
  t.teardown(() => s.conn.destroy());
  // A ping answered: the session is open (and registered).
  s.conn.sendSealed(s.channel, { t: 'ping', n: 1 });
  t.same(await s.conn.nextSealed(s.channel), { t: 'pong', n: 1 }, 'raw session is open');
  return s;
}

t.test('truncated frame, then half-close: FRAME_TRUNCATED', async (t) => {
  const frame = encodeFrame(pack(new ClientHandshake(fresh()).hello()));
  const conn = await open(t);
  conn.write(frame.subarray(0, frame.length - 7));
  conn.end();
  await expectPlainError(t, conn, ErrorCode.FRAME_TRUNCATED);
  // Even inside the 4-byte length prefix.
  const conn2 = await open(t);
  conn2.write(frame.subarray(0, 2));
  conn2.end();
  await expectPlainError(t, conn2, ErrorCode.FRAME_TRUNCATED);
  await healthy(t);
});

t.test('oversized length prefix: FRAME_TOO_LARGE, then close', async (t) => {
  const conn = await open(t);
  const header = Buffer.alloc(4);
  header.writeUInt32BE(node.config.limits.maxFrameBytes + 1);
  conn.write(header); // no body at all: the prefix alone is refused
  await expectPlainError(t, conn, ErrorCode.FRAME_TOO_LARGE);
  const conn2 = await open(t, cell1);
  conn2.write(Buffer.from([0xff, 0xff, 0xff, 0xff, 1, 2, 3]));
  await expectPlainError(t, conn2, ErrorCode.FRAME_TOO_LARGE);
  await healthy(t);
});

t.test('garbage bytes', async (t) => {
  // Someone speaks HTTP to the chat port: "GET " read as a length is ~1.2 GB.
  const conn = await open(t);
  conn.write(Buffer.from('GET / HTTP/1.1\r\nHost: gravitas\r\n\r\n'));
  await expectPlainError(t, conn, ErrorCode.FRAME_TOO_LARGE);
  // Well-framed garbage: 0xc1 is never used by msgpack.
  const conn2 = await open(t);
  conn2.write(encodeFrame(Buffer.alloc(40, 0xc1)));
  await expectPlainError(t, conn2, ErrorCode.DECODE_FAILED);
  // Valid msgpack that is not a message (not a map).
  const conn3 = await open(t);
  conn3.write(encodeFrame(pack([1, 2, 3])));
  await expectPlainError(t, conn3, ErrorCode.BAD_MESSAGE);
  await healthy(t);
});

t.test('malformed msgpack: DECODE_FAILED, then close', async (t) => {
  const body = pack(new ClientHandshake(fresh()).hello());
  const conn = await open(t);
  conn.write(encodeFrame(body.subarray(0, body.length - 10))); // a correct frame around a cut-off map
  await expectPlainError(t, conn, ErrorCode.DECODE_FAILED);
  const conn2 = await open(t);
  conn2.write(encodeFrame(Buffer.concat([body, pack(1)]))); // two values in one frame
  await expectPlainError(t, conn2, ErrorCode.DECODE_FAILED);
  await healthy(t);
});

t.test('unknown message type', async (t) => {
  t.test('during the handshake: UNKNOWN_TYPE, then close', async (t) => {
    const conn = await open(t);
    conn.sendPlain({ ...new ClientHandshake(fresh()).hello(), t: 'hullo' });
    await expectPlainError(t, conn, ErrorCode.UNKNOWN_TYPE);
  });
  t.test('in an open session: UNKNOWN_TYPE, the session stays', async (t) => {
    const s = await session(t);
    s.conn.sendSealed(s.channel, { t: 'zap', id: 'x' });
    await expectSealedError(t, s.conn, s.channel, ErrorCode.UNKNOWN_TYPE, false);
    s.conn.sendSealed(s.channel, { t: 'send', id: 'm1' }); // an authentic but invalid message
    await expectSealedError(t, s.conn, s.channel, ErrorCode.BAD_MESSAGE, false);
    s.conn.sendSealed(s.channel, { t: 'ping', n: 2 });
    t.same(await s.conn.nextSealed(s.channel), { t: 'pong', n: 2 }, 'still answers');
  });
  await healthy(t);
});

t.test('handshake replay: the same hello twice gets HANDSHAKE_REPLAY', async (t) => {
  const hello = new ClientHandshake(fresh()).hello();
  const first = await open(t);
  first.sendPlain(hello);
  t.match(await first.nextPlain(), { t: 'welcome' }, 'the first one is answered');
  const second = await open(t);
  second.sendPlain(hello); // byte for byte the same flight, on another connection to the same cell
  await expectPlainError(t, second, ErrorCode.HANDSHAKE_REPLAY);
  await healthy(t);
});

t.test('tampered ciphertext after the handshake: DECRYPT_FAILED (sealed), then close', async (t) => {
  const s = await session(t);
  const frame = encodeFrame(s.channel.seal(pack({ t: 'ping', n: 2 })));
  frame[frame.length - 1]! ^= 0x01;
  s.conn.write(frame);
  await expectSealedError(t, s.conn, s.channel, ErrorCode.DECRYPT_FAILED);
  await healthy(t);
});

t.test('wrong server key: HANDSHAKE_FAILED', async (t) => {
  const conn = await open(t);
  conn.sendPlain(new ClientHandshake(fresh({ serverPublicKey: generateKeyPair().publicKey })).hello());
  await expectPlainError(t, conn, ErrorCode.HANDSHAKE_FAILED);
  // Tampered payload of an otherwise valid hello: the same code.
  const hello = new ClientHandshake(fresh()).hello();
  const p = Buffer.from(hello.p);
  p[0]! ^= 0x80;
  const conn2 = await open(t);
  conn2.sendPlain({ ...hello, p });
  await expectPlainError(t, conn2, ErrorCode.HANDSHAKE_FAILED);
  await healthy(t);
});

t.test('reused nonce: the same sealed frame twice gets NONCE_REUSE', async (t) => {
  const s = await session(t);
  const frame = s.conn.sendSealed(s.channel, { t: 'ping', n: 7 });
  t.same(await s.conn.nextSealed(s.channel), { t: 'pong', n: 7 }, 'the first copy is answered');
  s.conn.write(frame);
  await expectSealedError(t, s.conn, s.channel, ErrorCode.NONCE_REUSE);
  await healthy(t);
});

t.test('a skipped counter: NONCE_GAP', async (t) => {
  const s = await session(t);
  s.channel.seal(pack({ t: 'ping', n: 2 })); // sealed, never sent
  s.conn.sendSealed(s.channel, { t: 'ping', n: 3 });
  await expectSealedError(t, s.conn, s.channel, ErrorCode.NONCE_GAP);
  await healthy(t);
});

t.test('more handshake failures', async (t) => {
  t.test('stale hello timestamp: HANDSHAKE_STALE', async (t) => {
    const conn = await open(t);
    conn.sendPlain(new ClientHandshake(fresh({ now: () => Date.now() - 10 * 60_000 })).hello());
    await expectPlainError(t, conn, ErrorCode.HANDSHAKE_STALE);
  });
  t.test('another protocol version: UNSUPPORTED_VERSION', async (t) => {
    const conn = await open(t);
    conn.sendPlain({ ...new ClientHandshake(fresh({ offer: false })).hello(), v: 2 }); // as a client from before negotiation would
    await expectPlainError(t, conn, ErrorCode.UNSUPPORTED_VERSION);
    const offered = await open(t);
    offered.sendPlain({ ...new ClientHandshake(fresh()).hello(), v: 2, vs: [2] }); // an offer with no version in common
    await expectPlainError(t, offered, ErrorCode.UNSUPPORTED_VERSION);
  });
  t.test('a frame before the welcome: UNEXPECTED_MESSAGE', async (t) => {
    const conn = await open(t);
    const hello = encodeFrame(pack(new ClientHandshake(fresh()).hello()));
    conn.write(Buffer.concat([hello, hello])); // the second arrives while the first is being worked on
    await expectPlainError(t, conn, ErrorCode.UNEXPECTED_MESSAGE);
  });
  t.test('wrong key confirmation: HANDSHAKE_FAILED (sealed)', async (t) => {
    const hs = new ClientHandshake(fresh());
    const conn = await open(t);
    conn.sendPlain(hs.hello());
    const w = await conn.nextPlain();
    if (w.t !== 'welcome') return t.fail(`expected a welcome, got ${w.t}`);
    const r = hs.complete(w);
    conn.sendSealed(r.channel, { t: 'finish', h: random(32) });
    await expectSealedError(t, conn, r.channel, ErrorCode.HANDSHAKE_FAILED);
  });
  t.test('a silent connection: HANDSHAKE_TIMEOUT', async (t) => {
    const conn = await open(t);
    const started = Date.now();
    await expectPlainError(t, conn, ErrorCode.HANDSHAKE_TIMEOUT);
    t.ok(Date.now() - started >= HANDSHAKE_TIMEOUT_MS - 50, `after limits.handshakeTimeoutMs (${Date.now() - started} ms)`);
  });
  await healthy(t);
});

t.test('replayed ticket: TICKET_REPLAYED, on either cell', async (t) => {
  const opts = fresh();
  const s = await session(t, cell0, opts);
  const ticket = s.result.resumption!;
  t.ok(ticket, 'the welcome carried a ticket');
  const resume = { ...opts, resume: ticket };
  // First use, on the other cell: accepted.
  const r = await rawHandshake(cell1, resume);
  t.teardown(() => r.conn.destroy());
  t.equal(r.result.welcome.resumed, true, 'first use of the ticket resumes');
  t.equal(r.result.welcome.cell, node.supervisor.statuses()[1]!.cellId, 'on cell 1');
  // Second and third use, on both cells: refused (single use is cluster-wide).
  for (const address of [cell0, cell1]) {
    const conn = await open(t, address);
    conn.sendPlain(new ClientHandshake(resume).hello());
    await expectPlainError(t, conn, ErrorCode.TICKET_REPLAYED);
  }
  // The SDK, handed the spent ticket, falls back to a full handshake by itself.
  const sdk = new GravitasClient({ servers: [cell0], serverPublicKey: pk, identity: opts.identity, user: opts.user, device: opts.device, registration: '', resumption: ticket, reconnect: false });
  t.teardown(() => sdk.close());
  const w = await sdk.connect();
  t.equal(w.resumed, false, 'SDK: spent ticket → full handshake on the same server');
  await healthy(t);
});

t.test('expired ticket: TICKET_EXPIRED', async (t) => {
  const opts = fresh();
  await session(t, cell0, opts); // registers the device
  const now = Date.now();
  const ring = { current: { id: keys.ticketKeys[0]!.id, key: fromBase64Url(keys.ticketKeys[0]!.key, 32) } };
  const sealed = sealTicket(
    { id: random(TICKET_ID_BYTES), user: opts.user, device: opts.device, clientStatic: opts.identity.publicKey, rid: 1, secret: random(32), issuedAt: now - 120_000, expiresAt: now - 60_000 },
    ring,
  );
  const resume = { ticket: sealed, secret: random(32), expiresAt: now - 60_000 };
  for (const address of [cell0, cell1]) {
    const conn = await open(t, address);
    conn.sendPlain(new ClientHandshake({ ...opts, resume }).hello());
    await expectPlainError(t, conn, ErrorCode.TICKET_EXPIRED);
  }
  // The SDK, handed a ticket the server finds expired (its own clock says otherwise), falls back.
  const sdk = new GravitasClient({ servers: [cell1], serverPublicKey: pk, identity: opts.identity, user: opts.user, device: opts.device, registration: '', resumption: { ...resume, expiresAt: now + 3600_000 }, reconnect: false });
  t.teardown(() => sdk.close());
  const w = await sdk.connect();
  t.equal(w.resumed, false, 'SDK: expired ticket → full handshake on the same server');
  await healthy(t);
});

t.test('all-zero public key: BAD_PUBLIC_KEY', async (t) => {
  const conn = await open(t);
  conn.sendPlain({ ...new ClientHandshake(fresh()).hello(), e: new Uint8Array(32) });
  await expectPlainError(t, conn, ErrorCode.BAD_PUBLIC_KEY);
  // An all-zero static key inside a hello that is otherwise valid.
  const zeroStatic = { publicKey: new Uint8Array(32), secretKey: generateKeyPair().secretKey };
  const conn2 = await open(t, cell1);
  conn2.sendPlain(new ClientHandshake(fresh({ identity: zeroStatic })).hello());
  await expectPlainError(t, conn2, ErrorCode.BAD_PUBLIC_KEY);
  await healthy(t);
});

t.test('unknown device without registration: UNKNOWN_DEVICE', async (t) => {
  const { registration: _none, ...opts } = fresh();
  const conn = await open(t);
  conn.sendPlain(new ClientHandshake(opts).hello());
  await expectPlainError(t, conn, ErrorCode.UNKNOWN_DEVICE);
  // The SDK does not retry this one.
  const sdk = new GravitasClient({ servers: [cell0], serverPublicKey: pk, identity: opts.identity, user: opts.user, device: opts.device });
  t.teardown(() => sdk.close());
  const err = await sdk.connect().then(() => undefined, (e: unknown) => e);
  t.type(err, RemoteError);
  t.equal((err as RemoteError).code, ErrorCode.UNKNOWN_DEVICE, 'SDK: connect rejects with UNKNOWN_DEVICE');
  await healthy(t);
});

t.test('a device id re-registered with another key: DEVICE_KEY_MISMATCH', async (t) => {
  const opts = fresh();
  await session(t, cell0, opts); // binds user/device to the first key
  for (const address of [cell0, cell1]) {
    const conn = await open(t, address);
    conn.sendPlain(new ClientHandshake({ ...opts, identity: generateKeyPair() }).hello());
    await expectPlainError(t, conn, ErrorCode.DEVICE_KEY_MISMATCH);
  }
  // The rightful key still works.
  await session(t, cell1, { ...opts, identity: opts.identity });
  await healthy(t);
});

t.test('errors are counted in /metrics', async (t) => {
  const text = await metricsText(node.adminUrl);
  for (const code of [ErrorCode.FRAME_TRUNCATED, ErrorCode.FRAME_TOO_LARGE, ErrorCode.DECODE_FAILED, ErrorCode.UNKNOWN_TYPE, ErrorCode.HANDSHAKE_REPLAY, ErrorCode.DECRYPT_FAILED, ErrorCode.HANDSHAKE_FAILED, ErrorCode.NONCE_REUSE, ErrorCode.TICKET_REPLAYED, ErrorCode.TICKET_EXPIRED, ErrorCode.BAD_PUBLIC_KEY, ErrorCode.UNKNOWN_DEVICE, ErrorCode.DEVICE_KEY_MISMATCH, ErrorCode.NONCE_GAP, ErrorCode.HANDSHAKE_STALE, ErrorCode.UNSUPPORTED_VERSION, ErrorCode.UNEXPECTED_MESSAGE, ErrorCode.HANDSHAKE_TIMEOUT]) {
    t.ok((metricValue(text, 'gravitas_protocol_errors_total', { code }) ?? 0) >= 1, `gravitas_protocol_errors_total{code="${code}"}`);
  }
  t.ok((metricValue(text, 'gravitas_handshakes_total', { kind: 'resume', result: ErrorCode.TICKET_REPLAYED }) ?? 0) >= 2, 'failed resumptions counted by result');
});

t.test('cookie challenge (limits.cookieThresholdPerSec: 0)', async (t) => {
  const cookieNode = await startNode(
    validateConfig(nodeConfig({ natsUrl: nats.url, nodeId: 'cookie', dataDir: join(dir.path, 'cookie'), keys, extra: { limits: { cookieThresholdPerSec: 0 } } })),
    (m) => void nodeLog.push(m),
  );
  t.teardown(() => cookieNode.stop());
  const [c0] = cookieNode.clientAddresses as [string];
  const opts = fresh();
  const hs = new ClientHandshake(opts);
  const conn = await open(t, c0);
  conn.sendPlain(hs.hello());
  const cookie = await conn.nextPlain();
  t.equal(cookie.t, 'cookie', 'the first hello is answered with a cookie');
  if (cookie.t !== 'cookie') return;
  t.equal(cookie.c.length, 16);
  // A wrong cookie is not accepted: another challenge.
  conn.sendPlain(hs.hello(random(16)));
  t.equal((await conn.nextPlain()).t, 'cookie', 'a wrong cookie gets a new challenge, not a welcome');
  // The right one, on the same connection, completes the handshake.
  conn.sendPlain(hs.hello(cookie.c));
  const welcome = await conn.nextPlain();
  t.equal(welcome.t, 'welcome', 'the hello with the cookie is welcomed');
  if (welcome.t !== 'welcome') return;
  const r = hs.complete(welcome);
  conn.sendSealed(r.channel, r.finish);
  conn.sendSealed(r.channel, { t: 'ping', n: 1 });
  t.same(await conn.nextSealed(r.channel), { t: 'pong', n: 1 }, 'and the session works');
  // The SDK answers the challenge transparently.
  await healthy(t, cookieNode);
  t.ok((metricValue(await metricsText(cookieNode.adminUrl), 'gravitas_handshake_cookies_total') ?? 0) >= 4, 'cookies counted');
  await healthy(t);
});
