/*
 * Identity and authorization against production-mode nodes (registration by the
 * operator's credentials, an admin token), tried as an attacker with a valid app
 * would (docs/security.md). Two nodes of two cells each (and a third of one cell, with a
 * rotated ticket key, behind a NATS link the test can cut): what is cluster-wide is
 * checked on every cell. Clients speak the protocol by hand (fixtures/raw.ts), so
 * every refusal's code is seen as the server sends it; each test connects from
 * its own 127.0.0.x source, as per-source limits count by address.
 */
import t, { type Test } from 'tap';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { createServer, type ServerResponse } from 'node:http';
import { connect as netConnect, createServer as createNetServer, type AddressInfo, type Socket } from 'node:net';
import { exportJWK, generateKeyPair as joseKeyPair, SignJWT, UnsecuredJWT, type CryptoKey } from 'jose';
import {
  ClientHandshake, ErrorCode, generateKeyPair, toBase64Url, type ClientHandshakeOptions, type KeyPair, type Msg, type Registration, type ResumptionState, type ServerMessage,
} from '@gravitas/protocol';
import { startNode, validateConfig, type RunningNode } from '@gravitas/server';
import { check, NatsServer, tempDir } from '@gravitas/testkit';
import { clusterKeys, nodeConfig } from '../fixtures/cluster.js';
import { RawConn, rawHandshake, type RawSession } from '../fixtures/raw.js';

const ISSUER = 'https://auth.example.test';
const ADMIN_TOKEN = `admin-${randomBytes(12).toString('hex')}`;

const nats = await NatsServer.start();
t.teardown(() => nats.stop());
const dir = await tempDir('gravitas-identity-');
t.teardown(() => dir[Symbol.asyncDispose]());
const keys = clusterKeys();
const pk = keys.serverPublicKey;

// The operator's auth service: an Ed25519 signing key, published as a JWKS the nodes are configured with.
const signer = await joseKeyPair('EdDSA', { crv: 'Ed25519' });
const jwk = { ...(await exportJWK(signer.publicKey)), kid: 'k1', alg: 'EdDSA', use: 'sig' };

const production = {
  registration: { mode: 'credential', credential: { issuer: ISSUER, audience: 'gravitas', jwks: { keys: [jwk] } } },
  admin: { token: ADMIN_TOKEN },
  // Per-session message limits high, the account's low: the account limit binds, across cells (its own test).
  limits: { msgRatePerSec: 1000, msgBurst: 1000, accountMsgRatePerSec: 50 },
};
const nodes: RunningNode[] = [];
for (const id of ['id-a', 'id-b']) {
  const n = await startNode(validateConfig(nodeConfig({ natsUrl: nats.url, nodeId: id, dataDir: join(dir.path, id), keys, extra: production })), () => undefined);
  t.teardown(() => n.stop());
  nodes.push(n);
}
const cells = nodes.flatMap((n) => n.clientAddresses);
const [a0, a1, b0, b1] = cells as [string, string, string, string];

// A third node of the same cluster, one cell, for three tests: it has rotated the ticket key (a
// new current key, the cluster's as previous); its only way to NATS is a link the test can cut;
// it fetches the credential keys from a URL that holds every request until the test releases it,
// and works on at most two handshakes at once.
const NEW_TICKET_KEY = { id: 2, key: toBase64Url(randomBytes(32)) };
const link = await natsLink(t, nats.url);
const heldJwks: ServerResponse[] = [];
let jwksReleased = false;
const jwksServer = createServer((_req, res) => {
  if (jwksReleased) res.end(JSON.stringify({ keys: [jwk] }));
  else heldJwks.push(res);
});
await new Promise<void>((resolve) => jwksServer.listen(0, '127.0.0.1', resolve));
t.teardown(() => {
  for (const res of heldJwks) res.destroy();
  jwksServer.close();
});
const far = await startNode(
  validateConfig(nodeConfig({
    natsUrl: link.url, nodeId: 'id-far', dataDir: join(dir.path, 'id-far'), keys, cells: 1,
    extra: {
      ...production,
      registration: { mode: 'credential', credential: { issuer: ISSUER, audience: 'gravitas', jwksUrl: `http://127.0.0.1:${(jwksServer.address() as AddressInfo).port}/jwks.json` } },
      ticketKeys: [NEW_TICKET_KEY, ...keys.ticketKeys],
      limits: { ...production.limits, maxHandshakesInFlight: 2 },
    },
  })),
  () => undefined,
);
t.teardown(() => far.stop());
const [farCell] = far.clientAddresses as [string];

let sourceSeq = 10;
/** A fresh 127.0.0.x source for one test: failed registrations are counted per source. */
const newSource = (): string => `127.0.0.${sourceSeq++}`;

interface CredentialOptions { user: string; device: string; key: Uint8Array; iss?: string; aud?: string; ttl?: string | number; iat?: number; signWith?: CryptoKey; kid?: string; jti?: string }

/** A credential as the operator's auth service issues it: user, device and the device's key, short-lived, single use. */
async function credential(o: CredentialOptions): Promise<string> {
  const jwt = new SignJWT({ device: o.device, cnf: { jwk: { kty: 'OKP', crv: 'X25519', x: toBase64Url(o.key) } } })
    .setProtectedHeader({ alg: 'EdDSA', kid: o.kid ?? 'k1' })
    .setIssuer(o.iss ?? ISSUER)
    .setAudience(o.aud ?? 'gravitas')
    .setSubject(o.user)
    .setJti(o.jti ?? randomBytes(9).toString('base64url'))
    .setIssuedAt(o.iat)
    .setExpirationTime(o.ttl ?? '5m');
  return jwt.sign(o.signWith ?? signer.privateKey);
}

