import t, { type Test } from 'tap';
import { createServer, type AddressInfo, type Socket } from 'node:net';
import { check } from '@gravitas/testkit';
import { decodeBody, DriverError, encodeBody, nowMs, OUTBOX_MAX, type DeviceEvents, type DeviceRef, type DriverDevice, type Incoming } from '../../bench/src/harness/driver.js';
import { HarnessError } from '../../bench/src/harness/errors.js';
import { deviceRef } from '../../bench/src/harness/identity.js';
import { startProsody, type LocalProsody } from '../../bench/src/harness/prosody.js';
import { XmppDriver, type XmppDriverOptions } from '../../bench/src/harness/xmpp-driver.js';

// Against a real Prosody (Debian's 0.12) started here through prosody.ts. Every test uses its own
// user namespace, so they share one server without seeing each other's accounts or rooms.

/** What a device reported, in order. */
class Recorder implements DeviceEvents {
  readonly messages: Incoming[] = [];
  readonly outcomes: Array<{ ref: number; ok: boolean; code: string | undefined }> = [];
  readonly presences: string[] = [];
  readonly losses: string[] = [];
  message(m: Incoming): void {
    this.messages.push(m);
  }
  outcome(ref: number, ok: boolean, code?: string): void {
    this.outcomes.push({ ref, ok, code });
  }
  presence(user: string): void {
    this.presences.push(user);
  }
  lost(code: string): void {
    this.losses.push(code);
  }
  bodies(): string[] {
    return this.messages.map((m) => m.body);
  }
  okRefs(): number[] {
    return this.outcomes.filter((o) => o.ok).map((o) => o.ref);
  }
}

let server: LocalProsody;

t.before(async () => {
  server = await startProsody();
});
t.teardown(() => server?.stop());

/** A driver; each test names its users in a namespace of its own (deviceRef), so they share one server unseen. */
function driver(t: Test, over: Partial<XmppDriverOptions> = {}, on: LocalProsody = server): XmppDriver {
  const d = new XmppDriver({ host: on.host, port: on.port, domain: on.domain, muc: on.muc, register: true, connectTimeoutMs: 8000, ...over });
  t.teardown(() => d.close());
  return d;
}

/** Two provisioned users of `namespace`, each with a connected device and a recorder. */
async function connectedPair(t: Test, namespace: string): Promise<{ drv: XmppDriver; a: DeviceRef; b: DeviceRef; ra: Recorder; rb: Recorder; da: DriverDevice; db: DriverDevice }> {
  const drv = driver(t);
  const a = deviceRef(namespace, 0, 0);
  const b = deviceRef(namespace, 1, 0);
  await drv.provision(a, []);
  await drv.provision(b, []);
  const ra = new Recorder();
  const rb = new Recorder();
  const da = drv.device(a, ra, []);
  const db = drv.device(b, rb, []);
  await da.connect();
  await db.connect();
  return { drv, a, b, ra, rb, da, db };
}

/** Rejects with the error `p` rejects with, or fails the test if it resolves. */
async function rejection(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (e) {
    return e;
  }
  throw new Error('expected a rejection');
}

t.test('prosody.ts: a missing binary is a clear TARGET_UNAVAILABLE', async (t) => {
  const err = await rejection(startProsody({ bin: '/nonexistent/bin/prosody' }));
  t.type(err, HarnessError);
  t.match(err, { code: 'TARGET_UNAVAILABLE', message: /prosody is not installed.*apt-get install prosody/ });
});

t.test('prosody.ts: the private server answers on its port with its domain and MUC service', async (t) => {
  t.equal(server.host, '127.0.0.1');
  t.ok(server.port > 0);
  t.equal(server.muc, `conference.${server.domain}`);
  t.ok(server.running);
  t.match(server.logTail(), /Activated service 'c2s' on \[127\.0\.0\.1\]/);
});

