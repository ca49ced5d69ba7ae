/*
 * The Gravitas driver of the load harness (bench/src/harness/gravitas-driver.ts) against real
 * `gravitas node` processes on a real nats-server: provisioning, resumption, custody (outcomes,
 * retries, the outbox bound, re-sends after a drop), multi-device and group delivery, presence,
 * de-duplication of re-deliveries, `move` hints, and `lost`. A scripted fake cell covers what a
 * real one never does: broken frames and a server that stops answering.
 */
import t, { type Test } from 'tap';
import { join } from 'node:path';
import { createServer, type AddressInfo, type Socket } from 'node:net';
import {
  checkFinish, decodeClientHandshake, decodeClientMessage, encodeFrame, FrameDecoder, generateKeyPair, hintKeyPair, nativeSuite, pack, random, readHello, readResume, signHint, unpack, writeWelcome,
  type ClientMessage, type SecureChannel, type ServerHandshakeContext,
} from '@gravitas/protocol';
import { check, NatsServer, tempDir } from '@gravitas/testkit';
import { decodeBody, DriverError, encodeBody, nowMs, OUTBOX_MAX, type DeviceEvents, type DeviceRef, type Incoming } from '../../bench/src/harness/driver.js';
import { GravitasDriver, type GravitasDriverOptions } from '../../bench/src/harness/gravitas-driver.js';
import { deviceSecret, userSecret } from '../../bench/src/harness/identity.js';
import { isLoopbackHost, loopbackSource } from '../../bench/src/harness/sources.js';
import { clusterKeys, nodeConfig, spawnNode, writeNodeConfig, type ClusterKeys, type NodeProcess } from '../fixtures/cluster.js';

/** Everything a device reported. */
class Rec implements DeviceEvents {
  readonly messages: Incoming[] = [];
  readonly outcomes = new Map<number, { ok: boolean; code: string | undefined }>();
  readonly presences: string[] = [];
  readonly losses: string[] = [];
  /** Outcomes reported twice for one ref (must stay 0). */
  doubleOutcomes = 0;
  /** Set to make message() throw (a broken generator). */
  throwOnMessage = false;
  message(m: Incoming): void {
    if (this.throwOnMessage) throw new Error('generator bug');
    this.messages.push(m);
  }
  outcome(ref: number, ok: boolean, code?: string): void {
    if (this.outcomes.has(ref)) this.doubleOutcomes++;
    this.outcomes.set(ref, { ok, code });
  }
  presence(user: string): void {
    this.presences.push(user);
  }
  lost(code: string): void {
    this.losses.push(code);
  }
  /** How many messages carried the body tag `tag`. */
  count(tag: string): number {
    return this.messages.filter((m) => decodeBody(m.body)?.tag === tag).length;
  }
  ok(refs: number[]): boolean {
    return refs.every((r) => this.outcomes.get(r)?.ok === true);
  }
}

const NS = 'drv';
const dev = (user: string, device = 'd0'): DeviceRef => ({ user, device, secret: deviceSecret(NS, user, device), userSecret: userSecret(NS, user) });
const body = (tag: string, bytes = 120): string => encodeBody(nowMs(), tag, bytes);
const range = (from: number, n: number): number[] => Array.from({ length: n }, (_, i) => from + i);

async function node(t: Test, cells: number, extra?: Record<string, unknown>): Promise<{ node: NodeProcess; keys: ClusterKeys }> {
  const dir = await tempDir('gravitas-driver-');
  t.teardown(() => dir[Symbol.asyncDispose]());
  const nats = await NatsServer.start();
  t.teardown(() => nats.stop());
  const keys = clusterKeys();
  const file = await writeNodeConfig(join(dir.path, 'n1.json'), nodeConfig({ natsUrl: nats.url, nodeId: 'n1', dataDir: join(dir.path, 'n1'), keys, cells, ...(extra && { extra }) }));
  const n = await spawnNode(file);
  t.teardown(() => n.stop(5000));
  return { node: n, keys };
}

t.test('bodies carry the intended send time and the tag', async (t) => {
  const b = encodeBody(1_700_000_000_123.4567, 'run1.2.abc', 100);
  t.equal(b.length, 100);
  t.same(decodeBody(b), { intendedMs: 1_700_000_000_123.457, tag: 'run1.2.abc' });
  t.equal(encodeBody(5, 'x', 0), '5.000 x ', 'never shorter than the head');
  t.same(decodeBody(encodeBody(5, 'x', 0)), { intendedMs: 5, tag: 'x' });
  t.equal(decodeBody('hello world'), undefined, 'a body the harness did not write');
  t.equal(decodeBody('12.5 tagonly'), undefined, 'no space after the tag');
  t.equal(decodeBody(''), undefined);
});