interface Device { user: string; device: string; identity: KeyPair }
const device = (user: string, name: string): Device => ({ user, device: name, identity: generateKeyPair() });
const opts = (d: Device, extra: Partial<ClientHandshakeOptions> = {}): ClientHandshakeOptions => ({ serverPublicKey: pk, identity: d.identity, user: d.user, device: d.device, ...extra });

/** Frames a session received while a test waited for another (a notice that beat a `res`). */
const asideOf = new WeakMap<RawSession, ServerMessage[]>();

/** Sealed frames until one matches; the others are kept aside for a later `until` (e.g. notices). */
async function until<T extends ServerMessage>(s: RawSession, pred: (m: ServerMessage) => m is T, timeoutMs = 10_000): Promise<T> {
  let aside = asideOf.get(s);
  if (!aside) asideOf.set(s, (aside = []));
  const i = aside.findIndex(pred);
  if (i >= 0) return aside.splice(i, 1)[0] as T;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const m = await s.conn.nextSealed(s.channel, Math.max(1, deadline - Date.now()));
    if (pred(m)) return m;
    aside.push(m);
  }
}

let rids = 0;
async function request(s: RawSession, op: string, a: Record<string, unknown> = {}): Promise<Extract<ServerMessage, { t: 'res' }>> {
  const rid = ++rids;
  s.conn.sendSealed(s.channel, { t: 'req', rid, op, a });
  return until(s, (m): m is Extract<ServerMessage, { t: 'res' }> => m.t === 'res' && m.rid === rid);
}

/** A session open and registered (a ping answered), closed at teardown. */
async function connect(t: Test, address: string, d: Device, source: string, extra: Partial<ClientHandshakeOptions> = {}): Promise<RawSession> {
  const s = await rawHandshake(address, opts(d, extra), source);
  t.teardown(() => s.conn.destroy());
  s.conn.sendSealed(s.channel, { t: 'ping', n: 1 });
  await until(s, (m): m is Extract<ServerMessage, { t: 'pong' }> => m.t === 'pong');
  return s;
}

/** The code (and message) a first flight is refused with, or 'ok' when the handshake completes. */
async function refusal(address: string, o: ClientHandshakeOptions, source: string): Promise<{ code: string; message: string }> {
  try {
    const s = await rawHandshake(address, o, source);
    s.conn.destroy();
    return { code: 'ok', message: '' };
  } catch (err) {
    return { code: String((err as { code?: unknown }).code), message: (err as Error).message.replace(/^handshake refused: \S+ /, '') };
  }
}
const codeOf = async (address: string, o: ClientHandshakeOptions, source: string): Promise<string> => (await refusal(address, o, source)).code;

/** Registers a device with a fresh credential; returns its ticket. */
async function register(t: Test, address: string, d: Device, source: string): Promise<RawSession> {
  return connect(t, address, d, source, { registration: { credential: await credential({ user: d.user, device: d.device, key: d.identity.publicKey }) } });
}

const isMsg = (m: ServerMessage): m is Msg => m.t === 'msg';
type Bye = Extract<ServerMessage, { t: 'bye' }>;
type Status = Extract<ServerMessage, { t: 'status' }>;
const isBye = (m: ServerMessage): m is Bye => m.t === 'bye';

/** The next message with id `id` on `s`, acknowledged as the SDK would (so custody can answer `delivered`). */
async function receive(s: RawSession, id: string): Promise<Msg> {
  const m = await until(s, (x): x is Msg => isMsg(x) && x.id === id);
  s.conn.sendSealed(s.channel, { t: 'ack', id: m.id, from: m.from });
  return m;
}

/** Sends a 1:1 message and returns its final status (delivered, stored or failed). */
async function sendTo(s: RawSession, to: string, id: string): Promise<Status> {
  s.conn.sendSealed(s.channel, { t: 'send', id, to, text: id });
  return until(s, (m): m is Status => m.t === 'status' && m.id === id, 20_000);
}

/** What a session gets next after a ping: its pong (it is open) or its bye (with the code). */
async function pingOrBye(s: RawSession, n: number): Promise<string> {
  s.conn.sendSealed(s.channel, { t: 'ping', n });
  const m = await until(s, (x): x is Bye | Extract<ServerMessage, { t: 'pong' }> => isBye(x) || (x.t === 'pong' && x.n === n));
  return m.t === 'bye' ? (m.code ?? 'bye') : 'pong';
}

/** A handshake up to the server's welcome, without the finish: the server has checked the account, the session is not registered yet. */
async function halfHandshake(t: Test, address: string, o: ClientHandshakeOptions, source: string): Promise<{ conn: RawConn; finish: () => RawSession }> {
  const conn = await RawConn.open(address, source);
  t.teardown(() => conn.destroy());
  const hs = new ClientHandshake(o);
  conn.sendPlain(hs.hello());
  const m = await conn.nextPlain();
  if (m.t !== 'welcome') throw new Error(`expected a welcome, got ${JSON.stringify(m)}`);
  const result = hs.complete(m);
  return {
    conn,
    finish: () => {
      conn.sendSealed(result.channel, result.finish);
      return { conn, hs, result, channel: result.channel };
    },
  };
}

/** `devices.link` from a session of the account: the approval for device `d`'s key. */
async function approve(s: RawSession, d: Device): Promise<Uint8Array> {
  const res = await request(s, 'devices.link', { device: d.device, key: d.identity.publicKey });
  if (!res.ok) throw new Error(`devices.link refused: ${res.code}`);
  const { approval, expiresAt } = res.data as { approval: Uint8Array; expiresAt: number };
  if (!(approval instanceof Uint8Array) || !(expiresAt > Date.now())) throw new Error('devices.link answered without an approval');
  return approval;
}

