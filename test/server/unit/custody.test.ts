/*
 * Custody and routing (messaging/custody.ts, messaging/routing.ts) built on fakes
 * of their ports: branches that real parts cannot produce on demand — a
 * directory that is wrong twice, a mailbox that refuses, an ack that arrives
 * twice or after the copy was stored, a session that cannot take an item. The
 * real-process tests (custody.test.ts, custody-faults.test.ts, cluster.test.ts)
 * remain the proof of the custody promises; these pin the branches.
 */
import t from 'tap';
import { ErrorCode, ProtocolError } from '@gravitas/protocol';
import {
  Custody, DeliveryProofs, Routing, type ChatItem, type DeviceLocation, type Item, type Settlement, type StoredRef,
} from '@gravitas/server/internal';
import { fakeCell, FakeSession, settle, type FakeCell } from '../../fixtures/fake-cell.js';

const SECRET = new Uint8Array(32).fill(7);

/** A directory whose answers the test sets, counting fresh reads and invalidations. */
class FakeDirectory {
  readonly at = new Map<string, DeviceLocation[]>();
  fresh = 0;
  invalidated: string[] = [];
  fail = false;

  place(user: string, device: string, cell: string, epoch = 1): void {
    const others = (this.at.get(user) ?? []).filter((l) => l.device !== device);
    this.at.set(user, [...others, { device, cell, node: 'n', epoch }]);
  }

  /** As the real directory with a warm cache: at once; a failing one as a read that fails. */
  locate(user: string): DeviceLocation[] | Promise<DeviceLocation[]> {
    if (this.fail) return Promise.reject(new Error('directory unreachable'));
    return this.at.get(user) ?? [];
  }

  lookup(user: string, fresh = false): Promise<DeviceLocation[]> {
    if (fresh) this.fresh++;
    if (this.fail) return Promise.reject(new Error('directory unreachable'));
    return Promise.resolve(this.at.get(user) ?? []);
  }

  invalidate(user: string): void {
    this.invalidated.push(user);
  }

  entries(user: string): Promise<Array<DeviceLocation & { live: boolean }>> {
    return Promise.resolve((this.at.get(user) ?? []).map((l) => ({ ...l, live: true })));
  }
}

/** A mailbox that stores in memory, or refuses with the error the test sets. */
class FakeMailbox {
  readonly stored: Array<{ user: string; device: string; item: Item; ref: StoredRef }> = [];
  readonly removed: StoredRef[] = [];
  refuse: Error | undefined;
  private seq = 0;

  store(user: string, device: string, item: Item): Promise<StoredRef> {
    if (this.refuse) return Promise.reject(this.refuse);
    const ref = { stream: 'mbx', seq: ++this.seq };
    this.stored.push({ user, device, item, ref });
    return Promise.resolve(ref);
  }

  remove(ref: StoredRef): Promise<boolean> {
    this.removed.push(ref);
    return Promise.resolve(true);
  }
}

interface Rig extends FakeCell {
  custody: Custody;
  routing: Routing;
  directory: FakeDirectory;
  mailbox: FakeMailbox;
  pushed: Array<{ user: string; device: string; id: string }>;
  pokes: Array<{ cell: string; user: string }>;
  receipts: Array<{ to: string; ref: string; by: string }>;
}

/** Custody on cell c0 with `devices` per user; the window is long: only `sweep` ends it. */
function rig(devices: Record<string, string[]>): Rig {
  const cell = fakeCell('c0');
  const directory = new FakeDirectory();
  const mailbox = new FakeMailbox();
  const pushed: Rig['pushed'] = [];
  const pokes: Rig['pokes'] = [];
  const receipts: Rig['receipts'] = [];
  const events = {
    delivered: () => undefined,
    arrived: () => undefined,
  };
  let custody: Custody | undefined;
  const routing = new Routing(cell.ctx, {
    custody: () => ({
      acked: (k, u, d) => custody!.acked(k, u, d),
      notHereFor: (k, u, d) => custody!.notHereFor(k, u, d),
      receipt: (to, ref, by) => {
        receipts.push({ to, ref, by });
        return Promise.resolve();
      },
    }),
    mailbox: () => mailbox,
    groups: () => ({ acked: () => undefined }),
    events,
  });
  custody = new Custody(cell.ctx, {
    // Device lists cached for some users only: both the synchronous path and the one that reads run.
    accounts: () => ({ devices: (u: string) => Promise.resolve(devices[u] ?? []), cachedDevices: (u: string) => (u.startsWith('cold') ? undefined : (devices[u] ?? [])) }),
    social: () => ({ refuses: () => Promise.resolve(false), refusesNow: () => false, prefs: () => Promise.reject(new Error('not used')) }),
    directory: () => directory,
    mailbox: () => mailbox,
    routing,
    drains: { poke: (loc, user) => void pokes.push({ cell: loc.cell, user }) },
    proofs: new DeliveryProofs(SECRET),
    events: { stored: (user, device, item) => void pushed.push({ user, device, id: item.id }) },
  });
  t.teardown(() => cell.ctx.metrics.stop());
  return { ...cell, custody, routing, directory, mailbox, pushed, pokes, receipts };
}

