import t, { type Test } from 'tap';
import {
  CAPABILITIES, checkFinish, ClientHandshake, decodeClientHandshake, decodeClientMessage, decodeServerHandshake, decodeServerMessage, ErrorCode, generateKeyPair,
  HandshakeError, HELLO_MAX_SKEW_MS, naclSuite, nativeSuite, pack, PROTOCOL_VERSION, ProtocolError, random, readHello, readResume, unpack, writeWelcome,
  type ClientHandshakeOptions, type ClientHandshakeResult, type DhSuite, type Hello, type KeyPair, type PendingHandshake, type Resume, type ResumptionState, type ServerHandshakeContext,
  type SecureChannel, type ServerHandshakeResult, type TicketKeyring, type Welcome,
} from '@gravitas/protocol';

const NOW = 1_700_000_000_000;
const LIFETIME = 24 * 3600_000;
const INFO = { session: 'c0-1', cell: 'node-a.c0', node: 'node-a' };
const SERVER = generateKeyPair();
const ALICE = generateKeyPair();
const RING: TicketKeyring = { current: { id: 1, key: random(32) } };
const SUITES: DhSuite[] = [nativeSuite, naclSuite];
const enc = new TextEncoder();
const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    if (err instanceof HandshakeError) return err.code;
    return err instanceof ProtocolError ? `${err.name}:${err.code}` : `not a ProtocolError: ${String(err)}`;
  }
  return undefined;
}

function flip(b: Uint8Array, bit: number): Uint8Array {
  const c = Uint8Array.from(b);
  c[bit >> 3] = c[bit >> 3]! ^ (1 << (bit & 7));
  return c;
}

/** A suite whose generate() always returns the same key: makes a side deterministic. */
function fixedSuite(base: DhSuite, ephemeralSecret: Uint8Array): DhSuite {
  return { name: base.name, generate: () => base.fromSecret(ephemeralSecret), fromSecret: (sk) => base.fromSecret(sk) };
}

function serverCtx(over: Partial<ServerHandshakeContext> = {}): ServerHandshakeContext {
  const suite = over.suite ?? nativeSuite;
  return { staticKey: suite.fromSecret(SERVER.secretKey), ticketKeys: RING, ticketLifetimeMs: LIFETIME, suite, now: () => NOW, ...over };
}

interface ClientSetup {
  suite?: DhSuite;
  now?: number;
  identity?: KeyPair;
  user?: string;
  device?: string;
  resume?: ResumptionState;
  serverPublicKey?: Uint8Array;
  registration?: string;
  offer?: ClientHandshakeOptions['offer'];
}

function client(o: ClientSetup = {}): ClientHandshake {
  return new ClientHandshake({
    serverPublicKey: o.serverPublicKey ?? SERVER.publicKey,
    identity: o.identity ?? ALICE,
    user: o.user ?? 'alice',
    device: o.device ?? 'phone',
    ...(o.registration !== undefined && { registration: o.registration }),
    ...(o.resume && { resume: o.resume }),
    ...(o.suite && { suite: o.suite }),
    ...(o.offer !== undefined && { offer: o.offer }),
    now: () => o.now ?? NOW,
  });
}

/** The first flight as the server sees it: through msgpack and the decoder. */
function wireFirst(c: ClientHandshake, cookie?: Uint8Array): Hello | Resume {
  return decodeClientHandshake(unpack(pack(c.hello(cookie))));
}

function wireWelcome(w: Welcome): Welcome {
  const m = decodeServerHandshake(unpack(pack(w)));
  if (m.t !== 'welcome') throw new Error('expected welcome');
  return m;
}

function read(m: Hello | Resume, ctx: ServerHandshakeContext): PendingHandshake {
  return m.t === 'hello' ? readHello(m, ctx) : readResume(m, ctx);
}

interface Run { c: ClientHandshake; first: Hello | Resume; pending: PendingHandshake; server: ServerHandshakeResult; result: ClientHandshakeResult }

