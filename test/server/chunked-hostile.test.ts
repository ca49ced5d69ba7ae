/**
 * Hostile input on the web listener (docs/transports.md "Caps"): an endless
 * chunk extension, slowloris headers, an oversized head, an oversized chunk, a
 * garbage chunk size, too many chunks, a too large body, and an ambiguous body
 * framing are each cut with their coded error (HTTP status and JSON code), while
 * a chunked-HTTP session on the same cell keeps chatting throughout. Whoever
 * knows a stream id can POST to it: a request of junk — bad framing, frames that
 * fail authentication, a replay, a frame cut at the request's end — is refused
 * on its own, and the stream's session goes on as if it had never come.
 */
import t, { type Test } from 'tap';
import { join } from 'node:path';
import { ClientHandshake, decodeServerHandshake, decodeServerMessage, encodeFrame, ErrorCode, generateKeyPair, pack, random, unpack, type SecureChannel } from '@gravitas/protocol';
import { startNode, STREAM_HEADER, validateConfig } from '@gravitas/server';
import { NatsServer, tempDir } from '@gravitas/testkit';
import { clusterKeys, connectClient, exchange, nodeConfig, type TestClient } from '../fixtures/cluster.js';
import { codeOfBody, postUp, RawDown, RawHttp } from '../fixtures/web.js';

const nats = await NatsServer.start();
t.teardown(() => nats.stop());
const dir = await tempDir('gravitas-hostile-');
t.teardown(() => dir[Symbol.asyncDispose]());
const keys = clusterKeys();
const MAX_FRAME = 65_536;
const MAX_CHUNKS = 16_384; // the floor of web.maxChunksPerRequest
const MAX_BODY = 8 * 1024 * 1024; // the floor of web.maxBodyBytes
const HEADER_MS = 500;
const node = await startNode(
  validateConfig(
    nodeConfig({
      natsUrl: nats.url,
      nodeId: 'hostile',
      dataDir: join(dir.path, 'n'),
      keys,
      cells: 1,
      extra: {
        // Pings stand in for many frames here: their rate limit is not what this tests.
        limits: { maxFrameBytes: MAX_FRAME, controlRatePerSec: 1_000_000, controlBurst: 1_000_000 },
        web: { maxChunkBytes: MAX_FRAME + 4, maxChunksPerRequest: MAX_CHUNKS, maxBodyBytes: MAX_BODY, headerTimeoutMs: HEADER_MS, maxHeaderBytes: 2048 },
      },
    }),
  ),
  () => undefined,
);
t.teardown(() => node.stop());
const web = node.webAddresses[0]!;
const pk = keys.serverPublicKey;

// Two well-behaved sessions on the same (only) cell, one of them on chunked HTTP.
const teardowns: Array<() => unknown> = [];
t.teardown(() => Promise.all(teardowns.map((f) => f())));
const holder = { teardown: (f: () => unknown) => void teardowns.push(f) };
const good: TestClient = await connectClient(holder, { servers: [`http://${web}`], transports: ['http'], serverPublicKey: pk, user: 'good-http' });
const other: TestClient = await connectClient(holder, { servers: [node.clientAddresses[0]!], serverPublicKey: pk, user: 'good-tcp' });
let round = 0;
async function neighboursChat(t: Test): Promise<void> {
  const r = await exchange(good, other, `round ${++round}`);
  t.equal(r.status, 'delivered', 'the chunked-HTTP neighbour still chats');
  const back = await exchange(other, good, `back ${round}`);
  t.equal(back.status, 'delivered');
  t.equal(good.disconnects, 0, 'and was never disconnected');
}

/** Opens a downstream, then sends `head + body` as its upstream; returns the upstream's answer and the downstream. */
async function attack(body: string | Buffer, head = 'Transfer-Encoding: chunked\r\n'): Promise<{ status: number; code: string | undefined; down: RawDown }> {
  const down = await RawDown.open(web);
  const up = await RawHttp.open(web);
  up.write(`POST /gravitas/up HTTP/1.1\r\nHost: ${web}\r\n${STREAM_HEADER}: ${down.sid}\r\n${head}\r\n`);
  up.write(body);
  const r = await up.response();
  up.destroy();
  return { status: r.status, code: codeOfBody(r.body), down };
}

/** The refused request did not touch its stream: no error frame, the downstream still open. */
function downUntouched(t: Test, down: RawDown, code: string): void {
  t.equal(down.unread, 0, `${code} refused the request alone: no error on the downstream`);
  t.notOk(down.conn.ended, 'and the downstream is still open');
  down.destroy();
}

t.test('an endless chunk extension: 400 CHUNK_EXTENSION_TOO_LONG', async (t) => {
  const r = await attack(`5;${'e'.repeat(100_000)}`);
  t.equal(r.status, 400);
  t.equal(r.code, ErrorCode.CHUNK_EXTENSION_TOO_LONG);
  downUntouched(t, r.down, ErrorCode.CHUNK_EXTENSION_TOO_LONG);
  await neighboursChat(t);
});

