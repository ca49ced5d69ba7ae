/*
 * Muting and damping end to end: a real nats-server, one real node (2 cells), the
 * local push service of test/fixtures/push-service.ts. Durations are short and
 * every wait polls for a state (a mute listed or gone, a push arrived, a counter
 * moved), never for a time.
 */
import t from 'tap';
import { join } from 'node:path';
import { connect } from '@nats-io/transport-node';
import { Kvm } from '@nats-io/kv';
import { DEFAULT_MAX_FRAME_BYTES, ErrorCode, MUTE_LIMITS, pack, type MuteEntry } from '@gravitas/protocol';
import { check, NatsServer, tempDir } from '@gravitas/testkit';
import { Damper } from '@gravitas/server/internal';
import { clusterKeys, connectClient, metricsText, metricValue, nodeConfig, spawnNode, writeNodeConfig, type TestClient } from '../fixtures/cluster.js';
import { PushService, vapidKeys } from '../fixtures/push-service.js';
import { remoteCode as code } from '../fixtures/codes.js';

const SUBJECT = 'mailto:mute-test@example.com';
const SECRET = 'test-webhook-secret-0123456789';
const BASE = 40_000;
const CAP = 150_000;


t.test('damping: the rate estimate and the window formula', async (t) => {
  const d = new Damper({ baseMs: 1000, thresholdPerMin: 6, halfLifeMs: 60_000, maxWindowMs: 30_000, maxKeys: 2 });
  let rate = 0;
  // 60 messages per minute, steady, for ten half-lives: the estimate settles at 60.
  for (let i = 0; i < 6000; i++) rate = d.observe('k', i * 1000);
  t.ok(Math.abs(rate - 60) < 1, `steady 60/min estimated as ${rate.toFixed(2)}`);
  t.ok(Math.abs(d.window(rate) - 10_000) < 100, 'window = base × rate / threshold');
  t.equal(d.window(3), 1000, 'below the threshold: the base window');
  t.equal(d.window(10_000), 30_000, 'capped at maxWindowMs');
  d.observe('a', 0);
  d.observe('b', 0);
  t.equal(d.size, 2, 'bounded: the least recently used key goes');
  t.ok(d.observe('k', 6_000_000) < 1, 'a key evicted starts afresh');
});