t.test('provisioning registers the account in-band, and again is fine', async (t) => {
  const drv = driver(t);
  const a = deviceRef('prov', 0, 0);
  await drv.provision(a, []);
  await drv.provision(a, []);
  t.match(drv.counters(), { accountsRegistered: 1, accountsExisting: 1 }, 'the second registration found the account');
  // The account works with the password derived from the secret, from another driver too.
  const other = driver(t, { register: false });
  await other.provision(a, []);
  const dev = other.device(a, new Recorder(), []);
  await dev.connect();
  t.ok(dev.connected);
  await dev.ping();
  await dev.disconnect();
  t.notOk(dev.connected);
  t.match(await rejection(dev.ping()), { driverCode: 'NOT_CONNECTED' }, 'no ping without a session');
});

t.test('register: false with an unknown account: connect and provision reject with not-authorized', async (t) => {
  const drv = driver(t, { register: false });
  const ghost = deviceRef('ghost', 0, 0);
  const err = await rejection(drv.device(ghost, new Recorder(), []).connect());
  t.type(err, DriverError);
  t.equal((err as DriverError).driverCode, 'not-authorized');
  t.match(await rejection(drv.provision(ghost, [])), { driverCode: 'not-authorized' });
  // Another user secret (another namespace's password) for the same name is refused the same way.
  const real = deviceRef('pw', 0, 0);
  await driver(t).provision(real, []);
  const impostor = driver(t, { register: false });
  t.match(await rejection(impostor.device({ ...real, userSecret: deviceRef('pw2', 0, 0).userSecret }, new Recorder(), []).connect()), { driverCode: 'not-authorized' });
});

t.test('1:1: the body arrives whole with its intended time, and the sender gets its outcome', async (t) => {
  const { a, b, ra, rb, da } = await connectedPair(t, 'direct');
  const intended = nowMs();
  const body = encodeBody(intended, 'run.g0.1', 300);
  da.send(1, b.user, body);
  await check('bob received', () => rb.messages.length === 1);
  const m = rb.messages[0]!;
  t.equal(m.from, a.user);
  t.equal(m.group, undefined);
  t.equal(m.body, body, 'the body is intact');
  t.same(decodeBody(m.body), { intendedMs: Number(intended.toFixed(3)), tag: 'run.g0.1' });
  await check('alice has the outcome', () => ra.outcomes.length === 1);
  t.same(ra.outcomes, [{ ref: 1, ok: true, code: undefined }]);
  t.same(ra.messages, [], 'nothing comes back to the sender');
  t.same(ra.losses, []);
  t.same(rb.losses, []);
});

t.test('a group message reaches every other member device and not the sending device', async (t) => {
  const drv = driver(t);
  const a0 = deviceRef('grp', 0, 0);
  const a1 = deviceRef('grp', 0, 1);
  const b = deviceRef('grp', 1, 0);
  const c = deviceRef('grp', 2, 0);
  for (const d of [a0, a1, b, c]) await drv.provision(d, []);
  const g = await drv.createGroup(a0, 'Team', [a0.user, b.user, c.user]);
  t.equal(g, g.toLowerCase(), 'a lower-case room id');
  t.equal(await drv.createGroup(a0, 'Team', [a0.user, b.user, c.user]), g, 'creating it again gives the same room');
  const r = { a0: new Recorder(), a1: new Recorder(), b: new Recorder(), c: new Recorder() };
  const da0 = drv.device(a0, r.a0, [g]);
  const devs = [da0, drv.device(a1, r.a1, [g]), drv.device(b, r.b, [g]), drv.device(c, r.c, [g])];
  for (const d of devs) await d.connect();
  da0.sendToGroup(1, g, encodeBody(nowMs(), 'g.1', 80));
  await check('the other members received', () => r.a1.messages.length === 1 && r.b.messages.length === 1 && r.c.messages.length === 1);
  for (const rec of [r.a1, r.b, r.c]) t.match(rec.messages[0], { from: a0.user, group: g });
  // Bob answers once he has it: the server sends the echo of a0's own message before bob's.
  devs[2]!.sendToGroup(2, g, encodeBody(nowMs(), 'g.2', 80));
  await check('a0 received bob', () => r.a0.messages.length >= 1);
  t.same(
    r.a0.messages.map((m) => [m.from, m.group]),
    [[b.user, g]],
    'the sending device never got its own message back',
  );
  await check('both outcomes', () => r.a0.outcomes.length === 1 && r.b.outcomes.length === 1);
  t.same(r.b.messages.length, 1, 'bob did not get his own message either');
});

