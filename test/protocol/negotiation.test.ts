/*
 * Version and capability negotiation (docs/protocol.md 4.7), and the downgrade test: the offer
 * is bound into the transcript, so a man in the middle who strips a capability or lowers the
 * version makes the handshake fail with HANDSHAKE_FAILED; a client from before negotiation
 * still connects (without capabilities); a server that does not grant a capability makes the
 * client fall back (secretbox, one message per frame). Against a real node and nats-server,
 * over real sockets, with a tampering proxy in between.
 */
import { connect, createServer, type AddressInfo, type Socket } from 'node:net';
import { join } from 'node:path';
import t from 'tap';
import {
  Capability, CAPABILITIES, ClientHandshake, decodeClientHandshake, encodeFrame, ErrorCode, FrameDecoder, generateKeyPair, HandshakeError, HARD_MAX_FRAME_BYTES,
  nativeSuite, pack, PROTOCOL_VERSIONS, random, readHello, readResume, unpack, writeWelcome,
  type ClientHandshakeOptions, type Hello, type Resume, type ServerHandshakeContext,
} from '@gravitas/protocol';
import { RemoteError } from '@gravitas/client';
import { splitHostPort } from '@gravitas/client';
import { startNode } from '@gravitas/server';
import { validateConfig } from '@gravitas/server';
import { NatsServer, tempDir } from '@gravitas/testkit';
import { clusterKeys, connectClient, exchange, makeClient, nodeConfig } from '../fixtures/cluster.js';
import { rawHandshake } from '../fixtures/raw.js';

const keys = clusterKeys();
const pk = keys.serverPublicKey;
let seq = 0;
const fresh = (over: Partial<ClientHandshakeOptions> = {}): ClientHandshakeOptions => ({ serverPublicKey: pk, identity: generateKeyPair(), user: `n${++seq}`, device: 'raw', registration: '', ...over });

// ---- the library, both ends in memory -------------------------------------------------

const SERVER = generateKeyPair();
const ctx = (over: Partial<ServerHandshakeContext> = {}): ServerHandshakeContext => ({
  staticKey: nativeSuite.fromSecret(SERVER.secretKey), ticketKeys: { current: { id: 1, key: random(32) } }, ticketLifetimeMs: 60_000, suite: nativeSuite, now: Date.now, ...over,
});
const INFO = { session: 's', cell: 'c', node: 'n' };
const wire = (m: Hello | Resume): Hello | Resume => decodeClientHandshake(unpack(pack(m)));
const codeOf = (fn: () => unknown): string | undefined => {
  try {
    fn();
  } catch (err) {
    return err instanceof HandshakeError ? err.code : String(err);
  }
  return undefined;
};
/** The client's first flight, changed on the way, read by a server speaking versions 1 and 2. */
function tampered(change: (h: Hello | Resume) => Hello | Resume, o: Partial<ClientHandshakeOptions> = {}): string | undefined {
  const c = new ClientHandshake({ ...fresh({ serverPublicKey: SERVER.publicKey }), offer: { versions: [1, 2] }, ...o });
  const first = wire(change(c.hello()));
  const s = ctx({ versions: [1, 2] });
  return codeOf(() => (first.t === 'hello' ? readHello(first, s) : readResume(first, s)));
}

t.test('the offer is in the transcript: any change to it on the wire is HANDSHAKE_FAILED', async (t) => {
  t.equal(tampered((h) => h), undefined, 'untouched: the server reads it');
  const without = <K extends 'vs' | 'caps'>(h: Hello | Resume, k: K): Hello | Resume => {
    const c = { ...h };
    delete c[k];
    return c;
  };
  t.equal(tampered((h) => ({ ...h, caps: h.caps!.filter((c) => c !== Capability.BATCH) })), ErrorCode.HANDSHAKE_FAILED, 'a capability stripped');
  t.equal(tampered((h) => ({ ...h, caps: [...h.caps!].reverse() })), ErrorCode.HANDSHAKE_FAILED, 'capabilities reordered');
  t.equal(tampered((h) => ({ ...h, caps: [...h.caps!, 'x-unknown'] })), ErrorCode.HANDSHAKE_FAILED, 'a capability added');
  t.equal(tampered((h) => without(h, 'caps')), ErrorCode.HANDSHAKE_FAILED, 'the capability list removed');
  t.equal(tampered((h) => without(without(h, 'caps'), 'vs')), ErrorCode.HANDSHAKE_FAILED, 'the whole offer removed: posing as a client from before negotiation');
  t.equal(tampered((h) => ({ ...h, v: 1, vs: [1] })), ErrorCode.HANDSHAKE_FAILED, 'the version lowered (v and vs)');
  t.equal(tampered((h) => ({ ...h, vs: [1, 2, 3] })), ErrorCode.HANDSHAKE_FAILED, 'a version added');
  const hs = new ClientHandshake({ ...fresh({ serverPublicKey: SERVER.publicKey }) });
  t.equal(hs.first.v, Math.max(...PROTOCOL_VERSIONS), 'v is the highest version offered');
  t.strictSame(hs.first.caps, [...CAPABILITIES], 'by default every capability this library has is asked for');
});