t.test('only the account\'s owner can add a device: the takeover attempts are refused', async (t) => {
  const src = newSource();
  const alice = device('alice', 'phone');
  await register(t, a0, alice, src);
  const mallory = device('mallory', 'laptop');
  await register(t, b0, mallory, src);
  const evil = device('alice', 'evil');
  const malloryCred = await credential({ user: 'mallory', device: 'evil', key: evil.identity.publicKey });

  t.equal(await codeOf(a1, opts(evil), src), ErrorCode.UNKNOWN_DEVICE, 'a new device without proof');
  t.equal(await codeOf(a1, opts(evil, { registration: { credential: malloryCred } }), src), ErrorCode.REGISTRATION_DENIED, "mallory's own credential does not add a device to alice");
  t.equal(await codeOf(a1, opts(evil, { registration: 'a-guessed-token' }), src), ErrorCode.REGISTRATION_DENIED, 'no registration token is taken here');
  // Re-registering alice's device id with mallory's key needs alice's proof too.
  const stolenId = { ...device('alice', 'phone'), identity: evil.identity };
  t.equal(await codeOf(b1, opts(stolenId), src), ErrorCode.UNKNOWN_DEVICE, "alice's device id with another key");
  const wrongKey = await credential({ user: 'alice', device: 'phone', key: alice.identity.publicKey });
  t.equal(await codeOf(b1, opts(stolenId, { registration: { credential: wrongKey } }), src), ErrorCode.REGISTRATION_DENIED, 'a credential of alice for another key');

  // No existence oracle: an unknown user, an unknown device of a known user, a known device with a wrong key: one answer.
  const answers = await Promise.all([
    refusal(a0, opts(device('nobody-here', 'phone')), src),
    refusal(a0, opts(device('alice', 'tablet')), src),
    refusal(a0, opts(stolenId), src),
  ]);
  t.same(answers.map((a) => a.code), [ErrorCode.UNKNOWN_DEVICE, ErrorCode.UNKNOWN_DEVICE, ErrorCode.UNKNOWN_DEVICE]);
  t.equal(new Set(answers.map((a) => a.message)).size, 1, 'the same message for all three');

  // alice still owns her account: her device connects, and mallory's attempts added nothing.
  const s = await connect(t, a1, alice, src);
  const list = await request(s, 'devices.list');
  t.same(list.ok && (list.data as { devices: Array<{ device: string }> }).devices.map((d) => d.device), ['phone'], 'alice has one device');
});

t.test('credentials are checked as the JOSE guidance says', async (t) => {
  const src = newSource();
  const d = device('carol', 'phone');
  const key = d.identity.publicKey;
  const other = await joseKeyPair('EdDSA', { crv: 'Ed25519' });
  const now = Math.floor(Date.now() / 1000);
  const bad: Array<[string, Registration]> = [
    ['signed by an unknown key', { credential: await credential({ user: 'carol', device: 'phone', key, signWith: other.privateKey }) }],
    ['an unknown kid', { credential: await credential({ user: 'carol', device: 'phone', key, kid: 'k9' }) }],
    ['alg none', { credential: new UnsecuredJWT({ device: 'phone', cnf: { jwk: { kty: 'OKP', crv: 'X25519', x: toBase64Url(key) } } }).setIssuer(ISSUER).setAudience('gravitas').setSubject('carol').setJti('j1').setIssuedAt().setExpirationTime('5m').encode() }],
    ['HS256 keyed with the public JWK (algorithm confusion)', { credential: await new SignJWT({ device: 'phone', cnf: { jwk: { kty: 'OKP', crv: 'X25519', x: toBase64Url(key) } } }).setProtectedHeader({ alg: 'HS256', kid: 'k1' }).setIssuer(ISSUER).setAudience('gravitas').setSubject('carol').setJti('j2').setIssuedAt().setExpirationTime('5m').sign(new TextEncoder().encode(JSON.stringify(jwk))) }],
    ['another issuer', { credential: await credential({ user: 'carol', device: 'phone', key, iss: 'https://evil.example' }) }],
    ['another audience', { credential: await credential({ user: 'carol', device: 'phone', key, aud: 'someone-else' }) }],
    ['expired', { credential: await credential({ user: 'carol', device: 'phone', key, iat: now - 600, ttl: now - 300 }) }],
    ['lives longer than allowed', { credential: await credential({ user: 'carol', device: 'phone', key, ttl: '2h' }) }],
    ['for another device', { credential: await credential({ user: 'carol', device: 'tablet', key }) }],
    ['not a JWT', { credential: 'not.a.jwt' }],
  ];
  for (const [what, registration] of bad) t.equal(await codeOf(cells[bad.indexOf(bad.find(([w]) => w === what)!) % 4]!, opts(d, { registration }), src), ErrorCode.REGISTRATION_DENIED, what);
  // After those failures this source is slowed down; a good credential from another source still works.
  await register(t, b1, d, newSource());
});

t.test('failed registrations back off per source; other sources are unaffected', async (t) => {
  const noisy = newSource();
  const d = device('dave', 'phone');
  const forged = async (): Promise<Registration> => ({ credential: await credential({ user: 'dave', device: 'phone', key: generateKeyPair().publicKey }) });
  const codes: string[] = [];
  for (let i = 0; i < 14; i++) codes.push(await codeOf(a0, opts(d, { registration: await forged() }), noisy));
  t.ok(codes.slice(0, 10).every((c) => c === ErrorCode.REGISTRATION_DENIED), 'the first failures are answered as such');
  t.ok(codes.slice(10).every((c) => c === ErrorCode.RATE_LIMITED), `then the source is refused before any check (${codes.slice(10).join(', ')})`);
  const good = { registration: { credential: await credential({ user: 'dave', device: 'phone', key: d.identity.publicKey }) } };
  t.equal(await codeOf(a0, opts(d, good), noisy), ErrorCode.RATE_LIMITED, 'even a good proof waits, from that source');
  t.equal(await codeOf(a0, opts(d, good), newSource()), 'ok', 'another source registers at once');
});

