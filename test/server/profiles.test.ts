/*
 * Versioned profiles with real processes: a nats-server and one node. Devices
 * change their own profile with `profile.set`; the admin API sets any user's and
 * reads old versions back. Every change is a new stream sequence, old versions
 * stay readable, a change that changes nothing writes nothing, the limits are
 * refused with codes, concurrent writers lose no update, every change is
 * announced on the invalidation subject (the cells' version caches), and the
 * listing the campaign runner uses sees each user once, at the newest version.
 */
import t from 'tap';
import { connect } from '@nats-io/transport-node';
import { jetstreamManager, DiscardPolicy, RetentionPolicy } from '@nats-io/jetstream';
import { ErrorCode, PROFILE_LIMITS, RemoteError, unpack } from '@gravitas/protocol';
import { Names } from '@gravitas/server';
import { check } from '@gravitas/testkit';
// The store itself (not part of the package's public surface): the listing has no route of its own.
import { PROFILE_HISTORY, ProfileStore, type UserProfile } from '@gravitas/server/internal';
import { connectClient } from '../fixtures/cluster.js';
import { admin, ROOT_TOKEN, startEngage } from '../fixtures/admin-api.js';
import { remoteCode as code } from '../fixtures/codes.js';

const PREFIX = 'gravitas';


interface Versioned { version: number; attrs: Record<string, unknown> }