t.test('a message to an offline user waits for it (mod_offline)', async (t) => {
  const drv = driver(t);
  const a = deviceRef('off', 0, 0);
  const b = deviceRef('off', 1, 0);
  await drv.provision(a, []);
  await drv.provision(b, []);
  const ra = new Recorder();
  const da = drv.device(a, ra, []);
  await da.connect();
  const body = encodeBody(nowMs(), 'off.1', 100);
  da.send(7, b.user, body);
  await check('accepted while bob is offline', () => ra.outcomes.length === 1);
  t.same(ra.outcomes[0], { ref: 7, ok: true, code: undefined });
  const rb = new Recorder();
  const db = drv.device(b, rb, []);
  await db.connect();
  await check('bob got it at connect', () => rb.messages.length === 1);
  t.same(rb.messages[0], { from: a.user, body });
});

t.test('presence flows between mutual contacts after both have been online', async (t) => {
  const drv = driver(t);
  const a = deviceRef('pres', 0, 0);
  const b = deviceRef('pres', 1, 0);
  const stranger = deviceRef('pres', 2, 0);
  await drv.provision(a, [b.user]);
  await drv.provision(b, [a.user]);
  await drv.provision(stranger, []);
  const ra = new Recorder();
  const rb = new Recorder();
  const da = drv.device(a, ra, []);
  const db = drv.device(b, rb, []);
  const ds = drv.device(stranger, new Recorder(), []);
  await da.connect();
  await da.ping(); // alice's approval of bob's request (sent when she connected) is handled
  await ds.connect();
  // Alice subscribed to Bob at provisioning and Bob approved it then: his coming online reaches her.
  const fromBob = (): number => ra.presences.filter((u) => u === b.user).length;
  const before = fromBob();
  await db.connect();
  await check('alice saw bob come online', () => fromBob() > before);
  // Alice approved Bob's request when she connected: his subscription works too.
  const fromAlice = (): number => rb.presences.filter((u) => u === a.user).length;
  const seenByBob = fromAlice();
  da.setPresence('away');
  await check('bob saw alice go away', () => fromAlice() > seenByBob);
  const seenByAlice = fromBob();
  db.setPresence('away');
  await check('alice saw bob go away', () => fromBob() > seenByAlice);
  db.setPresence('online');
  await check('and come back', () => fromBob() > seenByAlice + 1);
  t.notOk([...ra.presences, ...rb.presences].includes(stranger.user), 'no presence from a user who is not a contact');
  t.ok(drv.counters().subscriptionsApproved >= 2, 'both requests were approved');
});

t.test('drop() then connect(): no lost event, the session resumes, queued sends go out', async (t) => {
  const { drv, a, b, ra, rb, da, db } = await connectedPair(t, 'drop');
  da.drop();
  t.notOk(da.connected);
  t.match(await rejection(da.ping()), { driverCode: 'NOT_CONNECTED' });
  // While it is down: one send waits in its outbox, and bob writes to it.
  da.send(1, b.user, encodeBody(nowMs(), 'drop.1', 50));
  db.send(2, a.user, encodeBody(nowMs(), 'drop.2', 50));
  await check('bob has his outcome', () => rb.outcomes.length === 1);
  await da.connect();
  t.ok(da.connected);
  await check('the queued send reached bob', () => rb.messages.length === 1);
  t.match(rb.messages[0]!.body, /^\S+ drop\.1 /);
  await check('alice has its outcome', () => ra.okRefs().includes(1));
  await check('what bob sent meanwhile reached alice', () => ra.messages.length === 1);
  t.match(ra.messages[0]!.body, /^\S+ drop\.2 /);
  t.equal(drv.counters().resumed, 1, 'the stream-management session was resumed');
  // Twice in a row, and connect() right after drop() (the old socket still closing).
  da.drop();
  await da.connect();
  await da.ping();
  t.same(ra.losses, [], 'a drop is no loss');
  t.same(ra.messages.length, 1, 'nothing reported twice after the resumptions');
});