t.test('options are checked', async (t) => {
  const pk = generateKeyPair().publicKey;
  t.throws(() => new GravitasDriver({ addresses: [], serverPublicKey: pk, idPrefix: 'a' }), RangeError);
  t.throws(() => new GravitasDriver({ addresses: ['127.0.0.1:1'], serverPublicKey: pk, idPrefix: 'bad.prefix' }), RangeError);
  t.throws(() => new GravitasDriver({ addresses: ['127.0.0.1:1'], serverPublicKey: pk, idPrefix: 'x'.repeat(54) }), RangeError, 'ids would pass 64 characters');
  const d = new GravitasDriver({ addresses: ['127.0.0.1:1'], serverPublicKey: pk, idPrefix: 'x'.repeat(53), keepaliveMs: 0 });
  t.same(d.capabilities, { acceptance: true, ownDeviceCopies: true, offlineDelivery: { direct: true, groups: true } });
  t.throws(() => d.device(dev('a'), new Rec(), []).send(-1, 'b', 'x'), RangeError, 'refs are non-negative integers');
  await d.close();
});

t.test('sources: against a local target each device connects from its own loopback address', async (t) => {
  t.equal(loopbackSource(0, 0), '127.1.0.1');
  t.equal(loopbackSource(2, 253), '127.3.0.254');
  t.equal(loopbackSource(2, 254), '127.3.1.1', 'a /24 holds 254 devices');
  t.ok(isLoopbackHost('127.0.0.1') && isLoopbackHost('localhost') && !isLoopbackHost('10.0.0.1') && !isLoopbackHost('::1'));
  // A target that lets one address hold 2 connections (2 in their handshake): a generator from one address trips it.
  const { node: n, keys } = await node(t, 1, { network: { maxConnectionsPerSource: 2, maxConnectionsPerPrefix: 1000, maxHandshakesPerSource: 2, maxHandshakesPerPrefix: 1000 } });
  const spread = new GravitasDriver({ addresses: n.clientAddresses, serverPublicKey: keys.serverPublicKey, idPrefix: 's1x', spreadSources: { generator: 4 } });
  t.teardown(() => spread.close());
  const ok = await Promise.allSettled(range(0, 20).map((i) => spread.provision(dev(`sp${i}`), [])));
  t.same(ok.filter((r) => r.status === 'rejected'), [], '20 devices provisioned at once from 127.5.0.1..20');
  const devices = range(0, 20).map((i) => spread.device(dev(`sp${i}`), new Rec(), []));
  await Promise.all(devices.map((d) => d.connect()));
  t.ok(devices.every((d) => d.connected), 'and all 20 hold a session at once');
  const single = new GravitasDriver({ addresses: n.clientAddresses, serverPublicKey: keys.serverPublicKey, idPrefix: 's2x' });
  t.teardown(() => single.close());
  const one = await Promise.allSettled(range(0, 20).map((i) => single.provision(dev(`one${i}`), [])));
  t.ok(one.some((r) => r.status === 'rejected' && /SOURCE_LIMIT/.test(String((r.reason as Error).message) + String((r.reason as { code?: string }).code))), 'the same from one address trips the per-source caps (SOURCE_LIMIT)');
});

