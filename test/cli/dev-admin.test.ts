/*
 * The embedded default's operator credential: `gravitas dev` makes an admin token,
 * configures its node with it and pins it (0600) in the key store for its admin URL;
 * the admin commands use it with no token given, only against that URL; --token and
 * GRAVITAS_ADMIN_TOKEN still win; the pin goes when the dev cluster stops. Real
 * `gravitas dev` children on free ports, each with its own GRAVITAS_HOME.
 */
import t, { type Test } from 'tap';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { runCli } from '../fixtures/cluster.js';
import { startDev } from '../fixtures/dev.js';

/** Where `gravitas dev` pins the admin token of `adminUrl` (http://127.0.0.1:PORT). */
const tokenFile = (home: string, adminUrl: string): string => join(home, 'admin-tokens', `${adminUrl.replace('http://', 'http-').replace(':', '_')}.json`);

async function tempHome(t: Test): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'gravitas-dev-admin-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return join(dir, 'home');
}

/** A loopback HTTP server that answers 401 and remembers every Authorization header it was sent. */
async function recorder(t: Test): Promise<{ url: string; seen: string[] }> {
  const seen: string[] = [];
  const server = createServer((req, res) => {
    seen.push(req.headers.authorization ?? '');
    req.resume();
    res.writeHead(401, { 'content-type': 'application/json' }).end('{"error":{"code":"UNAUTHORIZED","message":"no"}}');
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => (server.closeAllConnections(), server.close(() => r()))));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, seen };
}

// Most of each case is the dev cluster's graceful stop (its cells' drain): run the two side by side.
t.jobs = 2;

t.test('the admin commands work against gravitas dev with no token given', async (t) => {
  const home = await tempHome(t);
  const dev = await startDev(home);
  t.teardown(() => dev.stop());
  const env = { GRAVITAS_HOME: home };
  const cli = (args: string[], e: NodeJS.ProcessEnv = env) => runCli([...args], { env: e, timeoutMs: 20_000 });

  const file = tokenFile(home, dev.adminUrl);
  t.equal((await stat(file)).mode & 0o077, 0, 'the pinned token file is readable by its owner only');
  const pinned = JSON.parse(await readFile(file, 'utf8')) as { adminUrl: string; token: string };
  t.equal(pinned.adminUrl, dev.adminUrl, 'keyed by the admin URL');
  t.match(pinned.token, /^[A-Za-z0-9_-]{43}$/, '32 random bytes');
  t.notOk(dev.stdout().includes(pinned.token) || dev.stderr().includes(pinned.token), 'the token itself is never printed');
  t.ok(dev.stderr().includes(file), 'stderr says where the token is');
  const cells = await fetch(`${dev.adminUrl}/admin/cells`);
  t.equal(cells.status, 401, 'the node requires it');
  await cells.body?.cancel();

  const pub = await cli(['publisher', 'create', '--name', 'Acme', '--roles', 'campaigns,reports', '--admin', dev.adminUrl]);
  t.equal(pub.code, 0, `publisher create: ${pub.stderr}`);
  const p = JSON.parse(pub.stdout) as { id: string };
  const made = await cli(['campaign', 'create', '--name', 'welcome', '--text', 'hi', '--users', 'alice,bob', '--publisher', p.id, '--admin', dev.adminUrl]);
  t.equal(made.code, 0, `campaign create: ${made.stderr}`);
  const c = (JSON.parse(made.stdout) as { campaign: { id: string } }).campaign;
  // GRAVITAS_ADMIN_URL with a trailing slash names the same admin URL.
  const rep = await cli(['report', 'campaign', c.id], { ...env, GRAVITAS_ADMIN_URL: `${dev.adminUrl}/` });
  t.equal(rep.code, 0, `report campaign: ${rep.stderr}`);
  t.match(JSON.parse(rep.stdout), { campaign: c.id, name: 'welcome', state: 'draft' });

  // A token from the environment (or --token) wins over the pin.
  const wrong = await cli(['publisher', 'list', '--admin', dev.adminUrl], { ...env, GRAVITAS_ADMIN_TOKEN: 'not-the-token' });
  t.equal(wrong.code, 1, 'a wrong token from the environment is sent, not the pinned one');
  t.match(wrong.stderr, /UNAUTHORIZED/);

  // Another admin URL has no pin: nothing is sent there, and the error says what to do.
  const other = await recorder(t);
  const none = await cli(['publisher', 'list', '--admin', other.url]);
  t.equal(none.code, 2, none.stderr);
  t.match(none.stderr, /--token.*GRAVITAS_ADMIN_TOKEN.*gravitas dev/s);
  t.same(other.seen, [], 'the pinned token never leaves for another URL');

  const exit = await dev.stop();
  t.equal(exit.code, 0, dev.stderr());
  t.notOk(existsSync(file), 'the pin is removed when the dev cluster stops');
  const known = JSON.parse(await readFile(join(home, 'known_servers.json'), 'utf8')) as Record<string, string>;
  t.same(Object.keys(known), [], 'and so is the server key pin');
});

t.test('gravitas dev takes an explicit admin token', async (t) => {
  const home = await tempHome(t);
  const bad = await runCli(['dev', '--port', '0', '--admin-port', '0', '--web-port', '0', '--demo-port', '0', '--admin-token', 'short'], { env: { GRAVITAS_HOME: home } });
  t.equal(bad.code, 2, 'a guessable token is refused before anything starts');
  t.match(bad.stderr, /--admin-token .*16 to 512/);

  const token = randomBytes(24).toString('base64url');
  const dev = await startDev(home, [], { env: { GRAVITAS_ADMIN_TOKEN: token } });
  t.teardown(() => dev.stop());
  const cells = await fetch(`${dev.adminUrl}/admin/cells`, { headers: { authorization: `Bearer ${token}` } });
  t.equal(cells.status, 200, 'the node takes the given token');
  await cells.body?.cancel();
  t.equal((JSON.parse(await readFile(tokenFile(home, dev.adminUrl), 'utf8')) as { token: string }).token, token, 'and it is pinned');
  const list = await runCli(['publisher', 'list', '--admin', dev.adminUrl], { env: { GRAVITAS_HOME: home } });
  t.equal(list.code, 0, list.stderr);
  t.equal((await dev.stop()).code, 0);
  t.notOk(existsSync(tokenFile(home, dev.adminUrl)));
});
