/*
 * Contacts, blocks and preferences with real processes: one nats-server, two nodes
 * of two cells each, SDK clients on different nodes so that every change has to
 * reach the other node's caches. A block looks exactly like an unknown user to the
 * blocked sender; read receipts of a blocked user never arrive.
 */
import t from 'tap';
import { join } from 'node:path';
import { connect } from '@nats-io/transport-node';
import { Kvm } from '@nats-io/kv';
import { jetstreamManager } from '@nats-io/jetstream';
import { ErrorCode, pack, RemoteError, type Receipt } from '@gravitas/protocol';
import { DeliveryError } from '@gravitas/client';
import { check, NatsServer, tempDir } from '@gravitas/testkit';
import { clusterKeys, connectClient, nodeConfig, spawnNode, writeNodeConfig, type TestClient } from '../fixtures/cluster.js';

const PREFIX = 'gravitas';
/** The documented bounds (docs/social.md). */
const MAX_CONTACTS = 5000;
const MAX_BLOCKED = 5000;
/** Changes and pages in quick succession, far more than a device makes: the request limits are not what this tests. */
const MANY_REQUESTS = { requestRatePerSec: 10_000, requestBurst: 10_000, accountRequestRatePerSec: 100_000 };
/** Small streams: JetStream reserves max_bytes up front, and test servers share one disk. */
const STREAM_BYTES = 64 * 1024 * 1024;

/** The coded failure of a promise (or 'ok'), so tests can compare codes and texts. */
async function outcome(p: Promise<unknown>): Promise<{ code: string; message: string }> {
  try {
    await p;
    return { code: 'ok', message: '' };
  } catch (err) {
    if (err instanceof RemoteError) return { code: err.code, message: err.message };
    return { code: `not a RemoteError: ${String(err)}`, message: '' };
  }
}

/** Sends until the result is `want` (a change made on another node reaches this cell by a cache invalidation). */
async function sendUntil(from: TestClient, to: string, want: 'delivered' | 'UNDELIVERABLE', label: string): Promise<void> {
  let n = 0;
  await check(
    `${from.user} → ${to}: ${want}`,
    async () => {
      try {
        const r = await from.client.send(to, `${label} #${n++}`);
        return r.status === want;
      } catch (err) {
        return err instanceof DeliveryError && err.code === want;
      }
    },
    { timeout: 10_000, interval: 50 },
  );
}

