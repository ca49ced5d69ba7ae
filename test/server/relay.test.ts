/*
 * Wake-ups relayed through peer devices (docs/relay.md), with real processes: one
 * nats-server, node A of two cells and node B of one (its own report lifetime
 * and relayer-list bounds), SDK clients with real peer listeners on
 * 127.0.0.1. A sender writes to an offline device; a device that reported reaching
 * it gets a relay request and hands the signed token over; the target verifies it,
 * connects to the hinted cell and drains its mailbox. Tokens that are forged,
 * altered, replayed, expired or misdirected are refused and do not connect; junk
 * is ignored; relays never show as messages; the rate limits hold with wakes
 * spread over three cells of two nodes; relayers are ranked; a blocked one is
 * never chosen; reports are clamped and relayer lists bounded (read from KV).
 */
import t, { type Test } from 'tap';
import { connect as netConnect } from 'node:net';
import { join } from 'node:path';
import {
  encodeFrame, ErrorCode, FrameDecoder, fromBase64Url, hintKeyPair, pack, random, RemoteError, signHint, signWake, unpack,
} from '@gravitas/protocol';
import { PeerLink } from '@gravitas/client';
import { check, NatsServer, tempDir } from '@gravitas/testkit';
import { Kvm } from '@nats-io/kv';
import { connect as natsConnect } from '@nats-io/transport-node';
import { clusterKeys, connectClient, makeClient, metricsText, metricValue, nodeConfig, registered, spawnNode, writeNodeConfig, type TestClient } from '../fixtures/cluster.js';

const STREAM_BYTES = 64 * 1024 * 1024;
const PER_TARGET = 2;
const PER_RELAYER = 3;
/** Node B's own bounds (node A keeps the defaults: 10 minutes, 8). */
const MAX_REPORT_TTL_B = 60_000;
const MAX_RELAYERS_B = 2;

/** One frame to a peer listener; its answer (decoded), or 'closed' if it closed without one. */
function peerAsk(addr: string, body: Uint8Array): Promise<Record<string, unknown> | 'closed'> {
  const i = addr.lastIndexOf(':');
  return new Promise((resolve, reject) => {
    const s = netConnect({ host: addr.slice(0, i), port: Number(addr.slice(i + 1)) });
    const dec = new FrameDecoder(4096);
    let done = false;
    const finish = (r: Record<string, unknown> | 'closed'): void => {
      if (done) return;
      done = true;
      s.destroy();
      resolve(r);
    };
    s.setTimeout(10_000, () => reject(new Error(`no answer from ${addr}`)));
    s.on('connect', () => s.write(encodeFrame(body)));
    s.on('data', (c) => dec.push(c, (b) => finish(unpack(b) as Record<string, unknown>)));
    s.on('error', () => finish('closed'));
    s.on('close', () => finish('closed'));
  });
}

