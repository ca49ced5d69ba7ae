import t from 'tap';
import { join } from 'node:path';
import { NatsServer, tempDir } from '@gravitas/testkit';
import { decodeBody, encodeBody, nowMs, type Incoming } from '../../bench/src/harness/driver.js';
import { GravitasDriver } from '../../bench/src/harness/gravitas-driver.js';
import { clusterKeys, nodeConfig, spawnNode, writeNodeConfig } from '../fixtures/cluster.js';

t.test('bodies carry the intended send time', async (t) => {
  const b = encodeBody(1_700_000_000_123.4567, 100);
  t.equal(b.length, 100);
  t.equal(decodeBody(b), 1_700_000_000_123.457);
  t.equal(encodeBody(5, 0), '5.000 ', 'never shorter than the timestamp');
  t.equal(decodeBody('hello world'), undefined, 'a body the harness did not write');
  t.equal(decodeBody(''), undefined);
});

t.test('the Gravitas driver against a real node: connect, send, receive, ping, disconnect', async (t) => {
  const dir = await tempDir('gravitas-driver-');
  t.teardown(() => dir[Symbol.asyncDispose]());
  const nats = await NatsServer.start();
  t.teardown(() => nats.stop());
  const keys = clusterKeys();
  const file = await writeNodeConfig(join(dir.path, 'n1.json'), nodeConfig({ natsUrl: nats.url, nodeId: 'n1', dataDir: join(dir.path, 'n1'), keys, cells: 2 }));
  const node = await spawnNode(file);
  t.teardown(() => node.stop());

  const driver = new GravitasDriver({ addresses: node.clientAddresses, serverPublicKey: keys.serverPublicKey });
  t.teardown(() => driver.close());
  const got: Array<{ m: Incoming; at: number }> = [];
  let arrived!: () => void;
  const arrival = new Promise<void>((r) => (arrived = r));
  const bob = await driver.connect({ user: 'bob', device: 'b1' }, (m, at) => (got.push({ m, at }), arrived()));
  t.teardown(() => bob.disconnect());
  const alice = await driver.connect({ user: 'alice', device: 'a1' }, () => undefined);
  await alice.ping();
  // Bob is online, so send() resolves on `delivered`: his device already has it.
  await alice.send('bob', encodeBody(nowMs(), 64));
  await arrival;
  t.ok(got.length >= 1, 'bob received');
  const first = got[0]!;
  t.equal(first.m.from, 'alice');
  t.equal(first.m.body.length, 64, 'the body arrives whole');
  const intended = decodeBody(first.m.body)!;
  t.ok(first.at >= intended, 'received after it was meant to be sent');
  t.ok(first.at - intended < 10_000, 'on the same clock');
  alice.setPresence('away');
  await alice.disconnect();
  await t.rejects(alice.ping(), 'no session after disconnect');
});
