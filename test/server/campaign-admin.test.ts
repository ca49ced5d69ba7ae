/*
 * Publishers and campaigns through the admin HTTP API and the CLI, against a
 * nats-server and a `gravitas node` with an admin token: who may do what (a
 * publisher never sees another's campaign: 404), bad input with stable codes,
 * the campaign state machine, and exactly one expansion job per start on the
 * work stream.
 */
import t from 'tap';
import { join } from 'node:path';
import { writeFile } from 'node:fs/promises';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { jetstreamManager, RetentionPolicy } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import { unpack } from '@gravitas/protocol';
import { check } from '@gravitas/testkit';
import { http, nodeConfig, runCli, spawnNode, writeNodeConfig } from '../fixtures/cluster.js';
import { admin, ROOT_TOKEN, startEngage, type AdminAnswer } from '../fixtures/admin-api.js';

const PREFIX = 'gravitas';
const MAX_RATE = 500;
const MAX_LIST = 50;

interface CampaignView { id: string; publisher: string; name: string; state: string; ratePerSec: number; audience: unknown; content: { text: string; push: boolean }; startedAt?: number }
interface PublisherCreated { id: string; key: string; sender: string; roles: string[]; name: string }

const campaignOf = (a: AdminAnswer): CampaignView => (a.json as { campaign: CampaignView }).campaign;
const said = (a: AdminAnswer): string => `${a.status} ${a.code ?? ''}`.trim();

/** Counts the expansion jobs published for each campaign (core subscription: the runner may take jobs off the queue at any time). */
function watchJobs(nc: NatsConnection): Map<string, number> {
  const expands = new Map<string, number>();
  nc.subscribe(`${PREFIX}.cwork.>`, {
    callback: (_e, m) => {
      const j = unpack(m.data) as { k?: string; c?: string };
      if (j.k === 'expand' && typeof j.c === 'string') expands.set(j.c, (expands.get(j.c) ?? 0) + 1);
    },
  });
  return expands;
}

