/*
 * PresenceHub against fakes of its ports (test/fixtures/fake-cell.ts): the failure
 * branches the three-node test (test/server/presence.test.ts) cannot produce on
 * demand. Each test builds its own hub and stops it.
 */
import t, { type Test } from 'tap';
import { pack, unpack, type Prefs } from '@gravitas/protocol';
import { PresenceHub, type DeviceLocation, type PresencePorts, type SocialRecord } from '@gravitas/server/internal';
import { fakeCell, FakeKv, FakeSession, until, type FakeCell } from '../../fixtures/fake-cell.js';

const PREFS: Prefs = { readReceipts: true, presence: 'contacts', pushPreview: false, mutedPush: 'silent' };
const rec = (contacts: string[], blocked: string[] = []): SocialRecord => ({ contacts: new Set(contacts), blocked: new Set(blocked), prefs: PREFS });

interface Rig {
  f: FakeCell;
  kv: FakeKv;
  hub: PresenceHub;
  records: Map<string, SocialRecord>;
  /** Locations the directory answers, by user. */
  where: Map<string, DeviceLocation[]>;
  live: Set<string>;
}

function rig(t: Test, over: Partial<PresencePorts> = {}): Rig {
  const f = fakeCell();
  t.teardown(() => f.metrics.stop());
  const kv = new FakeKv();
  const records = new Map<string, SocialRecord>();
  const where = new Map<string, DeviceLocation[]>();
  const live = new Set<string>(['c0']);
  const ports: PresencePorts = {
    social: {
      record: async (u) => records.get(u) ?? rec([]),
      refuses: async (recipient, sender) => (records.get(recipient)?.blocked.has(sender) ?? false),
    },
    directory: { lookup: async (u) => where.get(u) ?? [] },
    liveness: { isLive: (c) => live.has(c) },
    groups: { typing: async () => undefined },
    ...over,
  };
  const hub = new PresenceHub(f.ctx, ports, kv.kv);
  hub.start();
  t.teardown(() => hub.stop());
  return { f, kv, hub, records, where, live };
}

/** A session of `user` on the fake cell, told to the hub. */
function connect(r: Rig, user: string, device = 'd1'): FakeSession {
  const s = new FakeSession(user, device);
  r.f.hub.add(s);
  r.hub.online(s);
  return s;
}

t.test('typing: one envelope per cell the directory names, even a stale one; local sessions directly', async (t) => {
  const r = rig(t);
  const alice = connect(r, 'alice');
  const bob = connect(r, 'bob');
  // bob's entries: one session here, two devices on a cell that has since gone (the directory lags).
  r.where.set('bob', [
    { device: 'd1', cell: 'c0', node: 'n0', epoch: 1 },
    { device: 'd2', cell: 'c9', node: 'n9', epoch: 1 },
    { device: 'd3', cell: 'c9', node: 'n9', epoch: 1 },
  ]);
  await r.hub.typing(alice, { t: 'typing', to: 'bob', on: true });
  t.same(bob.frames('typing'), [{ t: 'typing', from: 'alice', on: true }], 'the local session is told directly');
  t.same(r.f.bus.published, [{ cell: 'c9', e: { k: 'typ', from: 'alice', to: 'bob', on: true } }], 'the stale cell gets one envelope for its two devices');
  // The session closes with the indicator on: it is turned off where it was sent.
  r.f.bus.published.length = 0;
  r.hub.offline(alice);
  await until('the "off" indicator', () => r.f.bus.published.length === 1);
  t.same(r.f.bus.published[0], { cell: 'c9', e: { k: 'typ', from: 'alice', to: 'bob', on: false } }, 'an indicator left on is turned off at close');
});

t.test('typing: a social record that throws drops the indicator, quietly', async (t) => {
  const r = rig(t, {
    social: {
      record: async () => rec([]),
      refuses: async () => {
        throw new Error('KV away');
      },
    },
  });
  const alice = connect(r, 'alice');
  const bob = connect(r, 'bob');
  r.where.set('bob', [{ device: 'd1', cell: 'c0', node: 'n0', epoch: 1 }, { device: 'd2', cell: 'c1', node: 'n0', epoch: 1 }]);
  await t.resolves(r.hub.typing(alice, { t: 'typing', to: 'bob', on: true }), 'the session is not failed');
  t.same(bob.frames('typing'), [], 'nothing shown');
  t.same(r.f.bus.published, [], 'nothing sent');
});