t.test('mutes', async (t) => {
  const vapid = vapidKeys();
  const svc = await PushService.start({ vapidPublicKey: vapid.publicKey, vapidSubject: SUBJECT, webhookSecret: SECRET });
  t.teardown(() => svc.stop());
  const nats = await NatsServer.start();
  t.teardown(() => nats.stop());
  const dir = await tempDir('gravitas-mute-');
  t.teardown(() => dir[Symbol.asyncDispose]());
  const keys = clusterKeys();
  const push = {
    vapidPublicKey: vapid.publicKey, vapidPrivateKey: vapid.privateKey, vapidSubject: SUBJECT, webhookSecret: SECRET, allowHttp: true,
    coalesceMs: 200, groupMuteBaseMs: BASE, groupMuteCapMs: CAP, dampingThresholdPerMin: 1, dampingMaxWindowMs: 3000,
  };
  const file = await writeNodeConfig(join(dir.path, 'm.json'), nodeConfig({ natsUrl: nats.url, nodeId: 'muteA', dataDir: join(dir.path, 'm'), keys, extra: { mailbox: { maxBytesPerPartition: 64 * 1024 * 1024 }, push } }));
  const node = await spawnNode(file);
  t.teardown(() => node.stop(5000));
  const [a0, a1] = node.clientAddresses as [string, string];
  const pk = keys.serverPublicKey;
  const on = (server: string, user: string, o: { prev?: TestClient; device?: string } = {}) =>
    connectClient(t, { user, servers: [server], serverPublicKey: pk, ...(o.prev && { identity: o.prev.identity, device: o.prev.device }), ...(o.device && { device: o.device }) });
  const metric = async (name: string, labels: Record<string, string> = {}) => metricValue(await metricsText(node.adminUrl), name, labels) ?? 0;
  const alice = await on(a0, 'alice');

  /** A user whose device d1 has a push subscription; returns it online (caller closes it). */
  const subscribed = async (user: string) => {
    const sub = svc.subscribe();
    const d = await on(a1, user);
    await d.client.registerPush(sub.target);
    return { sub, d };
  };

  t.test('a timed mute: silent pushes while it lasts (no text even with pushPreview), alerts again once it expired by itself', async (t) => {
    const { sub, d } = await subscribed('mo');
    // With the preview on: a muted chat's push must still carry no text (docs/push.md, "Payload").
    await d.client.request('prefs.set', { pushPreview: true });
    const m = await d.client.mute({ to: 'alice' }, 4000);
    t.ok(m.until !== undefined, 'the mute has an end');
    t.same((await d.client.listMutes()).map((e) => e.to), ['alice'], 'listed');
    await d.client.close();
    await alice.client.send('mo', 'while muted');
    const [p] = await check('a push', () => (svc.to(sub.id).length >= 1 ? svc.to(sub.id) : undefined), { timeout: 15_000, interval: 20 });
    t.match(p!.payload, { kind: 'sync', chat: { to: 'alice' }, count: 1 }, 'data-only: the device syncs');
    t.notOk('title' in p!.payload!, 'nothing to show');
    t.notOk('text' in p!.payload!, 'no preview text for a muted chat, although pushPreview is on');
    const d2 = await on(a1, 'mo', { prev: d });
    await check('the mute expired', async () => ((await d2.client.listMutes()).length === 0 ? true : undefined), { timeout: 15_000, interval: 100 });
    await d2.client.close();
    await alice.client.send('mo', 'after');
    const got = await check('a second push', () => (svc.to(sub.id).length >= 2 ? svc.to(sub.id) : undefined), { timeout: 15_000, interval: 20 });
    t.match(got[1]!.payload, { kind: 'message', title: 'New message from alice', text: 'after' }, 'an alert again (with its preview), nobody cleared the mute');
  });

  t.test('mutedPush suppress: no push at all, also from a cell that read the old preference; clearing restores alerts', async (t) => {
    const { sub, d } = await subscribed('sue');
    await d.client.close();
    // A first push from alice's cell (0): that cell has now read sue's preferences (the default, silent).
    await alice.client.send('sue', 'before');
    await check('a first push', () => (svc.to(sub.id).length >= 1 ? true : undefined), { timeout: 15_000, interval: 20 });
    // The preference changes on cell 1; cell 0 must not keep its old copy.
    const d1 = await on(a1, 'sue', { prev: d });
    await d1.client.request('prefs.set', { mutedPush: 'suppress' });
    await d1.client.mute({ to: 'alice' });
    t.same(d1.client.mutes, [{ to: 'alice' }], 'until cleared: no end');
    await d1.client.close();
    const before = await metric('gravitas_push_suppressed_total', { provider: 'webpush' });
    await alice.client.send('sue', 'hush');
    await check('suppressed', async () => ((await metric('gravitas_push_suppressed_total', { provider: 'webpush' })) > before ? true : undefined), { timeout: 15_000, interval: 50 });
    t.equal(svc.to(sub.id).length, 1, 'nothing was sent after the first push (not even a silent one)');
    const d2 = await on(a1, 'sue', { prev: d });
    await d2.client.unmute({ to: 'alice' });
    await d2.client.close();
    await alice.client.send('sue', 'now');
    const [, p] = await check('a push', () => (svc.to(sub.id).length >= 2 ? svc.to(sub.id) : undefined), { timeout: 15_000, interval: 20 });
    t.equal(p!.payload!.kind, 'message');
  });

  t.test('a group muted without a duration: base × members, capped; a muted group\'s pushes are silent, a member that just left gets its push', async (t) => {
    const gm = await on(a1, 'gm');
    const others = await Promise.all(['gm1', 'gm2', 'gm3', 'gm4'].map((u) => on(a0, u)));
    const { g: small } = await gm.client.createGroup('small', ['gm1', 'gm2']);
    const { g: big } = await gm.client.createGroup('big', ['gm1', 'gm2', 'gm3', 'gm4']);
    // Members by invitation: each accepts (others[3] is gm4, invited to the big group only).
    for (const [i, c] of others.entries()) {
      if (i < 2) await c.client.acceptInvite(small);
      await c.client.acceptInvite(big);
    }
    let t0 = Date.now();
    const ms = await gm.client.mute({ g: small });
    let t1 = Date.now();
    t.ok(ms.until! >= t0 + 3 * BASE && ms.until! <= t1 + 3 * BASE, '3 members: 3 × base');
    t0 = Date.now();
    const mb = await gm.client.mute({ g: big });
    t1 = Date.now();
    t.ok(mb.until! >= t0 + CAP && mb.until! <= t1 + CAP, '5 members: capped');
    const mf = await gm.client.mute({ g: big }, '1h');
    t.ok(mf.until! > Date.now() + 3_500_000, 'a named duration wins');
    t.same((await gm.client.mute({ g: big }, 'always')).until, undefined, "'always': until cleared");
    await gm.client.unmute({ g: big });
    // The mute applies to the group's pushes: gm2 mutes the small group only and goes offline.
    const sub = svc.subscribe();
    const gm2 = others[1]!;
    await gm2.client.registerPush(sub.target);
    await gm2.client.mute({ g: small });
    await gm2.client.close();
    await gm.client.sendToGroup(small, 'to the muted group');
    await gm.client.sendToGroup(big, 'to the other group');
    const got = await check('gm2 got two pushes', () => (svc.to(sub.id).length >= 2 ? svc.to(sub.id) : undefined), { timeout: 15_000, interval: 20 });
    const of = (g: string) => got.find((p) => (p.payload?.chat as { g?: string } | undefined)?.g === g)?.payload;
    t.match(of(small), { kind: 'sync', count: 1 }, 'the muted group: a data-only push');
    t.notOk(of(small) && 'title' in of(small)!, 'nothing to show for the muted group');
    t.match(of(big), { kind: 'message', title: 'New message from gm' }, 'the other group: an alert');
    // No oracle of group ids: a group that does not exist looks exactly like one the user is not in.
    const refusal = (p: Promise<unknown>) => p.then(() => 'ok', (e: unknown) => `${(e as { code?: string }).code}: ${(e as Error).message}`);
    const unknown = await refusal(gm.client.mute({ g: 'nosuchgroup00000' }));
    t.equal(unknown, await refusal(others[3]!.client.mute({ g: small })), 'an unknown group: the same code and text as a group one is not in');
    t.match(unknown, ErrorCode.NOT_A_MEMBER);
  });

  t.test('muting on one device syncs the others; bad arguments are BAD_MESSAGE', async (t) => {
    const p1 = await on(a0, 'pat', { device: 'p1' });
    const p2 = await on(a1, 'pat', { device: 'p2' });
    const p3 = await on(a0, 'pat', { device: 'p3' });
    const seen: Record<string, MuteEntry[][]> = { p1: [], p2: [], p3: [] };
    for (const [n, c] of [['p1', p1], ['p2', p2], ['p3', p3]] as const) c.client.on('mutes', (l) => seen[n]!.push(l));
    await p1.client.mute({ to: 'alice' }, '8h');
    await check('the other devices synced', () => (seen.p2!.length > 0 && seen.p3!.length > 0 ? true : undefined), { timeout: 10_000, interval: 20 });
    t.same(seen.p2![0]!.map((e) => e.to), ['alice'], 'on the other cell');
    t.same(p3.client.mutes.map((e) => e.to), ['alice'], 'client.mutes follows the sync');
    await p1.client.ping();
    t.equal(seen.p1!.length, 0, 'the device that made the change is not told again');
    await p2.client.unmute({ to: 'alice' });
    await check('cleared everywhere', () => (p1.client.mutes.length === 0 && p3.client.mutes.length === 0 ? true : undefined), { timeout: 10_000, interval: 20 });

    const bad: Array<[string, unknown]> = [
      ['both to and g', { to: 'alice', g: 'x' }],
      ['neither', {}],
      ['unknown name', { to: 'alice', for: 'forever' }],
      ['too short', { to: 'alice', for: 10 }],
      ['both for and until', { to: 'alice', for: '1h', until: Date.now() + 10_000 }],
      ['until in the past', { to: 'alice', until: Date.now() - 1000 }],
    ];
    for (const [what, a] of bad) t.equal(await code(p1.client.request('mute.set', a as never)), ErrorCode.BAD_MESSAGE, what);
  });

  t.test('1,000 mutes with the longest names: mute.list is paged under the frame limit, the sync is a notice, no device is cut off', async (t) => {
    // Fill the record to one below the bound directly in KV (docs/push.md's layout): 999 users with 64-character names.
    const nc = await connect({ servers: nats.url });
    t.teardown(() => nc.close());
    const kv = await new Kvm(nc).open('gravitas_mutes');
    const far = Date.now() + 300 * 86_400_000;
    const names = Array.from({ length: MUTE_LIMITS.maxPerUser - 1 }, (_, i) => `m${i}`.padEnd(64, 'x'));
    await kv.put('many', pack({ m: Object.fromEntries(names.map((u) => [`u:${u}`, far])) }));
    const m1 = await on(a0, 'many', { device: 'm1' });
    const m2 = await on(a1, 'many', { device: 'm2' });
    const synced: MuteEntry[][] = [];
    m2.client.on('mutes', (l) => synced.push(l));

    // Raw pages: each one fits a frame (as sent: the answer in its `res` envelope), the cursors chain, nothing repeats.
    const seen = new Set<string>();
    let pages = 0;
    for (let from: string | undefined; ; pages++) {
      const page = (await m1.client.request('mute.list', from === undefined ? {} : { from })) as { mutes: MuteEntry[]; next?: string };
      const frame = pack({ t: 'res', rid: 2 ** 32, ok: true, data: page }).length;
      t.ok(frame + 40 < DEFAULT_MAX_FRAME_BYTES, `page ${pages}: ${page.mutes.length} mutes in ${frame} bytes`);
      for (const e of page.mutes) seen.add(e.to!);
      if (page.next === undefined) break;
      from = page.next;
    }
    t.ok(pages >= 1, `${pages + 1} pages`);
    t.equal(seen.size, names.length, 'every mute listed once');
    t.equal(await code(m1.client.request('mute.list', { from: 'not a cursor' } as never)), ErrorCode.BAD_MESSAGE, 'a bad cursor is BAD_MESSAGE');

    // The change that makes 1,000: the other device is told, lists again, and keeps its connection.
    await m1.client.mute({ to: 'the-thousandth' });
    await check('m2 re-listed', () => (synced.length > 0 ? true : undefined), { timeout: 10_000, interval: 20 });
    t.equal(synced.at(-1)!.length, MUTE_LIMITS.maxPerUser, 'the sync gave m2 all 1,000 mutes');
    t.equal(m2.client.mutes.length, MUTE_LIMITS.maxPerUser, 'client.mutes has them all');
    t.equal((await m1.client.listMutes()).length, MUTE_LIMITS.maxPerUser, 'listMutes follows the pages');
    t.equal(await code(m1.client.mute({ to: 'one-too-many' })), ErrorCode.TOO_MANY_MUTES, 'the bound holds');
    await m2.client.unmute({ to: names[5]! });
    await check('m1 synced the removal', () => (m1.client.mutes.length === MUTE_LIMITS.maxPerUser - 1 ? true : undefined), { timeout: 10_000, interval: 20 });
    await Promise.all([m1.client.ping(), m2.client.ping()]);
    t.same([m1.disconnects, m2.disconnects, m1.errors, m2.errors], [0, 0, [], []], 'neither device was disconnected or saw an error');
  });

  t.test('damping: a burst in one chat gives a few alerts, the window widening with the rate; a mute set while a window is open applies', async (t) => {
    const { sub, d } = await subscribed('burst');
    await d.client.close();
    // A second device, online: it will mute the chat while a (damped, long) window for d1 is open.
    const d2 = await on(a0, 'burst', { device: 'd2' });
    const fromAlice = () => svc.to(sub.id).filter((p) => (p.payload?.chat as { to?: string } | undefined)?.to === 'alice');
    const damped0 = await metric('gravitas_push_damped_total');
    const N = 40;
    // Spread over a few base windows: without damping this is one push per 200 ms window.
    for (let i = 0; i < N; i++) {
      await alice.client.send('burst', `b${i}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    const got = await check('every message announced', () => {
      const l = fromAlice();
      return l.reduce((n, p) => n + Number(p.payload?.count ?? 0), 0) >= N ? l : undefined;
    }, { timeout: 30_000, interval: 50 });
    t.equal(got.reduce((n, p) => n + Number(p.payload?.count), 0), N, 'the counts add up');
    t.ok(got.length <= 6, `${got.length} pushes for ${N} messages over ≥ ${(N * 50) / 1000} s (base windows alone: ≥ 10)`);
    t.ok((await metric('gravitas_push_damped_total')) > damped0, 'windows were widened by damping');

    // The rate is high now: the next message opens a window of dampingMaxWindowMs (3 s). Mutes are read when it
    // closes (docs/push.md, "Coalescing"), so a mute made meanwhile turns its push into a silent one.
    const damped1 = await metric('gravitas_push_damped_total');
    await alice.client.send('burst', 'one more');
    await check('a damped window opened', async () => ((await metric('gravitas_push_damped_total')) > damped1 ? true : undefined), { timeout: 10_000, interval: 20 });
    t.equal(fromAlice().length, got.length, 'its push has not gone out yet');
    await d2.client.mute({ to: 'alice' }, '1h');
    const late = await check('the last push', () => (fromAlice().length > got.length ? fromAlice() : undefined), { timeout: 15_000, interval: 20 });
    t.match(late.at(-1)!.payload, { kind: 'sync', count: 1 }, 'the mute made while the window was open applied: a data-only push');
  });
});