t.test('publishers and campaigns through the admin API', async (t) => {
  const { nats, url, dir, keys } = await startEngage(t, { campaigns: { maxRatePerSec: MAX_RATE, defaultRatePerSec: 100, maxListSize: MAX_LIST } });
  const nc = await connect({ servers: nats.url });
  t.teardown(() => nc.close());
  const expands = watchJobs(nc);
  await nc.flush();
  const jsm = await jetstreamManager(nc);

  const call = (method: string, path: string, token: string | undefined, body?: unknown) => admin(method, `${url}${path}`, { ...(token !== undefined && { token }), ...(body !== undefined && { body }) });
  const newPublisher = async (name: string, roles: string[]): Promise<PublisherCreated> => {
    const a = await call('POST', '/admin/publishers', ROOT_TOKEN, { name, roles });
    if (a.status !== 201) throw new Error(`creating ${name}: ${a.status} ${JSON.stringify(a.json)}`);
    return a.json as PublisherCreated;
  };
  // Not due for an hour: the campaign runner of the node keeps the expansion job queued and the campaign running.
  const later = Date.now() + 3600_000;
  const draft = (name: string, extra: Record<string, unknown> = {}) => ({ name, audience: { users: ['u1', 'u2', 'u3'] }, content: { text: `hello from ${name}` }, startAt: later, ...extra });

  const A = await newPublisher('Acme', ['campaigns', 'reports']);
  const B = await newPublisher('Bolt', ['campaigns']);
  const R = await newPublisher('Readers', ['reports']);
  const AUD = await newPublisher('Audit', ['auditor']);

  t.test('publishers: created by the admin, the key shown once, never its hash', async (t) => {
    t.match(A.key, new RegExp(`^gk_${A.id}_[A-Za-z0-9_-]{16,}$`), 'key gk_<id>_<secret>');
    t.equal(A.sender, `_pub-${A.id}`, "a default sender name, in the system's namespace");
    t.same(A.roles, ['campaigns', 'reports']);
    const list = await call('GET', '/admin/publishers', ROOT_TOKEN);
    t.equal(list.status, 200);
    const pubs = (list.json as { publishers: Array<Record<string, unknown>> }).publishers;
    t.same(pubs.map((p) => p.id).sort(), [A.id, B.id, R.id, AUD.id].sort());
    t.notOk(pubs.some((p) => 'keyHash' in p || 'key' in p), 'neither key nor hash is ever listed');
    const kv = await new Kvm(nc).open(`${PREFIX}_publishers`);
    const stored = unpack((await kv.get(`p.${A.id}`))!.value) as Record<string, unknown>;
    t.match(stored.keyHash, /^[0-9a-f]{64}$/, 'only a sha256 is stored');
    t.notOk(JSON.stringify(stored).includes(A.key.split('_').slice(2).join('_')), 'the secret itself is not stored');
    t.equal(said(await call('POST', '/admin/publishers', A.key, { name: 'x', roles: ['campaigns'] })), '403 FORBIDDEN', 'a publisher cannot create publishers');
    t.equal(said(await call('GET', '/admin/publishers', AUD.key)), '403 FORBIDDEN', 'nor list them');
    t.equal(said(await call('POST', '/admin/publishers', ROOT_TOKEN, { name: 'x', roles: ['boss'] })), '400 BAD_REQUEST', 'an unknown role');
    t.equal(said(await call('POST', '/admin/publishers', ROOT_TOKEN, { name: 'x', roles: [] })), '400 BAD_REQUEST', 'no role');
    t.equal(said(await call('POST', '/admin/publishers', ROOT_TOKEN, { name: 'x', roles: ['reports'], sender: 'not a name' })), '400 BAD_REQUEST', 'a bad sender');
    const named = await call('POST', '/admin/publishers', ROOT_TOKEN, { name: 'Brand', roles: ['reports'], sender: 'brand' });
    t.equal((named.json as PublisherCreated).sender, '_brand', 'a chosen sender name goes to the system namespace: no client can register it');
  });

  t.test('authentication', async (t) => {
    t.equal(said(await call('GET', '/admin/campaigns', undefined)), '401 UNAUTHORIZED', 'no token');
    t.equal(said(await call('GET', '/admin/campaigns', 'wrong-token')), '401 UNAUTHORIZED', 'a wrong admin token');
    t.equal(said(await call('GET', '/admin/campaigns', `${A.key}x`)), '401 UNAUTHORIZED', 'a wrong secret');
    t.equal(said(await call('GET', '/admin/campaigns', `gk_${B.id}_${A.key.split('_').slice(2).join('_')}`)), '401 UNAUTHORIZED', "one publisher's secret with another's id");
    t.equal(said(await call('GET', '/admin/campaigns', 'gk_nobody_0123456789abcdefghij')), '401 UNAUTHORIZED', 'an unknown publisher');
    t.equal(said(await admin('GET', `${url}/admin/campaigns`, { token: '' })), '401 UNAUTHORIZED', 'an empty bearer');
    t.equal(said(await call('GET', '/admin/nothing-here', ROOT_TOKEN)), '404 NOT_FOUND', 'an unknown path');
    t.equal(said(await call('DELETE', '/admin/campaigns', ROOT_TOKEN)), '405 METHOD_NOT_ALLOWED', 'a wrong method');
    // The older routes keep their own token check.
    t.equal((await http('GET', `${url}/admin/cells`)).status, 401, '/admin/cells still wants the token');
    t.equal((await admin('GET', `${url}/admin/cells`, { token: ROOT_TOKEN })).status, 200);
  });

  let aId = '';
  let bId = '';

  t.test('creation, ownership and visibility', async (t) => {
    const a = await call('POST', '/admin/campaigns', A.key, draft('spring sale', { ratePerSec: 50 }));
    t.equal(a.status, 201, JSON.stringify(a.json));
    const ca = campaignOf(a);
    aId = ca.id;
    t.match(ca, { publisher: A.id, name: 'spring sale', state: 'draft', ratePerSec: 50, audience: { users: ['u1', 'u2', 'u3'] }, content: { text: 'hello from spring sale', push: false } });
    t.match(aId, /^c[0-9a-z]{9}[0-9a-f]{10}$/, 'a server-made id');
    const b = await call('POST', '/admin/campaigns', B.key, draft('bolt news', { audience: { where: { all: [{ attr: 'city', op: 'eq', value: 'Oslo' }, { attr: 'age', op: 'gte', value: 18 }] } } }));
    t.equal(b.status, 201, JSON.stringify(b.json));
    bId = campaignOf(b).id;
    t.ok(bId > aId, 'ids are time-ordered');
    t.equal(campaignOf(b).ratePerSec, 100, 'the default rate');

    t.equal(said(await call('GET', `/admin/campaigns/${bId}`, A.key)), '404 NOT_FOUND', "A cannot see B's campaign: 404, as for no campaign");
    t.equal(said(await call('GET', '/admin/campaigns/c000000000ffffffffff', A.key)), '404 NOT_FOUND', 'the same answer for an id that does not exist');
    t.equal(said(await call('POST', `/admin/campaigns/${bId}/start`, A.key)), '404 NOT_FOUND', "A cannot start B's campaign");
    t.equal(said(await call('POST', `/admin/campaigns/${bId}/pause`, A.key)), '404 NOT_FOUND');
    t.equal(said(await call('POST', '/admin/campaigns', A.key, draft('as B', { publisher: B.id }))), '403 FORBIDDEN', 'A cannot create for B');

    const own = await call('GET', `/admin/campaigns/${aId}`, A.key);
    t.equal(own.status, 200);
    t.same((own.json as { progress: unknown }).progress, { batchesDone: 0, recipients: 0, sent: 0, failed: {} }, 'progress before any work');
    const listA = (await call('GET', '/admin/campaigns', A.key)).json as { campaigns: CampaignView[] };
    t.same(listA.campaigns.map((c) => c.id), [aId], 'A lists only its own');
    t.same(listA.campaigns[0]!.audience, { kind: 'users', count: 3 }, 'the list summarises audiences');
    t.notOk('content' in listA.campaigns[0]!, 'and leaves out the content');
    const listB = (await call('GET', `/admin/campaigns?publisher=${A.id}`, B.key)).json as { campaigns: CampaignView[] };
    t.same(listB.campaigns.map((c) => c.id), [bId], 'a publisher filter does not widen what B sees');

    t.equal(said(await call('POST', '/admin/campaigns', R.key, draft('reports only'))), '403 FORBIDDEN', 'the reports role cannot create');
    t.equal(said(await call('POST', '/admin/campaigns', AUD.key, draft('auditor'))), '403 FORBIDDEN', 'nor can an auditor');
    const audList = (await call('GET', '/admin/campaigns', AUD.key)).json as { campaigns: CampaignView[] };
    t.same(audList.campaigns.map((c) => c.id), [bId, aId], 'the auditor reads all, newest first');
    t.equal((await call('GET', `/admin/campaigns/${bId}`, AUD.key)).status, 200, "the auditor reads B's campaign");
    t.equal(said(await call('POST', `/admin/campaigns/${bId}/start`, AUD.key)), '403 FORBIDDEN', 'but cannot start it');
    t.equal(said(await call('GET', `/admin/campaigns/${aId}`, R.key)), '404 NOT_FOUND', "a reports publisher does not see others' campaigns");
    const filtered = (await call('GET', `/admin/campaigns?publisher=${B.id}`, ROOT_TOKEN)).json as { campaigns: CampaignView[] };
    t.same(filtered.campaigns.map((c) => c.id), [bId], 'the admin filters by publisher');
    const paged = (await call('GET', '/admin/campaigns?limit=1', ROOT_TOKEN)).json as { campaigns: CampaignView[]; next?: string };
    t.same(paged.campaigns.map((c) => c.id), [bId]);
    t.equal(paged.next, bId, 'a next cursor');
    const page2 = (await call('GET', `/admin/campaigns?limit=1&before=${paged.next}`, ROOT_TOKEN)).json as { campaigns: CampaignView[]; next?: string };
    t.same(page2.campaigns.map((c) => c.id), [aId], 'the second page');
    t.equal(said(await call('GET', '/admin/campaigns?limit=0', ROOT_TOKEN)), '400 BAD_REQUEST');

    t.equal(said(await call('POST', '/admin/campaigns', ROOT_TOKEN, draft('root without owner'))), '400 BAD_REQUEST', 'the admin token must name the owner');
    t.equal(said(await call('POST', '/admin/campaigns', ROOT_TOKEN, draft('root, unknown owner', { publisher: 'pnobody' }))), '400 BAD_REQUEST');
    const byRoot = await call('POST', '/admin/campaigns', ROOT_TOKEN, draft('made by root', { publisher: A.id }));
    t.equal(byRoot.status, 201);
    t.equal(campaignOf(byRoot).publisher, A.id, 'owned by the publisher the admin named');
  });

  t.test('bad input: stable codes', async (t) => {
    const post = (o: Parameters<typeof admin>[2]) => admin('POST', `${url}/admin/campaigns`, { token: A.key, ...o }).then(said);
    t.equal(await post({ raw: '{"name": "x", ' }), '400 BAD_REQUEST', 'malformed JSON');
    t.equal(await post({ raw: JSON.stringify(draft('x')), contentType: 'text/plain' }), '415 UNSUPPORTED_MEDIA_TYPE', 'a wrong content type');
    t.equal(await post({ raw: JSON.stringify(draft('x')), contentType: 'application/json; charset=utf-8' }), '201', 'a charset parameter is fine');
    const huge = JSON.stringify(draft('x', { content: { text: 'y'.repeat(2 * 1024 * 1024) } }));
    t.equal(await post({ raw: huge }), '413 PAYLOAD_TOO_LARGE', 'an oversized body');
    t.equal(said(await admin('POST', `${url}/admin/publishers`, { token: ROOT_TOKEN, raw: JSON.stringify({ name: 'x'.repeat(300 * 1024), roles: ['reports'] }) })), '413 PAYLOAD_TOO_LARGE', 'the smaller cap of other routes');
    const bad = (body: unknown) => post({ body });
    t.equal(await bad(draft('x', { ratePerSec: 1e9 })), '400 BAD_REQUEST', 'an absurd rate');
    t.equal(await bad(draft('x', { ratePerSec: MAX_RATE + 1 })), '400 BAD_REQUEST', 'just over campaigns.maxRatePerSec');
    t.equal(await bad(draft('x', { ratePerSec: 0 })), '400 BAD_REQUEST', 'a zero rate');
    t.equal(await bad(draft('x', { ratePerSec: 1.5 })), '400 BAD_REQUEST', 'a fractional rate');
    t.equal(await bad(draft('x', { audience: { where: { attr: 'age', op: 'regex', value: '.*' } } })), '400 BAD_REQUEST', 'an unknown predicate op');
    t.equal(await bad(draft('x', { audience: { where: { attr: 'age', op: 'gt', value: 'ten' } } })), '400 BAD_REQUEST', 'a comparison with a string');
    t.equal(await bad(draft('x', { audience: { where: { attr: '1bad', op: 'exists' } } })), '400 BAD_REQUEST', 'a bad attribute name');
    t.equal(await bad(draft('x', { audience: { where: { all: [] } } })), '400 BAD_REQUEST', 'an empty all');
    let deep: unknown = { attr: 'a', op: 'exists' };
    for (let i = 0; i < 9; i++) deep = { any: [deep] };
    t.equal(await bad(draft('x', { audience: { where: deep } })), '400 BAD_REQUEST', 'a predicate nested too deep');
    const wide = { any: Array.from({ length: 60 }, () => ({ all: Array.from({ length: 60 }, () => ({ attr: 'a', op: 'exists' })) })) };
    t.equal(await bad(draft('x', { audience: { where: wide } })), '400 BAD_REQUEST', 'a predicate with too many conditions');
    t.equal(await bad(draft('x', { audience: { where: { attr: 'a', op: 'in', values: Array.from({ length: 1001 }, (_, i) => i) } } })), '400 BAD_REQUEST', 'too many in-values');
    t.equal(await bad(draft('x', { audience: { where: { attr: 'a', op: 'eq', value: 1, extra: 1 } } })), '400 BAD_REQUEST', 'an unknown predicate field');
    t.equal(await bad(draft('x', { audience: { users: [] } })), '400 BAD_REQUEST', 'an empty list');
    t.equal(await bad(draft('x', { audience: { users: Array.from({ length: MAX_LIST + 1 }, (_, i) => `u${i}`) } })), '400 BAD_REQUEST', 'a list over campaigns.maxListSize');
    t.equal(await bad(draft('x', { audience: { users: ['ok', 'not ok'] } })), '400 BAD_REQUEST', 'a bad user name');
    t.equal(await bad(draft('x', { audience: { users: ['a'], where: { attr: 'a', op: 'exists' } } })), '400 BAD_REQUEST', 'both users and where');
    t.equal(await bad(draft('x', { content: { text: 'z'.repeat(16 * 1024 + 1) } })), '400 BAD_REQUEST', 'a text over 16 KiB');
    t.equal(await bad(draft('x', { content: { text: '' } })), '400 BAD_REQUEST', 'an empty text');
    t.equal(await bad(draft('x', { content: { text: 'hi', push: 'yes' } })), '400 BAD_REQUEST', 'push must be a boolean');
    t.equal(await bad(draft('x', { startAt: 'tomorrow' })), '400 BAD_REQUEST', 'startAt must be ms');
    t.equal(await bad(draft('x', { startAt: Date.now() * 1000 })), '400 BAD_REQUEST', 'startAt absurdly far ahead');
    t.equal(await bad(draft('x', { colour: 'red' })), '400 BAD_REQUEST', 'an unknown field');
    t.equal(await bad([]), '400 BAD_REQUEST', 'not an object');
    const msg = await admin('POST', `${url}/admin/campaigns`, { token: A.key, body: draft('x', { ratePerSec: 1e9 }) });
    t.match((msg.json as { error: { message: string } }).error.message, /ratePerSec/, 'the message names the field');
  });

  t.test('the state machine, and one expansion job per start', async (t) => {
    const cwork = await jsm.streams.info(`${PREFIX}_CWORK`);
    t.equal(cwork.config.retention, RetentionPolicy.Workqueue, 'the work stream exists (made by the admin API if no cell made it)');
    const before = cwork.state.last_seq;
    const act = async (action: string, token = A.key) => call('POST', `/admin/campaigns/${aId}/${action}`, token);
    t.equal(said(await act('pause')), '409 CONFLICT', 'a draft cannot be paused');
    t.equal(said(await act('resume')), '409 CONFLICT', 'nor resumed');
    const started = await act('start');
    t.equal(started.status, 200);
    t.equal(campaignOf(started).state, 'running');
    t.ok(campaignOf(started).startedAt, 'startedAt is set');
    const after = (await jsm.streams.info(`${PREFIX}_CWORK`)).state.last_seq;
    t.ok(after > before, 'the work stream took a job');
    const job = await jsm.streams.getMessage(`${PREFIX}_CWORK`, { last_by_subj: `${PREFIX}.cwork.${aId}` });
    t.same(unpack(job!.data), { k: 'expand', c: aId }, 'the queued job is the expansion (not due yet, so no runner took it)');
    await check('the expansion was published', () => expands.get(aId) === 1, { timeout: 3000 });

    const twice = await act('start');
    t.equal(said(twice), '409 CONFLICT', 'start twice: CONFLICT');
    t.match((twice.json as { error: { message: string } }).error.message, /running/);
    t.equal(said(await act('pause')), '200');
    t.equal(campaignOf(await call('GET', `/admin/campaigns/${aId}`, A.key)).state, 'paused');
    t.equal(said(await act('pause')), '409 CONFLICT', 'pause twice: CONFLICT');
    t.equal(said(await act('start')), '409 CONFLICT', 'a paused campaign is resumed, not started');
    t.equal(said(await act('resume')), '200');
    t.equal(said(await act('resume')), '409 CONFLICT');
    t.equal(campaignOf(await call('GET', `/admin/campaigns/${aId}`, AUD.key)).state, 'running');
    // Give a stray second job time to show up.
    await new Promise((r) => setTimeout(r, 300));
    t.equal(expands.get(aId), 1, 'exactly one expansion job published: start twice and resume did not add one');
    const subj = `${PREFIX}.cwork.${aId}`;
    const perSubject = (await jsm.streams.info(`${PREFIX}_CWORK`, { subjects_filter: subj })).state.subjects;
    t.same(perSubject, { [subj]: 1 }, 'and exactly one job for the campaign on the work stream');
    t.equal(said(await act('start', ROOT_TOKEN)), '409 CONFLICT', 'the admin meets the same state machine');

    // Concurrent starts of one draft: exactly one wins.
    const c = campaignOf(await call('POST', '/admin/campaigns', B.key, draft('race')));
    const answers = await Promise.all(Array.from({ length: 5 }, () => call('POST', `/admin/campaigns/${c.id}/start`, B.key)));
    t.equal(answers.filter((a) => a.status === 200).length, 1, 'one concurrent start succeeds');
    t.ok(answers.every((a) => a.status === 200 || a.code === 'CONFLICT'), 'the others are CONFLICT');
    await check('one expansion for the raced campaign', () => expands.get(c.id) === 1, { timeout: 3000 });
    await new Promise((r) => setTimeout(r, 300));
    t.equal(expands.get(c.id), 1);
  });

  t.test('CLI end to end', async (t) => {
    const env = { GRAVITAS_ADMIN_URL: url, GRAVITAS_ADMIN_TOKEN: ROOT_TOKEN };
    const cli = (args: string[], e: NodeJS.ProcessEnv = env) => runCli(args, { env: e, timeoutMs: 20_000 });
    const pub = await cli(['publisher', 'create', '--name', 'CLI Co', '--roles', 'campaigns,reports']);
    t.equal(pub.code, 0, pub.stderr);
    const p = JSON.parse(pub.stdout) as PublisherCreated;
    t.match(p.key, /^gk_/);
    t.match(pub.stderr, /shown only this once/);
    const asPub = { GRAVITAS_ADMIN_URL: url, GRAVITAS_ADMIN_TOKEN: p.key };

    const created = await cli(['campaign', 'create', '--name', 'cli run', '--text', 'hi there', '--users', 'x1,x2', '--rate', '20', '--start-at', new Date(Date.now() + 3600_000).toISOString()], asPub);
    t.equal(created.code, 0, created.stderr);
    const c = (JSON.parse(created.stdout) as { campaign: CampaignView }).campaign;
    t.match(c, { publisher: p.id, name: 'cli run', ratePerSec: 20, state: 'draft', audience: { users: ['x1', 'x2'] } });

    const file = join(dir, 'campaign.json');
    await writeFile(file, JSON.stringify({ name: 'from file', audience: { where: { attr: 'tier', op: 'in', values: ['gold', 'silver'] } }, content: { text: 'file text', push: true } }));
    const fromFile = await cli(['campaign', 'create', '--file', file, '--admin', url, '--token', p.key], {});
    t.equal(fromFile.code, 0, fromFile.stderr);
    t.match((JSON.parse(fromFile.stdout) as { campaign: CampaignView }).campaign, { name: 'from file', content: { push: true }, audience: { where: { attr: 'tier' } } }, 'flags instead of env');

    const start = await cli(['campaign', 'start', c.id], asPub);
    t.equal(start.code, 0, start.stderr);
    t.equal((JSON.parse(start.stdout) as { campaign: CampaignView }).campaign.state, 'running');
    const again = await cli(['campaign', 'start', c.id], asPub);
    t.equal(again.code, 1, 'a refusal exits 1');
    t.match(again.stderr, /CONFLICT/, 'with the code on stderr');
    t.equal((await cli(['campaign', 'pause', c.id], asPub)).code, 0);
    t.equal((await cli(['campaign', 'resume', c.id], asPub)).code, 0);
    const status = await cli(['campaign', 'status', c.id], asPub);
    t.equal(status.code, 0, status.stderr);
    t.match(JSON.parse(status.stdout), { campaign: { id: c.id, state: 'running' }, progress: { sent: 0 } });
    const other = await cli(['campaign', 'status', aId], asPub);
    t.equal(other.code, 1);
    t.match(other.stderr, /NOT_FOUND/, "another publisher's campaign is not found");

    const prof = await cli(['profile', 'set', 'cli-user', 'city=Oslo', 'age=42', 'vip=true', 'zip="0150"']);
    t.equal(prof.code, 0, prof.stderr);
    const v = (JSON.parse(prof.stdout) as { version: number }).version;
    t.ok(v > 0);
    const got = (await call('GET', '/admin/profiles/cli-user', ROOT_TOKEN)).json as { attrs: unknown };
    t.same(got.attrs, { city: 'Oslo', age: 42, vip: true, zip: '0150' }, 'values typed as documented');
    const rm = await cli(['profile', 'set', 'cli-user', 'city=null']);
    t.ok((JSON.parse(rm.stdout) as { version: number }).version > v);
    const old = await cli(['profile', 'get', 'cli-user', '--version', String(v)]);
    t.same((JSON.parse(old.stdout) as { attrs: unknown }).attrs, got.attrs, 'profile get --version reads an old version');

    const noAuth = await cli(['campaign', 'status', c.id], { GRAVITAS_ADMIN_URL: url, GRAVITAS_ADMIN_TOKEN: 'nope' });
    t.equal(noAuth.code, 1);
    t.match(noAuth.stderr, /UNAUTHORIZED/);
    const usage = await cli(['campaign', 'create', '--name', 'x'], asPub);
    t.equal(usage.code, 2, 'a usage error exits 2');
    t.match(usage.stderr, /--users is required|--text is required/);
    t.equal((await cli(['campaign', 'frobnicate', 'x'], asPub)).code, 2);
    t.equal((await cli(['campaign', 'status'], { GRAVITAS_ADMIN_URL: url })).code, 2, 'no token: usage');
    const down = await cli(['campaign', 'status', c.id], { GRAVITAS_ADMIN_URL: 'http://127.0.0.1:1', GRAVITAS_ADMIN_TOKEN: p.key });
    t.equal(down.code, 3, 'an unreachable admin API exits 3');
    t.match(down.stderr, /cannot reach/);
  });

  t.test('a node without admin.token: no root access, publishers still work', async (t) => {
    const file = await writeNodeConfig(join(dir, 'open.json'), nodeConfig({ natsUrl: nats.url, nodeId: 'open', dataDir: join(dir, 'open'), keys, cells: 1 }));
    const open = await spawnNode(file);
    t.teardown(() => open.stop(5000));
    const u = open.adminUrl;
    t.equal((await http('GET', `${u}/admin/cells`)).status, 200, '/admin/cells stays open as before');
    t.equal(said(await admin('GET', `${u}/admin/campaigns`)), '401 UNAUTHORIZED', 'engagement routes are not open');
    t.equal(said(await admin('GET', `${u}/admin/publishers`, { token: ROOT_TOKEN })), '401 UNAUTHORIZED', 'no token is a root token here');
    t.equal(said(await admin('GET', `${u}/admin/publishers`, { token: '' })), '401 UNAUTHORIZED');
    const list = await admin('GET', `${u}/admin/campaigns`, { token: A.key });
    t.equal(list.status, 200, 'a publisher key works on every node of the cluster');
    t.ok((list.json as { campaigns: CampaignView[] }).campaigns.every((c) => c.publisher === A.id));
  });
});
