/*
 * Node configuration: validateConfig / loadConfig (file < env < flags < overrides),
 * every kind of bad value reported as a ConfigError naming its path, and the CLI's
 * answer to a broken config (non-zero exit, a clear message, no stack trace).
 */
import t, { type Test } from 'tap';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { random, toBase64Url } from '@gravitas/protocol';
import { ConfigError, DEFAULT_LIMITS, loadConfig, ServerError, ServerErrorCode, validateConfig, type ConfigIssue } from '@gravitas/server';
import { tempDir } from '@gravitas/testkit';
import { clusterKeys, nodeConfig, runCli, writeNodeConfig } from '../fixtures/cluster.js';

const keys = clusterKeys();
const good = (): Record<string, unknown> => nodeConfig({ natsUrl: 'nats://127.0.0.1:4222', nodeId: 'n1', dataDir: '/tmp/gravitas-config-test', keys });

/** Runs `fn`, expects a ConfigError, returns its issues. */
function issues(t: Test, fn: () => unknown): ConfigIssue[] {
  try {
    fn();
  } catch (err) {
    t.type(err, ConfigError, 'throws ConfigError');
    t.equal((err as ConfigError).code, ServerErrorCode.CONFIG_INVALID);
    return (err as ConfigError).issues;
  }
  t.fail('expected a ConfigError');
  return [];
}

/** Expects a ConfigError that lists exactly these paths (in any order) and names each in its message. */
function rejects(t: Test, raw: Record<string, unknown>, paths: string[], label: string): void {
  t.test(label, async (t) => {
    let message = '';
    const found = issues(t, () => {
      try {
        validateConfig(raw);
      } catch (err) {
        message = (err as Error).message;
        throw err;
      }
    });
    t.same(found.map((i) => i.path).sort(), [...paths].sort(), `issues at ${paths.join(', ')}`);
    for (const p of paths) t.match(message, `  - ${p}: `, `message lists ${p}`);
  });
}

const without = (o: Record<string, unknown>, k: string): Record<string, unknown> => {
  const { [k]: _gone, ...rest } = o;
  return rest;
};

t.test('validateConfig: a good config, with defaults filled in', async (t) => {
  const cfg = validateConfig(good());
  t.match(cfg, {
    nodeId: 'n1',
    nats: { servers: ['nats://127.0.0.1:4222'] },
    prefix: 'gravitas',
    cells: 2,
    listen: { host: '127.0.0.1', basePort: 0 },
    advertiseHost: '127.0.0.1',
    admin: { host: '127.0.0.1', port: 0 },
    serverKey: keys.serverKey,
    ticketKeys: keys.ticketKeys,
    ticketLifetimeMs: 24 * 3600_000,
    registration: { mode: 'open' },
    membership: { heartbeatMs: 200, timeoutMs: 1000 },
    testHooks: true,
  });
  t.same(cfg.limits, DEFAULT_LIMITS, 'default limits');
  // Strings (as env and flags give them) are coerced; a second ticket key is accepted.
  const coerced = validateConfig({ ...good(), cells: '3', testHooks: 'false', nats: { servers: 'nats://a:4222, b:4223' }, ticketKeys: [...keys.ticketKeys, { id: 2, key: toBase64Url(random(32)) }] });
  t.equal(coerced.cells, 3);
  t.equal(coerced.testHooks, false);
  t.same(coerced.nats.servers, ['nats://a:4222', 'b:4223']);
  t.equal(coerced.ticketKeys.length, 2);
});

