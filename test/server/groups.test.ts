/*
 * Groups against real processes: one nats-server, two `gravitas node` processes
 * with two cells each, SDK clients on every cell. Membership requests (by
 * invitation and acceptance, the default policy) and their permissions, fan-out to member devices on both nodes, catch-up of an offline
 * device, joins and removals, blocks, typing, devices that move or connect while
 * senders have stale caches, cursors across a reconnect, de-duplication.
 * Behaviour only: no timings are asserted.
 */
import t from 'tap';
import { join } from 'node:path';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { DeliverPolicy, jetstream } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import { ErrorCode, unpack, type Msg } from '@gravitas/protocol';
import { DeliveryError } from '@gravitas/client';
import { DEFAULT_MAILBOX, Names } from '@gravitas/server';
import { check, NatsServer, tempDir } from '@gravitas/testkit';
import { clusterKeys, connectClient, makeClient, metricSamples, metricsText, nodeConfig, registered, spawnNode, writeNodeConfig, type TestClient } from '../fixtures/cluster.js';
import { rejectionCode as codeOf } from '../fixtures/codes.js';
import { socketOf } from '../fixtures/traffic.js';
import { watchWire } from '../fixtures/wire.js';

const MAX_GROUP = 8;
const PREFIX = 'gravitas';


const inGroup = (c: TestClient, g: string): Msg[] => c.inbox.filter((m) => m.g === g);
const texts = (ms: Msg[]): string[] => ms.map((m) => m.text);

