/*
 * Groups with in-memory fakes of the ports it is given: the branches real
 * processes cannot produce on demand — a directory that names a dead or another
 * cell, a log or store that throws, an acknowledgement that arrives twice, a
 * cursor record that stays contended. The real-process tests (groups.test.ts,
 * groups-consent.test.ts) remain the proof of the guarantees.
 */
import t from 'tap';
import type { KV } from '@nats-io/kv';
import { ErrorCode, pack, ProtocolError } from '@gravitas/protocol';
import { Groups, type CellContext, type GroupPorts, type LogEntry, type LogStore } from '@gravitas/server/internal';
import { fakeCell, FakeKv, FakeSession, until } from '../../fixtures/fake-cell.js';

type Item = LogEntry['item'];
type Envelope = Parameters<CellContext['bus']['publish']>[1];
type Loc = { device: string; cell: string; node: string; epoch: number };

const HERE = 'c0';

/** A group log in memory: one partition, sequences shared by every group. */
class FakeLog implements LogStore {
  readonly entries: LogEntry[] = [];
  seq = 0;
  /** What the next appends do instead of storing. */
  failAppend: Error | undefined;
  appends = 0;

  async start(): Promise<void> {}

  async append(item: Item): Promise<{ seq: number; duplicate: boolean }> {
    this.appends++;
    if (this.failAppend) throw this.failAppend;
    return { seq: this.add(item), duplicate: false };
  }

  /** A message stored by some cell. */
  add(item: Item): number {
    const seq = ++this.seq;
    this.entries.push({ seq, item: { ...item, seq } });
    return seq;
  }

  async next(g: string, fromSeq: number): Promise<LogEntry | null> {
    return this.entries.find((e) => e.item.g === g && e.seq >= fromSeq) ?? null;
  }

  async *read(g: string, fromSeq: number): AsyncGenerator<LogEntry> {
    for (const e of this.entries) if (e.item.g === g && e.seq >= fromSeq) yield e;
  }

  async positionAt(): Promise<number> {
    return 0;
  }

  async position(): Promise<number> {
    return this.seq;
  }

  async purge(): Promise<void> {}
}

/** A cell with fake ports around one Groups; everything it sends or tells is recorded. */
function rig(opts: { drainWindow?: number } = {}) {
  const { ctx, bus, hub, logs: logged } = fakeCell(HERE, { mailbox: { drainWindow: opts.drainWindow ?? 256 }, groups: { policy: 'contacts' } });
  t.teardown(() => ctx.metrics.stop());
  const published = bus.published;
  /** Where the directory says each user's devices are; a function throws or answers per call. */
  const where = new Map<string, Loc[] | ((fresh: boolean) => Loc[])>();
  const lookups: Array<{ user: string; fresh: boolean }> = [];
  const pushed: Array<{ member: string; online: readonly Loc[]; item: Item }> = [];
  const missed: Array<{ user: string; device: string; item: Item }> = [];
  const typed: Envelope[] = [];
  const blocks = new Set<string>(); // `recipient>sender`
  const ports: GroupPorts = {
    directory: {
      async lookup(user, fresh = false) {
        lookups.push({ user, fresh });
        const w = where.get(user) ?? [];
        return typeof w === 'function' ? w(fresh) : w;
      },
    },
    social: {
      refuses: async (recipient, sender) => blocks.has(`${recipient}>${sender}`),
      // Everyone lists everyone as a contact: the `contacts` policy adds whoever is named.
      record: async () => ({ contacts: { has: () => true } as unknown as ReadonlySet<string>, blocked: new Set<string>(), prefs: {} as never }),
    },
    accounts: {
      devices: async () => ['d'],
      cachedDevices: () => ['d'],
      deviceList: async () => [{ device: 'b1', registeredAt: 0 }],
    },
    events: {
      groupMessage: (member, online, item) => pushed.push({ member, online, item }),
      groupMissed: (user, device, item) => missed.push({ user, device, item }),
    },
    presence: { onTyping: (e) => typed.push(e) },
    invites: { onInvited() {} },
  };
  const kv = new FakeKv();
  const log = new FakeLog();
  const groups = new Groups(ctx, ports, kv as unknown as KV, log);
  const connect = (user: string, device: string): FakeSession => {
    return hub.add(new FakeSession(user, device));
  };
  /** A group of `members` made by its first member through `groups.create`. */
  const makeGroup = async (members: string[]): Promise<string> => {
    const owner = new FakeSession(members[0]!, 'x');
    const { g } = (await groups.handle(owner, 'groups.create', { name: 'team', members: members.slice(1) })) as { g: string };
    return g;
  };
  return { ctx, ports, kv, log, groups, published, logged, where, lookups, pushed, missed, typed, blocks, connect, makeGroup, metrics: ctx.metrics };
}