t.test('the server chooses; the client checks the choice against its offer', async (t) => {
  const c = new ClientHandshake({ ...fresh({ serverPublicKey: SERVER.publicKey }), offer: { versions: [1, 2], capabilities: ['batch', 'x-new', Capability.AEAD_CHACHA20POLY1305] } });
  const s = ctx({ versions: [1, 2, 3], capabilities: [Capability.AEAD_CHACHA20POLY1305, 'batch'] });
  const server = writeWelcome(readHello(wire(c.hello()) as Hello, s), INFO, s);
  t.equal(server.negotiated.version, 2, 'the highest common version');
  t.strictSame([...server.negotiated.caps], ['batch', Capability.AEAD_CHACHA20POLY1305], 'the offered ones it grants, in the order offered; unknown names ignored');
  const r = c.complete(server.welcome);
  t.equal(r.welcome.ver, 2);
  t.strictSame([...r.negotiated.caps], [...server.negotiated.caps], 'both ends agree');
  t.equal(r.channel.cipher, 'chacha20poly1305');
  t.equal(server.channel.cipher, 'chacha20poly1305');
  t.equal(codeOf(() => readHello(wire(new ClientHandshake({ ...fresh({ serverPublicKey: SERVER.publicKey }), offer: { versions: [3] } }).hello()) as Hello, ctx())), ErrorCode.UNSUPPORTED_VERSION, 'no common version: UNSUPPORTED_VERSION');
  // A server that grants what was not offered (a bug, or a forgery that would need the keys): refused.
  const c2 = new ClientHandshake({ ...fresh({ serverPublicKey: SERVER.publicKey }), offer: { capabilities: [] } });
  const p = readHello(wire(c2.hello()) as Hello, ctx());
  p.negotiated = { version: 1, caps: new Set(['batch']) };
  t.equal(codeOf(() => c2.complete(writeWelcome(p, INFO, ctx()).welcome)), ErrorCode.HANDSHAKE_FAILED, 'a capability not offered');
  // The welcome carries the choice sealed: a flipped bit anywhere is HANDSHAKE_FAILED.
  const c3 = new ClientHandshake({ ...fresh({ serverPublicKey: SERVER.publicKey }) });
  const w = writeWelcome(readHello(wire(c3.hello()) as Hello, ctx()), INFO, ctx()).welcome;
  const bad = Uint8Array.from(w.p);
  bad[bad.length - 20]! ^= 1;
  t.equal(codeOf(() => c3.complete({ ...w, p: bad })), ErrorCode.HANDSHAKE_FAILED, 'the sealed choice changed');
});

t.test('a client from before negotiation gets no capabilities and the old transcript', async (t) => {
  const c = new ClientHandshake({ ...fresh({ serverPublicKey: SERVER.publicKey }), offer: false });
  const first = wire(c.hello()) as Hello;
  t.equal(first.vs, undefined);
  t.equal(first.caps, undefined);
  const server = writeWelcome(readHello(first, ctx()), INFO, ctx());
  const r = c.complete(server.welcome);
  t.equal(r.welcome.ver, undefined, 'no choice in its welcome');
  t.equal(r.welcome.caps, undefined);
  t.equal(server.negotiated.caps.size, 0);
  t.equal(r.channel.cipher, 'xsalsa20poly1305', 'secretbox, as before');
});

// ---- a real node, over real sockets ----------------------------------------------------

const nats = await NatsServer.start();
t.teardown(() => nats.stop());
const dir = await tempDir('gravitas-negotiation-');
t.teardown(() => dir[Symbol.asyncDispose]());
const start = (id: string, extra?: Record<string, unknown>) =>
  startNode(validateConfig(nodeConfig({ natsUrl: nats.url, nodeId: id, dataDir: join(dir.path, id), keys, cells: 1, ...(extra && { extra }) })), () => undefined);
const full = await start('neg-full');
t.teardown(() => full.stop());
const bare = await start('neg-bare', { network: { capabilities: [] } });
t.teardown(() => bare.stop());
const batchOnly = await start('neg-batch', { network: { capabilities: ['batch'] } });
t.teardown(() => batchOnly.stop());
const [fullAddr] = full.clientAddresses as [string];
const [bareAddr] = bare.clientAddresses as [string];
const [batchAddr] = batchOnly.clientAddresses as [string];

