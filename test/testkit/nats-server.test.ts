import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { once } from 'node:events';
import { rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { connect } from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { check, NatsServer, NatsServerNotFoundError, NatsServerStartError } from '@gravitas/testkit';

/** Alive and not a zombie (in a container PID 1 may never reap orphans). */
function alive(pid: number): boolean {
  try {
    return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

t.test('starts on a private port with its own temp dir, and pub/sub works', async (t) => {
  const ns = await NatsServer.start();
  t.teardown(() => ns.stop());
  t.not(ns.port, 4222);
  t.equal(ns.url, `nats://127.0.0.1:${ns.port}`);
  t.equal(ns.hostport, `127.0.0.1:${ns.port}`);
  t.ok(ns.monitorPort > 0);
  t.ok(ns.dir.startsWith(join(tmpdir(), 'gravitas-nats-')));
  t.equal(ns.storeDir, join(ns.dir, 'jetstream'));
  t.ok(ns.pid && alive(ns.pid));

  const nc = await connect({ servers: ns.url });
  t.teardown(() => nc.close());
  const sub = nc.subscribe('greet', { max: 1 });
  nc.publish('greet', 'hello');
  for await (const m of sub) t.equal(m.string(), 'hello');
});

t.test('JetStream data acked before SIGKILL survives restart on the same port', async (t) => {
  const ns = await NatsServer.start();
  t.teardown(() => ns.stop());
  // One connection across the restart: it proves the URL stays valid.
  const nc = await connect({ servers: ns.url, maxReconnectAttempts: -1, reconnectTimeWait: 50 });
  t.teardown(() => nc.close());
  // Short API timeout: a request sent while the client is still reconnecting is lost, so retry soon.
  const jsm = await jetstreamManager(nc, { timeout: 1000 });
  await jsm.streams.add({ name: 'S', subjects: ['s.>'] });
  const ack = await jetstream(nc).publish('s.a', 'persisted');
  t.equal(ack.seq, 1);

  const { port, pid } = ns;
  await ns.kill();
  t.notOk(ns.running);
  t.ok(existsSync(ns.storeDir), 'kill keeps the store');
  await ns.restart();
  t.equal(ns.port, port, 'same port');
  t.not(ns.pid, pid, 'new process');

  // 2.9 has no sync_interval: the acked write sits in the page cache, which a process kill keeps.
  const msg = await check('message readable after restart', () => jsm.streams.getMessage('S', { seq: 1 }));
  t.equal(msg.string(), 'persisted');
});

t.test('stop() removes the temp dir unless keepData', async (t) => {
  const a = await NatsServer.start({ jetstream: false });
  const pid = a.pid!;
  await a.stop();
  t.notOk(a.running);
  t.notOk(alive(pid));
  t.notOk(existsSync(a.dir));

  const b = await NatsServer.start();
  await b.stop({ keepData: true });
  t.ok(existsSync(b.storeDir));
  await rm(b.dir, { recursive: true, force: true });
});

t.test('await using stops the server', async (t) => {
  let dir: string;
  let pid: number;
  {
    await using ns = await NatsServer.start({ jetstream: false });
    dir = ns.dir;
    pid = ns.pid!;
  }
  t.notOk(alive(pid));
  t.notOk(existsSync(dir));
});

t.test('config and args are passed through', async (t) => {
  await using ns = await NatsServer.start({ config: { max_payload: 65536 }, args: ['--server_name', 'from-args'] });
  const varz = await ns.monitor<{ server_name: string; max_payload: number }>('/varz');
  t.equal(varz.server_name, 'from-args');
  t.equal(varz.max_payload, 65536);
});

t.test('a server that dies during start-up rejects with its output', async (t) => {
  const err = await NatsServer.start({ config: { no_such_option: true } }).catch((e: unknown) => e);
  t.ok(err instanceof NatsServerStartError);
  t.match((err as Error).message, /exited during start-up[\s\S]*unknown field "no_such_option"/);
});

t.test('a missing binary gives install instructions', async (t) => {
  const saved = process.env['NATS_SERVER_BIN'];
  t.teardown(() => {
    if (saved === undefined) delete process.env['NATS_SERVER_BIN'];
    else process.env['NATS_SERVER_BIN'] = saved;
  });
  process.env['NATS_SERVER_BIN'] = '/nonexistent/nats-server';
  await t.rejects(NatsServer.start(), NatsServerNotFoundError);
  await t.rejects(NatsServer.start(), { message: /apt-get install nats-server/ });
});

// A test process that crashes or is signalled must not leave its servers behind.
for (const how of ['throw', 'SIGTERM'] as const) {
  t.test(`servers are reaped when the test process dies (${how})`, async (t) => {
    const script = `
      import { NatsServer } from '@gravitas/testkit';
      const ns = await NatsServer.start();
      console.log(JSON.stringify({ pid: ns.pid, dir: ns.dir }));
      ${how === 'throw' ? "throw new Error('boom')" : "process.kill(process.pid, 'SIGTERM'); await new Promise((r) => setTimeout(r, 5000))"};
    `;
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'ignore'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d));
    const [code, signal] = (await once(child, 'exit')) as [number | null, NodeJS.Signals | null];
    if (how === 'SIGTERM') t.equal(signal, 'SIGTERM', 'the signal still kills the process');
    else t.equal(code, 1);
    const { pid, dir } = JSON.parse(out) as { pid: number; dir: string };
    await check('orphan server gone', () => !alive(pid), { timeout: 5000 });
    t.notOk(existsSync(dir), 'temp dir removed');
  });
}