t.test('linking: an existing device approves a new one, the others are told, an approval works once', async (t) => {
  const src = newSource();
  const phone = device('erin', 'phone');
  const ps = await register(t, a0, phone, src);
  const tablet = device('erin', 'tablet');
  const approval = await approve(ps, tablet);

  const stranger = device('erin', 'watch');
  t.equal(await codeOf(b0, opts(stranger, { registration: { link: approval } }), src), ErrorCode.REGISTRATION_DENIED, 'the approval names another device and key');
  const forged = Uint8Array.from(approval);
  forged[forged.length - 1]! ^= 1;
  t.equal(await codeOf(b0, opts(tablet, { registration: { link: forged } }), src), ErrorCode.REGISTRATION_DENIED, 'a changed approval');
  const ts = await connect(t, b1, tablet, src, { registration: { link: approval } });
  t.ok(ts, 'the approved tablet registers on another node');

  const notice = await until(ps, (m): m is Msg => isMsg(m) && m.sys === 'device-added');
  t.match(notice, { from: '_account', about: 'tablet', to: 'erin' }, 'the phone is told, by a system sender');

  // Removed, the tablet cannot come back with the same approval.
  t.ok((await request(ps, 'devices.remove', { device: 'tablet' })).ok);
  t.equal(await codeOf(a1, opts(tablet, { registration: { link: approval } }), src), ErrorCode.REGISTRATION_DENIED, 'an approval is spent once');

  // An approval from a device removed since is void.
  const watch = device('erin', 'watch');
  const t2 = device('erin', 'tablet2');
  const t2s = await connect(t, a1, t2, src, { registration: { link: await approve(ps, t2) } });
  const fromTablet2 = await approve(t2s, watch);
  t.ok((await request(ps, 'devices.remove', { device: 'tablet2' })).ok);
  t.equal(await codeOf(b0, opts(watch, { registration: { link: fromTablet2 } }), src), ErrorCode.REGISTRATION_DENIED, 'approved by a device that was removed since');
});

t.test('removal revokes at once: the removed device\'s tickets and key are refused on every cell', async (t) => {
  const src = newSource();
  const phone = device('frank', 'phone');
  const ps = await register(t, a0, phone, src);
  const tablet = device('frank', 'tablet');
  const approval = await approve(ps, tablet);
  // Tickets of the tablet, one per cell to try (each is single use); the last session stays open, on node b.
  const tickets: ResumptionState[] = [];
  let live: RawSession = await connect(t, b0, tablet, src, { registration: { link: approval } });
  for (const address of [a1, b1, a0, b0]) {
    tickets.push(live.result.resumption!);
    live = await connect(t, address, tablet, src);
  }
  const res = await request(ps, 'devices.remove', { device: 'tablet' });
  t.ok(res.ok, 'devices.remove answered');
  // From the answer on, on every cell of both nodes.
  const resumed = await Promise.all(cells.map((address, i) => codeOf(address, opts(tablet, { resume: tickets[i]! }), src)));
  t.same(resumed, cells.map(() => ErrorCode.DEVICE_REVOKED), 'each ticket refused, on each cell');
  const full = await Promise.all(cells.map((address) => codeOf(address, opts(tablet), src)));
  t.same(full, cells.map(() => ErrorCode.UNKNOWN_DEVICE), 'its key refused, on each cell');
  // The live session on the other node ends with the code (how fast is a benchmark figure).
  const bye = await until(live, (m): m is Extract<ServerMessage, { t: 'bye' }> => m.t === 'bye');
  t.equal(bye.code, ErrorCode.DEVICE_REVOKED, 'its live session is told why');
  t.ok(await live.conn.serverClosed(), 'and closed');
  const notice = await until(ps, (m): m is Msg => isMsg(m) && m.sys === 'device-removed');
  t.equal(notice.about, 'tablet', 'the phone is told which device left');
});

t.test('an operator suspends an account: sessions end, every cell refuses it, messages to it are undeliverable', async (t) => {
  const src = newSource();
  const gina = device('gina', 'phone');
  const gs = await register(t, b1, gina, src);
  const ticket = gs.result.resumption!;
  const helen = device('helen', 'phone');
  const hs = await register(t, a0, helen, src);
  const admin = nodes[0]!.adminUrl;
  const post = (path: string, token = ADMIN_TOKEN): Promise<Response> => fetch(`${admin}${path}`, { method: 'POST', headers: { authorization: `Bearer ${token}` } });

  // helen's cell (node a) has gina's devices cached from a first message: the suspension must reach that cache too.
  const [first] = await Promise.all([sendTo(hs, 'gina', 'to-gina-0'), receive(gs, 'to-gina-0')]);
  t.equal(first.s, 'delivered', 'before: helen reaches gina across nodes');

  t.equal((await post('/admin/accounts/gina/suspend', 'wrong')).status, 401, 'not without the admin token');
  t.equal((await post('/admin/accounts/nobody-at-all/suspend')).status, 404, 'no such account');
  const r = await post('/admin/accounts/gina/suspend');
  t.equal(r.status, 200);
  t.same(await r.json(), { user: 'gina', suspended: true });
  const bye = await until(gs, (m): m is Extract<ServerMessage, { t: 'bye' }> => m.t === 'bye');
  t.equal(bye.code, ErrorCode.ACCOUNT_SUSPENDED, 'the live session ends with the code');
  t.same(await Promise.all(cells.map((a) => codeOf(a, opts(gina), src))), cells.map(() => ErrorCode.ACCOUNT_SUSPENDED), 'its device is refused on every cell');
  t.equal(await codeOf(a1, opts(gina, { resume: ticket }), src), ErrorCode.ACCOUNT_SUSPENDED, 'and its ticket');
  const newcomer = device('gina', 'tablet');
  const cred = { registration: { credential: await credential({ user: 'gina', device: 'tablet', key: newcomer.identity.publicKey }) } };
  t.equal(await codeOf(b0, opts(newcomer, cred), src), ErrorCode.ACCOUNT_SUSPENDED, 'it cannot register a device, even with a valid credential');
  hs.conn.sendSealed(hs.channel, { t: 'send', id: 'to-gina-1', to: 'gina', text: 'hi' });
  const st = await until(hs, (m): m is Extract<ServerMessage, { t: 'status' }> => m.t === 'status' && m.id === 'to-gina-1');
  t.same([st.s, st.code], ['failed', ErrorCode.UNDELIVERABLE], 'messages to it are undeliverable');
  const info = await (await fetch(`${admin}/admin/accounts/gina`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })).json() as { suspendedAt?: number; devices: unknown[] };
  t.ok(info.suspendedAt !== undefined && info.devices.length === 1, 'the account shows as suspended');

  t.equal((await post('/admin/accounts/gina/unsuspend')).status, 200);
  const back = await connect(t, a1, gina, src);
  t.pass('lifted: the device connects again');
  t.equal(await codeOf(b0, opts(gina, { resume: ticket }), src), ErrorCode.TICKET_REPLAYED, 'the ticket refused during the suspension was spent by that refusal: it does not work now, on another node');
  const [again] = await Promise.all([sendTo(hs, 'gina', 'to-gina-2'), receive(back, 'to-gina-2')]);
  t.equal(again.s, 'delivered', 'messages reach it again: no cell kept the suspended (empty) device list');
});