const statusOf = (s: FakeSession, id: string) => s.sent.find((m) => m.t === 'status' && m.id === id) as { s: string; code?: string } | undefined;

t.test('fan-out goes where the directory says, even to a cell that is gone', async (t) => {
  const r = rig();
  const g = await r.makeGroup(['alice', 'bob', 'carol']);
  const alice = r.connect('alice', 'a1');
  r.where.set('alice', [{ device: 'a1', cell: HERE, node: 'n1', epoch: 1 }]);
  r.where.set('bob', [{ device: 'b1', cell: 'c-dead', node: 'n9', epoch: 1 }]); // stale: that cell died
  r.where.set('carol', [{ device: 'c1', cell: 'c2', node: 'n2', epoch: 1 }]);
  await r.groups.send(alice, { t: 'send', id: 'm1', text: 'hi', g });
  await until('the fan-out', () => r.published.length === 2);
  t.same(statusOf(alice, 'm1'), { t: 'status', id: 'm1', s: 'stored' }, 'stored once the log took it');
  const byCell = new Map(r.published.map((p) => [p.cell, p.e]));
  t.match(byCell.get('c-dead'), { k: 'gdlv', to: [['bob', 'b1']], m: { g, seq: 1, text: 'hi' } }, 'one gdlv to the cell the directory names');
  t.match(byCell.get('c2'), { k: 'gdlv', to: [['carol', 'c1']] });
  t.notOk(byCell.has(HERE), 'the sending device itself is not told');
  t.same(r.pushed.map((p) => p.member).sort(), ['alice', 'bob', 'carol'], 'every member is told to push');
});

t.test('a member who blocks the sender gets nothing', async (t) => {
  const r = rig();
  const g = await r.makeGroup(['alice', 'bob']);
  const alice = r.connect('alice', 'a1');
  r.where.set('bob', [{ device: 'b1', cell: 'c2', node: 'n2', epoch: 1 }]);
  r.blocks.add('bob>alice');
  await r.groups.send(alice, { t: 'send', id: 'm1', text: 'hi', g });
  await until('stored', () => statusOf(alice, 'm1') !== undefined);
  await new Promise((res) => setTimeout(res, 20));
  t.same(r.published, [], 'no gdlv');
  t.same(r.pushed.map((p) => p.member), ['alice'], 'no push for bob');
});

t.test('a delivery for a device that is not here is forwarded once, by a fresh lookup', async (t) => {
  const r = rig();
  const item: Item = { k: 'm', id: 'm1', from: 'alice', fd: 'a1', to: 'g1', text: 'hi', ts: 1, g: 'g1', seq: 4 };
  r.where.set('bob', [{ device: 'b1', cell: 'c3', node: 'n3', epoch: 2 }]); // moved on
  r.where.set('carol', []); // went offline
  r.where.set('dave', [{ device: 'd1', cell: HERE, node: 'n1', epoch: 1 }]); // stale: says here, but no session here
  r.where.set('erin', () => {
    throw new Error('directory unavailable');
  });
  r.groups.onDelivery(item, [
    ['bob', 'b1'],
    ['carol', 'c1'],
    ['dave', 'd1'],
    ['erin', 'e1'],
  ]);
  await until('the lookups', () => r.lookups.length === 4);
  await new Promise((res) => setTimeout(res, 10));
  t.ok(r.lookups.every((l) => l.fresh), 'every lookup bypasses the cache');
  t.same(r.published, [{ cell: 'c3', e: { k: 'gdlv', m: item, to: [['bob', 'b1']] } }], 'forwarded to where bob is now, nowhere else');
  t.same(r.missed, [{ user: 'carol', device: 'c1', item }], 'carol, gone offline, gets the push she missed');
  t.equal(r.logged.length, 0, 'an unreachable directory is not an error');
});

t.test('deliveries that are not group messages in a log are ignored', async (t) => {
  const r = rig();
  for (const seq of [undefined, 0, -1, 1.5, Number.MAX_SAFE_INTEGER + 2]) {
    r.groups.onDelivery({ k: 'm', id: 'm1', from: 'alice', fd: 'a1', to: 'g1', text: 'hi', ts: 1, g: 'g1', ...(seq !== undefined && { seq }) }, [['bob', 'b1']]);
  }
  await new Promise((res) => setTimeout(res, 10));
  t.same(r.lookups, [], 'nothing forwarded');
});

