/*
 * PushGateway and RelayCoordinator against fakes of their ports
 * (test/fixtures/fake-cell.ts) and a local HTTP receiver: a provider that fails or
 * says the target is gone, a hook that throws, KV conflicts on mutes and on relay
 * slots. The guarantees are proved end to end by push.test.ts, mute.test.ts and
 * relay.test.ts; these cover the branches those cannot produce on demand.
 */
import t, { type Test } from 'tap';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { ErrorCode, hintKeyPair, pack, random, type Prefs } from '@gravitas/protocol';
import { CAS_ATTEMPTS, PushGateway, RelayCoordinator, type DeviceLocation, type SocialRecord } from '@gravitas/server/internal';
import { fakeCell, FakeKv, FakeSession, until, type FakeCell } from '../../fixtures/fake-cell.js';

const PREFS: Prefs = { readReceipts: true, presence: 'contacts', pushPreview: false, mutedPush: 'silent' };
const item = (from: string, to: string) => ({ k: 'm' as const, id: `m-${Math.random()}`, from, fd: 'd1', to, text: 'hi', ts: Date.now() });

/** The value of a counter (or gauge) with these labels; 0 if never counted. */
async function metric(m: { get(): Promise<{ values: Array<{ value: number; labels: object }> }> }, labels: Record<string, string> = {}): Promise<number> {
  const { values } = await m.get();
  return values.find((v) => Object.entries(labels).every(([k, x]) => (v.labels as Record<string, unknown>)[k] === x))?.value ?? 0;
}