t.test('validateConfig: each kind of bad value is a ConfigError listing its path', async (t) => {
  const g = good();
  rejects(t, { ...g, nats: { servers: ['http://127.0.0.1:4222'] } }, ['nats.servers'], 'servers URL with the wrong scheme');
  rejects(t, { ...g, nats: { servers: [] } }, ['nats.servers'], 'empty servers list');
  rejects(t, { ...g, nats: { servers: ['nats://has space:4222'] } }, ['nats.servers'], 'servers URL with a space');
  rejects(t, { ...g, cells: 0 }, ['cells'], 'cells 0');
  rejects(t, { ...g, cells: 1.5 }, ['cells'], 'cells not an integer');
  rejects(t, { ...g, listen: { host: '127.0.0.1', basePort: 70000 } }, ['listen.basePort'], 'listen port 70000');
  rejects(t, { ...g, admin: { host: '127.0.0.1', port: 70000 } }, ['admin.port'], 'admin port 70000');
  rejects(t, { ...g, listen: { host: '127.0.0.1', basePort: 65535 }, cells: 2 }, ['listen.basePort'], 'base port + cells beyond 65535');
  rejects(t, { ...g, prefix: 'gravitas.prod' }, ['prefix'], 'prefix with a dot');
  rejects(t, without(g, 'serverKey'), ['serverKey'], 'missing serverKey');
  rejects(t, { ...g, serverKey: 'c2hvcnQ' }, ['serverKey'], 'serverKey not 32 bytes');
  rejects(t, { ...g, ticketKeys: [{ id: 1, key: 'not-32-bytes' }] }, ['ticketKeys[0]'], 'bad ticket key');
  rejects(t, { ...g, ticketKeys: [{ id: 256, key: keys.ticketKeys[0]!.key }] }, ['ticketKeys[0]'], 'ticket key id out of range');
  rejects(t, { ...g, ticketKeys: [] }, ['ticketKeys'], 'no ticket key');
  rejects(t, { ...g, ticketKeys: [keys.ticketKeys[0]!, { ...keys.ticketKeys[0]! }] }, ['ticketKeys'], 'two ticket keys with one id');
  rejects(t, { ...g, registration: { mode: 'token' } }, ['registration.token'], 'token mode without a token');
  rejects(t, { ...g, registration: { mode: 'invite' } }, ['registration.mode'], 'unknown registration mode');
  rejects(t, { ...g, membership: { heartbeatMs: 1000, timeoutMs: 1500 } }, ['membership.timeoutMs'], 'membership timeout under two heartbeats');
  rejects(t, { ...g, limits: { maxFrameBytes: 100 } }, ['limits.maxFrameBytes'], 'a limit out of range');
  rejects(t, { ...g, testHooks: 'yes' }, ['testHooks'], 'not a boolean');
  rejects(t, { ...g, colour: 'blue' }, ['colour'], 'unknown key');
  rejects(t, { ...g, limits: { maxFrameByte: 2048 } }, ['limits.maxFrameByte'], 'unknown nested key (a typo must not be ignored)');
  rejects(t, { ...g, membership: { timeoutMS: 5000 } }, ['membership.timeoutMS'], 'unknown nested key in membership');
  rejects(t, { ...g, listen: 7400 }, ['listen'], 'a section that is not an object');
  rejects(t, { ...without(g, 'serverKey'), cells: 0, prefix: 'a.b', colour: 'blue' }, ['serverKey', 'cells', 'prefix', 'colour'], 'every problem reported at once');
});

t.test('loadConfig: file < env < flags < overrides', async (t) => {
  await using dir = await tempDir('gravitas-config-');
  const file = await writeNodeConfig(join(dir.path, 'node.json'), { ...good(), cells: 1, prefix: 'fromfile', admin: { host: '127.0.0.1', port: 7301 } });
  const env = { GRAVITAS_CELLS: '2', GRAVITAS_PREFIX: 'fromenv', GRAVITAS_ADMIN_PORT: '7302' };
  const flags = { cells: '3', 'admin-port': '7303' };

  const fileOnly = loadConfig({ file });
  t.match(fileOnly, { cells: 1, prefix: 'fromfile', admin: { port: 7301 } }, 'file alone');
  const withEnv = loadConfig({ file, env });
  t.match(withEnv, { cells: 2, prefix: 'fromenv', admin: { port: 7302 } }, 'env beats file');
  const withFlags = loadConfig({ file, env, flags });
  t.match(withFlags, { cells: 3, prefix: 'fromenv', admin: { port: 7303 } }, 'flags beat env; env still beats file where no flag is given');
  t.equal(loadConfig({ file, env, flags, overrides: { cells: 4 } }).cells, 4, 'overrides beat flags');
  t.equal(loadConfig({ file, env: { GRAVITAS_CELLS: '' } }).cells, 1, 'an empty env var is ignored');
  // Nested objects merge: a flag for listen.host keeps the file's listen.basePort.
  t.match(loadConfig({ file, flags: { host: '127.0.0.2' } }).listen, { host: '127.0.0.2', basePort: 0 });

  // Env-only settings in their string forms.
  const fromEnv = loadConfig({
    file,
    env: { GRAVITAS_NATS_SERVERS: 'nats://n1:4222,nats://n2:4222', GRAVITAS_TICKET_KEYS: `7:${toBase64Url(random(32))},8:${toBase64Url(random(32))}`, GRAVITAS_SERVER_KEY: keys.serverKey },
  });
  t.same(fromEnv.nats.servers, ['nats://n1:4222', 'nats://n2:4222']);
  t.same(fromEnv.ticketKeys.map((k) => k.id), [7, 8]);

  // A bad value from env or a flag is reported at the setting's path.
  t.same(issues(t, () => loadConfig({ file, env: { GRAVITAS_BASE_PORT: 'abc' } })).map((i) => i.path), ['listen.basePort'], 'bad env value');
  t.same(issues(t, () => loadConfig({ file, flags: { cells: '0' } })).map((i) => i.path), ['cells'], 'bad flag value');
  t.same(issues(t, () => loadConfig({ file, env: { GRAVITAS_TICKET_KEYS: '1' } })).map((i) => i.path), ['ticketKeys[0]'], 'malformed GRAVITAS_TICKET_KEYS');
  t.same(issues(t, () => loadConfig({ file, flags: { bogus: '1' } })), [{ path: '--bogus', message: 'unknown flag' }], 'unknown flag');
});