function run(o: ClientSetup = {}, ctx: ServerHandshakeContext = serverCtx()): Run {
  const c = client(o);
  const first = wireFirst(c);
  const pending = read(first, ctx);
  const server = writeWelcome(pending, INFO, ctx);
  const result = c.complete(wireWelcome(server.welcome));
  return { c, first, pending, server, result };
}

/** Key confirmation and one message each way over the resulting channels. */
function confirm(t: Test, r: Run): void {
  const finishFrame = r.result.channel.seal(pack(r.result.finish));
  const fin = decodeClientMessage(unpack(r.server.channel.open(finishFrame)));
  t.equal(fin.t, 'finish');
  if (fin.t === 'finish') t.doesNotThrow(() => checkFinish(r.server.expectedFinish, fin.h), 'finish matches the server transcript');
  const up = decodeClientMessage(unpack(r.server.channel.open(r.result.channel.seal(pack({ t: 'send', id: 'm1', to: 'bob', text: 'hi' }))))) as { text: string };
  t.equal(up.text, 'hi');
  const down = decodeServerMessage(unpack(r.result.channel.open(r.server.channel.seal(pack({ t: 'pong', n: 9 }))))) as { n: number };
  t.equal(down.n, 9);
}

/** The channel's keys (private fields, read for comparison only). */
function keysOf(ch: SecureChannel): { send: string; recv: string } {
  const k = ch as unknown as { sendKey: Uint8Array; recvKey: Uint8Array };
  return { send: hex(k.sendKey), recv: hex(k.recvKey) };
}

/** True if the client and server channels share their keys. */
function sameKeys(a: ClientHandshakeResult, b: ServerHandshakeResult): boolean {
  const x = keysOf(a.channel);
  const y = keysOf(b.channel);
  return x.send === y.recv && x.recv === y.send;
}

function resumption(r: Run): ResumptionState {
  if (!r.result.resumption) throw new Error('no ticket issued');
  return r.result.resumption;
}

// ---------------------------------------------------------------------------------

for (const cs of SUITES) {
  for (const ss of SUITES) {
    t.test(`full handshake: client ${cs.name}, server ${ss.name}`, async (t) => {
      const r = run({ suite: cs, registration: '' }, serverCtx({ suite: ss }));
      t.equal(r.first.t, 'hello');
      t.equal(r.first.v, PROTOCOL_VERSION);
      t.equal(r.pending.kind, 'full');
      t.equal(r.pending.user, 'alice');
      t.equal(r.pending.device, 'phone');
      t.equal(r.pending.registration, '', 'the registration token reaches the server');
      t.equal(hex(r.pending.clientStatic), hex(ALICE.publicKey), 'the server learns the client static key');
      t.equal(hex(r.pending.clientEphemeral), hex(r.first.e));
      t.equal(r.pending.ticket, undefined);
      t.strictSame(r.result.welcome, { ...INFO, serverTime: NOW, resumed: false, ticket: r.result.welcome.ticket, ticketExpires: NOW + LIFETIME, ver: 1, caps: [...CAPABILITIES] });
      t.equal(r.result.resumption?.expiresAt, NOW + LIFETIME);
      t.equal(hex(r.result.finish.h), hex(r.server.expectedFinish), 'both sides end with the same transcript hash');
      confirm(t, r);
    });

    t.test(`resumption: client ${cs.name}, server ${ss.name}`, async (t) => {
      // The ticket comes from a full handshake with the other suites, to mix them further.
      const original = run({ suite: ss }, serverCtx({ suite: cs }));
      const rs = resumption(original);
      const r = run({ suite: cs, resume: rs, now: NOW + 1000 }, serverCtx({ suite: ss, now: () => NOW + 1000 }));
      t.equal(r.first.t, 'resume');
      t.ok(r.c.resuming);
      t.equal(r.pending.kind, 'resume');
      t.equal(r.pending.user, 'alice');
      t.equal(r.pending.device, 'phone');
      t.equal(hex(r.pending.clientStatic), hex(ALICE.publicKey), 'the client key comes from the ticket');
      t.equal(r.pending.ticket?.user, 'alice');
      t.equal(r.pending.registration, undefined);
      t.equal(r.result.welcome.resumed, true);
      t.ok(r.result.resumption, 'a new ticket is issued');
      t.not(hex(r.result.resumption!.ticket), hex(rs.ticket));
      t.not(hex(r.result.resumption!.secret), hex(rs.secret), 'with a new resumption secret');
      confirm(t, r);
      // Fresh ee: the resumed session's keys are not the original's.
      t.notOk(sameKeys(r.result, original.server), 'resumed client keys do not open on the original session');
      t.notOk(sameKeys(original.result, r.server));
      t.not(hex(r.result.finish.h), hex(original.result.finish.h));
    });
  }
}

