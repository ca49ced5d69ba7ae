/*
 * Group membership by consent, tried as an attacker with a valid client would
 * (docs/security-notes-groups.md). One nats-server, three single-node clusters
 * (own prefixes): A with the default settings (the `invite` policy), B with tiny
 * limits (groups per user, invitations per user, invitation lifetime, group
 * size), C with the `contacts` policy. Real node processes and SDK clients;
 * behaviour only, no timings.
 */
import t from 'tap';
/** What a test's assertions need here. */
type Tap = Pick<typeof t, 'ok'>;
import { join } from 'node:path';
import { connect } from '@nats-io/transport-node';
import { Kvm } from '@nats-io/kv';
import { DEFAULT_MAX_FRAME_BYTES, ErrorCode, MAX_USERS_PER_REQUEST, pack, unpack, type Msg } from '@gravitas/protocol';
import { DEFAULT_MAILBOX, Names } from '@gravitas/server';
import { check, NatsServer, tempDir } from '@gravitas/testkit';
import { clusterKeys, connectClient, nodeConfig, spawnNode, writeNodeConfig, type TestClient } from '../fixtures/cluster.js';
import { rejectionCode as codeOf } from '../fixtures/codes.js';


/** An answer (or the refusal) as bytes, with what must differ between groups — the id, and times — set to fixed values. */
async function bytesOf(p: Promise<unknown>): Promise<Buffer> {
  const norm = (v: unknown): unknown => {
    if (Array.isArray(v)) return v.map(norm);
    if (typeof v !== 'object' || v === null) return v;
    const o: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) o[k] = k === 'g' ? 'G' : k === 'expires' || k === 'at' ? 0 : norm(x);
    return o;
  };
  const r = await p.then(
    (data) => ({ ok: true, data }),
    (e: { code?: string; message?: string }) => ({ ok: false, code: e.code, message: e.message }),
  );
  return Buffer.from(pack(norm(r)));
}

const inGroup = (c: TestClient, g: string): Msg[] => c.inbox.filter((m) => m.g === g);