t.test('the Gravitas driver against a real node', async (t) => {
  const { node: n, keys } = await node(t, 2);
  const addrs = n.clientAddresses;
  const driver = new GravitasDriver({ addresses: addrs, serverPublicKey: keys.serverPublicKey, idPrefix: 'g1x' });
  t.teardown(() => driver.close());

  // ---- provisioning: registers, adds contacts, leaves a ticket for the first connect ----
  const refs = {
    a0: dev('alice', 'd0'), a1: dev('alice', 'd1'), b0: dev('bob', 'd0'), b1: dev('bob', 'd1'), c0: dev('carol'), d0: dev('dave'), e0: dev('erin'),
    f0: dev('frank'), g0: dev('gina'), h0: dev('hank'),
  };
  await Promise.all([
    driver.provision(refs.a0, ['bob', 'carol', 'frank', 'alice']),
    driver.provision(refs.a1, ['bob', 'carol']),
    driver.provision(refs.b0, ['alice']),
    driver.provision(refs.b1, ['alice']),
    driver.provision(refs.c0, ['alice']),
    driver.provision(refs.d0, []),
    driver.provision(refs.e0, []),
    driver.provision(refs.f0, []),
    driver.provision(refs.g0, []),
    driver.provision(refs.h0, []),
  ]);
  await driver.provision(refs.b0, ['alice']); // idempotent
  const afterProvision = driver.counters();
  t.equal(afterProvision.fullHandshakes, 11, 'every provisioning session is a full handshake (registration)');

  // A group, before the run (its creator's set-up session would replace a running one).
  const g = await driver.createGroup(refs.a0, 'team', ['bob', 'carol', 'alice']);
  t.type(g, 'string');
  t.equal(driver.counters().resumed, 1, 'the group was created in a session resumed from the provisioning ticket');
  // Membership is by consent: the invited members accept, each in a set-up session resumed from its ticket.
  await Promise.all([driver.joinGroups(refs.b0, [g]), driver.joinGroups(refs.c0, [g])]);
  await driver.joinGroups(refs.b0, [g]); // joined already: fine
  t.equal(driver.counters().resumed, 4, 'the joins resumed too');

  const rec: Record<keyof typeof refs, Rec> = {
    a0: new Rec(), a1: new Rec(), b0: new Rec(), b1: new Rec(), c0: new Rec(), d0: new Rec(), e0: new Rec(), f0: new Rec(), g0: new Rec(), h0: new Rec(),
  };
  const devs = Object.fromEntries(Object.entries(refs).map(([k, r]) => [k, driver.device(r, rec[k as keyof typeof refs], k === 'b0' ? [g] : [])])) as Record<
    keyof typeof refs,
    ReturnType<GravitasDriver['device']>
  >;
  const online = ['a0', 'a1', 'b0', 'b1', 'c0', 'e0', 'h0'] as const;
  t.equal(devs.a0.connected, false);
  await Promise.all(online.map((k) => devs[k].connect()));
  t.ok(online.every((k) => devs[k].connected), 'all connected');
  await devs.a0.connect(); // connected already: nothing happens
  t.same(
    { full: driver.counters().fullHandshakes, resumed: driver.counters().resumed },
    { full: afterProvision.fullHandshakes, resumed: 4 + online.length },
    'every first connect of the run resumed with the ticket its provisioning left (one round trip)',
  );
  await devs.a0.ping();

  t.test('1:1: outcome, the body intact, both devices of the recipient and the sender’s other device', async (t) => {
    const intended = nowMs();
    devs.a0.send(1, 'bob', encodeBody(intended, 'direct.1', 200));
    await check('delivered', () => rec.a0.outcomes.get(1));
    t.same(rec.a0.outcomes.get(1), { ok: true, code: undefined });
    await check('bob’s devices and alice’s other device have it', () => rec.b0.count('direct.1') && rec.b1.count('direct.1') && rec.a1.count('direct.1'));
    const m = rec.b0.messages.find((x) => decodeBody(x.body)?.tag === 'direct.1')!;
    t.equal(m.from, 'alice');
    t.equal(m.group, undefined);
    t.equal(m.campaign, undefined);
    t.equal(m.body.length, 200, 'the body arrives whole');
    t.equal(decodeBody(m.body)!.intendedMs, Number(intended.toFixed(3)), 'with its intended send time');
    await devs.a0.ping();
    t.equal(rec.a0.count('direct.1'), 0, 'not back to the sending device');
  });

  t.test('groups: every member device but the sending one', async (t) => {
    devs.a0.sendToGroup(2, g, body('group.2'));
    await check('stored in the group log', () => rec.a0.outcomes.get(2));
    t.same(rec.a0.outcomes.get(2), { ok: true, code: undefined });
    await check('members have it', () => rec.b0.count('group.2') && rec.b1.count('group.2') && rec.c0.count('group.2') && rec.a1.count('group.2'));
    const m = rec.c0.messages.find((x) => decodeBody(x.body)?.tag === 'group.2')!;
    t.equal(m.group, g, 'tagged with the group');
    t.equal(m.from, 'alice');
    await devs.a0.ping();
    t.equal(rec.a0.count('group.2'), 0, 'not back to the sending device');
    t.equal(rec.e0.count('group.2'), 0, 'not to a non-member');
    devs.a0.sendToGroup(3, 'nosuchgroup', body('group.3'));
    await check('refused', () => rec.a0.outcomes.get(3));
    t.equal(rec.a0.outcomes.get(3)?.ok, false, 'a group the sender is not in: a final failure');
    t.type(rec.a0.outcomes.get(3)?.code, 'string');
  });

  t.test('presence reaches contacts', async (t) => {
    // Carol has one device: away there makes carol away (a user is online while any device is).
    rec.a0.presences.length = 0;
    devs.c0.setPresence('away');
    await check('alice saw carol’s presence change', () => rec.a0.presences.includes('carol'));
    const seen = rec.a0.presences.length;
    devs.c0.setPresence('online');
    await check('and back', () => rec.a0.presences.length > seen);
    t.ok(rec.a0.presences.every((u) => ['bob', 'carol', 'frank'].includes(u)), 'only about users alice lists', { got: rec.a0.presences });
  });

  t.test('drop, send while disconnected, reconnect: resumption, the queue arrives once', async (t) => {
    const before = driver.counters();
    devs.c0.drop();
    t.equal(devs.c0.connected, false);
    await t.rejects(devs.c0.ping(), DriverError, 'no round trip without a session');
    devs.c0.setPresence('away'); // dropped: presence is advisory
    const sent = range(10, 5);
    for (const r of sent) devs.c0.send(r, 'alice', body(`queued.${r}`));
    await devs.c0.connect();
    const after = driver.counters();
    t.equal(after.resumed, before.resumed + 1, 'reconnected by resumption');
    t.equal(after.fullHandshakes, before.fullHandshakes, 'no full handshake');
    await check('every queued send delivered', () => rec.c0.ok(sent));
    for (const r of sent) {
      t.equal(rec.a0.count(`queued.${r}`), 1, `alice d0 got ${r} once`);
      t.equal(rec.a1.count(`queued.${r}`), 1, `alice d1 got ${r} once`);
    }
    t.same(rec.c0.losses, [], 'drop() is not a loss');
    t.equal(rec.c0.doubleOutcomes, 0);
  });

  t.test('a message to an offline device arrives when it connects', async (t) => {
    devs.a0.send(20, 'dave', body('offline.20'));
    await check('stored', () => rec.a0.outcomes.get(20));
    t.same(rec.a0.outcomes.get(20), { ok: true, code: undefined });
    t.equal(rec.d0.messages.length, 0);
    await devs.d0.connect();
    await check('dave has it', () => rec.d0.count('offline.20'));
    await devs.d0.ping();
    t.equal(rec.d0.count('offline.20'), 1, 'once');
  });

  t.test('a re-delivery (the same id re-sent from another cell) reaches the application once', async (t) => {
    await devs.f0.connect();
    const text = body('dup.1');
    devs.f0.send(1, 'bob', text);
    await check('delivered', () => rec.f0.ok([1]));
    await check('bob has it', () => rec.b0.count('dup.1') && rec.b1.count('dup.1'));
    await devs.f0.disconnect();
    // The same generator id prefix and the cells in the other order: frank lands on the other cell
    // and sends ref 1 again, which that cell has never seen: it delivers it to bob again.
    const other = new GravitasDriver({ addresses: [...addrs].reverse(), serverPublicKey: keys.serverPublicKey, idPrefix: 'g1x' });
    t.teardown(() => other.close());
    const f = new Rec();
    const f2 = other.device(refs.f0, f, []);
    await f2.connect();
    const dropped = driver.counters().redeliveriesDropped;
    f2.send(1, 'bob', text);
    await check('delivered again', () => f.ok([1]));
    await check('bob’s devices dropped the re-delivery', () => driver.counters().redeliveriesDropped >= dropped + 2);
    t.equal(rec.b0.count('dup.1'), 1, 'bob d0 showed it once');
    t.equal(rec.b1.count('dup.1'), 1, 'bob d1 showed it once');
  });

  t.test('the outbox bound; retryable refusals (RATE_LIMITED) are sent again until accepted', async (t) => {
    const refsSent = range(1, OUTBOX_MAX);
    for (const r of refsSent) devs.g0.send(r, 'hank', body(`burst.${r}`, 40));
    devs.g0.send(OUTBOX_MAX + 1, 'hank', body('burst.over', 40));
    t.equal(rec.g0.outcomes.size, 0, 'outcomes come after send() returns');
    await check('the one beyond the bound is refused', () => rec.g0.outcomes.get(OUTBOX_MAX + 1));
    t.same(rec.g0.outcomes.get(OUTBOX_MAX + 1), { ok: false, code: 'OUTBOX_FULL' });
    t.equal(rec.g0.outcomes.size, 1, 'the others wait in the outbox');
    const retries = driver.counters().retries;
    await devs.g0.connect();
    await check('every one accepted', () => rec.g0.ok(refsSent), { timeout: 60_000, interval: 100 });
    t.ok(driver.counters().retries > retries, 'the cell rate-limited the burst and the driver sent again');
    await check('hank has all', () => rec.h0.messages.length >= OUTBOX_MAX, { timeout: 30_000 });
    await devs.h0.ping();
    t.equal(new Set(rec.h0.messages.map((m) => m.body)).size, OUTBOX_MAX, 'each once');
    t.equal(rec.h0.messages.length, OUTBOX_MAX);
    t.equal(rec.g0.doubleOutcomes, 0);
  });

  t.test('disconnect() is no loss', async (t) => {
    await devs.e0.disconnect();
    t.equal(devs.e0.connected, false);
    await t.rejects(devs.e0.ping(), { name: 'DriverError', driverCode: 'NOT_CONNECTED' });
    t.same(rec.e0.losses, []);
    t.equal(rec.e0.presences.filter((u) => u === 'alice').length, 0, 'never saw the presence of someone who did not list it');
  });

  t.test('a wrong server key: connect and provision reject with a DriverError', async (t) => {
    const wrong = new GravitasDriver({ addresses: addrs, serverPublicKey: generateKeyPair().publicKey, idPrefix: 'w1x' });
    t.teardown(() => wrong.close());
    const d = wrong.device(dev('zed'), new Rec(), []);
    await t.rejects(d.connect(), { name: 'DriverError', code: 'DRIVER_ERROR', driverCode: 'HANDSHAKE_FAILED' });
    t.equal(d.connected, false);
    await t.rejects(wrong.provision(dev('zed'), []), { name: 'DriverError', driverCode: 'HANDSHAKE_FAILED' });
  });

  t.test('nothing went wrong on the way', async (t) => {
    for (const [k, r] of Object.entries(rec)) {
      t.same(r.losses, [], `${k}: no losses`);
      t.equal(r.doubleOutcomes, 0, `${k}: one outcome per send`);
    }
    t.equal(driver.counters().clientErrors, 0);
  });
});