t.test('a ticket from a resumed session resumes again', async (t) => {
  const a = run();
  const b = run({ resume: resumption(a) });
  const c = run({ resume: resumption(b) });
  t.equal(c.pending.kind, 'resume');
  confirm(t, c);
});

t.test('the same ticket twice (the protocol layer does not enforce single use) still gives different keys', async (t) => {
  const rs = resumption(run());
  const x = run({ resume: rs });
  const y = run({ resume: rs });
  t.equal(hex(x.pending.ticket!.id), hex(y.pending.ticket!.id), 'same ticket id: the server must spend it (KV create) to refuse the second');
  t.notOk(sameKeys(x.result, y.server));
  t.not(hex(x.result.finish.h), hex(y.result.finish.h));
});

t.test('forward secrecy sanity: same static keys, fresh ephemerals, different session keys', async (t) => {
  const a = run();
  const b = run();
  t.not(hex(a.first.e), hex(b.first.e), 'fresh client ephemeral');
  t.not(hex(a.server.welcome.e), hex(b.server.welcome.e), 'fresh server ephemeral');
  t.ok(sameKeys(a.result, a.server) && sameKeys(b.result, b.server), 'each session agrees on its keys');
  t.notOk(sameKeys(a.result, b.server));
  t.notOk(sameKeys(b.result, a.server));
  const ka = keysOf(a.result.channel);
  const kb = keysOf(b.result.channel);
  t.not(ka.send, ka.recv, 'one key per direction');
  t.not(ka.send, kb.send);
  t.not(ka.recv, kb.recv);
  t.equal(codeOf(() => b.server.channel.open(a.result.channel.seal(enc.encode('x')))), 'ChannelError:DECRYPT_FAILED', 'a frame of one session does not open in the other');
  t.not(hex(a.result.finish.h), hex(b.result.finish.h));
  t.not(hex(resumption(a).secret), hex(resumption(b).secret));
});

t.test('identity hiding: the client key and names are not in the clear', async (t) => {
  const r = run();
  const helloBytes = hex(pack(r.c.hello()));
  t.notOk(helloBytes.includes(hex(ALICE.publicKey)), 'client static key encrypted');
  t.notOk(helloBytes.includes(hex(enc.encode('alice'))), 'user encrypted');
  t.notOk(helloBytes.includes(hex(enc.encode('phone'))), 'device encrypted');
  const welcomeBytes = hex(pack(r.server.welcome));
  t.notOk(welcomeBytes.includes(hex(enc.encode(INFO.session))), 'welcome payload encrypted');
  const rs = resumption(r);
  t.notOk(hex(rs.ticket).includes(hex(enc.encode('alice'))), 'the ticket is opaque');
  t.notOk(hex(rs.ticket).includes(hex(ALICE.publicKey)));
});

t.test('wrong server public key: HANDSHAKE_FAILED at the server', async (t) => {
  for (const s of SUITES) {
    const c = client({ serverPublicKey: generateKeyPair().publicKey, suite: s });
    t.equal(codeOf(() => readHello(wireFirst(c) as Hello, serverCtx({ suite: s }))), ErrorCode.HANDSHAKE_FAILED, s.name);
  }
  // A low-order "server key" is refused by the client itself.
  t.equal(codeOf(() => client({ serverPublicKey: new Uint8Array(32) })), ErrorCode.BAD_PUBLIC_KEY);
});