t.test('watching: contacts unavailable at connect are read again, then watched', async (t) => {
  let failures = 1;
  const records = new Map([['bob', rec(['alice'])], ['alice', rec(['bob'])]]);
  const r = rig(t, {
    social: {
      record: async (u) => {
        if (u === 'bob' && failures-- > 0) throw new Error('contacts unavailable');
        return records.get(u) ?? rec([]);
      },
      refuses: async () => false,
    },
  });
  const bob = connect(r, 'bob');
  const subject = r.f.ctx.names.presence('alice');
  await new Promise((res) => setTimeout(res, 100));
  t.notOk(r.f.subs.has(subject), 'not watched while the contacts are unavailable');
  await until('the retry', () => r.f.subs.has(subject), 3000);
  await until('the first view', () => bob.frames('pres').length === 1);
  t.same(bob.frames('pres'), [{ t: 'pres', user: 'alice', s: 'offline' }], 'alice shown as she is: never seen');
});

t.test('watching: a view told twice, or out of order, is shown once', async (t) => {
  const r = rig(t);
  r.records.set('bob', rec(['alice']));
  r.records.set('alice', rec(['bob']));
  const bob = connect(r, 'bob');
  const subject = r.f.ctx.names.presence('alice');
  await until('the first view', () => bob.frames('pres').length === 1);
  const tell = r.f.subs.get(subject)!;
  tell(pack({ s: 'online', c: ['c1'], r: 5 }));
  tell(pack({ s: 'online', c: ['c1'], r: 5 }));
  tell(pack({ s: 'offline', l: 1000, c: [], r: 4 }));
  tell(pack({ s: 'online', c: ['c1', 'c2'], r: 6 })); // newer, and the same to a watcher
  tell(pack({ nonsense: true }));
  tell(pack({ s: 'away', c: ['c1'], r: 7 }));
  t.same(bob.frames('pres').map((p) => p.s), ['offline', 'online', 'away'], 'each change once, the stale and the malformed ignored');
  // alice stops letting bob see her: he is told "offline" once, without last seen.
  r.records.set('alice', rec([]));
  r.hub.socialChanged('alice');
  await until('the hiding', () => bob.frames('pres').length === 4);
  t.same(bob.frames('pres')[3], { t: 'pres', user: 'alice', s: 'offline' });
  tell(pack({ s: 'online', c: ['c1'], r: 8 }));
  t.equal(bob.frames('pres').length, 4, 'nothing more once hidden');
});

t.test('an entry on a cell that died is dropped, with last seen the time it died', async (t) => {
  const r = rig(t);
  r.records.set('bob', rec(['alice']));
  r.records.set('alice', rec(['bob']));
  // alice's record names a session on c9, written before this cell noticed c9 die.
  await r.kv.put('alice', pack({ d: { d1: { c: 'c9', i: 's1', e: 1, a: 0, t: Date.now() } } }));
  const before = Date.now();
  r.hub.cellDied('c9');
  const bob = connect(r, 'bob');
  await until('the view', () => bob.frames('pres').length === 1);
  const shown = bob.frames('pres')[0]!;
  t.equal(shown.s, 'offline', 'a session on a dead cell is no session');
  t.ok(shown.last !== undefined && shown.last >= before, 'last seen: when the cell died');
  await until('the repair', () => Object.keys((unpack(r.kv.value('alice')!) as { d: object }).d).length === 0);
  t.notOk(r.f.nats.some(([s]) => s === r.f.ctx.names.presence('alice')), 'nothing published: watchers saw it offline already');
  const stored = unpack(r.kv.value('alice')!) as { d: Record<string, unknown>; l: number };
  t.same(stored.d, {}, 'the entry is gone from the record');
  t.equal(stored.l, shown.last, 'and its end is kept as last seen');
});

t.test('a device write that conflicts is read again and written', async (t) => {
  const r = rig(t);
  r.kv.conflicts = 3;
  const alice = connect(r, 'alice');
  await until('the write', () => r.kv.value('alice') !== undefined);
  const stored = unpack(r.kv.value('alice')!) as { d: Record<string, { c: string; i: string; a: number }> };
  t.match(stored.d.d1, { c: 'c0', i: alice.id, a: 0 }, 'the device state is written once the conflicts pass');
  t.equal(r.kv.stored, 1, 'one write went through');
});
