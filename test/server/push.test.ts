/*
 * The push gateway end to end: a real nats-server, two real nodes of one cluster
 * and a local push service on loopback (test/fixtures/push-service.ts) that
 * verifies VAPID and decrypts Web Push payloads as a browser would (http_ece), and
 * checks webhook signatures. Node A allows http endpoints (the service is plain
 * http); node B does not, and has a tiny push queue.
 */
import t from 'tap';
import { join } from 'node:path';
import { ErrorCode, fromBase64Url, hintKeyPair, verifyHint } from '@gravitas/protocol';
import { check, NatsServer, tempDir } from '@gravitas/testkit';
import { Kvm } from '@nats-io/kv';
import { connect as natsConnect } from '@nats-io/transport-node';
import { clusterKeys, connectClient, metricsText, metricValue, nodeConfig, spawnNode, writeNodeConfig, type TestClient } from '../fixtures/cluster.js';
import { PushService, vapidKeys, type ReceivedPush } from '../fixtures/push-service.js';
import { remoteCode as code } from '../fixtures/codes.js';

const STREAM_BYTES = 64 * 1024 * 1024;
const SUBJECT = 'mailto:push-test@example.com';
const SECRET = 'test-webhook-secret-0123456789';


t.test('push gateway', async (t) => {
  const vapid = vapidKeys();
  const svc = await PushService.start({ vapidPublicKey: vapid.publicKey, vapidSubject: SUBJECT, webhookSecret: SECRET });
  t.teardown(() => svc.stop());
  const nats = await NatsServer.start();
  t.teardown(() => nats.stop());
  const dir = await tempDir('gravitas-push-');
  t.teardown(() => dir[Symbol.asyncDispose]());
  const keys = clusterKeys();
  const hintKey = hintKeyPair(fromBase64Url(keys.serverKey, 32)).publicKey;
  const push = { vapidPublicKey: vapid.publicKey, vapidPrivateKey: vapid.privateKey, vapidSubject: SUBJECT, webhookSecret: SECRET, coalesceMs: 300, retryBaseMs: 50, retryMaxMs: 200, maxAttempts: 4, dampingThresholdPerMin: 1_000_000 };
  const start = async (nodeId: string, extra: Record<string, unknown>) => {
    const file = await writeNodeConfig(join(dir.path, `${nodeId}.json`), nodeConfig({ natsUrl: nats.url, nodeId, dataDir: join(dir.path, nodeId), keys, extra: { mailbox: { maxBytesPerPartition: STREAM_BYTES }, push: { ...push, ...extra } } }));
    const node = await spawnNode(file);
    t.teardown(() => node.stop(5000));
    return node;
  };
  const [A, B] = await Promise.all([start('pushA', { allowHttp: true }), start('pushB', { queueSize: 2, concurrency: 1 })]);
  const [a0, a1] = A.clientAddresses as [string, string];
  const [b0] = B.clientAddresses as [string];
  const pk = keys.serverPublicKey;
  const on = (server: string, user: string, prev?: TestClient) => connectClient(t, { user, servers: [server], serverPublicKey: pk, ...(prev && { identity: prev.identity, device: prev.device }) });
  const metric = async (name: string, labels: Record<string, string> = {}) => (metricValue(await metricsText(A.adminUrl), name, labels) ?? 0) + (metricValue(await metricsText(B.adminUrl), name, labels) ?? 0);
  /** A device that registers `target` and goes offline. */
  const offlineWith = async (user: string, target: Parameters<TestClient['client']['registerPush']>[0]) => {
    const d = await on(a1, user);
    const id = await d.client.registerPush(target);
    await d.client.close();
    return { d, id };
  };
  const pushes = (to: string, n: number, what: string) => check(what, () => (svc.to(to).length >= n ? svc.to(to) : undefined), { timeout: 15_000, interval: 20 });

  const alice = await on(a0, 'alice');
  const nc = await natsConnect({ servers: nats.url });
  t.teardown(() => nc.close());
  const pushKv = await new Kvm(nc).open('gravitas_push');

  t.test('web push: VAPID verified, payload decrypted, no text by default, text with the opt-in, a hint to the sender\'s cell', async (t) => {
    const sub = svc.subscribe();
    const { d: bob } = await offlineWith('bob', sub.target);
    await alice.client.send('bob', 'the secret plans');
    const [p] = await pushes(sub.id, 1, 'bob got a push');
    t.same(p!.problems, [], 'the push service found the request authentic and decrypted it');
    const pl = p!.payload!;
    t.match(pl, { v: 1, kind: 'message', chat: { to: 'alice' }, from: 'alice', count: 1, title: 'New message from alice' });
    t.notOk('text' in pl, 'no message text without the opt-in');
    t.notOk(JSON.stringify(pl).includes('secret'), 'the text is nowhere in the payload');
    const h = verifyHint(fromBase64Url(pl.hint as string), hintKey, { user: 'bob', device: bob.device }, Date.now());
    t.equal(h.cell, alice.client.welcome!.cell, "the hint names the sender's cell");
    t.equal(h.addr, a0, 'and its address');
    t.ok(h.web !== undefined && h.web === alice.client.welcome!.wa, 'and its web address, for a device that reaches only WebSocket or chunked HTTP');

    const bob2 = await on(a1, 'bob', bob);
    await bob2.client.request('prefs.set', { pushPreview: true });
    await bob2.client.close();
    await alice.client.send('bob', 'show me');
    const got = await pushes(sub.id, 2, 'bob got a second push');
    t.same(got[1]!.problems, []);
    t.equal(got[1]!.payload!.text, 'show me', 'the text is there once the user opted in');
  });

  t.test('coalescing: several messages in a window make fewer pushes carrying the count', async (t) => {
    const sub = svc.subscribe();
    await offlineWith('cara', sub.target);
    const before = await metric('gravitas_push_coalesced_total', { provider: 'webpush' });
    await Promise.all([1, 2, 3, 4, 5].map((i) => alice.client.send('cara', `m${i}`)));
    const got = await check('all five announced', () => {
      const l = svc.to(sub.id);
      return l.reduce((n, p) => n + Number(p.payload?.count ?? 0), 0) >= 5 ? l : undefined;
    }, { timeout: 15_000, interval: 20 });
    t.equal(got.reduce((n, p) => n + Number(p.payload?.count), 0), 5, 'the counts add up to the messages');
    t.ok(got.length < 5, `fewer pushes (${got.length}) than messages`);
    t.ok(got.some((p) => Number(p.payload!.count) > 1 && /^\d+ new messages from alice$/.test(String(p.payload!.title))), 'one says "N new messages from alice"');
    t.ok((await metric('gravitas_push_coalesced_total', { provider: 'webpush' })) - before >= 1, 'counted as coalesced');
  });

  t.test('a target the push service reports gone (410) is removed', async (t) => {
    const sub = svc.subscribe();
    svc.script(sub.id, [410]);
    const { d } = await offlineWith('dan', sub.target);
    await alice.client.send('dan', 'anyone?');
    await pushes(sub.id, 1, 'the push reached the service');
    t.equal(svc.to(sub.id)[0]!.status, 410);
    const dan = await on(a1, 'dan', d);
    await check('target removed', async () => ((await dan.client.pushTargets()).targets.length === 0 ? true : undefined), { timeout: 10_000, interval: 50 });
    t.ok((await metric('gravitas_push_gone_total', { provider: 'webpush' })) >= 1, 'counted as gone');
    await dan.client.close();
  });

  t.test('webhook: signed, retried after 500s with the same idempotency key', async (t) => {
    svc.script('hook-eve', [500, 503]);
    await offlineWith('eve', { kind: 'webhook', url: svc.webhookUrl('hook-eve') });
    await alice.client.send('eve', 'ping');
    const got = await check('accepted on the third attempt', () => (svc.to('hook-eve').some((r) => r.status === 200) ? svc.to('hook-eve') : undefined), { timeout: 15_000, interval: 20 });
    t.same(got.map((r) => r.status), [500, 503, 200], 'two failures, then success');
    t.same(got.flatMap((r) => r.problems), [], 'every attempt carried a valid signature over timestamp and body');
    t.equal(new Set(got.map((r) => r.headers['idempotency-key'])).size, 1, 'one idempotency key across retries');
    t.match(got[2]!.payload, { user: 'eve', device: 'd1', kind: 'message', from: 'alice', count: 1 });
    t.notOk('text' in got[2]!.payload!, 'no text');
    t.ok((await metric('gravitas_push_retries_total', { provider: 'webhook' })) >= 2, 'retries counted');
  });

  t.test('webhook failing every attempt: counted failed, device unreachable', async (t) => {
    svc.script('hook-fay', [500, 500, 500, 500]);
    await offlineWith('fay', { kind: 'webhook', url: svc.webhookUrl('hook-fay') });
    const before = await metric('gravitas_push_unreachable_total');
    await alice.client.send('fay', 'ping');
    await check('four attempts', () => (svc.to('hook-fay').length >= 4 ? true : undefined), { timeout: 15_000, interval: 20 });
    await check('failed and unreachable', async () => ((await metric('gravitas_push_unreachable_total')) > before && (await metric('gravitas_push_failed_total', { provider: 'webhook' })) >= 1 ? true : undefined), { timeout: 10_000, interval: 50 });
    t.equal(svc.to('hook-fay').length, 4, 'bounded by push.maxAttempts');
  });

  t.test('an offline device without targets counts as unreachable and is handed to the relay', async (t) => {
    const gus = await on(a1, 'gus');
    await gus.client.close();
    const before = await metric('gravitas_push_unreachable_total');
    const wakes = () => metric('gravitas_relay_wakes_total', { result: 'no_relayer' });
    const wakesBefore = await wakes();
    await alice.client.send('gus', 'hello');
    await check('unreachable counted', async () => ((await metric('gravitas_push_unreachable_total')) > before ? true : undefined), { timeout: 10_000, interval: 50 });
    // docs/push.md: onUnreachable is wired to the peer relay; nobody reported reaching gus, so its attempt ends in no_relayer.
    await check('a relay attempt for gus', async () => ((await wakes()) > wakesBefore ? true : undefined), { timeout: 10_000, interval: 50 });
    t.equal((await wakes()) - wakesBefore, 1, 'one wake attempt for one unreachable device');
  });

  t.test('a group message reaches offline members by push; online and own devices get none', async (t) => {
    const sub = svc.subscribe();
    const { d: gina } = await offlineWith('gina', sub.target);
    const onlineSub = svc.subscribe();
    const hugo = await on(a1, 'hugo');
    await hugo.client.registerPush(onlineSub.target);
    // iris blocks alice: offline, she gets no push for alice's group messages (docs/groups.md, Blocks).
    const irisSub = svc.subscribe();
    const { d: iris } = await offlineWith('iris', irisSub.target);
    const { g } = await alice.client.createGroup('g', ['gina', 'hugo', 'iris']);
    await hugo.client.acceptInvite(g);
    const iris2 = await on(a1, 'iris', iris);
    await iris2.client.acceptInvite(g);
    await iris2.client.request('contacts.block', { user: 'alice' });
    await iris2.client.close();
    // gina accepts the invitation on her device, then goes offline again.
    const gina2 = await on(a1, 'gina', gina);
    await gina2.client.acceptInvite(g);
    await gina2.client.close();
    // While she was offline the invitation reached her as a notice under custody, announced by push too.
    const invited = await pushes(sub.id, 1, 'gina got a push for the invitation');
    t.match(invited[0]!.payload, { kind: 'message', from: '_groups' }, 'the invitation notice, from the system');
    const before = invited.length;
    await alice.client.sendToGroup(g, 'to the group');
    const p = (await pushes(sub.id, before + 1, 'gina got a push'))[before];
    t.same(p!.problems, []);
    t.match(p!.payload, { kind: 'message', chat: { g }, from: 'alice', count: 1 });
    t.notOk('text' in p!.payload!, 'no text');
    const h = verifyHint(fromBase64Url(p!.payload!.hint as string), hintKey, { user: 'gina', device: gina.device }, Date.now());
    t.equal(h.cell, alice.client.welcome!.cell, "the hint names the sender's cell");
    await hugo.received((m) => m.g === g);
    await alice.client.sendToGroup(g, 'a second one');
    await pushes(sub.id, before + 2, 'gina got a second push');
    t.equal(svc.to(onlineSub.id).length, 0, 'the online member got no push');
    t.same(svc.to(irisSub.id).filter((x) => x.payload?.from === 'alice'), [], 'the member who blocks alice got no push for her messages');
    await hugo.client.close();
  });

  t.test('bad registrations are BAD_MESSAGE; too many targets; https only where http is not allowed', async (t) => {
    const hal = await on(a1, 'hal');
    const good = svc.subscribe().target;
    const bad: Array<[string, unknown]> = [
      ['ftp URL', { kind: 'webhook', url: 'ftp://example.com/x' }],
      ['not a URL', { kind: 'webhook', url: 'not a url' }],
      ['javascript:', { kind: 'webhook', url: 'javascript:alert(1)' }],
      ['credentials in the URL', { kind: 'webhook', url: 'https://u:p@example.com/' }],
      ['a URL too long', { kind: 'webhook', url: `https://example.com/${'a'.repeat(3000)}` }],
      ['unknown kind', { kind: 'apns', url: 'https://example.com/' }],
      ['oversized p256dh', { ...good, keys: { ...good.keys, p256dh: Buffer.alloc(100, 4).toString('base64url') } }],
      ['p256dh not a point', { ...good, keys: { ...good.keys, p256dh: Buffer.alloc(65, 7).toString('base64url') } }],
      ['short auth', { ...good, keys: { ...good.keys, auth: Buffer.alloc(8).toString('base64url') } }],
      ['junk auth', { ...good, keys: { ...good.keys, auth: '!!!!' } }],
      ['no keys', { kind: 'webpush', endpoint: good.endpoint }],
    ];
    for (const [what, a] of bad) t.equal(await code(hal.client.request('push.register', a as never)), ErrorCode.BAD_MESSAGE, what);
    for (let i = 0; i < 4; i++) await hal.client.registerPush({ kind: 'webhook', url: svc.webhookUrl(`hal-${i}`) });
    t.equal(await hal.client.registerPush({ kind: 'webhook', url: svc.webhookUrl('hal-0') }).then(() => 'ok'), 'ok', 'the same URL again replaces, not adds');
    t.equal(await code(hal.client.registerPush({ kind: 'webhook', url: svc.webhookUrl('hal-4') })), ErrorCode.TOO_MANY_PUSH_TARGETS, 'bounded per device');
    t.equal((await hal.client.pushTargets()).targets.length, 4);
    t.equal((await hal.client.pushTargets()).vapidPublicKey, vapid.publicKey, 'the VAPID key for subscribe()');

    const ian = await on(b0, 'ian');
    t.equal(await code(ian.client.registerPush(svc.subscribe().target)), ErrorCode.BAD_MESSAGE, 'node B takes https endpoints only');
    await hal.client.close();
  });

  t.test('push.unregister removes one target; removing the device purges the others', async (t) => {
    const [s1, s2] = [svc.subscribe(), svc.subscribe()];
    const ivy = await on(a1, 'ivy');
    const id1 = await ivy.client.registerPush(s1.target);
    const id2 = await ivy.client.registerPush(s2.target);
    t.equal(await ivy.client.unregisterPush(id1), true, 'removed');
    t.equal(await ivy.client.unregisterPush(id1), false, 'idempotent: not there any more');
    t.same((await ivy.client.pushTargets()).targets.map((x) => x.id), [id2], 'one left');
    await ivy.client.close();
    // The sender on node B: targets live in KV, so a change made through node A counts there at once.
    const bea = await on(b0, 'bea');
    await bea.client.send('ivy', 'after the unregister');
    await pushes(s2.id, 1, 'the remaining target got the push');
    t.equal(svc.to(s1.id).length, 0, 'the unregistered target got none');

    // devices.remove from ivy's other device: d1's targets are purged from the store (docs/push.md, "Registering targets").
    const stored = async (): Promise<boolean> => (await pushKv.get('ivy.d1'))?.operation === 'PUT';
    t.ok(await stored(), "d1's targets are in KV");
    const ivy2 = await connectClient(t, { user: 'ivy', device: 'd2', servers: [a0], serverPublicKey: pk });
    await ivy2.client.request('devices.remove', { device: 'd1' });
    t.notOk(await stored(), 'gone with the device');
    await ivy2.client.close();
  });

  t.test('the push queue is bounded: drop oldest, counted; depth on /metrics', async (t) => {
    // Targets registered through node A (http allowed) are cluster-wide; the sender is on node B.
    const sender = await on(b0, 'qsender');
    const subs: ReceivedPush['to'][] = [];
    for (let i = 0; i < 6; i++) {
      const sub = svc.subscribe();
      subs.push(sub.id);
      await offlineWith(`q${i}`, sub.target);
    }
    svc.hold();
    const dropped0 = metricValue(await metricsText(B.adminUrl), 'gravitas_push_dropped_total', { provider: 'webpush' }) ?? 0;
    await Promise.all(subs.map((_, i) => sender.client.send(`q${i}`, 'wake up')));
    await check('drops counted', async () => ((metricValue(await metricsText(B.adminUrl), 'gravitas_push_dropped_total', { provider: 'webpush' }) ?? 0) - dropped0 >= 3 ? true : undefined), { timeout: 15_000, interval: 50 });
    const text = await metricsText(B.adminUrl);
    t.ok((metricValue(text, 'gravitas_push_queue_depth') ?? -1) <= 2, 'the queue never holds more than push.queueSize');
    t.equal(metricValue(text, 'gravitas_push_in_flight'), 1, 'push.concurrency requests in flight');
    svc.release();
    await check('the held and queued pushes arrive', () => (subs.filter((s) => svc.to(s).length > 0).length >= 3 ? true : undefined), { timeout: 15_000, interval: 50 });
    svc.release();
    t.ok(subs.filter((s) => svc.to(s).length > 0).length <= 3, 'the dropped ones were never sent');
  });
});