t.test('moves and faults: an associate hint is followed; lost on SIGKILL, not after disconnect()', async (t) => {
  const { node: n, keys } = await node(t, 2, { gravity: { enabled: true, minDwellMs: 600_000 } });
  const addrs = n.clientAddresses;
  const driver = new GravitasDriver({ addresses: addrs, serverPublicKey: keys.serverPublicKey, idPrefix: 'm1x' });
  t.teardown(() => driver.close());
  // Two users whose own cells differ.
  const cellOf = (u: string): string => driver.home(`${u}/d0`);
  const alice = dev('alice');
  const bobName = ['bob', 'bea', 'ben', 'bill', 'bo', 'bud'].find((u) => cellOf(u) !== cellOf('alice'))!;
  const bob = dev(bobName);
  await Promise.all([driver.provision(alice, [bobName]), driver.provision(bob, ['alice'])]);
  const ra = new Rec();
  const rb = new Rec();
  const a = driver.device(alice, ra, []);
  const b = driver.device(bob, rb, []);
  await a.connect();
  const sent = range(1, 5);
  for (const r of sent) a.send(r, bobName, body(`away.${r}`));
  await check('stored for bob', () => ra.ok(sent));
  await b.connect();
  await check('bob followed the associate hint to alice’s cell', () => driver.counters().hintsFollowed === 1);
  await check('bob has everything', () => sent.every((r) => rb.count(`away.${r}`) > 0));
  await b.ping();
  for (const r of sent) t.equal(rb.count(`away.${r}`), 1, `message ${r} shown once across the move`);
  t.same(rb.losses, [], 'leaving the old session is no loss');
  t.equal(b.connected, true);
  // Still working on the new session.
  b.send(1, 'alice', body('after-move'));
  await check('after the move', () => rb.ok([1]) && ra.count('after-move') === 1);

  await b.disconnect();
  await n.kill();
  await check('alice lost her session', () => ra.losses.length === 1);
  t.equal(a.connected, false);
  t.type(ra.losses[0], 'string');
  t.same(rb.losses, [], 'no lost after disconnect()');
  await t.rejects(a.connect(), { name: 'DriverError', driverCode: 'ECONNREFUSED' }, 'the node is gone');
  t.equal(driver.counters().lost, 1);
});

