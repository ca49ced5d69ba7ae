/**
 * The connection caps against the process's file-descriptor limit (net/fd-budget.ts,
 * docs/operations.md "File descriptors"). The budget arithmetic on its own; then
 * real `gravitas node` children under `ulimit -n 1024`: explicit caps that do not
 * fit make the node refuse to start (FD_LIMIT, naming the numbers and settings);
 * default caps are lowered to fit with one log line, and the node then survives a
 * flood of idle admin sockets and of client connections — more of each than its
 * fd limit — answering /healthz and chatting afterwards.
 */
import t from 'tap';
import { readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ErrorCode } from '@gravitas/protocol';
import { fdNeed, fitFdBudget, ServerError, softFileLimit, validateConfig } from '@gravitas/server';
import { check, NatsServer, tempDir } from '@gravitas/testkit';
import { clusterKeys, connectClient, exchange, http, nodeConfig, runCli, spawnNode, writeNodeConfig } from '../fixtures/cluster.js';
import { RawConn } from '../fixtures/raw.js';
import { RawHttp } from '../fixtures/web.js';

const dir = await tempDir('gravitas-fdlimit-');
t.teardown(() => dir[Symbol.asyncDispose]());
const keys = clusterKeys();
const base = { serverKey: keys.serverKey, ticketKeys: keys.ticketKeys, registration: { mode: 'open' }, cells: 2 };

t.test('the budget: defaults are lowered to fit, explicit caps that do not fit refuse', async (t) => {
  const logs: string[] = [];
  const cfg = validateConfig(base);
  t.ok(fdNeed(cfg).need > 20_000, `the defaults need ${fdNeed(cfg).need} descriptors: more than this machine's 20,000`);
  t.equal(fdNeed(validateConfig({ ...base, admin: { maxConnections: 1064 } })).need - fdNeed(cfg).need, 1000, 'admin sockets count: 1,000 more admin.maxConnections need 1,000 more descriptors');
  fitFdBudget(cfg, (m) => void logs.push(m), () => 20_000);
  t.ok(fdNeed(cfg).need <= 20_000, `lowered to ${fdNeed(cfg).need}`);
  t.ok(Math.abs(cfg.web.maxConnections - 2 * cfg.limits.maxConnectionsPerCell) <= 2, `web keeps twice the TCP cap (${cfg.limits.maxConnectionsPerCell}, ${cfg.web.maxConnections})`);
  t.equal(logs.length, 1, 'one log line');
  t.match(logs[0], /lowered limits\.maxConnectionsPerCell 15000 → \d+, web\.maxConnections 30000 → \d+/);

  const explicit = validateConfig({ ...base, limits: { maxConnectionsPerCell: 15_000 }, web: { maxConnections: 30_000 } });
  const err = (() => {
    try {
      fitFdBudget(explicit, () => undefined, () => 20_000);
    } catch (e) {
      return e as ServerError;
    }
    return undefined;
  })();
  t.equal(err?.code, 'FD_LIMIT', 'explicit caps that do not fit: ServerError FD_LIMIT');
  t.match(err?.message, /FD_LIMIT: the connection caps need up to 90\d+ file descriptors/, 'naming what they need');
  t.match(err?.message, /soft RLIMIT_NOFILE of this process is 20000/, 'and the limit');
  t.match(err?.message, /limits\.maxConnectionsPerCell, web\.maxConnections, admin\.maxConnections, cells/, 'and the settings to change');

  const tcpOnly = validateConfig({ ...base, limits: { maxConnectionsPerCell: 5000 } });
  fitFdBudget(tcpOnly, () => undefined, () => 20_000);
  t.equal(tcpOnly.limits.maxConnectionsPerCell, 5000, 'an explicit TCP cap is kept');
  t.ok(tcpOnly.web.maxConnections < 10_000 && fdNeed(tcpOnly).need <= 20_000, `the default web cap is lowered around it (${tcpOnly.web.maxConnections})`);

  const small = validateConfig(base);
  t.throws(() => fitFdBudget(small, () => undefined, () => 300), { code: 'FD_LIMIT' }, 'a limit too low for any useful cap refuses even with defaults');
  const fits = validateConfig({ ...base, limits: { maxConnectionsPerCell: 100 }, web: { maxConnections: 200 } });
  fitFdBudget(fits, () => t.fail('no log when the caps fit'), () => 20_000);
  const unl = validateConfig(base);
  fitFdBudget(unl, () => t.fail('no log for an unlimited process'), () => 'unlimited');
  t.equal(unl.limits.maxConnectionsPerCell, 15_000);
  const unknown: string[] = [];
  fitFdBudget(validateConfig(base), (m) => void unknown.push(m), () => undefined);
  t.match(unknown, [/cannot read the soft RLIMIT_NOFILE/], 'an unreadable limit is logged and the check skipped');
  const f = join(dir.path, 'limits');
  writeFileSync(f, 'Limit                     Soft Limit           Hard Limit           Units\nMax open files            1024                 4096                 files\n');
  t.equal(softFileLimit(f), 1024, 'the soft limit is read from /proc/self/limits');
  t.equal(softFileLimit(join(dir.path, 'missing')), undefined);
});

