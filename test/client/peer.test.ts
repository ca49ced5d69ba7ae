/*
 * The SDK's peer link on its own (no cluster): probes, UDP beacon discovery, the
 * bounds of the listener, and that a relay request is only handed to a peer this
 * device reported. Real sockets on 127.0.0.1; the clients never connect.
 */
import t from 'tap';
import { connect as netConnect, type Socket } from 'node:net';
import { createSocket } from 'node:dgram';
import { ErrorCode, generateKeyPair, pack, random } from '@gravitas/protocol';
import { GravitasClient, PeerLink, type PeerLinkOptions } from '@gravitas/client';
import { check } from '@gravitas/testkit';

const client = (user: string): GravitasClient => {
  const c = new GravitasClient({ servers: ['127.0.0.1:1'], serverPublicKey: random(32), identity: generateKeyPair(), user, device: 'd1', reconnect: false });
  c.on('error', () => undefined);
  return c;
};

async function link(user: string, o: PeerLinkOptions = {}): Promise<PeerLink> {
  const l = new PeerLink(client(user), { host: '127.0.0.1', port: 0, timeoutMs: 3000, ...o });
  t.teardown(() => l.close());
  await l.start();
  return l;
}

t.test('a probe learns who answers at an address; oneself and junk addresses are refused', async (t) => {
  const a = await link('p-ann');
  const b = await link('p-bob');
  const seen: unknown[] = [];
  a.on('peer', (p) => seen.push(p));
  t.same(await a.addPeer(b.address), { user: 'p-bob', device: 'd1' });
  t.same(a.peers().map((p) => [p.user, p.device, p.addr]), [['p-bob', 'd1', b.address]]);
  t.same(seen, [{ user: 'p-bob', device: 'd1', addr: b.address }], "a 'peer' event");
  await t.rejects(a.addPeer(a.address), { code: ErrorCode.NOT_ALLOWED }, 'itself');
  await t.rejects(a.addPeer(b.address, { user: 'p-cat', device: 'd1' }), { code: ErrorCode.CONFLICT }, 'someone else than announced');
  await t.rejects(a.addPeer('not an address'), TypeError);
});

t.test('UDP beacons announce the peer port; the listener probes what it hears', async (t) => {
  const b = await link('p-bea', { beacon: { port: 0, to: '127.0.0.1:9', host: '127.0.0.1' } });
  const a = await link('p-ada', { beacon: { port: 0, to: `127.0.0.1:${b.beaconPort}`, host: '127.0.0.1', intervalMs: 200 } });
  await check('bea found ada by her beacon', () => b.peers().find((p) => p.user === 'p-ada'), { timeout: 10_000 });
  t.equal(b.peers()[0]!.addr, a.address, 'at the address the beacon gave, verified by a probe');
});

t.test('a beacon is only a lead: a forged one names nobody into the peer table', async (t) => {
  const b = await link('p-bel', { beacon: { port: 0, to: '127.0.0.1:9', host: '127.0.0.1' } });
  const c = await link('p-cid');
  const cPort = Number(c.address.slice(c.address.lastIndexOf(':') + 1));
  const udp = createSocket('udp4');
  t.teardown(() => udp.close());
  const beacon = (u: string, p: number) => new Promise<void>((resolve) => udp.send(pack({ t: 'gvb', v: 1, u, d: 'd1', p }), b.beaconPort, '127.0.0.1', () => resolve()));
  // A port nobody listens on (c's listener, closed), then c's real port under another name, then the truth.
  const gone = await link('p-gone');
  const gonePort = Number(gone.address.slice(gone.address.lastIndexOf(':') + 1));
  await gone.close();
  await beacon('p-ghost', gonePort);
  await beacon('p-mask', cPort);
  // Repeated: a beacon for an address still being probed (p-mask's) is dropped.
  await check('the genuine beacon was probed', async () => {
    await beacon('p-cid', cPort);
    return b.peers().find((p) => p.user === 'p-cid');
  }, { timeout: 10_000, interval: 100 });
  t.same(b.peers().map((p) => [p.user, p.addr]), [['p-cid', c.address]], 'only the device that answered the probe under its own name');
});

t.test('a relay request goes only to a peer this device reported', async (t) => {
  const target = await link('p-tia');
  const relayer = await link('p-rex');
  await relayer.addPeer(target.address);
  const relayed: Array<{ ok: boolean; error?: Error }> = [];
  relayer.on('relayed', (r) => relayed.push(r));
  // Not connected, so never reported: the server would not have asked, and the SDK does not hand it on.
  relayer.client.emit('relayRequest', { u: 'p-tia', d: 'd1', w: random(100) });
  relayer.client.emit('relayRequest', { u: 'p-zed', d: 'd1', w: random(100) });
  await check('both answered', () => relayed.length === 2, { timeout: 5000 });
  t.same(relayed.map((r) => [r.ok, (r.error as { code?: string } | undefined)?.code]), [[false, ErrorCode.NOT_FOUND], [false, ErrorCode.NOT_FOUND]]);
});

t.test('the listener bounds its connections', async (t) => {
  const l = await link('p-lim', { maxConnections: 2, timeoutMs: 60_000 });
  const [host, port] = [l.address.slice(0, l.address.lastIndexOf(':')), Number(l.address.slice(l.address.lastIndexOf(':') + 1))];
  const open = (): Promise<Socket> => new Promise((resolve, reject) => {
    const s = netConnect({ host, port }, () => resolve(s));
    s.on('error', reject);
  });
  const held = [await open(), await open()];
  t.teardown(() => held.forEach((s) => s.destroy()));
  await check('both held', async () => {
    const third = await open();
    const closed = await new Promise<boolean>((resolve) => {
      third.once('close', () => resolve(true));
      setTimeout(() => resolve(false), 2000).unref();
    });
    third.destroy();
    return closed;
  }, { timeout: 10_000 });
  t.pass('a third connection is closed at accept');
});