// ---- scripted cells: what a real one never (or rarely) does ----

/** The server keys shared by the fake cells of one test (any cell resumes another's tickets). */
interface FakeKeys {
  serverPublicKey: Uint8Array;
  ctx: ServerHandshakeContext;
  /** Signs connect hints the welcome's `hk` verifies. */
  hint: { publicKey: Uint8Array; secretKey: Uint8Array };
}

function fakeKeys(): FakeKeys {
  const kp = generateKeyPair();
  return {
    serverPublicKey: kp.publicKey,
    ctx: { staticKey: nativeSuite.fromSecret(kp.secretKey), ticketKeys: { current: { id: 1, key: random(32) } }, ticketLifetimeMs: 3_600_000, suite: nativeSuite, now: Date.now },
    hint: hintKeyPair(kp.secretKey),
  };
}

const u64 = (n: number): Buffer => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(n));
  return b;
};

/** One session on a fake cell, as its script sees it. */
interface FakeSession {
  socket: Socket;
  send(m: object): void;
  sealed(plain: Uint8Array): void;
  raw(b: Buffer): void;
  /** The counter the next sealed frame to the client carries. */
  counter(): number;
}

interface FakeOptions {
  /** The first flight: answered with broken msgpack, never answered, or with a cookie challenge first. */
  hello?: 'garbage' | 'mute' | 'cookie';
  /** Every resumption is refused with TICKET_INVALID. */
  refuseResume?: boolean;
  /** Pings after the registration one are answered (default true). */
  answerPings?: boolean;
  cell?: string;
  /** Once the session is registered (its first ping answered). */
  after?: (s: FakeSession) => void;
  /** Every sealed client message after `finish`. */
  onMessage?: (m: ClientMessage, s: FakeSession) => void;
}

interface FakeCell {
  addr: string;
  /** Client message types received, in order, over every session. */
  frames: string[];
  /** First flights received: hello / resume, with a cookie or not. */
  hellos: string[];
  sessions: FakeSession[];
}