t.test('tampered hello: every bit of e, s and p', async (t) => {
  const c = client();
  const hello = wireFirst(c) as Hello;
  const ctx = serverCtx();
  t.equal(codeOf(() => readHello(hello, ctx)), undefined, 'the genuine hello is accepted');
  for (const field of ['e', 's', 'p'] as const) {
    const counts: Record<string, number> = {};
    for (let bit = 0; bit < hello[field].length * 8; bit++) {
      const got = codeOf(() => readHello({ ...hello, [field]: flip(hello[field], bit) }, ctx)) ?? 'accepted';
      counts[got] = (counts[got] ?? 0) + 1;
    }
    // Flipping the top bit of e gives the same curve point (it is masked), but e is in the transcript.
    t.strictSame(counts, { [ErrorCode.HANDSHAKE_FAILED]: hello[field].length * 8 }, `${field}: all ${hello[field].length * 8} flips`);
  }
  t.equal(codeOf(() => readHello({ ...hello, s: (wireFirst(client({ identity: generateKeyPair() })) as Hello).s }, ctx)), ErrorCode.HANDSHAKE_FAILED, 's from another hello');
  t.equal(codeOf(() => readHello({ ...hello, p: (wireFirst(client({ user: 'mallory' })) as Hello).p }, ctx)), ErrorCode.HANDSHAKE_FAILED, 'p from another hello');
});

t.test('tampered hello with the tweetnacl server suite (sampled bits)', async (t) => {
  const hello = wireFirst(client({ suite: naclSuite })) as Hello;
  const ctx = serverCtx({ suite: naclSuite });
  for (const field of ['e', 's', 'p'] as const) {
    for (const bit of [0, 7, 100, hello[field].length * 8 - 1]) {
      t.equal(codeOf(() => readHello({ ...hello, [field]: flip(hello[field], bit) }, ctx)), ErrorCode.HANDSHAKE_FAILED, `${field} bit ${bit}`);
    }
  }
});

t.test('low-order keys in the hello: BAD_PUBLIC_KEY', async (t) => {
  const lowOrder = ['00'.repeat(32), `01${'00'.repeat(31)}`, 'e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800', `ec${'ff'.repeat(30)}7f`];
  for (const s of SUITES) {
    const hello = wireFirst(client()) as Hello;
    for (const p of lowOrder) {
      t.equal(codeOf(() => readHello({ ...hello, e: Buffer.from(p, 'hex') }, serverCtx({ suite: s }))), ErrorCode.BAD_PUBLIC_KEY, `${s.name}: e = ${p.slice(0, 6)}`);
    }
    // A client that encrypts a low-order "static key" (it knows some secret, claims another public key).
    const liar = client({ identity: { publicKey: new Uint8Array(32), secretKey: ALICE.secretKey }, suite: s });
    t.equal(codeOf(() => readHello(wireFirst(liar) as Hello, serverCtx({ suite: s }))), ErrorCode.BAD_PUBLIC_KEY, `${s.name}: s = 0`);
  }
});

t.test('claiming a static key without its secret: HANDSHAKE_FAILED', async (t) => {
  const mallory = generateKeyPair();
  const c = client({ identity: { publicKey: ALICE.publicKey, secretKey: mallory.secretKey } });
  t.equal(codeOf(() => readHello(wireFirst(c) as Hello, serverCtx())), ErrorCode.HANDSHAKE_FAILED);
});

t.test('version downgrade or upgrade: UNSUPPORTED_VERSION, before any DH', async (t) => {
  t.equal(PROTOCOL_VERSION, 1);
  // A first flight without an offer (as before negotiation) and one offering only `v`.
  const hello = wireFirst(client({ offer: false })) as Hello;
  const resume = wireFirst(client({ resume: resumption(run()), offer: false })) as Resume;
  for (const v of [0, 2, 255]) {
    for (const vs of [undefined, [v]]) {
      const what = vs ? ' offered alone' : '';
      t.equal(codeOf(() => readHello({ ...hello, v, ...(vs && { vs }) }, serverCtx())), ErrorCode.UNSUPPORTED_VERSION, `hello v=${v}${what}`);
      t.equal(codeOf(() => readResume({ ...resume, v, ...(vs && { vs }) }, serverCtx())), ErrorCode.UNSUPPORTED_VERSION, `resume v=${v}${what}`);
      t.equal(codeOf(() => readHello({ ...hello, v, ...(vs && { vs }), e: new Uint8Array(32) }, serverCtx())), ErrorCode.UNSUPPORTED_VERSION, `v=${v}${what} is checked before the (low-order) key`);
    }
  }
});