t.test('contacts, blocks and preferences across two nodes', async (t) => {
  const nats = await NatsServer.start();
  t.teardown(() => nats.stop());
  const dir = await tempDir('gravitas-social-');
  t.teardown(() => dir[Symbol.asyncDispose]());
  const keys = clusterKeys();
  const [A, B] = await Promise.all(
    ['nodeA', 'nodeB'].map(async (nodeId) => {
      const file = await writeNodeConfig(join(dir.path, `${nodeId}.json`), nodeConfig({ natsUrl: nats.url, nodeId, dataDir: join(dir.path, nodeId), keys, extra: { mailbox: { maxBytesPerPartition: STREAM_BYTES }, limits: MANY_REQUESTS } }));
      const node = await spawnNode(file);
      t.teardown(() => node.stop(5000));
      return node;
    }),
  );
  const [a0, a1] = A!.clientAddresses as [string, string];
  const [b0, b1] = B!.clientAddresses as [string, string];
  const pk = keys.serverPublicKey;
  const onA = (user: string) => connectClient(t, { user, servers: [a0, a1, b0, b1], serverPublicKey: pk });
  const onB = (user: string) => connectClient(t, { user, servers: [b1, b0, a0, a1], serverPublicKey: pk });

  const kvConn = await connect({ servers: nats.url });
  t.teardown(() => kvConn.close());
  const socialKv = await new Kvm(kvConn).open(`${PREFIX}_social`);
  /** Writes a user's lists in the documented layout: one key per entry, counts in the head. */
  const fill = async (user: string, contacts: string[], blocked: string[]): Promise<void> => {
    const keys = [...contacts.map((u) => `${user}.c.${u}`), ...blocked.map((u) => `${user}.b.${u}`)];
    for (let i = 0; i < keys.length; i += 500) await Promise.all(keys.slice(i, i + 500).map((k) => socialKv.put(k, new Uint8Array(0))));
    await socialKv.put(user, pack({ n: contacts.length, m: blocked.length, t: Date.now() }));
  };
  /** Bytes written to the social bucket (payloads and headers of every message on its subjects) while `fn` runs. */
  const written = async (fn: () => Promise<unknown>): Promise<number> => {
    let bytes = 0;
    const sub = kvConn.subscribe(`$KV.${PREFIX}_social.>`, { callback: (_e, m) => void (bytes += m.data.length + (m.headers?.toString().length ?? 0)) });
    await kvConn.flush();
    try {
      await fn();
      await kvConn.flush();
      return bytes;
    } finally {
      sub.unsubscribe();
    }
  };

  t.test('add, list, remove; idempotent; refused for oneself; checked arguments', async (t) => {
    const ann = await onA('c-ann');
    const list = () => ann.client.request('contacts.list', {}) as Promise<{ contacts: string[]; blocked: string[] }>;
    t.same(await list(), { contacts: [], blocked: [] }, 'a new user has empty lists');
    await ann.client.request('contacts.add', { user: 'c-ben' });
    await ann.client.request('contacts.add', { user: 'c-cat' });
    await ann.client.request('contacts.add', { user: 'c-ben' });
    t.same((await list()).contacts.sort(), ['c-ben', 'c-cat'], 'both added, the repeated add changed nothing');
    await ann.client.request('contacts.remove', { user: 'c-ben' });
    await ann.client.request('contacts.remove', { user: 'c-ben' });
    t.same(await list(), { contacts: ['c-cat'], blocked: [] }, 'removed; removing again is harmless');
    t.equal((await outcome(ann.client.request('contacts.add', { user: 'c-ann' }))).code, ErrorCode.NOT_ALLOWED, 'cannot add oneself');
    t.equal((await outcome(ann.client.request('contacts.block', { user: 'c-ann' }))).code, ErrorCode.NOT_ALLOWED, 'cannot block oneself');
    t.equal((await outcome(ann.client.request('contacts.add', { user: 'not a name!' }))).code, ErrorCode.BAD_MESSAGE, 'a bad name is BAD_MESSAGE');
    t.equal((await outcome(ann.client.request('contacts.add', {} as { user: string }))).code, ErrorCode.BAD_MESSAGE, 'a missing name is BAD_MESSAGE');
    // The same user on another device, on the other node, sees the change at once.
    const ann2 = await connectClient(t, { user: 'c-ann', device: 'd2', servers: [b0, a0], serverPublicKey: pk });
    t.same(await (ann2.client.request('contacts.list', {}) as Promise<unknown>), { contacts: ['c-cat'], blocked: [] }, 'another device on node B lists the same');
    t.same(ann.errors, [], 'the session survived the refused requests');
    await ann.client.ping();
  });

  t.test('bounded lists: TOO_MANY_CONTACTS and TOO_MANY_BLOCKED', async (t) => {
    // Fill the record to one below each bound directly in KV (the documented layout), then add
    // through the server. Names of the longest allowed length: the full lists must still fit one frame.
    const full = (n: number, p: string) => Array.from({ length: n }, (_, i) => `${p}${i}`.padEnd(64, 'x'));
    await fill('c-lim', full(MAX_CONTACTS - 1, 'friend-'), full(MAX_BLOCKED - 1, 'pest-'));
    const lim = await onB('c-lim');
    t.equal(await outcome(lim.client.request('contacts.add', { user: 'c-last'.padEnd(64, 'y') })).then((o) => o.code), 'ok', 'the last free place is taken');
    const over = await outcome(lim.client.request('contacts.add', { user: 'c-one-too-many' }));
    t.equal(over.code, ErrorCode.TOO_MANY_CONTACTS, 'one more contact is refused with a code');
    t.match(over.message, String(MAX_CONTACTS), 'the message names the bound');
    t.equal(await outcome(lim.client.request('contacts.add', { user: full(8, 'friend-')[7]! })).then((o) => o.code), 'ok', 'adding one already there is still fine at the bound');
    t.equal(await outcome(lim.client.request('contacts.block', { user: 'c-last-pest'.padEnd(64, 'y') })).then((o) => o.code), 'ok');
    t.equal((await outcome(lim.client.request('contacts.block', { user: 'c-pest-too-many' }))).code, ErrorCode.TOO_MANY_BLOCKED, 'one more block is refused with a code');
    // Paged: every answer fits one frame; following `next` lists everything once.
    const lists = { contacts: [] as string[], blocked: [] as string[] };
    let pages = 0;
    for (let from: number | undefined = 0; from !== undefined; pages++) {
      const page = (await lim.client.request('contacts.list', { from })) as { contacts: string[]; blocked: string[]; next?: number };
      lists.contacts.push(...page.contacts);
      lists.blocked.push(...page.blocked);
      from = page.next;
    }
    t.ok(pages > 10, `listed in ${pages} pages`);
    t.equal(lists.contacts.length, MAX_CONTACTS, 'the contact list is exactly full');
    t.equal(lists.blocked.length, MAX_BLOCKED, 'the block list is exactly full');
    t.equal(new Set(lists.contacts).size, MAX_CONTACTS, 'each contact once across the pages');
    t.notOk(lists.contacts.includes('c-one-too-many'));
    await lim.client.request('contacts.remove', { user: full(1, 'friend-')[0]! });
    t.equal(await outcome(lim.client.request('contacts.add', { user: 'c-one-too-many' })).then((o) => o.code), 'ok', 'room again after a removal');
  });

  t.test('a change writes a few hundred bytes whatever the size of the lists, and a removal leaves nothing behind', async (t) => {
    // An attacker with a full list must not be able to make every add rewrite it (issue 14: ~111 MiB for 2,000 adds).
    const full = Array.from({ length: MAX_CONTACTS - 10 }, (_, i) => `w-${i}`.padEnd(64, 'z'));
    await fill('c-big', full, []);
    const big = await onA('c-big');
    const add = await written(() => big.client.request('contacts.add', { user: 'w-new'.padEnd(64, 'q') }));
    t.ok(add > 0 && add < 1024, `one add to a list of ${full.length + 1} wrote ${add} bytes`);
    const block = await written(() => big.client.request('contacts.block', { user: 'w-pest' }));
    t.ok(block > 0 && block < 1024, `one block wrote ${block} bytes`);
    const remove = await written(() => big.client.request('contacts.remove', { user: full[17]! }));
    t.ok(remove > 0 && remove < 512, `one removal wrote ${remove} bytes`);
    t.equal(await written(() => big.client.request('contacts.add', { user: full[18]! })), 0, 'adding one already there writes nothing');
    t.equal(await written(() => big.client.request('contacts.remove', { user: 'w-never-there' })), 0, 'removing one not there writes nothing');

    // Adding and removing ever new names must not grow the bucket (no delete markers piling up).
    const jsm = await jetstreamManager(kvConn);
    const msgs = async () => (await jsm.streams.info(`KV_${PREFIX}_social`)).state.messages;
    const churn = await onB('c-churn');
    await churn.client.request('contacts.add', { user: 'c-keep' });
    const before = await msgs();
    for (let i = 0; i < 30; i++) {
      await churn.client.request('contacts.add', { user: `c-tmp-${i}` });
      await churn.client.request('contacts.block', { user: `c-tmp-${i}` });
      await churn.client.request('contacts.remove', { user: `c-tmp-${i}` });
      await churn.client.request('contacts.unblock', { user: `c-tmp-${i}` });
    }
    t.equal(await msgs(), before, '120 changes later the bucket holds as many messages as before');
    t.same(await churn.client.request('contacts.list', {}), { contacts: ['c-keep'], blocked: [] });
  });

  t.test('two devices adding at once on two nodes never exceed the bound', async (t) => {
    // 10 places left; each device adds 20 different names at the same time, one device per node.
    const have = Array.from({ length: MAX_CONTACTS - 10 }, (_, i) => `r-${i}`);
    await fill('c-race', have, []);
    const d1 = await connectClient(t, { user: 'c-race', device: 'd1', servers: [a0], serverPublicKey: pk });
    const d2 = await connectClient(t, { user: 'c-race', device: 'd2', servers: [b1], serverPublicKey: pk });
    const adds = (c: TestClient, p: string) => Array.from({ length: 20 }, (_, i) => outcome(c.client.request('contacts.add', { user: `${p}-${i}` })));
    const results = await Promise.all([...adds(d1, 'one'), ...adds(d2, 'two')]);
    const codes = results.map((r) => r.code);
    t.equal(codes.filter((c) => c === 'ok').length, 10, 'exactly the 10 free places were taken');
    t.equal(codes.filter((c) => c === ErrorCode.TOO_MANY_CONTACTS).length, 30, 'every other add was refused with TOO_MANY_CONTACTS');
    let listed = 0;
    for (let from: number | undefined = 0; from !== undefined; ) {
      const page = (await d2.client.request('contacts.list', { from })) as { contacts: string[]; next?: number };
      listed += page.contacts.length;
      from = page.next;
    }
    t.equal(listed, MAX_CONTACTS, 'the list holds exactly the bound');
    // Two devices removing the same contacts at once free one place each, not two: both
    // remove the same ten names in the same order, so their reads of an entry and their
    // purges of it interleave (one pair rarely did).
    const gone = Array.from({ length: 10 }, (_, i) => `r-${i}`);
    const removes = (c: TestClient) => gone.map((user) => c.client.request('contacts.remove', { user }));
    await Promise.all([...removes(d1), ...removes(d2)]);
    const again = await Promise.all(Array.from({ length: 20 }, (_, i) => outcome((i % 2 ? d1 : d2).client.request('contacts.add', { user: `x-${i}` }))));
    t.equal(again.filter((r) => r.code === 'ok').length, 10, 'ten places were freed, not more');
    t.equal(again.filter((r) => r.code === ErrorCode.TOO_MANY_CONTACTS).length, 10, 'the other adds were refused');
  });

  t.test('a count left too high by a cell that died between two writes is corrected once the head is old', async (t) => {
    // The head says the list is full, three entries exist: as if adds had reserved places and died.
    await fill('c-drift', ['d-1', 'd-2', 'd-3'], []);
    await socialKv.put('c-drift', pack({ n: MAX_CONTACTS, m: 0, t: Date.now() - 120_000 }));
    const drift = await onA('c-drift');
    t.same(await drift.client.request('contacts.list', {}), { contacts: ['d-1', 'd-2', 'd-3'], blocked: [] }, 'the entries are what counts');
    await check('the count was corrected and an add fits again', async () => (await outcome(drift.client.request('contacts.add', { user: 'd-4' }))).code === 'ok', { timeout: 10_000, interval: 100 });
    t.same(((await drift.client.request('contacts.list', {})) as { contacts: string[] }).contacts, ['d-1', 'd-2', 'd-3', 'd-4']);
  });

  t.test('a malformed record in KV reads as empty, and is replaced by the next change', async (t) => {
    await socialKv.put('c-odd', new TextEncoder().encode('not msgpack at all \u00ff'));
    const odd = await onA('c-odd');
    t.same(await odd.client.request('contacts.list', {}), { contacts: [], blocked: [] });
    await odd.client.request('contacts.add', { user: 'c-ann' });
    t.same(await odd.client.request('contacts.list', {}), { contacts: ['c-ann'], blocked: [] });
  });

  t.test('block: the blocked sender gets UNDELIVERABLE, exactly as for an unknown user; unblock restores', async (t) => {
    const dan = await onA('b-dan');
    const eve = await onB('b-eve');
    t.equal((await eve.client.send('b-dan', 'hello before the block')).status, 'delivered', 'delivered before the block (and the record is now cached on node B)');
    await dan.client.request('contacts.block', { user: 'b-eve' });
    await sendUntil(eve, 'b-dan', 'UNDELIVERABLE', 'while blocked');

    const toBlocker = eve.client.send('b-dan', 'refused?', 'id-blocked-1');
    const toNobody = eve.client.send('b-nobody-at-all', 'refused?', 'id-blocked-2');
    const [x, y] = await Promise.all([outcome(toBlocker), outcome(toNobody)]);
    t.equal(x.code, ErrorCode.UNDELIVERABLE, 'the blocked sender: UNDELIVERABLE');
    t.same({ code: x.code, message: x.message.replace('id-blocked-1', 'ID') }, { code: y.code, message: y.message.replace('id-blocked-2', 'ID') }, 'same code and text as for a user that does not exist');

    // Whatever the timing of the invalidation, nothing refused ever reached dan.
    const delivered = new Set<string>();
    for (const m of dan.inbox) delivered.add(m.text);
    t.notOk(dan.inbox.some((m) => m.text === 'refused?'), 'dan never got a refused message');
    t.ok(delivered.has('hello before the block'));
    t.same((await dan.client.request('contacts.list', {})) as unknown, { contacts: [], blocked: ['b-eve'] }, 'the block is listed');

    // The blocker can still write to the one it blocked.
    t.equal((await dan.client.send('b-eve', 'I can still write to you')).status, 'delivered', 'blocking is one-way');

    await dan.client.request('contacts.unblock', { user: 'b-eve' });
    await sendUntil(eve, 'b-dan', 'delivered', 'after the unblock');
    const r = await eve.client.send('b-dan', 'and again');
    t.equal(r.status, 'delivered', 'unblocked: delivered');
    await dan.received((m) => m.id === r.id);
  });

  t.test('read receipts of a blocked user never arrive', async (t) => {
    const fay = await onA('r-fay');
    const gus = await onB('r-gus');
    const receipts: Receipt[] = [];
    fay.client.on('receipt', (rc) => receipts.push(rc));
    const m1 = await fay.client.send('r-gus', 'first');
    const m2 = await fay.client.send('r-gus', 'second');
    await gus.received((m) => m.id === m2.id);

    await fay.client.request('contacts.block', { user: 'r-gus' });
    await sendUntil(gus, 'r-fay', 'UNDELIVERABLE', 'probe while blocked'); // gus's cell knows about the block now
    gus.client.markRead(m1.id, 'r-fay');
    await gus.client.ping(); // the read was handled (and refused) before this answer

    await fay.client.request('contacts.unblock', { user: 'r-gus' });
    await sendUntil(gus, 'r-fay', 'delivered', 'probe after unblock');
    gus.client.markRead(m2.id, 'r-fay');
    // Both receipts would travel the same path, the first one first: once the second is
    // in, the first would have been too.
    await check('fay got the read receipt of the second message', () => receipts.some((rc) => rc.ref === m2.id && rc.s === 'read'), { timeout: 10_000, interval: 20 });
    t.notOk(receipts.some((rc) => rc.ref === m1.id && rc.s === 'read'), 'no read receipt for what gus read while blocked');
    t.ok(receipts.some((rc) => rc.ref === m2.id && rc.by === 'r-gus'), 'the later one arrived');
  });

  t.test('preferences: defaults, set, get from another node, validated', async (t) => {
    const hal = await onA('p-hal');
    t.same(await hal.client.request('prefs.get', {}), { readReceipts: true, presence: 'contacts', pushPreview: false, mutedPush: 'silent' }, 'defaults');
    t.same(await hal.client.request('prefs.set', { readReceipts: false }), { readReceipts: false, presence: 'contacts', pushPreview: false, mutedPush: 'silent' }, 'set answers with the new preferences');
    t.same(await hal.client.request('prefs.set', { presence: 'nobody' }), { readReceipts: false, presence: 'nobody', pushPreview: false, mutedPush: 'silent' }, 'a partial set keeps the rest');
    t.same(await hal.client.request('prefs.set', {}), { readReceipts: false, presence: 'nobody', pushPreview: false, mutedPush: 'silent' }, 'an empty set changes nothing');
    const hal2 = await connectClient(t, { user: 'p-hal', device: 'd2', servers: [b1], serverPublicKey: pk });
    t.same(await hal2.client.request('prefs.get', {}), { readReceipts: false, presence: 'nobody', pushPreview: false, mutedPush: 'silent' }, 'the other node reads the same');
    t.equal((await outcome(hal.client.request('prefs.set', { presence: 'everyone' } as never))).code, ErrorCode.BAD_MESSAGE, 'an unknown visibility is BAD_MESSAGE');
    t.equal((await outcome(hal.client.request('prefs.set', { readReceipts: 'yes' } as never))).code, ErrorCode.BAD_MESSAGE, 'a non-boolean is BAD_MESSAGE');

    // Read receipts off: hal neither sends nor gets them.
    const ida = await onB('p-ida');
    const receipts: Receipt[] = [];
    ida.client.on('receipt', (rc) => receipts.push(rc));
    const m1 = await ida.client.send('p-hal', 'read me');
    await hal.received((m) => m.id === m1.id);
    hal.client.markRead(m1.id, 'p-ida');
    await hal.client.ping();
    await hal.client.request('prefs.set', { readReceipts: true });
    const m2 = await ida.client.send('p-hal', 'read me too');
    await hal.received((m) => m.id === m2.id);
    hal.client.markRead(m2.id, 'p-ida');
    await check('ida got the receipt once hal turned them back on', () => receipts.some((rc) => rc.ref === m2.id && rc.s === 'read'), { timeout: 10_000, interval: 20 });
    t.notOk(receipts.some((rc) => rc.ref === m1.id && rc.s === 'read'), 'no receipt while they were off');
  });
});