/** A fake cell speaking the server side of the handshake and answering pings; the rest is scripted. */
async function fakeCell(t: Test, keys: FakeKeys, o: FakeOptions = {}): Promise<FakeCell> {
  const cell: FakeCell = { addr: '', frames: [], hellos: [], sessions: [] };
  const server = createServer((socket) => {
    socket.on('error', () => undefined);
    const dec = new FrameDecoder();
    let ch: SecureChannel | undefined;
    let expected: Uint8Array | undefined;
    let registered = false;
    let cookie: Uint8Array | undefined;
    const io: FakeSession = {
      socket,
      send: (m) => void socket.write(encodeFrame(ch!.seal(pack(m)))),
      sealed: (plain) => void socket.write(encodeFrame(ch!.seal(plain))),
      raw: (b) => void socket.write(b),
      counter: () => ch!.sent,
    };
    socket.on('data', (chunk) =>
      dec.push(chunk, (b) => {
        if (!ch) {
          const h = decodeClientHandshake(unpack(b));
          cell.hellos.push(`${h.t}${h.cookie ? '+cookie' : ''}`);
          if (o.hello === 'mute') return;
          if (o.hello === 'garbage') return void socket.write(encodeFrame(Buffer.from([0x82, 0xa1])));
          if (o.hello === 'cookie' && !cookie) return void socket.write(encodeFrame(pack({ t: 'cookie', c: (cookie = random(16)) })));
          if (cookie && !(h.cookie && Buffer.compare(h.cookie, cookie) === 0)) throw new Error('the cookie did not come back');
          if (h.t === 'resume' && o.refuseResume) return void socket.end(encodeFrame(pack({ t: 'error', code: 'TICKET_INVALID', message: 'refused' })));
          const p = h.t === 'hello' ? readHello(h, keys.ctx) : readResume(h, keys.ctx);
          const r = writeWelcome(p, { session: `s${cell.sessions.length}`, cell: o.cell ?? 'fake-0', node: 'fake', hk: keys.hint.publicKey }, keys.ctx);
          ch = r.channel;
          expected = r.expectedFinish;
          cell.sessions.push(io);
          return void socket.write(encodeFrame(pack(r.welcome)));
        }
        const m = decodeClientMessage(unpack(ch.open(b)));
        cell.frames.push(m.t);
        if (m.t === 'finish') return checkFinish(expected!, m.h);
        if (m.t === 'ping' && (o.answerPings !== false || !registered)) io.send({ t: 'pong', n: m.n });
        if (m.t === 'ping' && !registered) {
          registered = true;
          o.after?.(io);
          return;
        }
        o.onMessage?.(m, io);
      }),
    );
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => server.close(() => r())));
  cell.addr = `127.0.0.1:${(server.address() as AddressInfo).port}`;
  return cell;
}

/** A driver on fake cells (closed at teardown). */
function fakeDriver(t: Test, keys: FakeKeys, addresses: string[], o: Partial<GravitasDriverOptions> = {}): GravitasDriver {
  const d = new GravitasDriver({ addresses, serverPublicKey: keys.serverPublicKey, idPrefix: 'f1x', ...o });
  t.teardown(() => d.close());
  return d;
}

t.test('the server ends a session: lost carries its code; a broken server cannot crash the generator', async (t) => {
  const msg = { t: 'msg', id: 'm1', from: 'x', fd: 'd', to: 'me', text: 'hi', ts: Date.now() };
  const cases: Array<{ name: string; after: (s: FakeSession) => void; code: string; throwing?: boolean }> = [
    { name: 'a goodbye', after: (s) => (s.send({ t: 'bye', code: 'SHUTTING_DOWN' }), s.socket.end()), code: 'SHUTTING_DOWN' },
    { name: 'a fatal error', after: (s) => (s.send({ t: 'error', code: 'IDLE_TIMEOUT', message: 'idle' }), s.socket.end()), code: 'IDLE_TIMEOUT' },
    { name: 'a plain close', after: (s) => s.socket.end(), code: 'CLOSED' },
    { name: 'a frame that does not authenticate', after: (s) => s.raw(encodeFrame(Buffer.concat([u64(s.counter()), random(40)]))), code: 'CLIENT_DECRYPT_FAILED' },
    { name: 'a replayed frame counter', after: (s) => s.raw(encodeFrame(Buffer.concat([u64(0), random(40)]))), code: 'CLIENT_NONCE_REUSE' },
    { name: 'a message without its fields', after: (s) => s.send({ t: 'msg', id: 5 }), code: 'CLIENT_BAD_MESSAGE' },
    { name: 'a length prefix beyond the frame limit', after: (s) => s.raw(Buffer.from([0xff, 0xff, 0xff, 0xff])), code: 'CLIENT_FRAME_TOO_LARGE' },
    { name: 'not msgpack', after: (s) => s.sealed(Buffer.from([0x82, 0xa1])), code: 'CLIENT_DECODE_FAILED' },
    { name: 'not a message', after: (s) => s.sealed(pack([1, 2])), code: 'CLIENT_BAD_MESSAGE' },
    { name: 'an event handler that throws', after: (s) => s.send(msg), code: 'CLIENT_ERROR', throwing: true },
  ];
  const keys = fakeKeys();
  for (const c of cases) {
    const cell = await fakeCell(t, keys, { after: c.after });
    const driver = fakeDriver(t, keys, [cell.addr]);
    const r = new Rec();
    r.throwOnMessage = c.throwing === true;
    const d = driver.device(dev('me'), r, []);
    await d.connect();
    await check(c.name, () => r.losses.length > 0);
    t.same(r.losses, [c.code], c.name);
    t.equal(d.connected, false);
  }
  const garbage = await fakeCell(t, keys, { hello: 'garbage' });
  await t.rejects(fakeDriver(t, keys, [garbage.addr]).device(dev('me'), new Rec(), []).connect(), { name: 'DriverError', driverCode: 'DECODE_FAILED' }, 'a broken handshake answer');
});