t.test('a log that fails: STORAGE_UNAVAILABLE, not remembered; a refusal is remembered', async (t) => {
  const r = rig();
  const g = await r.makeGroup(['alice', 'bob']);
  const alice = r.connect('alice', 'a1');
  r.log.failAppend = new Error('jetstream down');
  await r.groups.send(alice, { t: 'send', id: 'm1', text: 'hi', g });
  await until('a status', () => statusOf(alice, 'm1') !== undefined);
  t.same(statusOf(alice, 'm1'), { t: 'status', id: 'm1', s: 'failed', code: ErrorCode.STORAGE_UNAVAILABLE });
  t.ok(r.logged.some((l) => l.msg === 'group log append failed'), 'logged');
  // A re-send is tried again: the failure was not remembered.
  r.log.failAppend = undefined;
  alice.sent.length = 0;
  await r.groups.send(alice, { t: 'send', id: 'm1', text: 'hi', g });
  await until('a status', () => statusOf(alice, 'm1') !== undefined);
  t.equal(statusOf(alice, 'm1')!.s, 'stored', 'stored on the re-send');
  t.equal(r.log.appends, 2);

  r.log.failAppend = new ProtocolError(ErrorCode.MAILBOX_FULL, 'the group log partition is full');
  await r.groups.send(alice, { t: 'send', id: 'm2', text: 'x', g });
  await until('a status', () => statusOf(alice, 'm2') !== undefined);
  t.same(statusOf(alice, 'm2'), { t: 'status', id: 'm2', s: 'failed', code: ErrorCode.MAILBOX_FULL });
  alice.sent.length = 0;
  await r.groups.send(alice, { t: 'send', id: 'm2', text: 'x', g });
  t.same(statusOf(alice, 'm2'), { t: 'status', id: 'm2', s: 'failed', code: ErrorCode.MAILBOX_FULL }, 'the re-send is answered from memory');
  t.equal(r.log.appends, 3, 'without a second append');
});

t.test('a group store that throws: the send is refused with STORAGE_UNAVAILABLE', async (t) => {
  const r = rig();
  const g = await r.makeGroup(['alice', 'bob']);
  const alice = r.connect('alice', 'a1');
  r.groups.invalidate(g); // drop the cached record
  r.kv.failReads = 'g.';
  await t.rejects(r.groups.send(alice, { t: 'send', id: 'm1', text: 'hi', g }), { code: ErrorCode.STORAGE_UNAVAILABLE });
  t.equal(r.log.appends, 0, 'nothing stored');
  const err = await r.groups.handle(alice, 'groups.info', { g }).catch((e: unknown) => e);
  t.match(err, { code: ErrorCode.STORAGE_UNAVAILABLE }, 'requests too');
  t.ok(r.logged.some((l) => l.msg === 'groups.info failed'), 'and logged');
});

t.test('typing reaches online members once per cell, a repeat within a second is not sent again', async (t) => {
  const r = rig();
  const g = await r.makeGroup(['alice', 'bob', 'carol', 'dave']);
  const alice = r.connect('alice', 'a1');
  r.where.set('bob', [
    { device: 'b1', cell: HERE, node: 'n1', epoch: 1 },
    { device: 'b2', cell: HERE, node: 'n1', epoch: 1 },
  ]);
  r.where.set('carol', [{ device: 'c1', cell: 'c2', node: 'n2', epoch: 1 }]);
  r.where.set('dave', [{ device: 'd1', cell: 'c2', node: 'n2', epoch: 1 }]);
  r.blocks.add('dave>alice');
  await r.groups.typing(alice, { t: 'typing', g, on: true });
  t.same(r.typed, [{ k: 'typ', from: 'alice', to: 'bob', on: true, g }], 'bob (two devices here): shown here once');
  t.same(r.published, [{ cell: 'c2', e: { k: 'typ', from: 'alice', to: 'carol', on: true, g } }], 'carol: one envelope to her cell; dave blocks alice');
  await r.groups.typing(alice, { t: 'typing', g, on: true });
  t.equal(r.typed.length + r.published.length, 2, 'a repeat is not fanned out');
  await r.groups.typing(alice, { t: 'typing', g, on: false });
  t.equal(r.typed.length + r.published.length, 4, '"off" always is');
});