t.test('a node under ulimit -n 1024', async (t) => {
  const nats = await NatsServer.start();
  t.teardown(() => nats.stop());
  const NOFILE = 1024;

  const tooBig = await writeNodeConfig(join(dir.path, 'big.json'), nodeConfig({ natsUrl: nats.url, nodeId: 'fd-big', dataDir: join(dir.path, 'big'), keys, cells: 1, extra: { limits: { maxConnectionsPerCell: 5000 }, web: { maxConnections: 5000 } } }));
  const refused = await runCli(['node', '--config', tooBig], { nofile: NOFILE });
  t.equal(refused.code, 1, 'explicit caps over the limit: the node does not start');
  t.match(refused.stderr, /FD_LIMIT: the connection caps need up to 10\d{3} file descriptors .* soft RLIMIT_NOFILE of this process is 1024/, 'and says why, with the numbers');

  const cfgFile = await writeNodeConfig(
    join(dir.path, 'fits.json'),
    nodeConfig({ natsUrl: nats.url, nodeId: 'fd-fits', dataDir: join(dir.path, 'fits'), keys, cells: 1, extra: { admin: { headerTimeoutMs: 1000 } } }),
  );
  const node = await spawnNode(cfgFile, { nofile: NOFILE });
  t.teardown(() => node.kill());
  const lowered = /lowered limits\.maxConnectionsPerCell 15000 → (\d+), web\.maxConnections 30000 → (\d+)/.exec(node.stderr());
  t.ok(lowered, 'the default caps were lowered to fit, in one log line');
  const cap = Number(lowered?.[1] ?? 0);
  const fds = (): number => readdirSync(`/proc/${node.pid}/fd`).length;

  // More idle admin sockets than the node may have descriptors, from 70 addresses.
  const flood: RawHttp[] = [];
  await Promise.all(
    Array.from({ length: 1100 }, async (_, i) => {
      try {
        flood.push(await RawHttp.open(node.adminUrl.replace('http://', ''), `127.30.${Math.floor(i / 16)}.${(i % 16) + 2}`));
      } catch {
        // closed at accept before the connect completed: just as good
      }
    }),
  );
  t.teardown(() => flood.forEach((c) => c.destroy()));
  t.ok(fds() < NOFILE, `the node holds ${fds()} descriptors during an admin flood of 1,100 sockets`);
  await check('/healthz answers again', async () => ((await http('GET', `${node.adminUrl}/healthz`).catch(() => ({ status: 0 }))).status === 200 ? true : undefined), { timeout: 10_000, interval: 100 });
  t.pass('/healthz answers once the idle sockets time out');

  // More client connections than the lowered cap, 30 per address (under the per-source handshake cap).
  const clients: RawConn[] = [];
  const codes = new Map<string, number>();
  await Promise.all(
    Array.from({ length: cap + 200 }, async (_, i) => {
      try {
        const c = await RawConn.open(node.clientAddresses[0]!, `127.31.${Math.floor(i / 30)}.${(i % 30) + 2}`);
        clients.push(c);
      } catch {
        codes.set('reset', (codes.get('reset') ?? 0) + 1);
      }
    }),
  );
  t.teardown(() => clients.forEach((c) => c.destroy()));
  await Promise.all(
    clients.map(async (c) => {
      const m = await c.nextPlain(1000).catch(() => undefined);
      const k = m?.t === 'error' ? m.code : m ? m.t : c.ended ? 'closed' : 'admitted';
      codes.set(k, (codes.get(k) ?? 0) + 1);
    }),
  );
  t.ok(fds() < NOFILE, `the node holds ${fds()} descriptors with ${cap + 200} client connections offered`);
  t.equal(codes.get('admitted'), cap, `exactly the lowered cap (${cap}) was admitted`);
  t.ok((codes.get(ErrorCode.BUSY) ?? 0) > 0, `the rest were refused: ${JSON.stringify(Object.fromEntries(codes))}`);
  clients.forEach((c) => c.destroy());

  t.equal((await http('GET', `${node.adminUrl}/healthz`)).status, 200, '/healthz still answers');
  const pk = keys.serverPublicKey;
  const a = await connectClient(t, { servers: [node.clientAddresses[0]!], serverPublicKey: pk, user: 'fd-a' });
  const b = await connectClient(t, { servers: [node.clientAddresses[0]!], serverPublicKey: pk, user: 'fd-b' });
  t.equal((await exchange(a, b, 'still here')).status, 'delivered', 'and clients chat again');
});