t.test('handshakes: cookie challenge, refused ticket, timeout, abandoned connect, cell fallback', async (t) => {
  const keys = fakeKeys();
  const cookie = await fakeCell(t, keys, { hello: 'cookie', refuseResume: true });
  const driver = fakeDriver(t, keys, [cookie.addr]);
  const r = new Rec();
  const d = driver.device(dev('me'), r, []);
  await d.connect();
  t.same(cookie.hellos, ['hello', 'hello+cookie'], 'the same first flight again, with the cookie');
  t.equal(driver.counters().cookies, 1);
  d.drop();
  await d.connect();
  t.same(cookie.hellos.slice(2), ['resume', 'resume+cookie', 'hello', 'hello+cookie'], 'a refused ticket: a full handshake on the same cell');
  t.match(driver.counters(), { resumeRefused: 1, resumed: 0, fullHandshakes: 2 });
  t.same(r.losses, []);

  const mute = await fakeCell(t, keys, { hello: 'mute' });
  const slow = fakeDriver(t, keys, [mute.addr], { connectTimeoutMs: 200 });
  await t.rejects(slow.device(dev('me'), new Rec(), []).connect(), { name: 'DriverError', driverCode: 'CONNECT_TIMEOUT' });
  const waiting = fakeDriver(t, keys, [mute.addr]).device(dev('me'), new Rec(), []);
  const pending = waiting.connect();
  await check('the hello arrived', () => mute.hellos.length === 2);
  waiting.drop();
  await t.rejects(pending, { name: 'DriverError', driverCode: 'ABORTED' }, 'drop() abandons a connect');
  t.equal(waiting.connected, false);

  // A cell that refuses connections: the next one is tried.
  const dead = createServer();
  await new Promise<void>((res) => dead.listen(0, '127.0.0.1', res));
  const deadAddr = `127.0.0.1:${(dead.address() as AddressInfo).port}`;
  await new Promise<void>((res) => dead.close(() => res()));
  const good = await fakeCell(t, keys);
  const both = fakeDriver(t, keys, [deadAddr, good.addr]);
  const name = ['u1', 'u2', 'u3', 'u4', 'u5', 'u6'].find((u) => both.home(`${u}/d0`) === deadAddr)!;
  await both.device(dev(name), new Rec(), []).connect();
  t.equal(good.sessions.length, 1, 'its own cell refused: on the other one');
  t.equal(both.counters().connectFailures, 1);
});

t.test('custody details: a burst bigger than one read, acks in one go, refusals by id, request retries', async (t) => {
  const keys = fakeKeys();
  const N = 300;
  const acks: string[] = [];
  const sends: string[] = [];
  const requests: string[] = [];
  let busy = 1;
  const cell = await fakeCell(t, keys, {
    after: (s) => {
      // ~300 KiB in one write: frames straddle the 64 KiB reads.
      s.socket.cork();
      for (let i = 0; i < N; i++) s.send({ t: 'msg', id: `m${i}`, from: 'peer', fd: 'd', to: 'me', text: `${i} `.padEnd(1000, 'y'), ts: Date.now() });
      s.socket.uncork();
    },
    onMessage: (m, s) => {
      if (m.t === 'ack') acks.push(m.id);
      if (m.t === 'send') {
        sends.push(m.id);
        s.send({ t: 'error', code: 'BAD_MESSAGE', message: 'no', ref: m.id });
      }
      if (m.t === 'req') {
        requests.push(m.op);
        if (busy-- > 0) s.send({ t: 'res', rid: m.rid, ok: false, code: 'BUSY', message: 'later' });
        else if (m.op === 'groups.create') s.send({ t: 'res', rid: m.rid, ok: true, data: { g: 'G1' } });
        else if (m.a['user'] === 'nobody') s.send({ t: 'res', rid: m.rid, ok: false, code: 'NOT_FOUND', message: 'no such user' });
        else s.send({ t: 'res', rid: m.rid, ok: true });
      }
    },
  });
  const driver = fakeDriver(t, keys, [cell.addr]);
  const r = new Rec();
  const d = driver.device(dev('me'), r, []);
  await d.connect();
  await check('every message shown', () => r.messages.length === N);
  t.same(r.messages.map((m) => Number(m.body.split(' ')[0])), range(0, N), 'whole and in order');
  await check('every message acknowledged', () => acks.length === N);
  t.same(acks, range(0, N).map((i) => `m${i}`));
  d.send(7, 'peer', 'x');
  await check('refused', () => r.outcomes.get(7));
  t.same(r.outcomes.get(7), { ok: false, code: 'BAD_MESSAGE' }, 'an error naming the message id is its outcome');
  t.same(sends, ['f1x7'], 'the id is the prefix and the ref in base 36');
  await d.disconnect();

  await driver.provision(dev('me'), ['a', 'b', 'me']);
  t.same(requests, ['contacts.add', 'contacts.add', 'contacts.add'], 'a BUSY answer is asked again; no request to add oneself');
  t.equal(await driver.createGroup(dev('me'), 'g', ['a']), 'G1');
  await t.rejects(driver.provision(dev('me'), ['nobody']), { name: 'DriverError', driverCode: 'NOT_FOUND' }, 'a final refusal fails provisioning');
});