const send = (id: string, to: string, text = 'hi') => ({ t: 'send' as const, id, to, text });

t.test('warm caches hand a message on synchronously; a cold device list is read first, then the same hand-off', async (t) => {
  const r = rig({ alice: ['a1'], bob: ['b1'], coldcarol: ['c1'] });
  const alice = r.hub.add(new FakeSession('alice', 'a1'));
  r.directory.place('bob', 'b1', 'c9');
  r.directory.place('coldcarol', 'c1', 'c9');
  t.equal(r.custody.submit(alice, send('w1', 'bob')), undefined, 'no promise for a cached recipient');
  t.same(r.bus.of('dlv').map((e) => e.cell), ['c9'], 'and it is on its way before submit returns');
  const cold = r.custody.submit(alice, send('w2', 'coldcarol'));
  t.ok(cold instanceof Promise, 'a recipient whose devices must be read: a promise');
  t.equal(r.bus.of('dlv').length, 1, 'nothing sent before the read');
  await cold;
  t.same(r.bus.of('dlv').map((e) => e.cell), ['c9', 'c9'], 'sent once the devices are known');
});

t.test('a directory wrong twice: the item is looked up once more, then stored — and the sender hears `stored` once', async (t) => {
  const r = rig({ alice: ['a1'], bob: ['b1'] });
  const alice = r.hub.add(new FakeSession('alice', 'a1'));
  r.directory.place('bob', 'b1', 'c9'); // says c9; bob is nowhere
  await r.custody.submit(alice, send('m1', 'bob'));
  t.equal(r.bus.of('dlv').length, 1, 'sent to the cell the directory named');
  t.equal(r.bus.of('dlv')[0]!.cell, 'c9');
  // c9 answers "not here"; the directory still says c9 (same epoch): no second dlv, a store.
  r.routing.onAnswer({ k: 'nh', id: 'm1', from: 'alice', fd: 'a1', u: 'bob', dev: 'b1' });
  await settle();
  await settle();
  t.same(r.directory.invalidated, ['bob'], 'the cached entry was dropped');
  t.equal(r.directory.fresh, 1, 'one fresh read');
  t.equal(r.bus.of('dlv').length, 1, 'not sent again to the same place');
  t.equal(r.mailbox.stored.length, 1, 'stored in the mailbox');
  t.same(r.pushed, [{ user: 'bob', device: 'b1', id: 'm1' }], 'push hears of the stored item');
  t.same(r.pokes, [], 'no wake yet: it waits for the wake delay');
  t.same(alice.statuses('m1').map((f) => (f as { s: string }).s), ['stored']);
  // A second "not here" for a settled item changes nothing.
  r.routing.onAnswer({ k: 'nh', id: 'm1', from: 'alice', fd: 'a1', u: 'bob', dev: 'b1' });
  await settle();
  t.equal(r.mailbox.stored.length, 1, 'still one copy');
  t.equal(alice.statuses('m1').length, 1, 'still one status');
});

t.test('a directory that moved on: "not here" follows the new location once', async (t) => {
  const r = rig({ alice: ['a1'], bob: ['b1'] });
  const alice = r.hub.add(new FakeSession('alice', 'a1'));
  r.directory.place('bob', 'b1', 'c9', 1);
  await r.custody.submit(alice, send('m2', 'bob'));
  r.directory.place('bob', 'b1', 'c7', 2); // bob re-registered on c7
  r.routing.onAnswer({ k: 'nh', id: 'm2', from: 'alice', fd: 'a1', u: 'bob', dev: 'b1' });
  await settle();
  t.same(r.bus.of('dlv').map((p) => p.cell), ['c9', 'c7'], 'sent on to the new cell');
  // Wrong again: no third lookup — the mailbox takes it.
  r.routing.onAnswer({ k: 'nh', id: 'm2', from: 'alice', fd: 'a1', u: 'bob', dev: 'b1' });
  await settle();
  t.equal(r.directory.fresh, 1, 'looked up once only');
  t.equal(r.mailbox.stored.length, 1);
  t.same(alice.statuses('m2').map((f) => (f as { s: string }).s), ['stored']);
});