t.test('system senders and ids are reserved', async (t) => {
  const src = newSource();
  for (const [user, dev] of [['_pub-acme', 'phone'], ['_account', 'x'], ['ivan', '_system']] as const) {
    const d = device(user, dev);
    const cred = await credential({ user, device: dev, key: d.identity.publicKey });
    t.equal(await codeOf(a0, opts(d, { registration: { credential: cred } }), src), ErrorCode.REGISTRATION_DENIED, `${user}/${dev} cannot be registered`);
  }
  const ivan = device('ivan', 'phone');
  const s = await register(t, b0, ivan, src);
  s.conn.sendSealed(s.channel, { t: 'send', id: '_c-campaign1', to: 'ivan', text: 'pre-empting a campaign' });
  const st = await until(s, (m): m is Extract<ServerMessage, { t: 'status' }> => m.t === 'status');
  t.same([st.id, st.s, st.code], ['_c-campaign1', 'failed', ErrorCode.BAD_MESSAGE], 'a client cannot take a system message id');
});

t.test('read receipts need the delivery proof of a message delivered to the reader', async (t) => {
  const src = newSource();
  const jane = device('jane', 'phone');
  const js = await register(t, a0, jane, src);
  const kim = device('kim', 'phone');
  const ks = await register(t, b1, kim, src);
  const lou = device('lou', 'phone');
  const ls = await register(t, a1, lou, src);
  js.conn.sendSealed(js.channel, { t: 'send', id: 'j1', to: 'kim', text: 'hello kim' });
  const got = await until(ks, isMsg);
  ks.conn.sendSealed(ks.channel, { t: 'ack', id: got.id, from: got.from });
  t.equal(got.rk?.length, 12, 'the message carries a delivery proof');

  ls.conn.sendSealed(ls.channel, { t: 'read', id: 'j1', from: 'jane', rk: got.rk });
  const e1 = await until(ls, (m): m is Extract<ServerMessage, { t: 'error' }> => m.t === 'error');
  t.equal(e1.code, ErrorCode.NOT_ALLOWED, "another user cannot use kim's proof");
  ks.conn.sendSealed(ks.channel, { t: 'read', id: 'j1', from: 'jane', rk: new Uint8Array(12) });
  const e2 = await until(ks, (m): m is Extract<ServerMessage, { t: 'error' }> => m.t === 'error');
  t.equal(e2.code, ErrorCode.NOT_ALLOWED, 'a forged proof is refused');
  ks.conn.sendSealed(ks.channel, { t: 'read', id: 'j-unsent', from: 'jane', rk: got.rk });
  t.equal((await until(ks, (m): m is Extract<ServerMessage, { t: 'error' }> => m.t === 'error')).code, ErrorCode.NOT_ALLOWED, 'a proof for another message is refused');
  ks.conn.sendSealed(ks.channel, { t: 'read', id: 'j1', from: 'jane', rk: got.rk });
  const rcpt = await until(js, (m): m is Extract<ServerMessage, { t: 'rcpt' }> => m.t === 'rcpt' && m.s === 'read');
  t.match(rcpt, { ref: 'j1', by: 'kim' }, 'with the proof, jane hears kim read it');
});

