/*
 * Linking a device from the shell, against a node in `token` mode (the development
 * mode with a shared token): the token creates an account, but never adds a device
 * to one — the account's device approves the new one (`gravitas device-key`,
 * `gravitas approve`, then `--link`). A real node process and CLI processes, with
 * their own GRAVITAS_HOME.
 */
import t from 'tap';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { toBase64Url } from '@gravitas/protocol';
import { NatsServer } from '@gravitas/testkit';
import { clusterKeys, nodeConfig, runCli, spawnNode, writeNodeConfig } from '../fixtures/cluster.js';

const nats = await NatsServer.start();
t.teardown(() => nats.stop());
const dir = await mkdtemp(join(tmpdir(), 'gravitas-link-'));
t.teardown(() => rm(dir, { recursive: true, force: true }));
const keys = clusterKeys();
const TOKEN = randomBytes(18).toString('base64url');
const node = await spawnNode(await writeNodeConfig(join(dir, 'node.json'), nodeConfig({
  natsUrl: nats.url, nodeId: 'link', dataDir: join(dir, 'data'), keys, cells: 1, extra: { registration: { mode: 'token', token: TOKEN } },
})));
t.teardown(() => node.stop(5000));
const server = node.clientAddresses[0]!;
const env = { GRAVITAS_HOME: join(dir, 'home'), GRAVITAS_SERVER_PUBLIC_KEY: toBase64Url(keys.serverPublicKey), GRAVITAS_REGISTRATION_TOKEN: TOKEN };
const cli = (...args: string[]) => runCli(args, { env, timeoutMs: 20_000 });

t.match(node.stderr(), /WARNING: registration\.mode is "token"/, 'the node says loudly that its registration mode is for development');

t.test('the token creates an account; a second device joins it only by linking', async (t) => {
  const first = await cli('send', '--server', server, '--as', 'alice', '--device', 'phone', '--to', 'alice', '--text', 'note to self');
  t.equal(first.code, 0, `the token created alice's account (${first.stderr.trim()})`);

  const denied = await cli('send', '--server', server, '--as', 'alice', '--device', 'tablet', '--to', 'alice', '--text', 'x');
  t.equal(denied.code, 1);
  t.match(denied.stderr, /REGISTRATION_DENIED/, 'the shared token does not add a device to an existing account');

  const key = await cli('device-key', '--as', 'alice', '--device', 'tablet');
  t.equal(key.code, 0);
  const approval = await cli('approve', '--server', server, '--as', 'alice', '--device', 'phone', '--new-device', 'tablet', '--key', key.stdout.trim());
  t.equal(approval.code, 0, `the phone approves the tablet (${approval.stderr.trim()})`);
  const linked = await cli('send', '--server', server, '--as', 'alice', '--device', 'tablet', '--link', approval.stdout.trim(), '--to', 'alice', '--text', 'from the tablet');
  t.equal(linked.code, 0, `the tablet joins with the approval (${linked.stderr.trim()})`);

  const notice = await cli('recv', '--server', server, '--as', 'alice', '--device', 'phone', '--count', '2', '--json', '--timeout', '10');
  t.equal(notice.code, 0, 'the phone receives');
  const got = notice.stdout.trim().split('\n').map((l) => JSON.parse(l) as { from: string; text: string; sys?: string });
  t.ok(got.some((m) => m.sys === 'device-added' && m.from === '_account' && m.text.includes('tablet')), 'the phone was told a device was added');
  t.ok(got.some((m) => m.text === 'from the tablet'), 'and got the tablet\'s message');

  const again = await cli('send', '--server', server, '--as', 'alice', '--device', 'watch', '--link', approval.stdout.trim(), '--to', 'alice', '--text', 'x');
  t.match(again.stderr, /REGISTRATION_DENIED/, 'an approval is for the device and key it names, once');
});

// Approvals, keys and texts are base64url or free text: one in 64 starts with "-", which
// node's parseArgs refuses as an ambiguous option argument unless the CLI attaches it.
t.test('a value that starts with "-" is taken as the value of its flag', async (t) => {
  const sent = await cli('send', '--server', server, '--as', 'dash', '--device', 'phone', '--to', 'dash', '--text', '-starts with a dash');
  t.equal(sent.code, 0, `a text led by a dash is sent (${sent.stderr.trim()})`);
  const bad = await cli('send', '--server', server, '--as', 'dash', '--device', 'tablet', '--link', '-not-an-approval', '--to', 'dash', '--text', 'x');
  t.not(bad.code, 2, 'a dash-led approval is not a usage error');
  t.match(bad.stderr, /REGISTRATION_DENIED|BAD_MESSAGE|approval/i, 'it is judged as an approval');
});