t.test('loadConfig: unreadable file, invalid JSON', async (t) => {
  await using dir = await tempDir('gravitas-config-');
  for (const file of [join(dir.path, 'missing.json'), dir.path]) {
    try {
      loadConfig({ file });
      t.fail('expected an error');
    } catch (err) {
      t.type(err, ServerError);
      t.notOk(err instanceof ConfigError, 'not a ConfigError: nothing was validated');
      t.equal((err as ServerError).code, ServerErrorCode.CONFIG_UNREADABLE, `${file}: CONFIG_UNREADABLE`);
      t.match((err as Error).message, file);
    }
  }
  const bad = join(dir.path, 'bad.json');
  await writeFile(bad, '{ "nodeId": "n1", }');
  t.match(issues(t, () => loadConfig({ file: bad })), [{ path: bad, message: /not valid JSON/ }], 'invalid JSON: the issue names the file');
  const arr = join(dir.path, 'array.json');
  await writeFile(arr, '[1, 2]');
  t.match(issues(t, () => loadConfig({ file: arr })), [{ path: arr, message: /JSON object/ }], 'JSON that is not an object');
});

t.test('CLI: `gravitas node` with a broken config exits non-zero with a clear message', async (t) => {
  await using dir = await tempDir('gravitas-config-cli-');
  await mkdir(join(dir.path, 'data'));
  const file = (name: string, cfg: Record<string, unknown>) => writeNodeConfig(join(dir.path, name), cfg);
  const broken = await file('broken.json', { ...without(good(), 'serverKey'), cells: 0, prefix: 'a.b' });
  const valid = await file('valid.json', good());
  const notJson = join(dir.path, 'not.json');
  await writeFile(notJson, 'nodeId = n1');

  const cases: Array<{ label: string; args: string[]; env?: NodeJS.ProcessEnv; code: number; stderr: RegExp[] }> = [
    { label: 'invalid values', args: ['node', '--config', broken], code: 1, stderr: [/^gravitas: invalid configuration:/, /- serverKey: is required/, /- cells: must be between 1 and 256, got 0/, /- prefix: /] },
    { label: 'missing file', args: ['node', '--config', join(dir.path, 'nope.json')], code: 1, stderr: [/^gravitas: cannot read config file .*nope\.json/] },
    { label: 'not JSON', args: ['node', '--config', notJson], code: 1, stderr: [/^gravitas: invalid configuration:/, /not valid JSON/] },
    { label: 'bad env value', args: ['node', '--config', valid], env: { GRAVITAS_CELLS: 'many' }, code: 1, stderr: [/- cells: must be an integer/] },
    { label: 'bad flag value', args: ['node', '--config', valid, '--admin-port', '70000'], code: 1, stderr: [/- admin\.port: must be between 0 and 65535/] },
    { label: 'a client flag given to node', args: ['node', '--config', valid, '--as', 'alice'], code: 1, stderr: [/- --as: unknown flag/] },
    { label: 'a flag the CLI does not know', args: ['node', '--config', valid, '--colour', 'blue'], code: 2, stderr: [/^gravitas: Unknown option '--colour'/, /usage:/] },
  ];
  const results = await Promise.all(cases.map((c) => runCli(c.args, { ...(c.env && { env: c.env }) })));
  cases.forEach((c, i) => {
    const r = results[i]!;
    t.equal(r.code, c.code, `${c.label}: exit code ${c.code}`);
    for (const re of c.stderr) t.match(r.stderr, re, `${c.label}: stderr says ${re}`);
    t.notMatch(r.stderr, /\n\s+at .+[:(]/, `${c.label}: no stack trace`);
    t.equal(r.stdout, '', `${c.label}: no ready line`);
  });
});