/** A TCP proxy to `target` that hands the client's first frame to `change` (decoded) before passing it on. */
async function tamperingProxy(target: string, change: (h: Hello | Resume) => Hello | Resume): Promise<string> {
  const [host, port] = splitHostPort(target);
  const sockets = new Set<Socket>();
  const server = createServer((down) => {
    const up = connect({ host, port: Number(port) });
    sockets.add(down).add(up);
    const decoder = new FrameDecoder(HARD_MAX_FRAME_BYTES);
    let first = true;
    down.on('data', (chunk) => {
      if (!first) return void up.write(chunk);
      decoder.push(chunk, (body) => {
        if (!first) return void up.write(encodeFrame(body));
        first = false;
        up.write(encodeFrame(pack(change(decodeClientHandshake(unpack(body))))));
      });
    });
    up.on('data', (chunk) => down.write(chunk));
    for (const [a, b] of [[down, up], [up, down]] as const) {
      a.on('close', () => b.destroy());
      a.on('error', () => undefined);
    }
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => {
    for (const s of sockets) s.destroy();
    server.close();
  });
  return `127.0.0.1:${(server.address() as AddressInfo).port}`;
}

t.test('downgrade on the wire: a stripped capability or a lowered version fails the handshake (real node)', async (t) => {
  const strip = await tamperingProxy(fullAddr, (h) => ({ ...h, caps: (h.caps ?? []).filter((c) => c !== Capability.AEAD_CHACHA20POLY1305) }));
  const bare2 = await tamperingProxy(fullAddr, ({ vs: _vs, caps: _caps, ...h }) => h);
  for (const [what, addr] of [['the cipher capability stripped', strip], ['the whole offer stripped', bare2]] as const) {
    const tc = makeClient({ user: `m${++seq}`, servers: [addr], serverPublicKey: pk, reconnect: false });
    const err = await tc.client.connect().then(() => undefined, (e: unknown) => e);
    t.ok(err instanceof RemoteError && err.code === ErrorCode.HANDSHAKE_FAILED, `${what}: the SDK is refused with HANDSHAKE_FAILED`);
    t.equal(tc.client.connected, false);
    await tc.client.close();
  }
  const raw = await rawHandshake(await tamperingProxy(fullAddr, (h) => ({ ...h, caps: ['batch'] })), fresh()).then(() => 'connected', (e: { code?: string }) => e.code);
  t.equal(raw, ErrorCode.HANDSHAKE_FAILED, 'raw: capabilities narrowed on the way');
  // Untouched through the same kind of proxy: it connects with everything.
  const tc = await connectClient(t, { user: `m${++seq}`, servers: [await tamperingProxy(fullAddr, (h) => h)], serverPublicKey: pk });
  t.strictSame([...tc.client.capabilities].sort(), [...CAPABILITIES].sort(), 'an untouched offer: every capability');
});

t.test('an old client (v1, no offer) still connects and chats, without capabilities', async (t) => {
  const s = await rawHandshake(fullAddr, fresh({ offer: false }));
  t.teardown(() => s.conn.destroy());
  t.equal(s.result.welcome.caps, undefined, 'no choice in the welcome');
  t.equal(s.channel.cipher, 'xsalsa20poly1305', 'secretbox');
  s.conn.sendSealed(s.channel, { t: 'ping', n: 7 });
  t.strictSame(await s.conn.nextSealed(s.channel), { t: 'pong', n: 7 }, 'the session is open');
  // An array is one bad message for a session without batches (non-fatal), as before.
  s.conn.sendSealed(s.channel, [{ t: 'ping', n: 8 }]);
  t.match(await s.conn.nextSealed(s.channel), { t: 'error', code: ErrorCode.BAD_MESSAGE });
  s.conn.sendSealed(s.channel, { t: 'ping', n: 9 });
  t.strictSame(await s.conn.nextSealed(s.channel), { t: 'pong', n: 9 }, 'and it goes on');
  const news = await rawHandshake(fullAddr, fresh());
  t.teardown(() => news.conn.destroy());
  t.equal(news.channel.cipher, 'chacha20poly1305', 'a new client on the same cell: ChaCha20-Poly1305');
});

t.test('a server that does not grant a capability: the client falls back and still chats', async (t) => {
  const a = await connectClient(t, { user: `f${++seq}`, servers: [bareAddr], serverPublicKey: pk });
  const b = await connectClient(t, { user: `f${++seq}`, servers: [bareAddr], serverPublicKey: pk });
  t.strictSame(a.client.welcome?.caps, [], 'the server granted nothing');
  t.equal(a.client.capabilities.size, 0);
  const { status, msg } = await exchange(a, b, 'plain old frames');
  t.equal(status, 'delivered');
  t.equal(msg.text, 'plain old frames');
  const raw = await rawHandshake(bareAddr, fresh());
  t.teardown(() => raw.conn.destroy());
  t.equal(raw.channel.cipher, 'xsalsa20poly1305', 'secretbox without the cipher capability');

  const c = await connectClient(t, { user: `f${++seq}`, servers: [batchAddr], serverPublicKey: pk });
  const d = await connectClient(t, { user: `f${++seq}`, servers: [batchAddr], serverPublicKey: pk });
  t.strictSame([...c.client.capabilities], ['batch'], 'only batches granted');
  t.equal((await exchange(c, d, 'batched, secretbox')).status, 'delivered');
  const asked = await connectClient(t, { user: `f${++seq}`, servers: [fullAddr], serverPublicKey: pk, capabilities: [Capability.AEAD_CHACHA20POLY1305] });
  t.strictSame([...asked.client.capabilities], [Capability.AEAD_CHACHA20POLY1305], 'a client that asks for less gets less');
});