t.test('an unreachable directory: everything goes to the mailbox', async (t) => {
  const r = rig({ alice: ['a1'], bob: ['b1', 'b2'] });
  const alice = r.hub.add(new FakeSession('alice', 'a1'));
  r.directory.fail = true;
  await r.custody.submit(alice, send('m3', 'bob'));
  await settle();
  t.equal(r.bus.published.length, 0, 'nothing sent live');
  t.same(r.mailbox.stored.map((s) => s.device).sort(), ['b1', 'b2']);
  t.same(alice.statuses('m3').map((f) => (f as { s: string }).s), ['stored']);
});

t.test('a mailbox that refuses: the sender hears the store error, and its in-flight slot is given back', async (t) => {
  const r = rig({ alice: ['a1'], bob: ['b1'] });
  const alice = r.hub.add(new FakeSession('alice', 'a1'));
  r.mailbox.refuse = new Error('stream leader changing');
  await r.custody.submit(alice, send('m4', 'bob'));
  await settle();
  t.same(alice.statuses('m4'), [{ t: 'status', id: 'm4', s: 'failed', code: ErrorCode.STORAGE_UNAVAILABLE }]);
  t.match(r.logs.map((l) => l.msg), ['mailbox store failed']);
  // A coded refusal keeps its code (MAILBOX_FULL), and failures are not remembered: the SDK's re-send is routed again.
  r.mailbox.refuse = new ProtocolError(ErrorCode.MAILBOX_FULL, 'full');
  await r.custody.submit(alice, send('m4', 'bob'));
  await settle();
  t.same(alice.statuses('m4').map((f) => (f as { code?: string }).code), [ErrorCode.STORAGE_UNAVAILABLE, ErrorCode.MAILBOX_FULL]);
  // Every slot came back: as many messages as the cap allows are accepted now.
  r.mailbox.refuse = undefined;
  const cap = r.ctx.config.limits.maxInFlightPerSession;
  r.directory.place('bob', 'b1', 'c9');
  for (let i = 0; i < cap; i++) await r.custody.submit(alice, send(`n${i}`, 'bob'));
  t.equal(r.bus.of('dlv').length, cap, 'the whole window is open again');
  await r.custody.submit(alice, send('over', 'bob'));
  t.same(alice.statuses('over'), [{ t: 'status', id: 'over', s: 'failed', code: ErrorCode.TOO_MANY_IN_FLIGHT }], 'and the cap still holds');
});

t.test('an ack that arrives twice settles once; a re-send of a settled message is answered from memory', async (t) => {
  const r = rig({ alice: ['a1'], bob: ['b1'] });
  const alice = r.hub.add(new FakeSession('alice', 'a1'));
  const bob = r.hub.add(new FakeSession('bob', 'b1'));
  r.directory.place('bob', 'b1', 'c0');
  await r.custody.submit(alice, send('m5', 'bob'));
  t.equal(bob.delivered.length, 1, 'delivered by a call on this cell');
  const d = bob.ack('alice/m5');
  r.routing.deviceAcked(bob, d);
  r.routing.deviceAcked(bob, d); // a second ack frame for it: the actor no longer has it, but custody must hold either way
  r.custody.acked('alice/a1/m5', 'bob', 'b1');
  t.same(alice.statuses('m5'), [{ t: 'status', id: 'm5', s: 'delivered' }], 'one status');
  t.same(r.mailbox.removed, [], 'nothing stored, nothing to delete');
  await r.custody.submit(alice, send('m5', 'bob'));
  t.equal(bob.delivered.length, 1, 'the re-send is not delivered again');
  t.equal(alice.statuses('m5').length, 2, 'but answered');
});

t.test('a device that cannot take an item here: looked up afresh, then stored; its late ack deletes the copy', async (t) => {
  const r = rig({ alice: ['a1'], bob: ['b1'] });
  const alice = r.hub.add(new FakeSession('alice', 'a1'));
  const bob = r.hub.add(new FakeSession('bob', 'b1'));
  bob.accepts = false;
  r.directory.place('bob', 'b1', 'c0');
  await r.custody.submit(alice, send('m6', 'bob'));
  await settle();
  t.equal(r.mailbox.stored.length, 1, 'stored after the second miss');
  t.same(alice.statuses('m6').map((f) => (f as { s: string }).s), ['stored']);
  // The device had it after all (written before the miss, acked late): the stored copy goes.
  r.custody.acked('alice/a1/m6', 'bob', 'b1');
  await settle();
  t.same(r.mailbox.removed, [r.mailbox.stored[0]!.ref], 'the redundant copy is deleted');
  r.custody.acked('alice/a1/m6', 'bob', 'b1');
  await settle();
  t.equal(r.mailbox.removed.length, 1, 'once');
});