t.test('a chunk larger than web.maxChunkBytes: 413 CHUNK_TOO_LARGE before any of it is read', async (t) => {
  const r = await attack(`${(MAX_FRAME + 5).toString(16)}\r\n`);
  t.equal(r.status, 413);
  t.equal(r.code, ErrorCode.CHUNK_TOO_LARGE);
  downUntouched(t, r.down, ErrorCode.CHUNK_TOO_LARGE);
  const huge = await attack('ffffffffffffffffffff\r\n');
  t.equal(huge.code, ErrorCode.CHUNK_TOO_LARGE, 'a size beyond any integer');
  huge.down.destroy();
  await neighboursChat(t);
});

t.test('a chunk size that is not hex: 400 HTTP_BAD_REQUEST', async (t) => {
  const r = await attack('zz\r\nhello\r\n');
  t.equal(r.status, 400);
  t.equal(r.code, ErrorCode.HTTP_BAD_REQUEST);
  downUntouched(t, r.down, ErrorCode.HTTP_BAD_REQUEST);
  const bareLf = await attack('5\nhello\r\n');
  t.equal(bareLf.code, ErrorCode.HTTP_BAD_REQUEST, 'a bare LF after the size');
  bareLf.down.destroy();
  await neighboursChat(t);
});

t.test('more chunks than web.maxChunksPerRequest: 413 TOO_MANY_CHUNKS', async (t) => {
  // A frame header announcing a full-size frame, then 1-byte chunks that never complete it.
  let body = '4\r\n\x00\x01\x00\x00\r\n';
  body += '1\r\nx\r\n'.repeat(MAX_CHUNKS + 5);
  const r = await attack(Buffer.from(body, 'latin1'));
  t.equal(r.status, 413);
  t.equal(r.code, ErrorCode.TOO_MANY_CHUNKS);
  downUntouched(t, r.down, ErrorCode.TOO_MANY_CHUNKS);
  await neighboursChat(t);
});

t.test('a body larger than web.maxBodyBytes, or framed ambiguously, is refused', async (t) => {
  const big = await attack('', `Content-Length: ${MAX_BODY + 1}\r\n`);
  t.equal(big.status, 413);
  t.equal(big.code, ErrorCode.BODY_TOO_LARGE);
  big.down.destroy();
  const both = await attack('0\r\n\r\n', 'Transfer-Encoding: chunked\r\nContent-Length: 5\r\n');
  t.equal(both.status, 400);
  t.equal(both.code, ErrorCode.HTTP_BAD_REQUEST, 'Transfer-Encoding and Content-Length together (smuggling)');
  both.down.destroy();
  const none = await attack('', '');
  t.equal(none.status, 411);
  t.equal(none.code, ErrorCode.HTTP_BAD_REQUEST, 'no body framing');
  none.down.destroy();
  await neighboursChat(t);
});

t.test('slowloris: a head still incomplete after web.headerTimeoutMs gets 408 REQUEST_TIMEOUT', async (t) => {
  const c = await RawHttp.open(web);
  t.teardown(() => c.destroy());
  c.write('GET /gravitas/down HTTP/1.1\r\nHost: x\r\n');
  // One header byte at a time, never finishing the head.
  const drip = setInterval(() => c.write('X'), HEADER_MS / 5);
  t.teardown(() => clearInterval(drip));
  const r = await c.response(HEADER_MS * 20);
  clearInterval(drip);
  t.equal(r.status, 408);
  t.equal(codeOfBody(r.body), ErrorCode.REQUEST_TIMEOUT);
  t.ok(await c.closed(), 'and the connection is closed');
  await neighboursChat(t);
});

t.test('a head longer than web.maxHeaderBytes gets 431 HEADERS_TOO_LARGE', async (t) => {
  const c = await RawHttp.open(web);
  t.teardown(() => c.destroy());
  c.write(`GET /gravitas/down HTTP/1.1\r\nX-Pad: ${'a'.repeat(4096)}`);
  const r = await c.response();
  t.equal(r.status, 431);
  t.equal(codeOfBody(r.body), ErrorCode.HEADERS_TOO_LARGE);
  const bad = await RawHttp.open(web);
  t.teardown(() => bad.destroy());
  bad.write('GET /gravitas/down HTTP/1.1\r\n folded: header\r\n\r\n');
  t.equal(codeOfBody((await bad.response()).body), ErrorCode.HTTP_BAD_REQUEST, 'a folded header line');
  await neighboursChat(t);
});

