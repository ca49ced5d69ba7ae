/*
 * Reports end to end: campaigns created and started through the admin API, sent
 * by the runner, received by SDK clients who report feedback with track(); the
 * records go to the node's LMDB tier and on to the archive; the reports merge
 * both (and nothing twice), tie each campaign to the profile version of its
 * time, and show a publisher only its own campaigns.
 */
import t from 'tap';
import { check } from '@gravitas/testkit';
import { connectClient, runCli, type TestClient } from '../fixtures/cluster.js';
import { admin, ROOT_TOKEN, startEngage } from '../fixtures/admin-api.js';

interface Created { id: string; key: string }
interface UserReport {
  user: string;
  campaigns: Array<{ campaign: string; name?: string; publisher?: string; profileVersion: number; events: Array<{ ev: string; profileVersion: number }>; profiles?: Record<string, Record<string, unknown>> }>;
  sources: { archived: number; local: number; nodes: string[] };
}
interface CampaignReport { users: Record<string, number>; conversion: Record<string, number>; overTime: Array<Record<string, number>>; sources: { archived: number; local: number } }

t.test('user and campaign reports over both tiers, with the profile version of the time', async (t) => {
  // Records leave the local tier 3 s after they were archived: later reads find them in the archive only.
  const { url, node, keys } = await startEngage(t, { tracking: { maxAgeMs: 3000 } });
  const call = (method: string, path: string, token: string, body?: unknown) => admin(method, `${url}${path}`, { token, ...(body !== undefined && { body }) });
  const publisher = async (name: string, roles: string[]): Promise<Created> => (await call('POST', '/admin/publishers', ROOT_TOKEN, { name, roles })).json as Created;
  const A = await publisher('Acme', ['campaigns', 'reports']);
  const B = await publisher('Bolt', ['campaigns', 'reports']);
  const AUD = await publisher('Audit', ['auditor']);

  const connect = (user: string): Promise<TestClient> => connectClient(t, { user, servers: node.clientAddresses, serverPublicKey: keys.serverPublicKey });
  const uma = await connect('uma');
  const vic = await connect('vic');
  // track() resolves once queued; the record gets its profile version when the cell takes it.
  const taken = new Set<string>();
  for (const c of [uma, vic]) c.client.on('tracked', (r) => taken.add(r.eid));
  const track = async (c: TestClient, campaign: string, ev: Parameters<TestClient['client']['track']>[1]): Promise<void> => {
    const eid = await c.client.track(campaign, ev);
    await check(`${c.user}'s ${ev} taken`, () => taken.has(eid), { timeout: 30_000, interval: 20 });
  };

  /** Creates and starts a campaign of `owner` to uma and vic; resolves with its id once both got it. */
  const run = async (owner: Created, name: string): Promise<string> => {
    const created = await call('POST', '/admin/campaigns', owner.key, { name, audience: { users: ['uma', 'vic'] }, content: { text: `${name}!` } });
    t.equal(created.status, 201, `${name} created`);
    const id = (created.json as { campaign: { id: string } }).campaign.id;
    t.equal((await call('POST', `/admin/campaigns/${id}/start`, owner.key)).status, 200, `${name} started`);
    await Promise.all([uma, vic].map((c) => c.received((m) => m.c === id, 30_000)));
    return id;
  };

  t.equal((await call('PUT', '/admin/profiles/uma', ROOT_TOKEN, { attrs: { tier: 'free', city: 'Oslo' } })).status, 200);
  const c1 = await run(A, 'spring');
  await track(uma, c1, 'opened');
  await track(uma, c1, 'clicked');
  await track(vic, c1, 'opened');
  // Uma's profile changes between the two campaigns.
  t.equal((await call('PUT', '/admin/profiles/uma', ROOT_TOKEN, { attrs: { tier: 'pro' } })).status, 200);
  const c2 = await run(A, 'summer');
  const c3 = await run(B, 'bolt-news');
  await track(uma, c2, 'opened');
  await track(uma, c2, 'converted');
  await track(uma, c3, 'dismissed');
  // Uma converts on the spring campaign only now, with her new profile: one campaign, two versions.
  await track(uma, c1, 'converted');

  const userReport = async (token: string, query = ''): Promise<UserReport> => {
    const r = await call('GET', `/admin/reports/users/uma/campaigns${query}`, token);
    t.equal(r.status, 200, 'report answered');
    return r.json as UserReport;
  };
  // sent (runner) + uma's own events: 4 for c1, 3 for c2, 2 for c3.
  const complete = async (token: string): Promise<UserReport> =>
    check('every record of uma is in the report', async () => {
      const r = await userReport(token, '?profiles=1');
      const n = r.campaigns.reduce((s, c) => s + c.events.length, 0);
      return n >= 9 ? r : undefined;
    }, { timeout: 30_000, interval: 200 });

  t.test('the user report: each campaign once, its events, the profile version of its time', async (t) => {
    const r = await complete(ROOT_TOKEN);
    t.same(r.campaigns.map((c) => c.campaign), [c1, c2, c3], 'three campaigns, in time order');
    t.same(r.campaigns.map((c) => c.events.map((e) => e.ev)), [['sent', 'opened', 'clicked', 'converted'], ['sent', 'opened', 'converted'], ['sent', 'dismissed']], 'each event once');
    const [r1, r2] = r.campaigns;
    t.not(r1!.profileVersion, r2!.profileVersion, 'the profile changed between the two campaigns: two versions');
    t.same(r1!.profiles?.[r1!.profileVersion], { tier: 'free', city: 'Oslo' }, 'campaign 1 with the profile of its time');
    t.same(r2!.profiles?.[r2!.profileVersion], { tier: 'pro', city: 'Oslo' }, 'campaign 2 with the profile of its time');
  });

  t.test('a campaign whose events span a profile change: each event with the version of its own time', async (t) => {
    const r = await complete(ROOT_TOKEN);
    const [r1, r2] = r.campaigns;
    const [v1, v2] = [r1!.profileVersion, r2!.profileVersion];
    t.same(r1!.events.map((e) => [e.ev, e.profileVersion]), [['sent', v1], ['opened', v1], ['clicked', v1], ['converted', v2]], 'spring: converted after the change, with the new version');
    t.same(r1!.profiles, { [v1]: { tier: 'free', city: 'Oslo' }, [v2]: { tier: 'pro', city: 'Oslo' } }, 'spring: both versions’ attributes');
    t.equal(r1!.name, 'spring');
    t.ok(r.sources.nodes.length === 1, 'the node answered the scatter-gather');
  });

  t.test('a publisher sees only its own campaigns; an auditor sees all', async (t) => {
    t.same((await userReport(A.key)).campaigns.map((c) => c.campaign), [c1, c2], 'Acme: its two');
    t.same((await userReport(B.key)).campaigns.map((c) => c.campaign), [c3], 'Bolt: its one');
    t.same((await userReport(AUD.key)).campaigns.map((c) => c.campaign), [c1, c2, c3], 'auditor: all');
    t.equal((await call('GET', `/admin/reports/campaigns/${c1}`, B.key)).status, 404, 'another publisher’s campaign report: 404');
    const noRole = await publisher('Writer', ['campaigns']);
    t.equal((await call('GET', '/admin/reports/users/uma/campaigns', noRole.key)).status, 403, 'without the reports role: 403');
    t.equal((await call('GET', '/admin/reports/users/not%20a%20name/campaigns', ROOT_TOKEN)).status, 400, 'a bad user name: 400');
    t.equal((await call('GET', `/admin/reports/campaigns/${c1}?bucket=5`, A.key)).status, 400, 'an absurd bucket: 400');
  });

  t.test('the campaign funnel', async (t) => {
    const r = await check('vic’s feedback is in', async () => {
      const a = await call('GET', `/admin/reports/campaigns/${c1}?bucket=60000`, A.key);
      const rep = a.json as CampaignReport;
      return rep.users.opened === 2 ? rep : undefined;
    }, { timeout: 30_000, interval: 200 });
    t.same(r.users, { sent: 2, delivered: 0, opened: 2, clicked: 1, dismissed: 0, converted: 1 }, 'distinct users per stage');
    t.equal(r.conversion.clicked, 0.5, 'clicked ÷ opened');
    t.ok(r.overTime.length >= 1, 'over time');
  });

  t.test('after local retention the archive alone answers, with the same content', async (t) => {
    const before = await complete(ROOT_TOKEN);
    const after = await check('local records evicted', async () => {
      const r = await userReport(ROOT_TOKEN, '?profiles=1');
      return r.sources.local === 0 && r.sources.archived >= 9 ? r : undefined;
    }, { timeout: 30_000, interval: 500 });
    t.same(after.campaigns, before.campaigns, 'the report is the same from the archive alone');
  });

  t.test('gravitas report user / campaign', async (t) => {
    const env = { GRAVITAS_ADMIN_URL: url, GRAVITAS_ADMIN_TOKEN: A.key };
    const u = await runCli(['report', 'user', 'uma'], { env });
    t.equal(u.code, 0, u.stderr);
    t.same((JSON.parse(u.stdout) as UserReport).campaigns.map((c) => c.campaign), [c1, c2]);
    const c = await runCli(['report', 'campaign', c2], { env });
    t.equal(c.code, 0, c.stderr);
    t.equal((JSON.parse(c.stdout) as CampaignReport).users.converted, 1);
    const bad = await runCli(['report', 'campaign', c3], { env });
    t.equal(bad.code, 1, 'refused: another publisher’s campaign');
  });
});