t.test('timestamp window: ±120 s accepted, beyond is HANDSHAKE_STALE', async (t) => {
  t.equal(HELLO_MAX_SKEW_MS, 120_000);
  const rs = resumption(run());
  for (const [delta, want] of [
    [0, undefined], [HELLO_MAX_SKEW_MS, undefined], [-HELLO_MAX_SKEW_MS, undefined],
    [HELLO_MAX_SKEW_MS + 1, ErrorCode.HANDSHAKE_STALE], [-HELLO_MAX_SKEW_MS - 1, ErrorCode.HANDSHAKE_STALE], [-86400_000, ErrorCode.HANDSHAKE_STALE],
  ] as const) {
    const hello = wireFirst(client({ now: NOW + delta }));
    t.equal(codeOf(() => read(hello, serverCtx())), want, `hello, client clock ${delta} ms`);
    const resume = wireFirst(client({ now: NOW + delta, resume: rs }));
    t.equal(codeOf(() => read(resume, serverCtx())), want, `resume, client clock ${delta} ms`);
  }
  // The timestamp is inside the authenticated payload: it cannot be refreshed by a replayer.
  const old = wireFirst(client({ now: NOW - 10 * 60_000 })) as Hello;
  t.equal(codeOf(() => readHello(old, serverCtx())), ErrorCode.HANDSHAKE_STALE);
});

t.test('tampered welcome: HANDSHAKE_FAILED at the client', async (t) => {
  // Deterministic client and server ephemerals, so a fresh but identical client can be built per attempt.
  const cEph = random(32);
  const sEph = random(32);
  const mk = (): ClientHandshake => client({ suite: fixedSuite(nativeSuite, cEph) });
  const ctx = serverCtx({ suite: fixedSuite(nativeSuite, sEph) });
  const welcome = writeWelcome(readHello(wireFirst(mk()) as Hello, ctx), INFO, ctx).welcome;
  t.equal(codeOf(() => mk().complete(welcome)), undefined, 'the genuine welcome completes');
  const counts: Record<string, number> = {};
  const tries: Array<[string, Welcome]> = [];
  for (let bit = 0; bit < 256; bit++) tries.push([`e bit ${bit}`, { ...welcome, e: flip(welcome.e, bit) }]);
  for (let byte = 0; byte < welcome.p.length; byte++) tries.push([`p byte ${byte}`, { ...welcome, p: flip(welcome.p, byte * 8 + (byte % 8)) }]);
  tries.push(['p truncated', { ...welcome, p: welcome.p.subarray(0, welcome.p.length - 1) }]);
  tries.push(['p extended', { ...welcome, p: Uint8Array.from([...welcome.p, 0]) }]);
  for (const [what, w] of tries) {
    const got = codeOf(() => mk().complete(w)) ?? 'accepted';
    if (got !== ErrorCode.HANDSHAKE_FAILED) t.fail(`${what}: ${got}`);
    counts[got] = (counts[got] ?? 0) + 1;
  }
  t.strictSame(counts, { [ErrorCode.HANDSHAKE_FAILED]: tries.length }, `${tries.length} tampered welcomes`);
  t.equal(codeOf(() => mk().complete({ ...welcome, e: new Uint8Array(32) })), ErrorCode.BAD_PUBLIC_KEY, 'low-order server ephemeral');
  // A genuine welcome, but for another client's hello.
  const other = writeWelcome(readHello(wireFirst(client()) as Hello, serverCtx()), INFO, serverCtx()).welcome;
  t.equal(codeOf(() => mk().complete(other)), ErrorCode.HANDSHAKE_FAILED, 'welcome of another handshake');
  // A welcome from someone without the server's static key (it can still run writeWelcome with its own).
  const impostor = serverCtx({ staticKey: nativeSuite.generate() });
  const hello = wireFirst(client({ serverPublicKey: impostor.staticKey.publicKey, suite: fixedSuite(nativeSuite, cEph) })) as Hello;
  const fake = writeWelcome(readHello(hello, impostor), INFO, impostor).welcome;
  t.equal(codeOf(() => mk().complete(fake)), ErrorCode.HANDSHAKE_FAILED, 'welcome from a server with another static key');
});