t.test('a second upstream for a busy stream gets 409 STREAM_BUSY; the first one is untouched', async (t) => {
  const down = await RawDown.open(web);
  t.teardown(() => down.destroy());
  const first = await RawHttp.open(web);
  t.teardown(() => first.destroy());
  first.write(`POST /gravitas/up HTTP/1.1\r\nHost: x\r\n${STREAM_HEADER}: ${down.sid}\r\nTransfer-Encoding: chunked\r\n\r\n`);
  // The first request is attached once its head is read; wait for that by retrying the second.
  let r = { status: 0, body: '' };
  for (let i = 0; i < 50 && r.status !== 409; i++) {
    const s = await RawHttp.open(web);
    s.write(`POST /gravitas/up HTTP/1.1\r\nHost: x\r\n${STREAM_HEADER}: ${down.sid}\r\nContent-Length: 0\r\n\r\n`);
    r = await s.response();
    s.destroy();
  }
  t.equal(r.status, 409);
  t.equal(codeOfBody(r.body), ErrorCode.STREAM_BUSY);
  t.notOk(first.ended, 'the first upstream is still open');
});

t.test('the SDK itself stays inside the caps: more frames than one request may carry go over several', async (t) => {
  await Promise.all(Array.from({ length: MAX_CHUNKS + 100 }, () => good.client.ping()));
  t.same(good.errors, [], 'no coded error');
  await neighboursChat(t);
});

// ---- junk POSTs to a live session's stream ---------------------------------------------

/** A chunked-HTTP session opened by hand: its stream id, its downstream and its channel. */
async function rawHttpSession(user: string): Promise<{ down: RawDown; channel: SecureChannel; ping: (n: number) => Promise<Buffer> }> {
  const down = await RawDown.open(web);
  const hs = new ClientHandshake({ serverPublicKey: pk, identity: generateKeyPair(), user, device: 'raw', registration: '' });
  const hello = await postUp(web, down.sid, encodeFrame(pack(hs.hello())));
  if (hello.status !== 204) throw new Error(`hello refused: ${hello.status} ${hello.code}`);
  const welcome = decodeServerHandshake(unpack(await down.nextFrame()));
  if (welcome.t !== 'welcome') throw new Error(`no welcome: ${JSON.stringify(welcome)}`);
  const { channel, finish } = hs.complete(welcome);
  await postUp(web, down.sid, encodeFrame(channel.seal(pack(finish))));
  /** Sends a sealed ping (returning its frame, to replay) and checks the pong. */
  const ping = async (n: number): Promise<Buffer> => {
    const frame = encodeFrame(channel.seal(pack({ t: 'ping', n })));
    const r = await postUp(web, down.sid, frame);
    if (r.status !== 204) throw new Error(`ping refused: ${r.status} ${r.code}`);
    const pong = decodeServerMessage(unpack(channel.open(await down.nextFrame())));
    if (pong.t !== 'pong' || pong.n !== n) throw new Error(`expected pong ${n}, got ${JSON.stringify(pong)}`);
    return frame;
  };
  await ping(0);
  return { down, channel, ping };
}

/** A sealed frame body with counter `counter` whose box is random: it cannot authenticate. */
function forged(counter: number, size = 48): Buffer {
  const body = Buffer.from(random(size));
  body.writeBigUInt64BE(BigInt(counter), 0);
  return encodeFrame(body);
}

t.test('junk POSTed to a live stream is refused with that request; the session goes on', async (t) => {
  const s = await rawHttpSession('junk-target');
  t.teardown(() => s.down.destroy());
  const replayable = await s.ping(1);
  // Bodies are made when sent: a forged frame carries the counter the server expects next.
  const cases: Array<[string, () => Buffer, number, string]> = [
    ['a frame that fails authentication (the next counter, a random box)', () => forged(s.channel.sent), 400, ErrorCode.DECRYPT_FAILED],
    ['a replay of an authentic frame the session already took', () => replayable, 400, ErrorCode.NONCE_REUSE],
    ['a frame whose counter skips ahead', () => forged(s.channel.sent + 1000), 400, ErrorCode.NONCE_GAP],
    ['a frame cut short at the end of the request', () => forged(s.channel.sent).subarray(0, 20), 400, ErrorCode.FRAME_TRUNCATED],
    ['a length prefix over the frame limit', () => Buffer.from([0x7f, 0xff, 0xff, 0xff]), 413, ErrorCode.FRAME_TOO_LARGE],
    ['a replay behind junk in the same request', () => Buffer.concat([forged(s.channel.sent), replayable]), 400, ErrorCode.DECRYPT_FAILED],
  ];
  let n = 1;
  for (const [what, body, status, code] of cases) {
    // From another address than the session's: whoever learnt the stream id.
    const r = await postUp(web, s.down.sid, body(), '127.0.0.77');
    t.equal(r.status, status, `${what}: HTTP ${status}`);
    t.equal(r.code, code, `${what}: ${code}`);
    t.equal(s.down.unread, 0, `${what}: nothing on the downstream`);
    await s.ping(++n);
    t.pass(`${what}: the session still answers a ping`);
  }
  await neighboursChat(t);
});