t.test('an acknowledgement that arrives twice frees one slot of the window and moves the cursor once', async (t) => {
  const r = rig({ drainWindow: 2 });
  const g = await r.makeGroup(['alice', 'bob']);
  const from: Item = { k: 'm', id: '', from: 'alice', fd: 'a1', to: g, text: '', ts: 1, g };
  const seqs = [1, 2, 3, 4].map((i) => r.log.add({ ...from, id: `m${i}`, text: `t${i}` }));
  const bob = r.connect('bob', 'b1');
  r.groups.catchUp(bob);
  await until('the window filled', () => bob.given.length === 2);
  t.same(bob.given.map((i) => i.seq), seqs.slice(0, 2), 'in log order, within the window');
  r.groups.acked(bob, bob.given[0]!);
  r.groups.acked(bob, bob.given[0]!); // again
  await until('the next message', () => bob.given.length === 3);
  await new Promise((res) => setTimeout(res, 30));
  t.equal(bob.given.length, 3, 'the repeated ack freed no second slot');
  r.groups.acked(bob, { ...from, id: 'zz', seq: 99 }); // never given: nothing
  await new Promise((res) => setTimeout(res, 10));
  t.equal(bob.given.length, 3);
  r.groups.detached(bob); // writes the cursor
  await until('the cursor written', () => (r.kv.decoded('c.bob.b1') as { c: Record<string, number> } | undefined)?.c[g] !== undefined);
  t.equal((r.kv.decoded('c.bob.b1') as { c: Record<string, number> }).c[g], seqs[0], 'the cursor is past the acknowledged message only');
});

t.test('cursor writes: a conflicting write by another session is merged, keeping the higher', async (t) => {
  const r = rig();
  const g = await r.makeGroup(['alice', 'bob']);
  const seq = r.log.add({ k: 'm', id: 'm1', from: 'alice', fd: 'a1', to: g, text: 'x', ts: 1, g });
  const bob = r.connect('bob', 'b1');
  r.groups.catchUp(bob);
  await until('delivered', () => bob.given.length === 1);
  r.groups.acked(bob, bob.given[0]!);
  // Meanwhile bob's device wrote from another cell: further in this group, and in another one.
  const theirs = r.kv.decoded('c.bob.b1') as { s: number };
  r.kv.put('c.bob.b1', pack({ c: { [g]: seq + 10, other: 5 }, s: theirs.s }));
  const gets = r.kv.reads;
  const updates = r.kv.updates;
  r.groups.detached(bob);
  await until('written', () => r.kv.updates - updates === 2);
  await new Promise((res) => setTimeout(res, 10));
  t.same((r.kv.decoded('c.bob.b1') as { c: unknown }).c, { [g]: seq + 10, other: 5 }, 'the higher of both, per group');
  t.equal(r.kv.reads - gets, 1, 'one read: after the conflict (the first attempt used the known revision)');
});

t.test('cursor writes that stay contended give up with CONFLICT after a few attempts', async (t) => {
  const r = rig();
  const g = await r.makeGroup(['alice', 'bob']);
  r.log.add({ k: 'm', id: 'm1', from: 'alice', fd: 'a1', to: g, text: 'x', ts: 1, g });
  const bob = r.connect('bob', 'b1');
  r.groups.catchUp(bob);
  await until('delivered', () => bob.given.length === 1);
  r.groups.acked(bob, bob.given[0]!);
  r.kv.conflicts = Number.POSITIVE_INFINITY;
  const updates = r.kv.updates;
  r.groups.detached(bob);
  await until('the failure logged', () => r.logged.some((l) => l.msg === 'group cursor flush failed'));
  const err = r.logged.find((l) => l.msg === 'group cursor flush failed')!.err;
  t.match(err, { code: ErrorCode.CONFLICT, message: 'cursors of bob/b1 are too contended' });
  t.equal(r.kv.updates - updates, 4, 'four attempts');
});

t.test('a device whose cursors cannot be read is synced again later', async (t) => {
  const r = rig();
  const g = await r.makeGroup(['alice', 'bob']);
  r.log.add({ k: 'm', id: 'm1', from: 'alice', fd: 'a1', to: g, text: 'x', ts: 1, g });
  r.kv.failReads = 'c.';
  const bob = r.connect('bob', 'b1');
  r.groups.catchUp(bob);
  await until('the failure logged', () => r.logged.some((l) => l.msg === 'group sync failed'));
  t.equal(bob.given.length, 0, 'nothing given without cursors');
  r.kv.failReads = undefined;
  await until('delivered after the retry', () => bob.given.length === 1, 4000);
  t.equal(bob.given[0]!.id, 'm1', 'the message, once the cursors could be read');
  r.groups.detached(bob);
});