t.test('moves: make-before-break; unverifiable, same-cell and unreachable hints are not followed', async (t) => {
  const keys = fakeKeys();
  const now = Date.now();
  const hint = (cell: string, addr: string, key = keys.hint.secretKey): Uint8Array =>
    signHint({ cell, addr, user: 'me', device: 'd0', issuedAt: now, expiresAt: now + 60_000 }, key);
  const sendsA: string[] = [];
  const sendsB: string[] = [];
  const a = await fakeCell(t, keys, { cell: 'A', onMessage: (m) => void (m.t === 'send' && sendsA.push(m.id)) });
  const b = await fakeCell(t, keys, {
    cell: 'B',
    onMessage: (m, s) => {
      if (m.t !== 'send') return;
      sendsB.push(m.id);
      s.send({ t: 'status', id: m.id, s: 'delivered' });
    },
  });
  const mute = await fakeCell(t, keys, { hello: 'mute' });
  const driver = fakeDriver(t, keys, [a.addr], { connectTimeoutMs: 300 });
  const r = new Rec();
  const d = driver.device(dev('me'), r, []);
  await d.connect();
  const onA = a.sessions[0]!;
  d.send(1, 'peer', 'unanswered on A');
  await check('A has the send', () => sendsA.length === 1);

  onA.send({ t: 'move', h: hint('B', b.addr, hintKeyPair(random(32)).secretKey), why: 'rebalance' });
  onA.send({ t: 'move', h: hint('A', a.addr), why: 'rebalance' });
  await check('forged and same-cell hints ignored', () => driver.counters().hintsIgnored === 2);
  onA.send({ t: 'move', h: hint('B', b.addr), why: 'rebalance' });
  await check('followed', () => driver.counters().hintsFollowed === 1);
  t.same(b.hellos, ['resume'], 'by resumption (the ticket of the session on A)');
  await check('the unconfirmed send went again on B, same id', () => r.ok([1]));
  t.same(sendsB, sendsA);
  await check('A got the goodbye', () => a.frames.includes('bye'));
  await check('and closed', () => onA.socket.destroyed);
  t.same(r.losses, [], 'leaving A is no loss');
  t.equal(d.connected, true);
  await d.ping();
  t.equal(r.doubleOutcomes, 0);

  const onB = b.sessions[0]!;
  onB.send({ t: 'move', h: hint('C', mute.addr), why: 'rebalance' });
  await check('an unreachable cell: the device stays', () => driver.counters().hintsFailed === 1);
  t.same(mute.hellos, ['resume'], 'it was tried');
  await d.ping();
  t.equal(b.sessions.length, 1);
  t.same(r.losses, []);

  // The session being left dies and the move fails: now it is a loss.
  onB.send({ t: 'move', h: hint('C', mute.addr), why: 'associate' });
  await check('the move began', () => mute.hellos.length === 2);
  onB.socket.destroy();
  await check('lost once the move failed', () => r.losses.length === 1);
  t.same(r.losses, ['CLOSED']);
  t.equal(d.connected, false);
});

t.test('keepalive: an idle session is pinged; a silent server is cut', async (t) => {
  const keys = fakeKeys();
  const cell = await fakeCell(t, keys, { answerPings: false });
  const driver = fakeDriver(t, keys, [cell.addr], { keepaliveMs: 100 });
  const r = new Rec();
  const d = driver.device(dev('me'), r, []);
  await d.connect();
  await check('cut', () => r.losses.length > 0);
  t.same(r.losses, ['KEEPALIVE_TIMEOUT']);
  t.ok(cell.frames.filter((f) => f === 'ping').length >= 2, 'pinged after the registration ping');
  t.ok(driver.counters().keepalivePings >= 1);
  t.equal(driver.counters().keepaliveTimeouts, 1);
});