t.test('groups on two nodes × two cells', async (t) => {
  const top = t; // clients that outlive a subtest are closed at the end of the whole test
  const nats = await NatsServer.start();
  t.teardown(() => nats.stop());
  const dir = await tempDir('gravitas-groups-');
  t.teardown(() => dir[Symbol.asyncDispose]());
  const keys = clusterKeys();
  const [A, B] = await Promise.all(
    ['nodeA', 'nodeB'].map(async (nodeId) => {
      const cfg = nodeConfig({ natsUrl: nats.url, nodeId, dataDir: join(dir.path, nodeId), keys, extra: { limits: { maxGroupSize: MAX_GROUP } } });
      const node = await spawnNode(await writeNodeConfig(join(dir.path, `${nodeId}.json`), cfg));
      t.teardown(() => node.stop(5000));
      return node;
    }),
  );
  // On failure, the nodes' logs help.
  t.teardown(() => void (t.passing() || t.comment(`node A:\n${A!.stderr()}\nnode B:\n${B!.stderr()}`)));
  const [a0, a1] = A!.clientAddresses as [string, string];
  const [b0, b1] = B!.clientAddresses as [string, string];
  const pk = keys.serverPublicKey;
  const nc: NatsConnection = await connect({ servers: nats.url });
  t.teardown(() => nc.close());
  const names = new Names(PREFIX, DEFAULT_MAILBOX.partitions);

  // alice: d1 on node A cell 0, d2 on node B cell 1. bob: A/1. carol, dave: B/0. erin: A/0. frank: B/1.
  const alice = await connectClient(t, { user: 'alice', device: 'd1', servers: [a0], serverPublicKey: pk });
  const alice2 = await connectClient(t, { user: 'alice', device: 'd2', servers: [b1], serverPublicKey: pk });
  const bob = await connectClient(t, { user: 'bob', servers: [a1], serverPublicKey: pk });
  const carol = await connectClient(t, { user: 'carol', servers: [b0], serverPublicKey: pk });
  let dave = await connectClient(t, { user: 'dave', servers: [b0], serverPublicKey: pk });
  const erin = await connectClient(t, { user: 'erin', servers: [a0], serverPublicKey: pk });
  const frank = await connectClient(t, { user: 'frank', servers: [b1], serverPublicKey: pk });

  let g = '';

  // groups.info reads the cell's cache: a change made on another cell reaches it by an
  // invalidation over core NATS, moments later (the writes themselves always read KV).
  type Info = { owner: string; admins: string[]; members: string[]; count: number };
  const infoOnceChanged = (c: TestClient, group: string, done: (i: Info) => boolean) =>
    check('groups.info shows the change', async () => {
      const i = (await c.client.request('groups.info', { g: group })) as Info;
      return done(i) ? i : undefined;
    });

  t.test('create, invitations accepted, info, list', async (t) => {
    const created = await alice.client.createGroup('team', ['bob', 'carol', 'dave', 'alice']);
    t.match(created.g, /^[A-Za-z0-9_-]{16}$/, 'a server-assigned id');
    t.same({ added: created.added, invited: created.invited }, { added: [], invited: ['bob', 'carol', 'dave'] }, 'the others are invited');
    g = created.g;
    for (const c of [bob, carol, dave]) t.match(await c.client.acceptInvite(g), { g, name: 'team' }, `${c.user} accepts`);
    t.same(await infoOnceChanged(bob, g, (i) => i.count === 4), { g, name: 'team', owner: 'alice', count: 4, members: ['alice', 'bob', 'carol', 'dave'], admins: ['alice'] });
    t.same(await alice.client.request('groups.info', { g }), { g, name: 'team', owner: 'alice', count: 4, members: ['alice', 'bob', 'carol', 'dave'], admins: ['alice'], invited: [], pending: 0 }, 'an admin sees the pending invitations too: none');
    t.same(await carol.client.request('groups.list', {}), { groups: [{ g, name: 'team' }] }, 'members list it');
    t.same(await erin.client.request('groups.list', {}), { groups: [] }, 'others do not');
  });

  t.test('permissions and limits', async (t) => {
    t.equal(await codeOf(erin.client.request('groups.info', { g })), ErrorCode.NOT_A_MEMBER, 'info: not a member');
    t.equal(await codeOf(bob.client.request('groups.info', { g: 'AAAAAAAAAAAAAAAA' })), ErrorCode.NOT_FOUND, 'info: no such group');
    t.equal(await codeOf(bob.client.request('groups.add', { g, users: ['erin'] })), ErrorCode.NOT_ALLOWED, 'add: members are not admins');
    t.equal(await codeOf(bob.client.request('groups.remove', { g, users: ['carol'] })), ErrorCode.NOT_ALLOWED, 'remove: members are not admins');
    t.equal(await codeOf(erin.client.request('groups.leave', { g })), ErrorCode.NOT_A_MEMBER, 'leave: not a member');
    // Unknown users are invited like any other (whether a user exists is nobody's business); nothing comes of it.
    t.same(await alice.client.request('groups.add', { g, users: ['nobody-at-all'] }), { added: [], invited: ['nobody-at-all'] }, 'add: an unknown user is invited');
    t.same(await alice.client.request('groups.remove', { g, users: ['nobody-at-all'] }), { removed: [], revoked: ['nobody-at-all'] }, 'and the invitation revoked');
    const x = await alice.client.createGroup('x', ['bob', 'no-such-user']);
    t.same(x.invited, ['bob', 'no-such-user'], 'create: unknown users are invited like the others');
    await bob.client.declineInvite(x.g);
    await alice.client.request('groups.leave', { g: x.g });
    t.equal(await codeOf(alice.client.request('groups.admin', { g, user: 'erin', on: true })), ErrorCode.NOT_FOUND, 'admin: the user must be a member');
    t.equal(await codeOf(alice.client.request('groups.admin', { g, user: 'alice', on: false })), ErrorCode.NOT_ALLOWED, 'admin: the owner stays an admin');
    const many = Array.from({ length: MAX_GROUP }, (_, i) => `u${i}`);
    t.equal(await codeOf(alice.client.request('groups.create', { name: 'big', members: many })), ErrorCode.GROUP_FULL, `create: more than ${MAX_GROUP} members`);
    t.equal(await codeOf(alice.client.request('groups.add', { g, users: many.slice(0, MAX_GROUP - 3) })), ErrorCode.GROUP_FULL, 'add: beyond the limit');
    t.equal(await codeOf(alice.client.request('groups.create', { name: 'x'.repeat(200), members: [] })), ErrorCode.BAD_MESSAGE, 'create: name too long');
    t.equal(await codeOf(alice.client.sendToGroup('AAAAAAAAAAAAAAAA', 'anyone?')), ErrorCode.NOT_A_MEMBER, 'send to a group that does not exist');
    const err = await erin.client.sendToGroup(g, 'let me in').catch((e: unknown) => e);
    t.type(err, DeliveryError);
    t.equal((err as DeliveryError).code, ErrorCode.NOT_A_MEMBER, 'a non-member cannot send');
    t.same((await bob.client.request('groups.info', { g }) as { members: string[] }).members, ['alice', 'bob', 'carol', 'dave'], 'nothing changed');
  });

  t.test('a message reaches every member device on both nodes, the sender’s other device included', async (t) => {
    // The nodes' own count of group messages written to devices (live or catch-up), both nodes summed.
    const given = async (): Promise<number> => {
      let n = 0;
      for (const node of [A!, B!]) for (const x of metricSamples(await metricsText(node.adminUrl), 'gravitas_group_deliveries_total')) n += x.value;
      return n;
    };
    const before = await given();
    const r = await alice.client.sendToGroup(g, 'hello team');
    t.equal(r.status, 'stored', 'stored: the group log holds it');
    for (const c of [alice2, bob, carol, dave]) {
      const m = await c.received((m) => m.id === r.id);
      t.match(m, { g, from: 'alice', fd: 'd1', to: g, text: 'hello team' }, `${c.user}/${c.device} got it`);
      t.type(m.seq, 'number', 'with its place in the log');
    }
    await alice.client.ping();
    t.equal(inGroup(alice, g).length, 0, 'not echoed to the sending device');
    t.equal((await given()) - before, 4, 'server side: the nodes wrote it to 4 devices, once each');
    const r2 = await carol.client.sendToGroup(g, 'hi from node B');
    for (const c of [alice, alice2, bob, dave]) await c.received((m) => m.id === r2.id);
    t.pass('and back from node B');
    t.equal((await given()) - before, 8, 'server side: 4 more, once each');
  });

  t.test('an offline device catches up in order, exactly once', async (t) => {
    await dave.client.close();
    const sent: string[] = [];
    for (let i = 0; i < 6; i++) {
      const from = i % 2 === 0 ? alice : bob;
      const r = await from.client.sendToGroup(g, `while dave was away ${i}`);
      t.equal(r.status, 'stored');
      sent.push(r.id);
    }
    await bob.received((m) => m.id === sent[4]);
    dave = await connectClient(top, { user: 'dave', servers: [a1], serverPublicKey: pk, identity: dave.identity });
    await check('dave caught up', () => sent.every((id) => dave.inbox.some((m) => m.id === id)));
    const got = inGroup(dave, g);
    t.same(got.map((m) => m.id), sent, 'all six, in the order they were stored, nothing before (acked earlier)');
    const seqs = got.map((m) => m.seq!);
    t.same(seqs, [...seqs].sort((x, y) => x - y), 'ascending log positions');
  });

  t.test('a member added later gets what is sent from then on, not before', async (t) => {
    const before = await alice.client.sendToGroup(g, 'before erin');
    await bob.received((m) => m.id === before.id);
    t.same(await alice.client.request('groups.add', { g, users: ['erin', 'bob'] }), { added: [], invited: ['erin'] }, 'erin is invited, bob is a member already');
    await erin.client.acceptInvite(g);
    const after = await bob.client.sendToGroup(g, 'welcome erin');
    const m = await erin.received((x) => x.id === after.id);
    t.equal(m.text, 'welcome erin');
    await erin.client.ping();
    t.same(texts(inGroup(erin, g)), ['welcome erin'], 'nothing from before the join');
    t.same((await erin.client.request('groups.list', {})) as unknown, { groups: [{ g, name: 'team' }] });
  });

  t.test('admins, removal, leaving', async (t) => {
    await alice.client.request('groups.admin', { g, user: 'bob', on: true });
    t.same((await infoOnceChanged(carol, g, (i) => i.admins.length === 2)).admins, ['alice', 'bob'], 'bob is an admin');
    t.same(await bob.client.request('groups.remove', { g, users: ['carol'] }), { removed: ['carol'], revoked: [] }, 'an admin removes carol');
    t.equal(await codeOf(bob.client.request('groups.remove', { g, users: ['alice'] })), ErrorCode.NOT_ALLOWED, 'not the owner');
    const r = await alice.client.sendToGroup(g, 'after carol left');
    await Promise.all([bob, dave, erin, alice2].map((c) => c.received((m) => m.id === r.id)));
    await carol.client.ping();
    t.notOk(carol.inbox.some((m) => m.id === r.id), 'a removed member stops receiving');
    t.equal(await codeOf(carol.client.sendToGroup(g, 'still here?')), ErrorCode.NOT_A_MEMBER, 'and cannot send');
    t.equal(await codeOf(carol.client.request('groups.info', { g })), ErrorCode.NOT_A_MEMBER);

    // A group of its own for succession: owner leaves, then the last admin leaves.
    const { g: h } = await erin.client.createGroup('succession', ['frank', 'carol']);
    await frank.client.acceptInvite(h);
    await carol.client.acceptInvite(h);
    await erin.client.request('groups.admin', { g: h, user: 'carol', on: true });
    await erin.client.request('groups.leave', { g: h });
    t.match(await infoOnceChanged(frank, h, (i) => i.owner !== 'erin'), { owner: 'carol', admins: ['carol'], members: ['carol', 'frank'] }, 'the owner left: the remaining admin owns it');
    await carol.client.request('groups.leave', { g: h });
    t.match(await infoOnceChanged(frank, h, (i) => i.owner !== 'carol'), { owner: 'frank', admins: ['frank'], members: ['frank'] }, 'the last admin left: the oldest member is promoted');
    await frank.client.request('groups.leave', { g: h });
    t.equal(await codeOf(frank.client.request('groups.info', { g: h })), ErrorCode.NOT_FOUND, 'the last member left: the group is gone');
  });

  t.test('a member who blocks the sender does not get its messages', async (t) => {
    const { g: h } = await bob.client.createGroup('blocks', ['alice', 'frank']);
    await alice.client.acceptInvite(h);
    await frank.client.acceptInvite(h);
    await frank.client.request('contacts.block', { user: 'alice' });
    const fromAlice = await alice.client.sendToGroup(h, 'frank should not see this');
    const fromBob = await bob.client.sendToGroup(h, 'frank sees this');
    await frank.received((m) => m.id === fromBob.id);
    await alice2.received((m) => m.id === fromBob.id);
    t.notOk(frank.inbox.some((m) => m.id === fromAlice.id), 'not live');
    await frank.client.close();
    const later = await alice.client.sendToGroup(h, 'nor this, on catch-up');
    const marker = await bob.client.sendToGroup(h, 'but this');
    const frank2 = await connectClient(t, { user: 'frank', servers: [b0], serverPublicKey: pk, identity: frank.identity });
    await frank2.received((m) => m.id === marker.id);
    t.notOk(frank2.inbox.some((m) => m.id === later.id), 'not on catch-up either');
  });

  t.test('typing in a group reaches the other members online, not those who block the typist', async (t) => {
    const seen: Array<{ who: string; from: string; on: boolean; g?: string }> = [];
    for (const c of [alice, alice2, bob, dave, erin]) c.client.on('typing', (e) => seen.push({ who: `${c.user}/${c.device}`, from: e.from, on: e.on, g: e.g }));
    await erin.client.request('contacts.block', { user: 'bob' });
    t.teardown(() => erin.client.request('contacts.unblock', { user: 'bob' }));
    bob.client.typing({ g }, true);
    const got = (who: string): boolean => seen.some((e) => e.who === who && e.from === 'bob' && e.on && e.g === g);
    await check('alice’s devices and dave see bob typing', () => got('alice/d1') && got('alice/d2') && got('dave/d1'));
    await erin.client.ping();
    t.notOk(got('erin/d1'), 'erin blocks bob: nothing');
    t.notOk(seen.some((e) => e.who === 'bob/d1'), 'not echoed to the typist');
  });

  t.test('a device that moved, or came online, since the sender looked still gets everything', async (t) => {
    // The sending cell has dave on node A cell 1 cached (positive lookups live 2 s): it moves to node B.
    const before = await alice.client.sendToGroup(g, 'dave is on A');
    await dave.received((m) => m.id === before.id);
    await dave.client.close();
    dave = await connectClient(top, { user: 'dave', servers: [b1], serverPublicKey: pk, identity: dave.identity });
    const moved = await alice.client.sendToGroup(g, 'dave moved to B');
    t.equal((await dave.received((m) => m.id === moved.id)).text, 'dave moved to B', 'the stale cell forwards it, or the feed finds it');
    // gina: invited, accepts, goes offline; the sending cell caches "offline" for a second.
    const gina = makeClient({ user: 'gina', servers: [b0], serverPublicKey: pk });
    t.teardown(() => gina.client.close());
    await gina.client.connect();
    await registered(gina);
    await alice.client.request('groups.add', { g, users: ['gina'] });
    await gina.client.acceptInvite(g);
    await gina.client.close();
    const whileOffline = await alice.client.sendToGroup(g, 'gina is offline');
    const gina2 = await connectClient(t, { user: 'gina', servers: [b0], serverPublicKey: pk, identity: gina.identity });
    const rightAfter = await alice.client.sendToGroup(g, 'gina just connected');
    await check('gina got both', () => [whileOffline.id, rightAfter.id].every((id) => gina2.inbox.some((m) => m.id === id)));
    t.same(texts(inGroup(gina2, g)), ['gina is offline', 'gina just connected'], 'in order, once');
  });

  t.test('cursors survive a reconnect: no re-delivery of what was acknowledged', async (t) => {
    const r = await alice.client.sendToGroup(g, 'acked before the reconnect');
    const m = await bob.received((x) => x.id === r.id);
    // Wait until bob's cursor passed it (written coalesced, and at disconnect).
    const kv = await new Kvm(nc).open(names.groupsBucket);
    await bob.client.close();
    await check('bob’s cursor is written', async () => {
      const e = await kv.get('c.bob.d1');
      const c = e ? (unpack(e.value) as { c: Record<string, number> }).c : {};
      return (c[g] ?? 0) >= m.seq!;
    });
    const bob2 = makeClient({ user: 'bob', servers: [b1], serverPublicKey: pk, identity: bob.identity });
    t.teardown(() => bob2.client.close());
    await bob2.client.connect();
    await registered(bob2);
    const next = await alice.client.sendToGroup(g, 'after the reconnect');
    await bob2.received((x) => x.id === next.id);
    t.same(texts(inGroup(bob2, g)), ['after the reconnect'], 'only the new message');
  });

  t.test('a reconnect’s catch-up sends nothing that live delivery gave and the device acknowledged (counted on the wire)', async (t) => {
    // A new device of bob's on node B cell 1 (its first cursor write is due at once; alice2 there
    // keeps the cell's feed of the group warm), alice sending from node A.
    const bob3 = await connectClient(t, { user: 'bob', device: 'd3', servers: [b1], serverPublicKey: pk, identity: bob.identity });
    // The SDK would hide a second copy from the app: count the frames bob3's client decodes instead.
    const wire = watchWire(bob3);
    const kv = await new Kvm(nc).open(names.groupsBucket);
    const cursor = async (): Promise<number> => {
      const e = await kv.get('c.bob.d3');
      return e ? ((unpack(e.value) as { c: Record<string, number> }).c[g] ?? 0) : 0;
    };
    // One message, acknowledged, its cursor written by the periodic flush: the next flush is 5 s away.
    const first = await alice.client.sendToGroup(g, 'live, flushed');
    const m0 = await bob3.received((m) => m.id === first.id);
    await bob3.client.ping();
    await check('bob3’s cursor is written past it', async () => (await cursor()) >= m0.seq!, { timeout: 30_000, interval: 20 });
    // Three more, live, each acknowledged (a ping answered: the session processed the acks before it).
    const live: string[] = [];
    for (let i = 0; i < 3; i++) live.push((await alice.client.sendToGroup(g, `live ${i}`)).id);
    await check('bob3 got the three live', () => live.every((id) => bob3.inbox.some((m) => m.id === id)));
    await bob3.client.ping();
    // The connection drops; the SDK reconnects and the cell catches bob3 up from its cursor.
    const connects = bob3.connects;
    socketOf(bob3)!.destroy();
    await check('bob3 reconnected', () => bob3.connects > connects && bob3.client.connected, { timeout: 30_000, interval: 20 });
    await registered(bob3);
    const after = await alice.client.sendToGroup(g, 'after the drop');
    await bob3.received((m) => m.id === after.id, 30_000);
    t.same(live.map((id) => wire.countId(id)), [1, 1, 1], 'server side: each live message was on the wire once, not again on catch-up');
    t.equal(wire.countId(after.id), 1, 'server side: the next one once');
    t.same(texts(inGroup(bob3, g)).slice(-5), ['live, flushed', 'live 0', 'live 1', 'live 2', 'after the drop'], 'the app: in order, once');

    // Away for two messages, which the cell's warm feed holds (alice2 got them there): back, the
    // device follows the feed from its cursor — and is given each once, not by the feed and a log read.
    await bob3.client.ping();
    await bob3.client.close();
    const away = [(await alice.client.sendToGroup(g, 'away 0')).id, (await alice.client.sendToGroup(g, 'away 1')).id];
    await check('the cell’s feed has them (alice2 got them)', () => away.every((id) => alice2.inbox.some((m) => m.id === id)));
    const back = makeClient({ user: 'bob', device: 'd3', servers: [b1], serverPublicKey: pk, identity: bob.identity });
    t.teardown(() => back.client.close());
    const backWire = watchWire(back);
    await back.client.connect();
    await registered(back);
    await check('back: both arrived', () => away.every((id) => back.inbox.some((m) => m.id === id)), { timeout: 30_000, interval: 20 });
    const next = await alice.client.sendToGroup(g, 'after coming back');
    await back.received((m) => m.id === next.id, 30_000);
    t.same([...away, next.id].map((id) => backWire.countId(id)), [1, 1, 1], 'server side: each once on the wire');
  });

  t.test('a re-sent message id is stored once', async (t) => {
    const id = `dup${Date.now().toString(36)}`;
    const first = await alice.client.sendToGroup(g, 'once only', id);
    t.equal(first.status, 'stored');
    const again = await alice.client.sendToGroup(g, 'once only', id);
    t.equal(again.status, 'stored', 'the same cell answers from its settled statuses');
    // The same device from another cell: the log's de-duplication answers.
    await alice.client.close();
    const moved = await connectClient(t, { user: 'alice', device: 'd1', servers: [b0], serverPublicKey: pk, identity: alice.identity });
    t.equal((await moved.client.sendToGroup(g, 'once only', id)).status, 'stored', 'stored again after moving to node B');
    await dave.received((m) => m.id === id);
    const js = jetstream(nc);
    const consumer = await js.consumers.get(names.groupStream(names.partition(g)), { filter_subjects: names.groupSubject(g), deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: 1 });
    const page = await consumer.fetch({ max_messages: 1000, expires: 2000 });
    let copies = 0;
    for await (const m of page) {
      if ((unpack(m.data) as { id: string }).id === id) copies++;
      if (m.info.pending === 0) break;
    }
    t.equal(copies, 1, 'one copy in the log');
    await dave.client.ping();
    t.equal(dave.inbox.filter((m) => m.id === id).length, 1, 'seen once');
  });
});