t.test('finish: the wrong hash is HANDSHAKE_FAILED', async (t) => {
  const r = run();
  const h = r.result.finish.h;
  t.doesNotThrow(() => checkFinish(r.server.expectedFinish, h));
  for (const bit of [0, 9, 255]) t.equal(codeOf(() => checkFinish(r.server.expectedFinish, flip(h, bit))), ErrorCode.HANDSHAKE_FAILED, `bit ${bit}`);
  t.equal(codeOf(() => checkFinish(r.server.expectedFinish, h.subarray(0, 31))), ErrorCode.HANDSHAKE_FAILED, 'short');
  t.equal(codeOf(() => checkFinish(r.server.expectedFinish, new Uint8Array(32))), ErrorCode.HANDSHAKE_FAILED, 'zeros');
  t.equal(codeOf(() => checkFinish(r.server.expectedFinish, run().result.finish.h)), ErrorCode.HANDSHAKE_FAILED, 'finish of another session');
  // The finish travels sealed: a frame under the wrong key never reaches checkFinish.
  const other = run();
  t.equal(codeOf(() => r.server.channel.open(other.result.channel.seal(pack(other.result.finish)))), 'ChannelError:DECRYPT_FAILED');
});

t.test('resumption failures', async (t) => {
  const rs = resumption(run());
  const ctx = serverCtx();
  const resume = wireFirst(client({ resume: rs })) as Resume;
  t.equal(codeOf(() => readResume(resume, ctx)), undefined, 'the genuine resume is accepted');

  const bob = wireFirst(client({ resume: rs, user: 'alice', device: 'laptop' }));
  t.equal(codeOf(() => read(bob, ctx)), ErrorCode.TICKET_INVALID, 'ticket issued to another device');
  const eve = wireFirst(client({ resume: rs, user: 'eve', device: 'phone' }));
  t.equal(codeOf(() => read(eve, ctx)), ErrorCode.TICKET_INVALID, 'ticket issued to another user');

  const stolen = wireFirst(client({ resume: { ...rs, secret: random(32) } }));
  t.equal(codeOf(() => read(stolen, ctx)), ErrorCode.HANDSHAKE_FAILED, 'ticket without its resumption secret');

  t.equal(codeOf(() => readResume(resume, serverCtx({ now: () => rs.expiresAt }))), ErrorCode.TICKET_EXPIRED, 'expired ticket');
  t.equal(codeOf(() => readResume(resume, serverCtx({ ticketKeys: { current: { id: 2, key: random(32) } } }))), ErrorCode.TICKET_INVALID, 'ticket key retired');
  t.equal(codeOf(() => readResume(resume, serverCtx({ ticketKeys: { current: { id: 2, key: random(32) }, previous: RING.current } }))), undefined, 'ticket key rotated to previous');

  for (const bit of [0, 8, 100, resume.tk.length * 8 - 1]) t.equal(codeOf(() => readResume({ ...resume, tk: flip(resume.tk, bit) }, ctx)), ErrorCode.TICKET_INVALID, `tk bit ${bit}`);
  for (let bit = 0; bit < resume.e.length * 8; bit += 5) t.equal(codeOf(() => readResume({ ...resume, e: flip(resume.e, bit) }, ctx)), ErrorCode.HANDSHAKE_FAILED, `e bit ${bit}`);
  for (let bit = 0; bit < resume.p.length * 8; bit += 7) t.equal(codeOf(() => readResume({ ...resume, p: flip(resume.p, bit) }, ctx)), ErrorCode.HANDSHAKE_FAILED, `p bit ${bit}`);

  // A low-order ephemeral in a resume passes readResume (no DH yet) and fails at the ee DH.
  // (a client that really sends it: e is in the transcript, so swapping it in transit fails as above).
  const zeroE: DhSuite = { name: 'native', generate: () => ({ publicKey: new Uint8Array(32), dh: () => new Uint8Array(32) }), fromSecret: nativeSuite.fromSecret };
  const lowE = readResume(wireFirst(client({ resume: rs, suite: zeroE })) as Resume, ctx);
  t.equal(codeOf(() => writeWelcome(lowE, INFO, ctx)), ErrorCode.BAD_PUBLIC_KEY, 'resume with a low-order e');
  // Resuming against another server key: the prologue differs.
  const elsewhere = wireFirst(client({ resume: rs, serverPublicKey: generateKeyPair().publicKey }));
  t.equal(codeOf(() => read(elsewhere, ctx)), ErrorCode.HANDSHAKE_FAILED, 'resume bound to the server key');
});