t.test('peer-relay wake-ups', async (t) => {
  const nats = await NatsServer.start();
  t.teardown(() => nats.stop());
  const dir = await tempDir('gravitas-relay-');
  t.teardown(() => dir[Symbol.asyncDispose]());
  const keys = clusterKeys();
  // One report per device in this test: a second one must be RATE_LIMITED, whatever the machine's speed.
  const relay = { perTargetPerWindow: PER_TARGET, perRelayerPerWindow: PER_RELAYER, windowMs: 3_600_000, minReportIntervalMs: 3_600_000 };
  // A token's hint names the sender's cell unless that cell is over the load cap (then the least loaded):
  // epsilon 10 puts the cap out of reach of this test's few sessions, so the hinted cell is predictable.
  const extra = { mailbox: { maxBytesPerPartition: STREAM_BYTES }, push: { enabled: false, coalesceMs: 0, dampingMaxWindowMs: 0 }, relay, gravity: { epsilon: 10 } };
  const file = await writeNodeConfig(join(dir.path, 'node.json'), nodeConfig({ natsUrl: nats.url, nodeId: 'relayA', dataDir: join(dir.path, 'relayA'), keys, extra }));
  const fileB = await writeNodeConfig(
    join(dir.path, 'nodeB.json'),
    nodeConfig({ natsUrl: nats.url, nodeId: 'relayB', dataDir: join(dir.path, 'relayB'), keys, cells: 1, extra: { ...extra, relay: { ...relay, maxReportTtlMs: MAX_REPORT_TTL_B, maxRelayersPerTarget: MAX_RELAYERS_B } } }),
  );
  const [node, nodeB] = await Promise.all([spawnNode(file), spawnNode(fileB)]);
  t.teardown(() => node.stop(5000));
  t.teardown(() => nodeB.stop(5000));
  const [c0, c1] = node.clientAddresses as [string, string];
  const [b0] = nodeB.clientAddresses as [string];
  // The relay records themselves (docs/relay.md: KV <prefix>_reach, key user.device), to observe what the server kept.
  const nc = await natsConnect({ servers: nats.url });
  t.teardown(() => nc.close());
  const reachKv = await new Kvm(nc).open('gravitas_reach');
  const relayersOf = async (user: string, device: string): Promise<Array<{ who: string; expiresAt: number; tier: number }>> => {
    const e = await reachKv.get(`${user}.${device}`);
    const rec = e && e.operation === 'PUT' ? (unpack(e.value) as { r: Array<[string, string, number, number]> }) : { r: [] };
    return rec.r.map(([u, d, expiresAt, tier]) => ({ who: `${u}/${d}`, expiresAt, tier }));
  };
  const pk = keys.serverPublicKey;
  const hintKeys = hintKeyPair(fromBase64Url(keys.serverKey, 32));
  const on = (cell: string, user: string, extra = {}) => connectClient(t, { user, servers: [cell], serverPublicKey: pk, ...extra });
  // Summed over both nodes: a wake attempt runs on the cell of the message's sender, on either node.
  const metric = async (name: string, labels: Record<string, string> = {}, nodes = [node, nodeB]): Promise<number> => {
    let n = 0;
    for (const x of nodes) n += metricValue(await metricsText(x.adminUrl), name, labels) ?? 0;
    return n;
  };
  const wakes = (result: string) => metric('gravitas_relay_wakes_total', { result });
  const wakeTotal = async (nodes = [node, nodeB]): Promise<number> => {
    let n = 0;
    for (const x of nodes) {
      for (const line of (await metricsText(x.adminUrl)).split('\n')) if (line.startsWith('gravitas_relay_wakes_total{')) n += Number(line.split(/\s+/).pop());
    }
    return n;
  };
  /** A device that exists (registered once, after adding `contacts`) and is offline now. */
  const offline = async (user: string, extra = {}, contacts: string[] = []): Promise<TestClient> => {
    const tc = makeClient({ user, servers: [c1], serverPublicKey: pk, ...extra });
    t.teardown(() => tc.client.close());
    await tc.client.connect();
    await registered(tc);
    for (const c of contacts) await tc.client.request('contacts.add', { user: c });
    await tc.client.close();
    return tc;
  };
  /** Relay requests a client's SDK was given (whether or not a PeerLink forwards them). */
  const relays = (tc: TestClient): Array<{ u: string; d: string }> => {
    const got: Array<{ u: string; d: string }> = [];
    tc.client.on('relayRequest', (r) => got.push({ u: r.u, d: r.d }));
    return got;
  };
  const link = async (tc: TestClient): Promise<PeerLink> => {
    const l = new PeerLink(tc.client, { host: '127.0.0.1', port: 0, timeoutMs: 5000 });
    t.teardown(() => l.close());
    await l.start();
    return l;
  };
  // Online the whole time, reports a device of its own choosing only: must never be asked to relay for anyone else.
  const bystander = await on(c0, 'rl-bystander');
  const bystanderRelays = relays(bystander);
  await offline('rl-elsewhere');
  await bystander.client.request('reach.report', { peers: [{ user: 'rl-elsewhere', device: 'd1' }], ttlMs: 600_000 });

  t.test('an offline device is woken through a LAN peer and gets its message; relays are never messages', async (t) => {
    const tom = await offline('rl-tom');
    const tomLink = await link(tom);
    const woken: unknown[] = [];
    const ignored: Error[] = [];
    tomLink.on('woken', (w) => woken.push(w));
    tomLink.on('wakeIgnored', (e) => ignored.push(e));

    // Two devices reach tom: his contact rita, and ned, who is not a contact and whom tom never reported: ned is not recorded.
    // rita is on cell 1 (tom's configured cell too), the sender on cell 0: only a token naming the sender's cell sends tom to cell 0.
    const rita = await on(c1, 'rl-rita');
    const ned = await on(c1, 'rl-ned');
    await tom.client.connect();
    await registered(tom);
    await tom.client.request('contacts.add', { user: 'rl-rita' });
    await tom.client.close();
    const ritaRelays = relays(rita);
    const nedRelays = relays(ned);
    const ritaLink = await link(rita);
    const nedLink = await link(ned);
    const relayed: Array<{ ok: boolean }> = [];
    ritaLink.on('relayed', (r) => relayed.push(r));
    for (const [l, name] of [[ritaLink, 'rita'], [nedLink, 'ned']] as const) {
      const reported = new Promise((r) => l.once('reported', r));
      t.same(await l.addPeer(tomLink.address), { user: 'rl-tom', device: 'd1' }, `${name}'s probe reaches tom`);
      await reported;
    }

    const sam = await on(c0, 'rl-sam');
    const connectsBefore = tom.connects;
    const drained = () => metric('gravitas_deliveries_total', { path: 'mailbox' });
    const drainedBefore = await drained();
    const r = await sam.client.send('rl-tom', 'wake up, tom');
    t.equal(r.status, 'stored', 'tom is offline: the message is stored');
    const got = await tom.received((m) => m.id === r.id, 20_000);
    t.equal(got.text, 'wake up, tom', 'tom was woken and drained his mailbox');
    t.ok(tom.connects > connectsBefore, 'tom connected because of the wake token');
    t.equal(tom.client.server, c0, "to the cell the token named: the sender's, where the message was found unreachable");
    await check('woken event', () => woken.length === 1, { timeout: 5000 });
    await tom.client.ping();
    t.equal((await drained()) - drainedBefore, 1, 'the server wrote it from the mailbox once (counted before any SDK de-duplication)');
    t.equal(ignored.length, 0, 'no token was refused');
    t.same(ritaRelays, [{ u: 'rl-tom', d: 'd1' }], 'the contact relayed, once');
    t.same(nedRelays, [], 'the non-contact was not asked');
    t.same(relayed.map((x) => x.ok), [true], "rita's SDK handed the token over");
    t.same(rita.inbox, [], 'nothing shown to the relayer');
    t.same(tom.inbox.map((m) => m.text), ['wake up, tom'], 'the target shows the chat message only');
    t.same([...rita.errors, ...tom.errors], [], 'no errors on either side');
    t.equal(await wakes('sent'), 1);
    t.ok((await metric('gravitas_relay_requests_total')) >= 1, 'relay requests counted');
  });

  t.test('forged, altered, misdirected, expired, replayed and junk tokens are refused and do not connect', async (t) => {
    // Never connected before: it knows the hint key from its configuration only.
    const una = makeClient({ user: 'rl-una', servers: [c1], serverPublicKey: pk, hintPublicKey: hintKeys.publicKey });
    t.teardown(() => una.client.close());
    const unaLink = await link(una);
    const ignored: string[] = [];
    unaLink.on('wakeIgnored', (e) => ignored.push((e as { code?: string }).code ?? e.message));
    const now = Date.now();
    // Refused tokens name cell 0, the genuine one cell 1: a refused token that was followed anyway would show as an extra connect.
    const hint = (over: { device?: string; expiresAt?: number; addr?: string } = {}, sk = hintKeys.secretKey) =>
      signHint({ cell: over.addr === c1 ? 'cell-1' : 'cell-0', addr: over.addr ?? c0, user: 'rl-una', device: over.device ?? 'd1', issuedAt: now, expiresAt: over.expiresAt ?? now + 30_000 }, sk);
    const token = (over: { device?: string; issuedAt?: number; expiresAt?: number; addr?: string } = {}, sk = hintKeys.secretKey) =>
      signWake({ user: 'rl-una', device: over.device ?? 'd1', hint: hint(over, sk), issuedAt: over.issuedAt ?? now, expiresAt: over.expiresAt ?? now + 30_000 }, sk);
    const send = async (w: Uint8Array) => peerAsk(unaLink.address, pack({ t: 'wake', w }));

    const forged = token({}, hintKeyPair(random(32)).secretKey);
    t.same(await send(forged), { t: 'no', code: ErrorCode.WAKE_INVALID }, 'forged (another key)');
    const altered = token();
    altered[altered.length - 5]! ^= 1;
    t.same(await send(altered), { t: 'no', code: ErrorCode.WAKE_INVALID }, 'altered (one bit)');
    t.same(await send(token({ device: 'other' })), { t: 'no', code: ErrorCode.WAKE_INVALID }, 'for another device');
    t.same(await send(token({ issuedAt: now - 60_000, expiresAt: now - 1 })), { t: 'no', code: ErrorCode.WAKE_EXPIRED }, 'expired');
    t.same(await send(hint()), { t: 'no', code: ErrorCode.WAKE_INVALID }, 'a genuine connect hint is not a token');
    t.same(await send(random(200)), { t: 'no', code: ErrorCode.WAKE_INVALID }, 'unsigned bytes');
    t.same(await peerAsk(unaLink.address, new Uint8Array([0xc1, 0xde, 0xad, 0xbe, 0xef])), { t: 'no', code: ErrorCode.DECODE_FAILED }, 'a junk frame is answered and ignored');
    t.same(await peerAsk(unaLink.address, pack({ t: 'relay', u: 'x' })), { t: 'no', code: ErrorCode.UNKNOWN_TYPE }, 'an unknown peer frame is ignored');
    const huge = await peerAsk(unaLink.address, new Uint8Array(5000));
    t.ok(huge === 'closed' || (huge as { code?: string }).code === ErrorCode.FRAME_TOO_LARGE, 'an oversized frame is refused unread');
    t.notOk(una.client.connected, 'not connected');

    const good = token({ addr: c1 });
    t.same(await send(good), { t: 'ok' }, 'a genuine token is accepted');
    await check('una connected', () => una.client.connected && una.client.server === c1, { timeout: 15_000 });
    await registered(una);
    // A refused token that had been followed would have connected to cell 0 first, then moved.
    t.equal(una.connects, 1, 'exactly one connect, to the cell the genuine token named');
    await una.client.close();
    t.same(await send(good), { t: 'no', code: ErrorCode.WAKE_REPLAYED }, 'the same token again: replayed');
    // Barrier: a fresh token to cell 0. Had the replay (cell 1) been followed, there would be two connects, or a move.
    t.same(await send(token()), { t: 'ok' }, 'a fresh token is accepted');
    await check('una connected again', () => una.client.connected && una.client.server === c0, { timeout: 15_000 });
    await registered(una);
    t.equal(una.connects, 2, 'the replay did not connect');
    t.same(ignored, [ErrorCode.WAKE_INVALID, ErrorCode.WAKE_INVALID, ErrorCode.WAKE_INVALID, ErrorCode.WAKE_EXPIRED, ErrorCode.WAKE_INVALID, ErrorCode.WAKE_INVALID, ErrorCode.WAKE_REPLAYED], 'each refusal reported as wakeIgnored');
  });

  t.test('rate limits: per target and per relayer, cluster-wide (wakes from three cells of two nodes); one who never reported is never chosen', async (t) => {
    // A wake attempt runs on the sender's cell: senders on cells 0 and 1 of node A and on node B, in turn,
    // so a limit kept per cell (instead of in the shared KV record) would let every cell have its own quota.
    const senders = [await on(c0, 'rl-sam2a'), await on(c1, 'rl-sam2b'), await on(b0, 'rl-sam2c')];
    /** Sends one message from sender i mod 3 and waits until its wake attempt has been counted (whatever its result). */
    const sendAndWake = async (to: string, i: number): Promise<void> => {
      const before = await wakeTotal();
      const r = await senders[i % 3]!.client.send(to, `ping ${i}`);
      t.equal(r.status, 'stored');
      await check(`wake attempt for ${to} counted`, async () => (await wakeTotal()) > before, { timeout: 10_000, interval: 50 });
    };
    const onB = async () => wakeTotal([nodeB]);
    const bBefore = await onB();

    // Per target: five messages to an offline device from three cells, PER_TARGET relay requests.
    const tia = await offline('rl-tia', {}, ['rl-ray']);
    const ray = await on(c0, 'rl-ray');
    const rayRelays = relays(ray);
    await ray.client.request('reach.report', { peers: [{ user: tia.user, device: 'd1' }], ttlMs: 600_000 });
    const limitedBefore = await wakes('rate_limited_target');
    for (let i = 0; i < 5; i++) await sendAndWake(tia.user, i);
    // Relay frames may reach the relayer after the attempt is counted (an envelope to its cell).
    await check('relay requests arrived', () => rayRelays.length >= PER_TARGET, { timeout: 10_000 });
    await ray.client.ping();
    t.equal(rayRelays.length, PER_TARGET, `5 wakes of one target from 3 cells: ${PER_TARGET} relay requests`);
    t.equal((await wakes('rate_limited_target')) - limitedBefore, 5 - PER_TARGET, 'the rest were rate-limited (target)');

    // Per relayer: one relayer reaching four offline devices relays for PER_RELAYER of them, whichever cells ask.
    const targets = await Promise.all(['rl-t1', 'rl-t2', 'rl-t3', 'rl-t4'].map((u) => offline(u, {}, ['rl-rex'])));
    const rex = await on(c1, 'rl-rex');
    const rexRelays = relays(rex);
    await rex.client.request('reach.report', { peers: targets.map((x) => ({ user: x.user, device: 'd1' })), ttlMs: 600_000 });
    const relayerLimitedBefore = await wakes('rate_limited_relayer');
    for (const [i, x] of targets.entries()) await sendAndWake(x.user, i);
    await check('relay requests arrived', () => rexRelays.length >= PER_RELAYER, { timeout: 10_000 });
    await rex.client.ping();
    t.equal(rexRelays.length, PER_RELAYER, `4 targets through one relayer, woken from 3 cells: ${PER_RELAYER} relay requests`);
    t.equal((await wakes('rate_limited_relayer')) - relayerLimitedBefore, 1, 'the fourth was rate-limited (relayer)');
    t.equal((await onB()) - bBefore, 2, 'node B ran 2 of the 9 attempts: the limits were shared across nodes, not just cells');

    // At once: six messages to each of four fresh targets, sent together from the three cells. A slot is taken by
    // compare-and-set on the target's KV record, so concurrent attempts on different nodes cannot all pass.
    // (Each cell makes one attempt per target at a time: up to three race per target.)
    const burst = await Promise.all([0, 1, 2, 3].map(async (k) => {
      const target = await offline(`rl-tio${k}`, {}, [`rl-rio${k}`]);
      const relayer = await on(k % 2 === 0 ? c0 : b0, `rl-rio${k}`);
      const got = relays(relayer);
      await relayer.client.request('reach.report', { peers: [{ user: target.user, device: 'd1' }], ttlMs: 600_000 });
      return { target, relayer, got };
    }));
    const burstBefore = await wakeTotal();
    const sent = await Promise.all(burst.flatMap(({ target }) => [0, 1, 2, 3, 4, 5].map((i) => senders[i % 3]!.client.send(target.user, `burst ${i}`))));
    t.same(new Set(sent.map((r) => r.status)), new Set(['stored']), 'all stored');
    await check("the bursts' wake attempts counted", async () => (await wakeTotal()) - burstBefore >= 3 * burst.length, { timeout: 10_000, interval: 50 });
    await check('relay requests arrived', () => burst.every((b) => b.got.length >= PER_TARGET), { timeout: 10_000 });
    await Promise.all(burst.map((b) => b.relayer.client.ping()));
    t.same(burst.map((b) => b.got.length), burst.map(() => PER_TARGET), `bursts from 3 cells at once: ${PER_TARGET} relay requests per target`);

    // Nobody reported this one: no relay at all.
    const noBefore = await wakes('no_relayer');
    const lone = await offline('rl-lone');
    await sendAndWake(lone.user, 0);
    t.equal((await wakes('no_relayer')) - noBefore, 1, 'no relayer for a device nobody reported');
    t.same(bystanderRelays, [], 'a device that never reported a target was never asked to relay for it');
    t.same([...ray.inbox, ...rex.inbox, ...bystander.inbox], [], 'relay requests never show as messages');
  });

  t.test('reach.report input is checked: BAD_MESSAGE, RATE_LIMITED', async (t) => {
    const rob = await on(c0, 'rl-rob');
    const code = async (a: Record<string, unknown>): Promise<string> =>
      rob.client.request('reach.report', a as never).then(() => 'ok', (e: unknown) => (e instanceof RemoteError ? e.code : String(e)));
    const peers = (n: number) => Array.from({ length: n }, (_, i) => ({ user: `rl-p${i}`, device: 'd1' }));
    t.equal(await code({ peers: 'all', ttlMs: 60_000 }), ErrorCode.BAD_MESSAGE, 'peers not a list');
    t.equal(await code({ peers: peers(33), ttlMs: 60_000 }), ErrorCode.BAD_MESSAGE, 'too many peers');
    t.equal(await code({ peers: [{ user: 'a b', device: 'd1' }], ttlMs: 60_000 }), ErrorCode.BAD_MESSAGE, 'a bad user name');
    t.equal(await code({ peers: [{ user: 'x', device: 'd'.repeat(33) }], ttlMs: 60_000 }), ErrorCode.BAD_MESSAGE, 'a device name too long');
    t.equal(await code({ peers: ['rl-x'], ttlMs: 60_000 }), ErrorCode.BAD_MESSAGE, 'a peer that is not a map');
    t.equal(await code({ peers: [] }), ErrorCode.BAD_MESSAGE, 'no ttlMs');
    t.equal(await code({ peers: [], ttlMs: 10 }), ErrorCode.BAD_MESSAGE, 'ttlMs too short');
    t.equal(await code({ peers: [], ttlMs: 1e12 }), ErrorCode.BAD_MESSAGE, 'ttlMs too long');
    t.same(await rob.client.request('reach.report', { peers: [{ user: 'rl-nobody', device: 'd1' }, { user: 'rl-rob', device: 'd1' }], ttlMs: 60_000 }), { ttlMs: 60_000 }, 'answered with the lifetime only');
    t.equal(await code({ peers: [], ttlMs: 60_000 }), ErrorCode.RATE_LIMITED, 'a second report within the interval');
    t.ok(await rob.client.ping().then(() => true), 'the session lives on');
  });

  t.test('an attacker: a report tells nothing about who exists and makes nobody a relayer without consent', async (t) => {
    const sam = await on(c1, 'rl-sam3');
    const wakeOf = async (to: string, text: string): Promise<void> => {
      const before = await wakeTotal();
      t.equal((await sam.client.send(to, text)).status, 'stored');
      await check(`wake attempt for ${to} counted`, async () => (await wakeTotal()) > before, { timeout: 10_000, interval: 50 });
    };
    const vic = await offline('rl-vic');
    // Each report from another device of the attacker (one report per device per hour here).
    const mal = async (device: string) => {
      const c = await on(c0, 'rl-mal', { device });
      return { c, got: relays(c) };
    };
    const probes = [
      { user: 'rl-vic', device: 'd1' }, // exists
      { user: 'rl-vic', device: 'd9' }, // a user that exists, a device that does not
      { user: 'rl-nobody-at-all', device: 'd1' }, // nothing
    ];
    const answers: unknown[] = [];
    for (const [i, p] of probes.entries()) answers.push(await (await mal(`m${i}`)).c.client.request('reach.report', { peers: [p], ttlMs: 600_000 }));
    t.same(answers, [{ ttlMs: 600_000 }, { ttlMs: 600_000 }, { ttlMs: 600_000 }], 'the same answer whether the device exists or not');

    const m4 = await mal('m4');
    await m4.c.client.request('reach.report', { peers: [{ user: 'rl-vic', device: 'd1' }], ttlMs: 600_000 });
    const noBefore = await wakes('no_relayer');
    await wakeOf('rl-vic', 'nobody consented');
    t.equal((await wakes('no_relayer')) - noBefore, 1, 'nothing was recorded: no relayer');
    t.same(m4.got, [], 'the stranger was not asked to relay');

    // Consent by contact: vic lists mal; a fresh report counts, and mal is asked.
    await vic.client.connect();
    await registered(vic);
    await vic.client.request('contacts.add', { user: 'rl-mal' });
    await vic.client.close();
    const m5 = await mal('m5');
    await m5.c.client.request('reach.report', { peers: [{ user: 'rl-vic', device: 'd1' }, { user: 'rl-vic', device: 'd9' }], ttlMs: 600_000 });
    t.same((await relayersOf('rl-vic', 'd9')).map((r) => r.who), [], "a contact's report of a device vic does not have plants nothing");
    t.same((await relayersOf('rl-vic', 'd1')).map((r) => r.who), ['rl-mal/m5'], 'its report of the real device is recorded');
    await wakeOf('rl-vic', 'a contact may relay');
    t.same(m5.got, [{ u: 'rl-vic', d: 'd1' }], 'the contact was asked');
    // Withdrawn: a block takes effect at once, whatever was reported before.
    await vic.client.connect();
    await registered(vic);
    await vic.client.request('contacts.block', { user: 'rl-mal' });
    await vic.client.close();
    const offBefore = await wakes('relayer_offline');
    await wakeOf('rl-vic', 'blocked now');
    t.equal((await wakes('relayer_offline')) - offBefore, 1, 'no relayer left that vic consents to');
    t.same(m5.got.length, 1, 'the blocked user was not asked again');
  });

  t.test('mutual consent: a device the target reported itself may relay for it, without being a contact', async (t) => {
    const sam = await on(c1, 'rl-sam4');
    // Both online: tes reports sid's device (its consent), then sid reports tes.
    const tes = await on(c1, 'rl-tes');
    const sid = await on(c0, 'rl-sid');
    const sidRelays = relays(sid);
    await tes.client.request('reach.report', { peers: [{ user: 'rl-sid', device: 'd1' }], ttlMs: 600_000 });
    await sid.client.request('reach.report', { peers: [{ user: 'rl-tes', device: 'd1' }], ttlMs: 600_000 });
    await tes.client.close();
    const before = await wakes('sent');
    t.equal((await sam.client.send('rl-tes', 'wake through sid')).status, 'stored');
    await check('sid was asked to relay', () => sidRelays.length === 1, { timeout: 10_000, interval: 50 });
    t.same(sidRelays, [{ u: 'rl-tes', d: 'd1' }]);
    t.equal((await wakes('sent')) - before, 1);
  });

  /** Sends one message and waits until the wake attempt it caused has been counted on either node. */
  const wakeFrom = async (t: Test, from: TestClient, to: string, text: string): Promise<void> => {
    const before = await wakeTotal();
    t.equal((await from.client.send(to, text)).status, 'stored', `${to} is offline: stored`);
    await check(`wake attempt for ${to} counted`, async () => (await wakeTotal()) > before, { timeout: 10_000, interval: 50 });
  };

  t.test('ranking: the target\'s own device before its contacts, then the contact with fewer recent relays', async (t) => {
    const sendB = await on(b0, 'rl-sam5');
    const sendA = await on(c1, 'rl-sam5a');
    const [k1, k2, k3] = await Promise.all(['rl-k1', 'rl-k2', 'rl-k3'].map((u) => offline(u, {}, ['rl-ka', 'rl-kb'])));
    // k1's own second device, online, and two contacts of all three targets, all on node A (its default bounds).
    const own = await on(c1, 'rl-k1', { device: 'd2' });
    const ka = await on(c0, 'rl-ka');
    const kb = await on(c0, 'rl-kb');
    const [ownGot, kaGot, kbGot] = [relays(own), relays(ka), relays(kb)];
    await own.client.request('reach.report', { peers: [{ user: 'rl-k1', device: 'd1' }], ttlMs: 600_000 });
    for (const k of [ka, kb]) await k.client.request('reach.report', { peers: [k1, k2, k3].map((x) => ({ user: x!.user, device: 'd1' })), ttlMs: 600_000 });
    t.same((await relayersOf('rl-k1', 'd1')).map((r) => r.tier).sort(), [0, 1, 1], 'k1 has its own device (tier 0) and two contacts (tier 1) as relayers');

    // Twice k1, from both nodes: its own device both times, although it has relayed more recently than either contact.
    await wakeFrom(t, sendB, 'rl-k1', 'one');
    await wakeFrom(t, sendA, 'rl-k1', 'two');
    await check('own device asked twice', () => ownGot.length >= 2, { timeout: 10_000 });
    // Then k2 and k3: each contact once, the lightly loaded one second (whichever reported last is first in the record).
    await wakeFrom(t, sendB, 'rl-k2', 'three');
    await wakeFrom(t, sendA, 'rl-k3', 'four');
    await check('contacts asked', () => kaGot.length + kbGot.length >= 2, { timeout: 10_000 });
    await Promise.all([own, ka, kb].map((x) => x.client.ping()));
    t.same(ownGot, [{ u: 'rl-k1', d: 'd1' }, { u: 'rl-k1', d: 'd1' }], 'the own device relayed both wakes of k1');
    t.same([kaGot.length, kbGot.length], [1, 1], 'each contact relayed once: fewer recent relays ranks first');
    t.same([...kaGot, ...kbGot].map((r) => r.u).sort(), ['rl-k2', 'rl-k3'], 'for k2 and k3');
  });

  t.test('a relayer the target blocked is never chosen, also when the block was made on another node than the wake', async (t) => {
    const sender = await on(c1, 'rl-sam6');
    // tb (on node B) and bx (node A) report each other: bx may relay for tb by the mutual rule, without being a contact.
    const tb = await on(b0, 'rl-tb');
    const bx = await on(c0, 'rl-bx');
    const bxGot = relays(bx);
    await tb.client.request('reach.report', { peers: [{ user: 'rl-bx', device: 'd1' }], ttlMs: 600_000 });
    await bx.client.request('reach.report', { peers: [{ user: 'rl-tb', device: 'd1' }], ttlMs: 600_000 });
    await tb.client.close();
    // Before the block: bx is asked (and the sender's cell has read tb's contacts and blocks).
    await wakeFrom(t, sender, 'rl-tb', 'before');
    await check('bx asked', () => bxGot.length === 1, { timeout: 10_000 });
    await tb.client.connect();
    await registered(tb);
    await tb.client.request('contacts.block', { user: 'rl-bx' });
    await tb.client.close();
    const offBefore = await wakes('relayer_offline');
    await wakeFrom(t, sender, 'rl-tb', 'after');
    t.equal((await wakes('relayer_offline')) - offBefore, 1, 'no consenting relayer left');
    await bx.client.ping();
    t.same(bxGot, [{ u: 'rl-tb', d: 'd1' }], 'the blocked relayer was not asked again');
    t.same((await relayersOf('rl-tb', 'd1')).map((r) => r.who), ['rl-bx/d1'], 'although its report still stands: the block is checked at the wake');
  });

  t.test(`node B: a report lasts at most relay.maxReportTtlMs; at most relay.maxRelayersPerTarget relayers, the target's own device kept`, async (t) => {
    await offline('rl-tm', {}, ['rl-ca', 'rl-cb']);
    const own = await on(b0, 'rl-tm', { device: 'd2' });
    const ca = await on(b0, 'rl-ca');
    const cb = await on(b0, 'rl-cb');
    const t0 = Date.now();
    const answers = [];
    for (const x of [own, ca, cb]) answers.push(await x.client.request('reach.report', { peers: [{ user: 'rl-tm', device: 'd1' }], ttlMs: 600_000 }));
    const t1 = Date.now();
    t.same(answers, [{ ttlMs: MAX_REPORT_TTL_B }, { ttlMs: MAX_REPORT_TTL_B }, { ttlMs: MAX_REPORT_TTL_B }], 'asked for 10 minutes, answered node B\'s maximum');
    const kept = await relayersOf('rl-tm', 'd1');
    t.same(kept.map((r) => r.who), ['rl-tm/d2', 'rl-cb/d1'], `${MAX_RELAYERS_B} kept: the own device first, then the latest contact (rl-ca, a contact reporting earlier, dropped)`);
    for (const r of kept) t.ok(r.expiresAt > t0 && r.expiresAt <= t1 + MAX_REPORT_TTL_B, `${r.who}'s report expires within ${MAX_REPORT_TTL_B} ms of its report (stored: +${r.expiresAt - t0} ms)`);
  });
});
