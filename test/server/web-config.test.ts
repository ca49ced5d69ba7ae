/*
 * Configuration of the web listener (listen.webBasePort, web.*) and the ready
 * line that reports it: defaults, env and flags, and every bad value reported
 * with its path.
 */
import t from 'tap';
import { ConfigError, loadConfig, readyLine, validateConfig, type RunningNode } from '@gravitas/server';
import { clusterKeys, nodeConfig, parseReadyLine } from '../fixtures/cluster.js';

const keys = clusterKeys();
const base = (extra: Record<string, unknown> = {}): Record<string, unknown> =>
  nodeConfig({ natsUrl: 'nats://127.0.0.1:4222', nodeId: 'w1', dataDir: '/tmp/gravitas-web-config', keys, extra });
const paths = (fn: () => unknown): string[] => {
  try {
    fn();
  } catch (err) {
    if (err instanceof ConfigError) return err.issues.map((i) => i.path).sort();
    throw err;
  }
  return [];
};

t.test('defaults: web on, port 7600 beside TCP 7400, OS-picked with OS-picked TCP ports', async (t) => {
  const c = validateConfig({ ...base(), listen: { host: '127.0.0.1', basePort: 7400 } });
  t.equal(c.listen.webBasePort, 7600);
  t.equal(c.web.enabled, true);
  t.same(c.web.corsOrigins, ['*']);
  t.equal(validateConfig({ ...base(), listen: { host: '127.0.0.1', basePort: 0 } }).listen.webBasePort, 0);
});

t.test('env and flags set the port, turn the listener off and list origins', async (t) => {
  const raw = base();
  const env = loadConfig({ overrides: raw, env: { GRAVITAS_WEB: 'false', GRAVITAS_CORS_ORIGINS: 'https://a.example, http://b.example:8080' } });
  t.equal(env.web.enabled, false);
  t.same(env.web.corsOrigins, ['https://a.example', 'http://b.example:8080']);
  const flags = loadConfig({ overrides: { ...raw, listen: undefined }, flags: { 'web-port': '9100', port: '9000' } });
  t.equal(flags.listen.webBasePort, 9100);
});

t.test('bad values are reported with their paths', async (t) => {
  t.same(paths(() => validateConfig(base({ listen: { basePort: 7400, webBasePort: 7401 }, cells: 2 }))), ['listen.webBasePort'], 'web ports overlap TCP ports');
  t.same(paths(() => validateConfig(base({ limits: { maxFrameBytes: 65536 }, web: { maxChunkBytes: 65536 } }))), ['web.maxChunkBytes'], 'a chunk cannot hold a frame');
  t.same(paths(() => validateConfig(base({ web: { maxChunksPerRequest: 100 } }))), ['web.maxChunksPerRequest'], 'below what the SDK sends per request');
  t.same(paths(() => validateConfig(base({ web: { maxBodyBytes: 1024 } }))), ['web.maxBodyBytes']);
  t.same(paths(() => validateConfig(base({ web: { corsOrigins: ['evil'] } }))), ['web.corsOrigins']);
  t.same(paths(() => validateConfig(base({ web: { maxHeadrBytes: 1 } }))), ['web.maxHeadrBytes'], 'a misspelt key');
});

t.test('the ready line names the web listeners, and the test parser reads both forms', async (t) => {
  const node = { clientAddresses: ['h:1', 'h:2'], webAddresses: ['h:3', 'h:4'], adminUrl: 'http://h:5' } as unknown as RunningNode;
  const line = readyLine(node);
  t.equal(line, 'ready client=h:1,h:2 admin=http://h:5 web=h:3,h:4');
  t.same(parseReadyLine(line), { clientAddresses: ['h:1', 'h:2'], adminUrl: 'http://h:5', webAddresses: ['h:3', 'h:4'] });
  const off = readyLine({ ...node, webAddresses: [] } as RunningNode);
  t.equal(off, 'ready client=h:1,h:2 admin=http://h:5');
  t.same(parseReadyLine(off), { clientAddresses: ['h:1', 'h:2'], adminUrl: 'http://h:5', webAddresses: [] });
});