t.test('group membership by consent', async (t) => {
  const nats = await NatsServer.start();
  t.teardown(() => nats.stop());
  const dir = await tempDir('gravitas-groups-consent-');
  t.teardown(() => dir[Symbol.asyncDispose]());
  const keys = clusterKeys();
  const pk = keys.serverPublicKey;
  const start = async (prefix: string, cells: number, groups?: Record<string, unknown>, limits?: Record<string, unknown>) => {
    const cfg = nodeConfig({ natsUrl: nats.url, nodeId: prefix, dataDir: join(dir.path, prefix), keys, cells, extra: { prefix, ...(groups && { groups }), ...(limits && { limits }) } });
    const node = await spawnNode(await writeNodeConfig(join(dir.path, `${prefix}.json`), cfg));
    t.teardown(() => node.stop(5000));
    return node;
  };
  // A pages through lists of hundreds of groups: far more requests than a device makes, not what this tests.
  const manyRequests = { requestRatePerSec: 10_000, requestBurst: 10_000, accountRequestRatePerSec: 100_000 };
  const [A, B, C] = await Promise.all([
    start('gca', 2, undefined, manyRequests),
    start('gcb', 1, { maxPerUser: 3, maxInvitesPerUser: 4, inviteTtlMs: 6000 }, { maxGroupSize: 4 }),
    start('gcc', 1, { policy: 'contacts', maxPerUser: 2 }),
  ]);
  t.teardown(() => void (t.passing() || t.comment(`A:\n${A!.stderr()}\nB:\n${B!.stderr()}\nC:\n${C!.stderr()}`)));
  const on = (node: typeof A, user: string, cell = 0): Promise<TestClient> =>
    connectClient(t, { user, servers: [node!.clientAddresses[cell % node!.clientAddresses.length]!], serverPublicKey: pk });

  // Made first, checked last: the invitation's lifetime passes while the other tests run.
  let lapsing: { boss: TestClient; late: TestClient; g: string } | undefined;
  t.test('B: an invitation is listed while it stands', async (t) => {
    const [boss, late] = await Promise.all([on(B, 'lapseboss'), on(B, 'late')]);
    const { g } = await boss.client.createGroup('lapsing', ['late', 'nobody']);
    t.equal((await late.client.invites()).length, 1);
    lapsing = { boss, late, g };
  });

  t.test('a stranger named by a group is only invited: no membership, no messages until it accepts', async (t) => {
    const [mallory, victim] = await Promise.all([on(A, 'mallory', 0), on(A, 'victim', 1)]);
    const r = await mallory.client.createGroup('free crypto', ['victim']);
    t.same({ added: r.added, invited: r.invited }, { added: [], invited: ['victim'] }, 'invited, not added');
    const spam = await mallory.client.sendToGroup(r.g, 'spam before consent');
    t.equal(spam.status, 'stored');
    t.same(await victim.client.listGroups(), [], 'the group is not among the victim’s groups');
    t.equal(await codeOf(victim.client.groupInfo(r.g)), ErrorCode.NOT_A_MEMBER);
    t.equal(await codeOf(victim.client.sendToGroup(r.g, 'x')), ErrorCode.NOT_A_MEMBER, 'and cannot send to it');
    t.match(await victim.client.invites(), [{ g: r.g, name: 'free crypto', by: 'mallory' }], 'the invitation is listed for the invitee');
    const notice = await victim.received((m) => m.sys === 'group-invite');
    t.match(notice, { from: '_groups', about: r.g }, 'and told to the invitee by a system notice (under custody: offline devices get it too)');
    t.equal(notice.g, undefined, 'the notice is not a message of the group');
    const info = await mallory.client.groupInfo(r.g);
    t.same(info.members, ['mallory'], 'the group has one member');
    t.match(info.invited, [{ user: 'victim', by: 'mallory' }], 'and one pending invitation, seen by its admin');
    await victim.client.ping();
    t.same(inGroup(victim, r.g), [], 'nothing of the group reached the invitee');

    t.match(await victim.client.acceptInvite(r.g), { g: r.g, name: 'free crypto' }, 'accepted');
    const hello = await mallory.client.sendToGroup(r.g, 'welcome');
    await victim.received((m) => m.id === hello.id);
    t.same(inGroup(victim, r.g).map((m) => m.text), ['welcome'], 'from then on only: nothing from before the accept');
    t.same(await victim.client.invites(), [], 'the invitation is used up');
    t.equal(await codeOf(victim.client.acceptInvite(r.g)), ErrorCode.NOT_FOUND, 'and cannot be accepted twice');
    t.same((await mallory.client.groupInfo(r.g)).members, ['mallory', 'victim']);
  });

  t.test('unknown, blocking and declining users: the same answers byte for byte, and nothing happens', async (t) => {
    const alice = await on(A, 'alice', 0);
    // The same name plays each part in its own group: first nobody has it.
    const g: string[] = [];
    const created: Buffer[] = [];
    const create = async (): Promise<void> => {
      const p = alice.client.request('groups.create', { name: 'same', members: ['zed'] });
      created.push(await bytesOf(p));
      g.push(((await p) as { g: string }).g);
    };
    await create(); // zed does not exist
    // On alice's cell: its own changes (registration, blocks) reach that cell's caches at once.
    const zed = await on(A, 'zed', 0);
    await create(); // zed exists, and will decline
    t.same((await zed.client.invites()).map((x) => x.g), [g[1]], 'zed was invited only to the group made after it existed');
    await zed.client.declineInvite(g[1]!);
    t.same(await zed.client.invites(), [], 'declined');
    await zed.client.request('contacts.block', { user: 'alice' });
    await create(); // zed exists and blocks alice
    t.same(await zed.client.invites(), [], 'a blocker gets no invitation from the blocked');

    const roles = ['unknown', 'declined', 'blocking'];
    const same = (what: string, answers: Buffer[]): void => {
      for (let i = 1; i < answers.length; i++) t.same(answers[i], answers[0], `${what}: ${roles[i]} answers as ${roles[0]}`);
    };
    same('groups.create', created);
    same('groups.info', await Promise.all(g.map((x) => bytesOf(alice.client.request('groups.info', { g: x })))));
    same('groups.add again', await Promise.all(g.map((x) => bytesOf(alice.client.request('groups.add', { g: x, users: ['zed'] })))));
    same('groups.admin', await Promise.all(g.map((x) => bytesOf(alice.client.request('groups.admin', { g: x, user: 'zed', on: true })))));
    t.match(await alice.client.request('groups.info', { g: g[0]! }), { members: ['alice'], invited: [{ user: 'zed', by: 'alice' }], pending: 1 }, 'each is pending alike');

    // Nothing happened to zed: not a member anywhere, nothing to accept, no messages.
    for (const x of g) t.equal(await codeOf(zed.client.acceptInvite(x)), ErrorCode.NOT_FOUND, 'nothing to accept');
    await zed.client.request('contacts.unblock', { user: 'alice' });
    const yan = await on(A, 'yan', 1);
    await alice.client.addToGroup(g[0]!, ['yan']);
    await alice.client.addToGroup(g[1]!, ['yan']);
    await alice.client.addToGroup(g[2]!, ['yan']);
    for (const x of g) await yan.client.acceptInvite(x);
    const sent = await Promise.all(g.map((x) => alice.client.sendToGroup(x, 'to the group')));
    for (const s of sent) await yan.received((m) => m.id === s.id);
    await zed.client.ping();
    t.notOk(zed.inbox.some((m) => sent.some((s) => s.id === m.id)), 'no group message reached zed (it no longer blocks alice)');
    t.same(await zed.client.listGroups(), []);

    same('groups.remove', await Promise.all(g.map((x) => bytesOf(alice.client.request('groups.remove', { g: x, users: ['zed'] })))));
    t.same(await alice.client.request('groups.remove', { g: g[0]!, users: ['zed'] }), { removed: [], revoked: [] }, 'revoked once');
  });

  t.test('pages: every group, invitation and member seen exactly once, each page under the frame limit, together more than one frame', async (t) => {
    const long = (i: number): string => `${String(i).padStart(3, '0')}${'€'.repeat(125)}`; // 128 UTF-16 units, 378 UTF-8 bytes
    const pages = async (t: Tap, op: 'groups.list' | 'groups.invites' | 'groups.info', c: TestClient, a: Record<string, unknown>): Promise<Array<Record<string, unknown>>> => {
      const out: Array<Record<string, unknown>> = [];
      let from: string | undefined;
      do {
        const p = (await c.client.request(op, { ...a, ...(from !== undefined && { from }) } as never)) as Record<string, unknown> & { next?: string };
        t.ok(pack(p).length < DEFAULT_MAX_FRAME_BYTES - 256, `${op} page ${out.length + 1}: ${pack(p).length} bytes`);
        out.push(p);
        from = p.next;
      } while (from !== undefined);
      return out;
    };

    t.test('groups.list', async (t) => {
      const pager = await on(A, 'pager', 0);
      const made: string[] = [];
      const N = 180;
      for (let i = 0; i < N; i += 20) {
        const ids = await Promise.all(Array.from({ length: Math.min(20, N - i) }, (_, k) => pager.client.createGroup(long(i + k)).then((r) => r.g)));
        made.push(...ids);
      }
      const ps = await pages(t, 'groups.list', pager, {});
      const seen = ps.flatMap((p) => p.groups as Array<{ g: string; name: string }>);
      t.ok(ps.length >= 2, `${ps.length} pages`);
      t.ok(pack(seen).length > DEFAULT_MAX_FRAME_BYTES, 'more than one frame in all');
      t.equal(new Set(seen.map((x) => x.g)).size, seen.length, 'no group twice');
      t.same(seen.map((x) => x.g).sort(), [...made].sort(), 'every group');
      t.same((await pager.client.listGroups()).length, N, 'listGroups() pages through them all');
    });

    t.test('groups.invites', async (t) => {
      const invitee = await on(A, 'invitee', 1);
      const inviters = await Promise.all(['inv1', 'inv2', 'inv3', 'inv4', 'inv5'].map((u, i) => on(A, u, i)));
      const made = (await Promise.all(inviters.map(async (c, i) => {
        const ids: string[] = [];
        for (let k = 0; k < 32; k++) ids.push((await c.client.createGroup(long(i * 32 + k), ['invitee'])).g);
        return ids;
      }))).flat();
      const ps = await pages(t, 'groups.invites', invitee, {});
      const seen = ps.flatMap((p) => p.invites as Array<{ g: string }>);
      t.ok(ps.length >= 2, `${ps.length} pages`);
      t.ok(pack(seen).length > DEFAULT_MAX_FRAME_BYTES, 'more than one frame in all');
      t.equal(new Set(seen.map((x) => x.g)).size, seen.length, 'no invitation twice');
      t.same(seen.map((x) => x.g).sort(), [...made].sort(), 'every invitation');
      t.equal((await invitee.client.invites()).length, made.length, 'invites() pages through them all');
    });

    t.test('groups.info, and requests too long for one frame', async (t) => {
      const boss = await on(A, 'boss', 0);
      const [m1, m2] = await Promise.all([on(A, 'member1', 1), on(A, 'member2', 0)]);
      // 1,000 names of 64 characters: more than one request holds (the SDK splits), more than one answer.
      const ghosts = Array.from({ length: 1000 }, (_, i) => `ghost${String(i).padStart(4, '0')}`.padEnd(64, 'x'));
      t.equal(
        await codeOf(boss.client.request('groups.create', { name: 'big', members: ghosts.slice(0, MAX_USERS_PER_REQUEST + 1) })),
        ErrorCode.BAD_MESSAGE,
        `one request names at most ${MAX_USERS_PER_REQUEST} users`,
      );
      const { g, invited } = await boss.client.createGroup('big', ['member1', ...ghosts, 'member2']);
      t.equal(invited.length, 1002, 'all invited, in two requests');
      await m1.client.acceptInvite(g);
      await m2.client.acceptInvite(g);
      const ps = await pages(t, 'groups.info', boss, { g });
      t.ok(ps.length >= 2, `${ps.length} pages`);
      const members = ps.flatMap((p) => p.members as string[]);
      const pending = ps.flatMap((p) => (p.invited as Array<{ user: string }>).map((x) => x.user));
      t.ok(pack(pending).length > DEFAULT_MAX_FRAME_BYTES, 'more than one frame in all');
      t.same(members, ['boss', 'member1', 'member2'], 'members once each, in name order');
      t.same(pending, [...ghosts].sort(), 'every pending invitation once, in name order');
      t.ok(ps.every((p) => p.count === 3 && p.pending === 1000 && p.owner === 'boss'), 'every page says who owns it and how many there are');
      const whole = await boss.client.groupInfo(g);
      t.same({ members: whole.members, admins: whole.admins, invited: whole.invited!.length }, { members: ['boss', 'member1', 'member2'], admins: ['boss'], invited: 1000 }, 'groupInfo() merges the pages');
      const asMember = await m1.client.groupInfo(g);
      t.same(asMember, { g, name: 'big', owner: 'boss', count: 3, members: ['boss', 'member1', 'member2'], admins: ['boss'] }, 'a member who is no admin sees no invitations');
      const gone = await boss.client.removeFromGroup(g, ghosts);
      t.equal(gone.revoked.length, 1000, 'revoked in two requests');
    });
  });

  t.test('an admin revokes an invitation: the invitee cannot accept it any more', async (t) => {
    const [ann, ben] = await Promise.all([on(A, 'ann', 0), on(A, 'ben', 1)]);
    const { g } = await ann.client.createGroup('revoked', ['ben']);
    await check('ben sees the invitation', async () => (await ben.client.invites()).length === 1);
    t.same(await ann.client.removeFromGroup(g, ['ben']), { removed: [], revoked: ['ben'] });
    await check('gone from ben’s list', async () => (await ben.client.invites()).length === 0);
    t.equal(await codeOf(ben.client.acceptInvite(g)), ErrorCode.NOT_FOUND);
    t.same((await ann.client.groupInfo(g)).invited, []);
  });

  t.test('B: groups per user are capped', async (t) => {
    const [cap, other] = await Promise.all([on(B, 'capper'), on(B, 'other')]);
    const mine = [];
    for (let i = 0; i < 3; i++) mine.push((await cap.client.createGroup(`mine ${i}`)).g);
    t.equal(await codeOf(cap.client.createGroup('one too many')), ErrorCode.TOO_MANY_GROUPS, 'creating past the cap');
    const { g } = await other.client.createGroup('join me', ['capper']);
    t.equal(await codeOf(cap.client.acceptInvite(g)), ErrorCode.TOO_MANY_GROUPS, 'accepting past the cap');
    t.same((await other.client.groupInfo(g)).members, ['other'], 'not joined');
    await cap.client.request('groups.leave', { g: mine[0]! });
    t.match(await cap.client.acceptInvite(g), { g }, 'below the cap again: accepted');
    t.equal((await cap.client.listGroups()).length, 3);

    // A stale entry in the user's index (a group it left while the index update failed, long ago)
    // does not count against the cap for good: at the cap it is pruned.
    const nc = await connect({ servers: nats.url });
    t.teardown(() => nc.close());
    const kv = await new Kvm(nc).open(new Names('gcb', DEFAULT_MAILBOX.partitions).groupsBucket);
    const staler = await on(B, 'staler');
    await staler.client.createGroup('one');
    await staler.client.createGroup('two');
    const e = (await kv.get('u.staler'))!;
    const idx = unpack(e.value) as { g: string[]; a: number[] };
    await kv.update('u.staler', pack({ g: [...idx.g, 'AAAAAAAAAAAAAAAA'], a: [...idx.a, 0] }), e.revision);
    t.match(await staler.client.createGroup('three'), { g: /^[A-Za-z0-9_-]{16}$/ }, 'created at the cap: the stale entry was pruned');
    t.notOk((unpack((await kv.get('u.staler'))!.value) as { g: string[] }).g.includes('AAAAAAAAAAAAAAAA'), 'and is gone from the index');
    t.equal(await codeOf(staler.client.createGroup('four')), ErrorCode.TOO_MANY_GROUPS, 'three real groups: at the cap');
  });

  t.test('B: invitations take seats; an invitee holds a bounded number, one inviter fewer', async (t) => {
    const [boss, target] = await Promise.all([on(B, 'seatboss'), on(B, 'target')]);
    const { g } = await boss.client.createGroup('four seats', ['nobody1', 'nobody2', 'target']);
    t.equal(await codeOf(boss.client.addToGroup(g, ['nobody3'])), ErrorCode.GROUP_FULL, 'members and invitations fill the group');
    await boss.client.removeFromGroup(g, ['nobody1']);
    t.same(await boss.client.addToGroup(g, ['nobody3']), { added: [], invited: ['nobody3'] }, 'a revoked invitation frees its seat');
    // One inviter keeps one invitation in target’s list (maxInvitesPerUser 4 / 8, at least 1): its newest.
    const { g: newer } = await boss.client.createGroup('newer', ['target']);
    t.same((await target.client.invites()).map((x) => x.g), [newer], 'the newest invitation of one inviter');
    // Four more inviters: the list holds 4, the oldest goes.
    const others = await Promise.all(['ib1', 'ib2', 'ib3', 'ib4'].map((u) => on(B, u)));
    const made: string[] = [];
    for (const c of others) made.push((await c.client.createGroup(`from ${c.user}`, ['target'])).g);
    t.same((await target.client.invites()).map((x) => x.g).sort(), [...made].sort(), 'the four newest, from four inviters');
    t.equal(await codeOf(target.client.acceptInvite(newer)), ErrorCode.NOT_FOUND, 'a dropped invitation cannot be accepted');
  });

  t.test('C (contacts policy): only users who list the adder as a contact join, at once; the others answer as unknown users', async (t) => {
    const [admin, friend, stranger, blocker] = (await Promise.all(['cadmin', 'friend', 'stranger', 'blocker'].map((u) => on(C, u)))) as [TestClient, TestClient, TestClient, TestClient];
    await friend.client.request('contacts.add', { user: 'cadmin' });
    await blocker.client.request('contacts.add', { user: 'cadmin' });
    await blocker.client.request('contacts.block', { user: 'cadmin' });
    const r = await admin.client.createGroup('friends', ['friend', 'stranger', 'blocker', 'ghost']);
    t.same({ added: r.added, invited: r.invited }, { added: ['friend'], invited: [] }, 'the friend joined; nobody is invited');
    t.same((await admin.client.groupInfo(r.g)).members, ['cadmin', 'friend']);
    const answers = await Promise.all(['stranger', 'blocker', 'ghost'].map((u) => bytesOf(admin.client.request('groups.add', { g: r.g, users: [u] }))));
    t.same(answers[1], answers[0], 'a blocker answers as a stranger');
    t.same(answers[2], answers[0], 'an unknown user answers as a stranger');
    const m = await admin.client.sendToGroup(r.g, 'hi friends');
    await friend.received((x) => x.id === m.id);
    await stranger.client.ping();
    t.notOk(stranger.inbox.some((x) => x.id === m.id), 'the stranger got nothing');
    t.same(await stranger.client.invites(), [], 'and holds no invitation');

    // The friend at its cap (2): another admin’s add just does not happen, as for a stranger.
    const admin2 = await on(C, 'cadmin2');
    await friend.client.request('contacts.add', { user: 'cadmin2' });
    t.same((await admin2.client.createGroup('second', ['friend'])).added, ['friend']);
    const third = await admin2.client.createGroup('third', ['friend', 'stranger']);
    t.same({ added: third.added, invited: third.invited }, { added: [], invited: [] }, 'at the cap: not added, nothing said');
    t.equal((await friend.client.listGroups()).length, 2);
  });

  t.test('B: invitations lapse', async (t) => {
    const { boss, late, g } = lapsing!;
    await check('the invitation lapsed (groups.inviteTtlMs)', async () => (await late.client.invites()).length === 0, { timeout: 20_000, interval: 200 });
    t.equal(await codeOf(late.client.acceptInvite(g)), ErrorCode.NOT_FOUND, 'too late to accept');
    t.same((await boss.client.groupInfo(g)).invited, [], 'no longer pending for the admin either');
  });
});