t.test('routing: an item for a device not here goes back as "not here"; acks find their custody cell', async (t) => {
  const r = rig({});
  const item: ChatItem = { k: 'm', id: 'x1', from: 'carol', fd: 'c1', to: 'bob', text: 'yo', ts: 1 };
  r.routing.onDeliver({ k: 'dlv', m: item, u: 'bob', dev: 'b1', oc: 'c5' });
  t.same(r.bus.of('nh'), [{ cell: 'c5', e: { k: 'nh', id: 'x1', from: 'carol', fd: 'c1', u: 'bob', dev: 'b1' } }]);
  const bob = r.hub.add(new FakeSession('bob', 'b1'));
  r.routing.onDeliver({ k: 'dlv', m: item, u: 'bob', dev: 'b1', oc: 'c5' });
  t.equal(bob.delivered.length, 1, 'delivered once it is here');
  r.routing.deviceAcked(bob, bob.ack('carol/x1'));
  t.same(r.bus.of('ack'), [{ cell: 'c5', e: { k: 'ack', id: 'x1', from: 'carol', fd: 'c1', u: 'bob', dev: 'b1' } }], 'the ack goes to the custody cell');
  // A session that ends with live items unacknowledged hands them back at once.
  const item2 = { ...item, id: 'x2' };
  r.routing.onDeliver({ k: 'dlv', m: item2, u: 'bob', dev: 'b1', oc: 'c5' });
  r.routing.sessionGone(bob);
  t.same(r.bus.of('nh').map((p) => p.e.id), ['x1', 'x2'], '"not here" for what was never acknowledged');
  t.equal(bob.unacked.size, 0);
});

t.test('routing: a mailbox item acknowledged is deleted and its sender gets `delivered`, never for receipts or own copies', async (t) => {
  const r = rig({});
  const bob = r.hub.add(new FakeSession('bob', 'b1'));
  const ref = { stream: 'mbx', seq: 9 };
  const msg: ChatItem = { k: 'm', id: 'y1', from: 'carol', fd: 'c1', to: 'bob', text: 'yo', ts: 1 };
  r.routing.deviceAcked(bob, { via: 'mbox', item: msg, ref });
  r.routing.deviceAcked(bob, { via: 'mbox', item: { ...msg, id: 'y2', from: 'bob' }, ref: { stream: 'mbx', seq: 10 } });
  r.routing.deviceAcked(bob, { via: 'mbox', item: { k: 'r', id: 'y3', from: 'carol', fd: 'c1', to: 'bob', ref: 'z', s: 'read', ts: 1 }, ref: { stream: 'mbx', seq: 11 } });
  await settle();
  t.equal(r.mailbox.removed.length, 3, 'every copy deleted');
  t.same(r.receipts, [{ to: 'carol', ref: 'y1', by: 'bob' }], 'one delivery receipt');
});

t.test('a system item (campaign) settles through its promise, once, however often it is submitted', async (t) => {
  const r = rig({ bob: ['b1'] });
  const bob = r.hub.add(new FakeSession('bob', 'b1'));
  r.directory.place('bob', 'b1', 'c0');
  const item: ChatItem = { k: 'm', id: '_c1', from: '_camp', fd: 'system', to: 'bob', text: 'offer', ts: 1 };
  const first = r.custody.submitSystem(item);
  await settle();
  const second = r.custody.submitSystem(item);
  r.routing.deviceAcked(bob, bob.ack('_camp/_c1'));
  const settled: Settlement[] = await Promise.all([first, second]);
  t.same(settled, [{ s: 'delivered' }, { s: 'delivered' }]);
  t.equal(bob.delivered.length, 1, 'sent once');
  t.same(await r.custody.submitSystem(item), { s: 'delivered' }, 'remembered after settling');
  t.equal(bob.delivered.length, 1);
  t.same(await r.custody.submitSystem({ ...item, id: '_c2', to: 'nobody' }), { s: 'failed', code: ErrorCode.UNDELIVERABLE }, 'no devices: undeliverable');
});