t.test('versioned profiles', async (t) => {
  const { nats, node, keys, url } = await startEngage(t);
  const pk = keys.serverPublicKey;
  const on = (user: string) => connectClient(t, { user, servers: node.clientAddresses, serverPublicKey: pk });
  const nc = await connect({ servers: nats.url });
  t.teardown(() => nc.close());
  const names = new Names(PREFIX);

  // Every change announced to the cells' caches.
  const invalidated: string[] = [];
  nc.subscribe(names.invalidations, {
    callback: (_e, m) => {
      const i = unpack(m.data) as { kind?: string; key?: string };
      if (i.kind === 'profile' && typeof i.key === 'string') invalidated.push(i.key);
    },
  });
  await nc.flush();

  t.test('the stream: one subject per user, limits retention, bounded history per user', async (t) => {
    const jsm = await jetstreamManager(nc);
    const info = await jsm.streams.info(`${PREFIX}_PROFILES`);
    t.same(info.config.subjects, [`${PREFIX}.profile.*`]);
    t.equal(info.config.retention, RetentionPolicy.Limits);
    t.equal(info.config.max_msgs_per_subject, PROFILE_HISTORY);
    t.equal(info.config.discard, DiscardPolicy.Old, 'a full history drops that user\'s oldest version');
    t.equal(info.config.allow_direct, false, 'reads go to the leader');
  });

  t.test('versions increase per change; old versions stay readable; a no-op writes nothing', async (t) => {
    const ann = await on('pf-ann');
    const get = () => ann.client.request('profile.get', {}) as Promise<Versioned>;
    const set = (attrs: Record<string, string | number | boolean | null>) => ann.client.request('profile.set', { attrs }) as Promise<{ version: number }>;
    t.same(await get(), { version: 0, attrs: {} }, 'no profile yet: version 0');
    const v1 = (await set({ city: 'Oslo', age: 30 })).version;
    t.ok(v1 > 0, 'the first version is a stream sequence');
    const v2 = (await set({ age: 31, vip: true })).version;
    t.ok(v2 > v1, 'a change makes a higher version');
    const v3 = (await set({ city: null })).version;
    t.ok(v3 > v2, 'removing an attribute is a change too');
    t.same(await get(), { version: v3, attrs: { age: 31, vip: true } }, 'the current profile is the merge');
    t.equal((await set({ age: 31 })).version, v3, 'setting what is already there writes no new version');
    t.equal((await set({ gone: null })).version, v3, 'removing what is not there writes no new version');

    const at = async (v: number) => (await admin('GET', `${url}/admin/profiles/pf-ann?version=${v}`, { token: ROOT_TOKEN })).json as Versioned & { user: string };
    t.match(await at(v1), { user: 'pf-ann', version: v1, attrs: { city: 'Oslo', age: 30 } }, 'version 1 as it was');
    t.same((await at(v1)).attrs, { city: 'Oslo', age: 30 });
    t.same((await at(v2)).attrs, { city: 'Oslo', age: 31, vip: true }, 'version 2 as it was');
    t.same((await at(v3)).attrs, { age: 31, vip: true });
    t.same((await at(0)).attrs, {}, 'version 0 is the empty profile');
    const current = (await admin('GET', `${url}/admin/profiles/pf-ann`, { token: ROOT_TOKEN })).json as Versioned;
    t.equal(current.version, v3, 'without ?version: the current one');

    // Another user's version is not this user's.
    const ben = await on('pf-ben');
    const bv = ((await ben.client.request('profile.set', { attrs: { lang: 'nb' } })) as { version: number }).version;
    const wrong = await admin('GET', `${url}/admin/profiles/pf-ann?version=${bv}`, { token: ROOT_TOKEN });
    t.equal(wrong.status, 404);
    t.equal(wrong.code, 'NOT_FOUND', "another user's version is NOT_FOUND");
    t.equal((await admin('GET', `${url}/admin/profiles/pf-ann?version=999999`, { token: ROOT_TOKEN })).code, 'NOT_FOUND', 'a version never written');
    t.equal((await admin('GET', `${url}/admin/profiles/pf-ann?version=-1`, { token: ROOT_TOKEN })).code, 'BAD_REQUEST');
    t.equal((await admin('GET', `${url}/admin/profiles/pf-ann?version=x`, { token: ROOT_TOKEN })).code, 'BAD_REQUEST');

    // The admin API writes the same profile; the device sees it.
    const put = await admin('PUT', `${url}/admin/profiles/pf-ann`, { token: ROOT_TOKEN, body: { attrs: { tier: 'gold', vip: null } } });
    t.equal(put.status, 200);
    const v4 = (put.json as { version: number }).version;
    t.ok(v4 > v3);
    t.same(await get(), { version: v4, attrs: { age: 31, tier: 'gold' } }, 'the device reads what the admin wrote');
    await check('every change was announced for the version caches', () => invalidated.filter((u) => u === 'pf-ann').length >= 4, { timeout: 5000 });
    t.ok(invalidated.includes('pf-ben'));
  });

  t.test('limits are refused with codes', async (t) => {
    const cat = await on('pf-cat');
    const set = (attrs: Record<string, unknown>) => cat.client.request('profile.set', { attrs } as never);
    const many = (n: number, p: string) => Object.fromEntries(Array.from({ length: n }, (_, i) => [`${p}${i}`, i]));
    t.equal(await code(set(many(PROFILE_LIMITS.maxAttrs + 1, 'a'))), ErrorCode.BAD_MESSAGE, 'too many attributes in one change');
    t.equal(await code(set(many(PROFILE_LIMITS.maxAttrs - 2, 'a'))), 'ok', 'just under the attribute bound');
    t.equal(await code(set(many(3, 'b'))), ErrorCode.BAD_MESSAGE, 'a change that would make the profile hold too many attributes');
    t.equal(await code(set({ a0: null, a1: null, a2: null, b0: 1, b1: 2 })), 'ok', 'removing makes room');
    const big = 'x'.repeat(PROFILE_LIMITS.maxStringLength);
    t.equal(await code(set({ s: `${big}y` })), ErrorCode.BAD_MESSAGE, 'a string value over the bound');
    const dog = await on('pf-dog');
    const fill = (from: number, n: number) => Object.fromEntries(Array.from({ length: n }, (_, i) => [`s${from + i}`, big]));
    t.equal(await code(dog.client.request('profile.set', { attrs: fill(0, 7) })), 'ok', '7 long strings fit');
    let refused = '';
    try {
      await dog.client.request('profile.set', { attrs: fill(7, 1) });
    } catch (err) {
      refused = err instanceof RemoteError ? `${err.code} ${err.message}` : String(err);
    }
    t.match(refused, new RegExp(`^${ErrorCode.BAD_MESSAGE} .*${PROFILE_LIMITS.maxBytes}`), 'a profile over the encoded size bound, naming the bound');
    t.equal(await code(set({ 'not a name': 1 })), ErrorCode.BAD_MESSAGE, 'a bad attribute name');
    t.equal(await code(set({ o: { nested: 1 } })), ErrorCode.BAD_MESSAGE, 'a nested value');
    t.equal(await code(set({})), ErrorCode.BAD_MESSAGE, 'an empty change');
    t.same(cat.errors, [], 'the session survived every refusal');

    const badPut = (body: unknown) => admin('PUT', `${url}/admin/profiles/pf-cat`, { token: ROOT_TOKEN, body }).then((a) => `${a.status} ${a.code}`);
    t.equal(await badPut({ attrs: many(PROFILE_LIMITS.maxAttrs + 1, 'z') }), '400 BAD_REQUEST', 'admin: too many attributes');
    t.equal(await badPut({ attrs: { s: `${big}y` } }), '400 BAD_REQUEST', 'admin: a long value');
    t.equal(await badPut({ city: 'x' }), '400 BAD_REQUEST', 'admin: not {attrs}');
    t.equal(await badPut({ attrs: {} }), '400 BAD_REQUEST', 'admin: nothing to set');
    const badUser = await admin('PUT', `${url}/admin/profiles/not%20a%20name`, { token: ROOT_TOKEN, body: { attrs: { a: 1 } } });
    t.equal(badUser.code, 'BAD_REQUEST', 'admin: a user that is not a name');
    t.equal((await admin('PUT', `${url}/admin/profiles/pf-cat`, { body: { attrs: { a: 1 } } })).status, 401, 'admin: no token');
  });

  t.test('concurrent writers lose no update', async (t) => {
    const writers = 6;
    const answers = await Promise.all(
      Array.from({ length: writers }, (_, i) => admin('PUT', `${url}/admin/profiles/pf-race`, { token: ROOT_TOKEN, body: { attrs: { [`w${i}`]: i } } })),
    );
    const ok = answers.filter((a) => a.status === 200);
    for (const a of answers) t.ok(a.status === 200 || a.code === 'CONFLICT', `answered ${a.status} ${a.code ?? ''}`);
    const versions = ok.map((a) => (a.json as { version: number }).version);
    t.equal(new Set(versions).size, versions.length, 'every successful write made its own version');
    const cur = (await admin('GET', `${url}/admin/profiles/pf-race`, { token: ROOT_TOKEN })).json as Versioned;
    t.equal(cur.version, Math.max(...versions), 'the last version is the current one');
    for (let i = 0; i < writers; i++) {
      if (answers[i]!.status === 200) t.equal(cur.attrs[`w${i}`], i, `writer ${i}'s change is in the profile`);
    }
  });

  t.test('the listing: every user once, at the newest version, even while profiles change', async (t) => {
    const store = new ProfileStore(nc, names, 1);
    for (const u of ['pl-a', 'pl-b', 'pl-c']) {
      await store.set(u, { n: 1 });
      await store.set(u, { n: 2, u });
    }
    await store.set('pl-a', { n: 3 });
    const seen = new Map<string, UserProfile>();
    let dups = 0;
    for await (const p of store.all()) {
      if (seen.has(p.user)) dups++;
      seen.set(p.user, p);
      // Changes made during the listing do not keep it going.
      if (p.user === 'pl-b') await store.set('pl-c', { n: 9 });
    }
    t.equal(dups, 0, 'no user twice');
    t.same(seen.get('pl-a')?.attrs, { n: 3, u: 'pl-a' }, 'the newest version');
    t.equal(seen.get('pl-a')?.version, (await store.get('pl-a')).version);
    for (const u of ['pf-ann', 'pf-ben', 'pf-race', 'pl-b', 'pl-c']) t.ok(seen.has(u), `${u} listed`);
    t.notOk(seen.has('pf-nobody'), 'a user without a profile is not listed');
    t.equal(await store.version('pl-a'), seen.get('pl-a')!.version, 'version() is the newest sequence');
    t.equal(await store.version('pf-nobody'), 0, 'version() of a user without a profile is 0');
  });
});