t.test('tampered welcome of a resumption: HANDSHAKE_FAILED', async (t) => {
  const rs = resumption(run());
  const cEph = random(32);
  const mk = (): ClientHandshake => client({ resume: rs, suite: fixedSuite(nativeSuite, cEph) });
  const ctx = serverCtx();
  const welcome = writeWelcome(readResume(wireFirst(mk()) as Resume, ctx), INFO, ctx).welcome;
  t.equal(codeOf(() => mk().complete(welcome)), undefined);
  for (const bit of [0, 77, 255]) t.equal(codeOf(() => mk().complete({ ...welcome, e: flip(welcome.e, bit) })), ErrorCode.HANDSHAKE_FAILED, `e bit ${bit}`);
  for (const bit of [0, 300, welcome.p.length * 8 - 1]) t.equal(codeOf(() => mk().complete({ ...welcome, p: flip(welcome.p, bit) })), ErrorCode.HANDSHAKE_FAILED, `p bit ${bit}`);
});

t.test('the cookie is outside the transcript', async (t) => {
  const cEph = random(32);
  const mk = (): ClientHandshake => client({ suite: fixedSuite(nativeSuite, cEph) });
  const plain = wireFirst(mk());
  const withCookie = wireFirst(mk(), random(16));
  t.equal(withCookie.cookie?.length, 16);
  t.equal(plain.cookie, undefined);
  t.equal(hex(plain.p), hex(withCookie.p), 'same encrypted payload with or without a cookie');
  const sEph = random(32);
  const ctx = serverCtx({ suite: fixedSuite(nativeSuite, sEph), random: (n) => new Uint8Array(n) });
  const a = writeWelcome(read(plain, ctx), INFO, ctx);
  const ctx2 = serverCtx({ suite: fixedSuite(nativeSuite, sEph), random: (n) => new Uint8Array(n) });
  const b = writeWelcome(read(withCookie, ctx2), INFO, ctx2);
  t.equal(hex(a.expectedFinish), hex(b.expectedFinish), 'same transcript');
  // The same client object can resend its hello with a cookie and still complete.
  const c = mk();
  c.hello();
  const w = writeWelcome(read(wireFirst(c, random(32)), serverCtx()), INFO, serverCtx());
  t.equal(codeOf(() => c.complete(w.welcome)), undefined);
});

t.test('handshake errors are fatal HandshakeErrors', async (t) => {
  const hello = wireFirst(client()) as Hello;
  for (const bad of [{ ...hello, v: 2 }, { ...hello, p: flip(hello.p, 1) }, { ...hello, e: new Uint8Array(32) }]) {
    try {
      readHello(bad, serverCtx());
      t.fail('should throw');
    } catch (err) {
      t.ok(err instanceof HandshakeError);
      t.ok((err as HandshakeError).fatal, (err as HandshakeError).code);
    }
  }
});