t.test('floods of reads and requests are cut with codes while a neighbour keeps chatting', async (t) => {
  const src = newSource();
  const max = device('max', 'phone');
  const ms = await register(t, a0, max, src);
  const nina = device('nina', 'phone');
  const ns = await register(t, a0, nina, src);
  const [n1, n2] = [device('olga', 'phone'), device('pete', 'phone')];
  const os = await register(t, a0, n1, newSource());
  const psx = await register(t, a0, n2, newSource());

  ms.conn.sendSealed(ms.channel, { t: 'send', id: 'm1', to: 'nina', text: 'read me' });
  const got = await until(ns, isMsg);
  // Nina reads the one message she got, again and again: each read taken would be a receipt item for max.
  const reader = ns;
  const READS = 3000;
  const started = Date.now();
  for (let i = 0; i < READS; i++) reader.conn.sendSealed(reader.channel, { t: 'read', id: 'm1', from: 'max', rk: got.rk });
  reader.conn.sendSealed(reader.channel, { t: 'ping', n: 99 });
  let limited = 0;
  await until(reader, (m): m is Extract<ServerMessage, { t: 'pong' }> => {
    if (m.t === 'error' && m.code === ErrorCode.RATE_LIMITED) limited++;
    return m.t === 'pong';
  }, 30_000);
  const elapsed = (Date.now() - started) / 1000;
  t.ok(limited > READS / 2, `most reads were refused with RATE_LIMITED (${limited} of ${READS})`);
  t.ok(READS - limited <= 200 + 50 * (elapsed + 1), `reads taken: ${READS - limited}, within burst 200 + 50/s over ${elapsed.toFixed(1)} s`);

  // Requests: the burst, then RATE_LIMITED.
  for (let i = 0; i < 300; i++) reader.conn.sendSealed(reader.channel, { t: 'req', rid: 10_000 + i, op: 'prefs.get', a: {} });
  let refused = 0;
  let answered = 0;
  await until(reader, (m): m is Extract<ServerMessage, { t: 'res' }> => {
    if (m.t !== 'res') return false;
    answered++;
    if (!m.ok && m.code === ErrorCode.RATE_LIMITED) refused++;
    return answered === 300;
  }, 30_000);
  t.ok(refused >= 150, `requests past the burst refused (${refused} of 300)`);

  // Meanwhile a neighbour on the same cell chats as usual.
  os.conn.sendSealed(os.channel, { t: 'send', id: 'o1', to: 'pete', text: 'still fine?' });
  const m = await until(psx, isMsg);
  t.equal(m.text, 'still fine?', 'the neighbour is unaffected');
});

t.test("an account's devices share one message budget across cells and nodes", async (t) => {
  const src = newSource();
  const phone = device('quinn', 'phone');
  const ps = await register(t, a0, phone, src);
  const tablet = device('quinn', 'tablet');
  const approval = await approve(ps, tablet);
  const ts = await connect(t, b1, tablet, src, { registration: { link: approval } });
  await register(t, a1, device('rita', 'phone'), src);
  const PER_DEVICE = 400;
  const tally = async (s: RawSession, prefix: string): Promise<{ ok: number; limited: number }> => {
    for (let i = 0; i < PER_DEVICE; i++) s.conn.sendSealed(s.channel, { t: 'send', id: `${prefix}${i}`, to: 'rita', text: 'x' });
    let ok = 0;
    let limited = 0;
    await until(s, (m): m is Extract<ServerMessage, { t: 'status' }> => {
      if (m.t !== 'status' || !m.id.startsWith(prefix)) return false;
      if (m.s === 'failed' && m.code === ErrorCode.RATE_LIMITED) limited++;
      else ok++;
      return ok + limited === PER_DEVICE;
    }, 60_000);
    return { ok, limited };
  };
  const [p, q] = await Promise.all([tally(ps, 'p'), tally(ts, 't')]);
  // accountMsgRatePerSec 50 → 500 per 10 s window: each cell's free share is 500 / (2 × 8) = 31, the shared rest (252) is leased.
  const accepted = p.ok + q.ok;
  t.ok(p.limited > 0 && q.limited > 0, `both devices were refused some (${p.limited}, ${q.limited}), though each is far under its session rate`);
  t.ok(p.ok > 31 || q.ok > 31, 'beyond the free share, budget was leased from the shared pool');
  t.ok(accepted <= 2 * (31 + 31 + 252), `together within the account's budget (${accepted} accepted; at most two windows)`);
});

t.test('a message costs its fan-out: a burst to a group is cut after a few, a neighbour keeps chatting', async (t) => {
  // Its own cluster (prefix) with small fan-out limits, so a group of 21 shows the weighting quickly.
  const fan = await startNode(
    validateConfig(nodeConfig({
      natsUrl: nats.url, nodeId: 'fan', dataDir: join(dir.path, 'fan'), keys, cells: 1,
      extra: { prefix: 'fan', limits: { maxGroupSize: 32, fanoutBurst: 64, fanoutRatePerSec: 21, msgRatePerSec: 1000, msgBurst: 1000 } },
    })),
    () => undefined,
  );
  t.teardown(() => fan.stop());
  const [cell] = fan.clientAddresses as [string];
  const src = newSource();
  const open = (d: Device): Promise<RawSession> => connect(t, cell, d, src, { registration: '' });
  const owner = await open(device('gus', 'phone'));
  const members = Array.from({ length: 20 }, (_, i) => device(`member${i}`, 'phone'));
  const sessions = await Promise.all(members.map(open));
  const created = await request(owner, 'groups.create', { name: 'big', members: members.map((m) => m.user) });
  const g = (created as { data: { g: string } }).data.g;
  for (const s of sessions) t.ok((await request(s, 'groups.accept', { g })).ok, 'accepted');
  const [x, y] = await Promise.all([open(device('xena', 'phone')), open(device('yuri', 'phone'))]);

  const N = 40;
  for (let i = 0; i < N; i++) owner.conn.sendSealed(owner.channel, { t: 'send', id: `burst${i}`, g, text: `to all ${i}` });
  let stored = 0;
  let limited = 0;
  await until(owner, (m): m is Extract<ServerMessage, { t: 'status' }> => {
    if (m.t !== 'status' || !m.id.startsWith('burst')) return false;
    if (m.s === 'failed' && m.code === ErrorCode.RATE_LIMITED) limited++;
    else if (m.s === 'stored') stored++;
    return stored + limited === N;
  }, 30_000);
  // Each message costs 21 (the group's members) of a burst of 64 refilled at 21/s: 3 at once, then about one a second.
  t.ok(stored >= 3 && stored <= 6, `${stored} of ${N} stored`);
  t.equal(limited, N - stored, 'the rest refused with RATE_LIMITED (the SDK would send them again later)');
  x.conn.sendSealed(x.channel, { t: 'send', id: 'x1', to: 'yuri', text: 'hi yuri' });
  t.equal((await until(y, isMsg)).text, 'hi yuri', 'a neighbour on the same cell chats as usual');
});