/** An HTTP receiver answering each request with the next status of `statuses` (then 200). */
async function receiver(t: Test, statuses: number[]): Promise<{ url: string; hits: () => number }> {
  let hits = 0;
  const server = createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      hits++;
      res.writeHead(statuses.shift() ?? 200).end();
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => server.close(() => r())));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`, hits: () => hits };
}

interface PushRig { f: FakeCell; gw: PushGateway; targets: FakeKv; mutes: FakeKv; unreachable: string[] }

async function pushRig(t: Test, hook?: () => void): Promise<PushRig> {
  const f = fakeCell('c0', {
    push: { enabled: true, allowHttp: true, webhookSecret: 'a-webhook-secret-of-some-length', coalesceMs: 0, maxAttempts: 2, retryBaseMs: 1, retryMaxMs: 5 },
  });
  t.teardown(() => f.metrics.stop());
  const targets = new FakeKv();
  const mutes = new FakeKv();
  const unreachable: string[] = [];
  const gw = new PushGateway(f.ctx, {
    social: { prefs: async () => PREFS },
    groups: { handle: async () => ({ members: ['alice', 'bob'] }) },
    accounts: { devices: async () => ['d1'] },
    hints: { signHintTo: () => new Uint8Array(80) },
    events: {
      unreachable: (user, device) => {
        unreachable.push(`${user}/${device}`);
        hook?.();
      },
    },
  });
  await gw.start({ push: targets.kv, mutes: mutes.kv });
  t.teardown(() => gw.stop());
  return { f, gw, targets, mutes, unreachable };
}

t.test('push: a provider that keeps failing hands the device to the relay', async (t) => {
  const r = await pushRig(t);
  const hook = await receiver(t, [503, 503]);
  const bob = new FakeSession('bob', 'd1');
  await r.gw.handle(bob, 'push.register', { kind: 'webhook', url: hook.url });
  r.gw.stored('bob', 'd1', item('alice', 'bob'));
  await until('the relay is told', () => r.unreachable.length > 0);
  t.same(r.unreachable, ['bob/d1'], 'one hand-over for the device');
  t.equal(hook.hits(), 2, 'push.maxAttempts requests');
  t.equal(await metric(r.f.metrics.pushRetries, { provider: 'webhook' }), 1, 'one retry');
  t.equal(await metric(r.f.metrics.pushFailed, { provider: 'webhook' }), 1, 'then counted failed');
  t.equal(await metric(r.f.metrics.pushSent, { provider: 'webhook' }), 0, 'never sent');
});

t.test('push: a target the provider says is gone is removed; a hook that throws is logged', async (t) => {
  const r = await pushRig(t, () => {
    throw new Error('relay exploded');
  });
  const hook = await receiver(t, [410]);
  const bob = new FakeSession('bob', 'd1');
  await r.gw.handle(bob, 'push.register', { kind: 'webhook', url: hook.url });
  r.gw.stored('bob', 'd1', item('alice', 'bob'));
  await until('the hand-over', () => r.unreachable.length > 0);
  await until('the removal', () => r.targets.stored === 2);
  t.same(await r.gw.handle(bob, 'push.list', {}), { targets: [] }, 'the gone target is removed');
  t.equal(await metric(r.f.metrics.pushGone, { provider: 'webhook' }), 1, 'counted gone');
  t.ok(r.f.logged('push: unreachable hook failed'), 'the throwing hook is logged, not thrown');
  // The gateway goes on: the next push still reaches (nothing registered now: straight to the relay).
  r.gw.stored('bob', 'd1', item('carol', 'bob'));
  await until('the second hand-over', () => r.unreachable.length === 2);
  t.equal(hook.hits(), 1, 'nothing more sent to the gone target');
});

t.test('mute: a KV that conflicts on every write gives up with CONFLICT after CAS_ATTEMPTS reads', async (t) => {
  const r = await pushRig(t);
  r.mutes.conflicts = Infinity;
  const bob = new FakeSession('bob', 'd1');
  await t.rejects(r.gw.handle(bob, 'mute.set', { to: 'alice', always: true }), { code: ErrorCode.CONFLICT, message: /too often/ });
  t.equal(r.mutes.reads, CAS_ATTEMPTS, 'one read per attempt');
  t.same(r.f.bus.invalidations, [], 'no cell is told of a change that did not happen');
  r.mutes.conflicts = 2;
  t.same(await r.gw.handle(bob, 'mute.set', { to: 'alice', always: true }), { mute: { to: 'alice' } }, 'a few conflicts are ridden out');
  t.same(r.f.bus.invalidations, [{ kind: 'mutes', key: 'bob' }], 'and every cell told');
});

// ---- relay ------------------------------------------------------------------------

const rec = (contacts: string[]): SocialRecord => ({ contacts: new Set(contacts), blocked: new Set(), prefs: PREFS });

async function relayRig(t: Test): Promise<{ f: FakeCell; relay: RelayCoordinator; kv: FakeKv; carol: FakeSession }> {
  const f = fakeCell('c0', { relay: { enabled: true, perTargetPerWindow: 1, perRelayerPerWindow: 10 } });
  t.teardown(() => f.metrics.stop());
  const kv = new FakeKv();
  const keys = hintKeyPair(random(32));
  const where = new Map<string, DeviceLocation[]>([['carol', [{ device: 'd1', cell: 'c0', node: 'n0', epoch: 1 }]]]);
  const relay = new RelayCoordinator(f.ctx, {
    directory: { lookup: async (u) => where.get(u) ?? [] },
    social: { record: async (u) => (u === 'bob' ? rec(['carol']) : rec([])) },
    accounts: { devices: async () => ['d1'] },
    hints: { keys, loads: () => new Map([['c0', { addr: '127.0.0.1:1', load: 0 }]]), signHintTo: () => new Uint8Array(80) },
    connected: () => true,
  });
  await relay.start(kv.kv);
  // carol's device reported reaching bob's d1 (as a contact, tier 1), until well ahead.
  await kv.put('bob.d1', pack({ r: [['carol', 'd1', Date.now() + 3_600_000, 1]], c: [], w: [], s: [] }));
  const carol = new FakeSession('carol', 'd1');
  f.hub.add(carol);
  return { f, relay, kv, carol };
}

t.test('relay: a slot that stays contended ends the wake as an error; a few conflicts are ridden out', async (t) => {
  const r = await relayRig(t);
  r.kv.conflicts = Infinity;
  r.relay.unreachable('bob', 'd1');
  await until('the error', () => r.f.logged('relay wake failed'));
  t.equal(await metric(r.f.metrics.relayWakes, { result: 'error' }), 1, 'counted as an error');
  t.same(r.carol.frames('relay'), [], 'no relay frame');

  r.kv.conflicts = 3;
  t.equal(await r.relay.wake('bob', 'd1'), 'sent', 'the slots are taken once the conflicts pass');
  const frames = r.carol.frames('relay');
  t.equal(frames.length, 1, 'the relayer is asked once');
  t.match(frames[0], { t: 'relay', u: 'bob', d: 'd1' });
  t.equal(await r.relay.wake('bob', 'd1'), 'rate_limited_target', 'the target slot taken, the next wake waits for the window');
});
