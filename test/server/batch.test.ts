/*
 * Batched frames from a client (capability `batch`, docs/protocol.md 6.1) against a real node
 * and nats-server over real sockets: every message of a batch is taken in order, a bad one gets
 * its own non-fatal error and the others go through; a batch out of bounds or a `finish` inside
 * one is fatal; acks for many messages in one frame settle them all.
 */
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { Capability, ErrorCode, generateKeyPair, type ClientHandshakeOptions, type ServerMessage } from '@gravitas/protocol';
import { startNode, validateConfig } from '@gravitas/server';
import { NatsServer, tempDir } from '@gravitas/testkit';
import { clusterKeys, connectClient, nodeConfig } from '../fixtures/cluster.js';
import { rawHandshake, type RawSession } from '../fixtures/raw.js';

const nats = await NatsServer.start();
t.teardown(() => nats.stop());
const dir = await tempDir('gravitas-batch-');
t.teardown(() => dir[Symbol.asyncDispose]());
const keys = clusterKeys();
const node = await startNode(validateConfig(nodeConfig({ natsUrl: nats.url, nodeId: 'batch', dataDir: join(dir.path, 'batch'), keys, cells: 1 })), () => undefined);
t.teardown(() => node.stop());
const [addr] = node.clientAddresses as [string];
let seq = 0;
const fresh = (over: Partial<ClientHandshakeOptions> = {}): ClientHandshakeOptions => ({ serverPublicKey: keys.serverPublicKey, identity: generateKeyPair(), user: `b${++seq}`, device: 'raw', registration: '', ...over });

async function session(t: Test, over: Partial<ClientHandshakeOptions> = {}): Promise<RawSession> {
  const s = await rawHandshake(addr, fresh(over));
  t.teardown(() => s.conn.destroy());
  s.conn.sendSealed(s.channel, { t: 'ping', n: 0 });
  t.strictSame(await s.conn.nextSealed(s.channel), { t: 'pong', n: 0 }, 'open');
  return s;
}

async function next(s: RawSession, n: number): Promise<ServerMessage[]> {
  const out: ServerMessage[] = [];
  for (let i = 0; i < n; i++) out.push(await s.conn.nextSealed(s.channel));
  return out;
}

t.test('a batch: each message on its own, bad ones refused alone, the session goes on', async (t) => {
  const s = await session(t);
  t.ok(s.result.negotiated.caps.has(Capability.BATCH), 'batch negotiated');
  s.conn.sendSealed(s.channel, [{ t: 'ping', n: 1 }, { t: 'ping' }, { t: 'nope' }, { t: 'ping', n: 2 }, { t: 'presence', s: 'away' }, { t: 'ping', n: 3 }]);
  const got = await next(s, 5);
  t.strictSame(got.filter((m) => m.t === 'pong'), [{ t: 'pong', n: 1 }, { t: 'pong', n: 2 }, { t: 'pong', n: 3 }], 'every good ping answered, in order');
  t.strictSame(got.filter((m) => m.t === 'error').map((m) => m.t === 'error' && m.code).sort(), [ErrorCode.BAD_MESSAGE, ErrorCode.UNKNOWN_TYPE], 'one error per bad element');
  s.conn.sendSealed(s.channel, { t: 'ping', n: 4 });
  t.strictSame(await s.conn.nextSealed(s.channel), { t: 'pong', n: 4 }, 'still open');
  t.notOk(s.conn.ended);
});

t.test('fatal: more than 256 messages, an empty batch, a finish inside', async (t) => {
  for (const [what, batch, code] of [
    ['257 messages', Array.from({ length: 257 }, (_, i) => ({ t: 'ping', n: i })), ErrorCode.DECODE_FAILED],
    ['an empty batch', [], ErrorCode.DECODE_FAILED],
    ['a finish inside', [{ t: 'ping', n: 1 }, { t: 'finish', h: new Uint8Array(32) }], ErrorCode.UNEXPECTED_MESSAGE],
  ] as const) {
    const s = await session(t);
    s.conn.sendSealed(s.channel, batch);
    let m = await s.conn.nextSealed(s.channel);
    if (m.t === 'pong') m = await s.conn.nextSealed(s.channel); // the ping before the finish may be answered first
    t.match(m, { t: 'error', code }, what);
    t.ok(await s.conn.serverClosed(), `${what}: then the server closes`);
  }
});

t.test('acks for many messages in one frame settle them all', async (t) => {
  const sender = await connectClient(t, { user: `b${++seq}`, servers: [addr], serverPublicKey: keys.serverPublicKey });
  const s = await session(t);
  const user = `b${seq}`;
  const sent = Array.from({ length: 20 }, (_, i) => sender.client.send(user, `m${i}`));
  const msgs = (await next(s, 20)).filter((m) => m.t === 'msg');
  t.equal(msgs.length, 20, 'the raw device got 20 messages');
  s.conn.sendSealed(s.channel, msgs.map((m) => m.t === 'msg' && { t: 'ack', id: m.id, from: m.from }));
  const statuses = await Promise.all(sent);
  t.strictSame(new Set(statuses.map((r) => r.status)), new Set(['delivered']), 'every one delivered: all 20 acks of one frame counted');
});