t.test('a device that connects again replaces its session: SESSION_REPLACED on the same cell and from another node', async (t) => {
  const src = newSource();
  const sam = device('sam', 'phone');
  const first = await register(t, a0, sam, src);
  const second = await connect(t, a0, sam, src);
  t.equal((await until(first, isBye)).code, ErrorCode.SESSION_REPLACED, 'the older session on the same cell is told why');
  t.ok(await first.conn.serverClosed(), 'and closed');
  const third = await connect(t, b1, sam, src);
  t.equal((await until(second, isBye)).code, ErrorCode.SESSION_REPLACED, 'the session on node a is told when the device connects on node b');
  t.ok(await second.conn.serverClosed(), 'and closed');
  t.equal(await pingOrBye(third, 7), 'pong', 'the newest session lives on');
  // One session per device: a message reaches the newest only.
  const tom = await register(t, a1, device('tom', 'phone'), newSource());
  const [st] = await Promise.all([sendTo(tom, 'sam', 'to-sam-1'), receive(third, 'to-sam-1')]);
  t.equal(st.s, 'delivered');
});

t.test('device lists are dropped on every cell at once: a device added or removed on node a is seen by a sender on node b', async (t) => {
  const src = newSource();
  const phone = device('uma', 'phone');
  const ps = await register(t, b0, phone, src);
  const vic = await register(t, b1, device('vic', 'phone'), src);
  // vic's cell (b1) caches uma's devices with this first message: [phone].
  const [s1] = await Promise.all([sendTo(vic, 'uma', 'v1'), receive(ps, 'v1')]);
  t.equal(s1.s, 'delivered', 'the phone got the first message');

  const tablet = device('uma', 'tablet');
  const ts = await connect(t, a0, tablet, src, { registration: { link: await approve(ps, tablet) } });
  // At once (no wait for the cache's 5 s TTL): the next message fans out to both devices.
  const [s2, onPhone, onTablet] = await Promise.all([sendTo(vic, 'uma', 'v2'), receive(ps, 'v2'), receive(ts, 'v2')]);
  t.equal(onTablet.id, 'v2', 'the tablet, added on node a a moment ago, gets the next message sent through node b');
  t.equal(onPhone.id, 'v2');
  // `stored` is as good here: the sender's directory cache (2 s) may not know where the tablet is yet; it then gets it from its mailbox.
  t.ok(s2.s === 'delivered' || s2.s === 'stored', `settled for both devices (${s2.s})`);

  t.ok((await request(ps, 'devices.remove', { device: 'tablet' })).ok, 'the phone removes the tablet');
  t.equal((await until(ts, isBye)).code, ErrorCode.DEVICE_REVOKED);
  // A cell that still listed the tablet would hold the message for it (offline) and answer `stored`.
  const [s3] = await Promise.all([sendTo(vic, 'uma', 'v3'), receive(ps, 'v3')]);
  t.equal(s3.s, 'delivered', 'the next message is for the phone alone: delivered, nothing kept for the removed tablet');
});

t.test('a session whose handshake read the account just before a removal is refused when it registers after the broadcast', async (t) => {
  const src = newSource();
  const phone = device('wes', 'phone');
  const ps = await register(t, a1, phone, src);
  const tablet = device('wes', 'tablet');
  const live = await connect(t, b0, tablet, src, { registration: { link: await approve(ps, tablet) } });
  // A second handshake of the tablet on the same cell, stopped after the server's welcome: its account check passed.
  const pending = await halfHandshake(t, b0, opts(tablet), src);
  t.ok((await request(ps, 'devices.remove', { device: 'tablet' })).ok, 'removed from node a');
  t.equal((await until(live, isBye)).code, ErrorCode.DEVICE_REVOKED, 'the broadcast has passed the cell: its live session there ended');
  const late = pending.finish();
  t.equal(await pingOrBye(late, 1), ErrorCode.DEVICE_REVOKED, 'the late session is refused by the memory of recent revocations, not opened');
  t.ok(await late.conn.serverClosed(), 'and closed');
});

t.test('tickets, credentials and link approvals are spent once across cells and nodes, whatever happens after', async (t) => {
  const src = newSource();
  const xia = device('xia', 'phone');
  const cred = await credential({ user: 'xia', device: 'phone', key: xia.identity.publicKey });
  const s0 = await connect(t, a0, xia, src, { registration: { credential: cred } });
  const t0 = s0.result.resumption!;
  s0.conn.destroy();
  const s1 = await connect(t, b1, xia, src, { resume: t0 });
  t.ok(s1.result.welcome.resumed, 'the ticket from node a resumes on node b');
  t.same(
    await Promise.all([a0, a1, b0, b1].map((address) => codeOf(address, opts(xia, { resume: t0 }), src))),
    [ErrorCode.TICKET_REPLAYED, ErrorCode.TICKET_REPLAYED, ErrorCode.TICKET_REPLAYED, ErrorCode.TICKET_REPLAYED],
    'then it is refused on every cell of both nodes, the one that issued it included',
  );
  // A resumption that never finishes (the client vanished after the welcome) has spent its ticket all the same.
  const t1 = s1.result.resumption!;
  const half = await halfHandshake(t, a1, opts(xia, { resume: t1 }), src);
  half.conn.destroy();
  t.equal(await codeOf(b0, opts(xia, { resume: t1 }), src), ErrorCode.TICKET_REPLAYED, 'a ticket sent once is spent, even if that handshake never finished');

  // The credential's jti: the device removes itself, and the captured credential cannot bring it back, on another node.
  s1.conn.sendSealed(s1.channel, { t: 'req', rid: ++rids, op: 'devices.remove', a: { device: 'phone' } });
  t.equal((await until(s1, isBye)).code, ErrorCode.DEVICE_REVOKED, 'the phone removed itself: its session ends (before the answer could be sent)');
  t.equal(await codeOf(b0, opts(xia, { registration: { credential: cred } }), src), ErrorCode.REGISTRATION_DENIED, 'a credential is spent once, cluster-wide');
  t.equal(await codeOf(a1, opts(xia, { registration: { credential: await credential({ user: 'xia', device: 'phone', key: xia.identity.publicKey }) } }), src), 'ok', 'a fresh one registers it again');
});