t.test('the outbox is bounded while disconnected', async (t) => {
  const drv = driver(t);
  const rec = new Recorder();
  const dev = drv.device(deviceRef('box', 0, 0), rec, []);
  for (let i = 0; i <= OUTBOX_MAX; i++) dev.send(i, 'nobody', 'x');
  dev.send(5, 'nobody', 'again');
  dev.setPresence('away'); // dropped: not connected
  await check('refusals', () => rec.outcomes.length === 2);
  t.same(rec.outcomes, [
    { ref: OUTBOX_MAX, ok: false, code: 'OUTBOX_FULL' },
    { ref: 5, ok: false, code: 'OUTBOX_FULL' },
  ]);
  t.throws(() => dev.send(-1, 'nobody', 'x'), RangeError);
});

t.test('lost fires when the server dies, not on disconnect()', async (t) => {
  const own = await startProsody();
  t.teardown(() => own.stop());
  const drv = driver(t, {}, own);
  const a = deviceRef('kill', 0, 0);
  await drv.provision(a, []);
  const rec = new Recorder();
  const dev = drv.device(a, rec, []);
  await dev.connect();
  await dev.disconnect();
  await dev.connect();
  await dev.disconnect();
  t.same(rec.losses, [], 'a clean disconnect is no loss');
  await dev.connect();
  process.kill(own.pid, 'SIGKILL');
  await check('lost', () => rec.losses.length === 1);
  t.notOk(dev.connected);
  t.type(rec.losses[0], 'string');
  await check('prosody is gone', () => !own.running);
  t.match(await rejection(dev.connect()), { name: 'DriverError', driverCode: 'ECONNREFUSED' });
  t.equal(rec.losses.length, 1, 'one loss only');
});

t.test('a malformed stanza closes that connection with lost, never the process', async (t) => {
  // A scripted server: just enough XMPP to log in, then a message whose sender is no JID.
  const sockets = new Set<Socket>();
  const fake = createServer((s) => {
    sockets.add(s);
    let buf = '';
    let streams = 0;
    const header = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' from='localhost' id='s1' version='1.0'>";
    s.on('error', () => undefined);
    s.on('data', (d) => {
      buf += d.toString();
      if (buf.includes('<stream:stream') && streams === 0) {
        streams = 1;
        buf = '';
        s.write(`${header}<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism></mechanisms></stream:features>`);
      } else if (buf.includes('<auth')) {
        buf = '';
        s.write("<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>");
      } else if (buf.includes('<stream:stream') && streams === 1) {
        streams = 2;
        buf = '';
        s.write(`${header}<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>`);
      } else if (buf.includes('<bind')) {
        const id = /id="([^"]+)"|id='([^']+)'/.exec(buf);
        buf = '';
        s.write(`<iq type='result' id='${id?.[1] ?? id?.[2] ?? ''}'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><jid>bad0@localhost/d0</jid></bind></iq>`);
      } else if (buf.includes('<presence')) {
        buf = '';
        s.write("<message type='chat' from='good@localhost/x' id='m1'><body>fine</body></message>");
        setTimeout(() => s.write("<message type='chat' from='@' id='m2'><body>broken</body></message>"), 50);
      }
    });
  });
  fake.listen(0, '127.0.0.1');
  await new Promise((r) => fake.once('listening', r));
  t.teardown(() => {
    for (const s of sockets) s.destroy();
    fake.close();
  });
  const { port } = fake.address() as AddressInfo;
  const drv = new XmppDriver({ host: '127.0.0.1', port, domain: 'localhost', muc: 'conference.localhost', register: false });
  t.teardown(() => drv.close());
  const rec = new Recorder();
  const dev = drv.device(deviceRef('bad', 0, 0), rec, []);
  await dev.connect();
  await check('the connection was closed', () => rec.losses.length === 1);
  t.same(rec.losses, ['CLIENT_ERROR']);
  t.same(rec.bodies(), ['fine'], 'the good message before it was reported');
  t.equal(drv.counters().clientErrors, 1);
  t.notOk(dev.connected);
});