t.test('BUSY: at most limits.maxHandshakesInFlight handshakes are worked on at once per cell; a finished one frees its slot', async (t) => {
  // The far node: its key set is held until released, so credential handshakes wait on it, in progress.
  const cell = farCell;
  const src = newSource();
  const devices = Array.from({ length: 4 }, (_, i) => device(`cap${i}`, 'phone'));
  const hello = async (d: Device): Promise<Partial<ClientHandshakeOptions>> => ({ registration: { credential: await credential({ user: d.user, device: d.device, key: d.identity.publicKey }) } });
  const answers: Array<{ code: string; message: string }> = [];
  const all = Promise.all(devices.map(async (d) => {
    const a = await refusal(cell, opts(d, await hello(d)), src);
    answers.push(a);
    return a;
  }));
  // Two are in progress (waiting on the key set), the other two refused at once, before any work.
  await check('two first flights answered while two wait on the key set', () => answers.length >= 2, { timeout: 4000, interval: 20 }).catch(() => undefined);
  t.same(answers.slice(0, 2).map((a) => a.code), [ErrorCode.BUSY, ErrorCode.BUSY], 'beyond two in progress: BUSY');
  t.match(answers[0]?.message ?? '', /too many handshakes in progress/, 'refused by the cap (not by the key set timing out)');
  await check('the admitted handshakes asked for the key set', () => heldJwks.length >= 1, { timeout: 4000, interval: 20 }).catch(() => undefined);
  t.ok(heldJwks.length >= 1, 'the two admitted handshakes are waiting on the key set (jose shares one fetch)');
  jwksReleased = true;
  for (const res of heldJwks.splice(0)) res.end(JSON.stringify({ keys: [jwk] }));
  const codes = (await all).map((a) => a.code).sort();
  t.same(codes, ['BUSY', 'BUSY', 'ok', 'ok'], 'the two in progress complete once the key set answers');
  const next = device('cap9', 'phone');
  t.equal(await codeOf(cell, opts(next, await hello(next)), src), 'ok', 'the slots are free again: the next hello is worked on and registers');
});

/** A TCP forwarder to the nats-server that the test can cut (every connection dropped, new ones refused) and heal: a node behind it is cut off from NATS. */
async function natsLink(t: Test, target: string): Promise<{ url: string; cut: () => void; heal: () => void }> {
  const { port: natsPort } = new URL(target);
  const sockets = new Set<Socket>();
  let down = false;
  const server = createNetServer((client) => {
    if (down) return void client.destroy();
    const upstream = netConnect(Number(natsPort), '127.0.0.1');
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('error', () => undefined);
      s.on('close', () => {
        sockets.delete(s);
        client.destroy();
        upstream.destroy();
      });
    }
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => {
    for (const s of sockets) s.destroy();
    server.close();
  });
  return {
    url: `nats://127.0.0.1:${(server.address() as AddressInfo).port}`,
    cut: () => {
      down = true;
      for (const s of sockets) s.destroy();
    },
    heal: () => void (down = false),
  };
}


t.test('ticket key rotation across nodes: a node with a new key takes tickets of the previous one, spent once across the rotation', async (t) => {
  const src = newSource();
  const ada = device('ada', 'phone');
  const s0 = await register(t, a0, ada, src);
  const oldTicket = s0.result.resumption!;
  t.equal(oldTicket.ticket[0], keys.ticketKeys[0]!.id, 'node a seals under the cluster\'s key');
  const s1 = await connect(t, farCell, ada, src, { resume: oldTicket });
  t.ok(s1.result.welcome.resumed, 'the rotated node resumes a ticket sealed under its previous key');
  const newTicket = s1.result.resumption!;
  t.equal(newTicket.ticket[0], NEW_TICKET_KEY.id, 'and seals its own under the new key');
  t.equal(await codeOf(a1, opts(ada, { resume: newTicket }), src), ErrorCode.TICKET_INVALID, 'a node not yet rotated cannot open it (operations.md: the SDK falls back to a full handshake)');
  t.equal(await codeOf(b0, opts(ada, { resume: oldTicket }), src), ErrorCode.TICKET_REPLAYED, 'the old ticket, spent on the rotated node, is refused on the others');
  const s2 = await connect(t, farCell, ada, src, { resume: newTicket });
  t.ok(s2.result.welcome.resumed, 'the new ticket resumes where its key is known (a ticket that failed to open was not spent)');
});

t.test('a cell cut off from NATS while a device was removed ends that device\'s session when it reconnects', async (t) => {
  const src = newSource();
  const phone = device('zoe', 'phone');
  const ps = await register(t, a0, phone, src);
  const tablet = device('zoe', 'tablet');
  const ts = await connect(t, farCell, tablet, src, { registration: { link: await approve(ps, tablet) } });

  link.cut();
  t.ok((await request(ps, 'devices.remove', { device: 'tablet' })).ok, 'the tablet is removed on node a while its cell is cut off');
  // The broadcast cannot reach the far cell: the tablet's session is still open there (the fault had its effect).
  t.equal(await pingOrBye(ts, 1), 'pong', 'the cut-off cell never heard of the removal: the session still answers');
  link.heal();
  t.equal((await until(ts, isBye, 30_000)).code, ErrorCode.DEVICE_REVOKED, 'back on NATS, the cell re-checks its sessions: the removed device\'s session ends');
  t.ok(await ts.conn.serverClosed(), 'and closed');
});
