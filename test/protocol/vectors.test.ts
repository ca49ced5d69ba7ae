import { createHash, createHmac } from 'node:crypto';
import { readFileSync } from 'node:fs';
import t from 'tap';
import nacl from 'tweetnacl';
import {
  decodeClientHandshake, encodeFrame, ErrorCode, HandshakeError, keyPairFromSecret, naclSuite, nativeSuite, pack, readHello, unpack, type DhSuite, type ServerHandshakeContext,
} from '@gravitas/protocol';
import { b, hex, libraryRun, type Expected, type Side, type Vectors } from '../fixtures/handshake-vectors.js';

/*
 * Recomputes test/vectors/handshake.json twice: with the library (every suite
 * combination) and with an independent transcription of docs/protocol.md written
 * here from tweetnacl, SHA-256 and HMAC only. If either disagrees, the code, the
 * document or the vectors changed.
 */

const V = JSON.parse(readFileSync(new URL('../vectors/handshake.json', import.meta.url), 'utf8')) as Vectors;
const I = V.handshake.inputs;
const SUITES: DhSuite[] = [nativeSuite, naclSuite];

t.test('X25519 vectors (RFC 7748), both suites', async (t) => {
  for (const s of SUITES) {
    for (const v of V.x25519.scalar_mult) t.equal(hex(s.fromSecret(b(v.scalar)).dh(b(v.u))), v.output, `${s.name} 5.2`);
    let k = b(V.x25519.iterated.start);
    let u = b(V.x25519.iterated.start);
    for (let i = 1; i <= 1000; i++) {
      [k, u] = [s.fromSecret(k).dh(u), k];
      if (i === 1) t.equal(hex(k), V.x25519.iterated.after_1, `${s.name} iterated x1`);
    }
    t.equal(hex(k), V.x25519.iterated.after_1000, `${s.name} iterated x1000`);
    const dh = V.x25519.diffie_hellman;
    t.equal(hex(s.fromSecret(b(dh.alice_secret)).publicKey), dh.alice_public);
    t.equal(hex(s.fromSecret(b(dh.bob_secret)).publicKey), dh.bob_public);
    t.equal(hex(s.fromSecret(b(dh.alice_secret)).dh(b(dh.bob_public))), dh.shared);
    for (const p of V.x25519.low_order_points) {
      t.throws(() => s.fromSecret(b(dh.alice_secret)).dh(b(p)), { code: ErrorCode.BAD_PUBLIC_KEY }, `${s.name} low order ${p.slice(0, 8)}`);
    }
  }
});

t.test('static keys', async (t) => {
  t.equal(hex(keyPairFromSecret(b(I.server_static_secret)).publicKey), I.server_static_public);
  t.equal(hex(keyPairFromSecret(b(I.client_static_secret)).publicKey), I.client_static_public);
});

// ---- the library ------------------------------------------------------------------

for (const cs of SUITES) {
  for (const ss of SUITES) {
    t.test(`library reproduces the handshake vectors: client ${cs.name}, server ${ss.name}`, async (t) => {
      const { resumption, ...full } = libraryRun(V, cs, ss, V.handshake.full.inputs);
      t.strictSame(full, V.handshake.full.expected, 'full handshake');
      const { resumption: _r, ...resumed } = libraryRun(V, cs, ss, V.handshake.resume.inputs, resumption);
      t.strictSame(resumed, V.handshake.resume.expected, 'resumption with the ticket of the full handshake');
    });
  }
}

t.test('the server-side decode of the vector hello', async (t) => {
  const e = V.handshake.full.expected;
  const hello = decodeClientHandshake(unpack(b(e.first_flight_msgpack)));
  t.equal(hello.t, 'hello');
  t.equal(hello.v, I.protocol_version);
  const ctx: ServerHandshakeContext = {
    staticKey: nativeSuite.fromSecret(b(I.server_static_secret)), ticketKeys: { current: { id: I.ticket_key.id, key: b(I.ticket_key.key) } },
    ticketLifetimeMs: I.ticket_lifetime_ms, suite: nativeSuite, now: () => V.handshake.full.inputs.server_now,
  };
  if (hello.t !== 'hello') return;
  const p = readHello(hello, ctx);
  t.strictSame(
    { kind: p.kind, user: p.user, device: p.device, registration: p.registration ?? null, client_static: hex(p.clientStatic), client_ephemeral: hex(p.clientEphemeral), ts: e.server_decoded.ts },
    e.server_decoded,
  );
  // The same bytes replayed 10 minutes later are stale.
  t.throws(() => readHello(hello, { ...ctx, now: () => V.handshake.full.inputs.client_now + 600_000 }), { code: ErrorCode.HANDSHAKE_STALE });
  const err = (() => {
    try {
      readHello({ ...hello, v: 2 }, ctx);
    } catch (x) {
      return x;
    }
  })();
  t.ok(err instanceof HandshakeError && err.code === ErrorCode.UNSUPPORTED_VERSION);
});

// ---- an independent transcription of docs/protocol.md -----------------------------

const sha256 = (...parts: Uint8Array[]): Uint8Array => {
  const h = createHash('sha256');
  for (const p of parts) h.update(p);
  return new Uint8Array(h.digest());
};
const utf8 = (s: string): Uint8Array => new TextEncoder().encode(s);

/** HKDF-SHA256 (RFC 5869), from HMAC. */
function hkdf(salt: Uint8Array, ikm: Uint8Array, info: string, length: number): Uint8Array {
  const prk = createHmac('sha256', salt).update(ikm).digest();
  const out: Buffer[] = [];
  let prev: Buffer = Buffer.alloc(0);
  for (let i = 1; out.length * 32 < length; i++) {
    prev = createHmac('sha256', prk).update(prev).update(info).update(Uint8Array.of(i)).digest();
    out.push(prev);
  }
  return new Uint8Array(Buffer.concat(out).subarray(0, length));
}

function x25519(secret: string | Uint8Array, pub: Uint8Array): Uint8Array {
  return nacl.scalarMult(typeof secret === 'string' ? b(secret) : secret, pub);
}

class Ref {
  h: Uint8Array;
  ck: Uint8Array;
  k = new Uint8Array(0);
  constructor(name: string, serverPublic: Uint8Array) {
    this.h = sha256(utf8(name));
    this.ck = this.h;
    this.mixHash(utf8(`gravitas/${I.protocol_version}`));
    this.mixHash(serverPublic);
  }
  mixHash(d: Uint8Array): void {
    this.h = sha256(this.h, d);
  }
  mixKey(ikm: Uint8Array): void {
    const okm = hkdf(this.ck, ikm, 'gravitas mixkey', 64);
    this.ck = okm.slice(0, 32);
    this.k = okm.slice(32);
  }
  encryptAndHash(p: Uint8Array): Uint8Array {
    const c = nacl.secretbox(p, this.h.slice(0, 24), this.k);
    this.mixHash(c);
    return c;
  }
}

function reference(side: Side, resume?: { ticket: Uint8Array; secret: Uint8Array }): Partial<Expected> & { ticketBytes: Uint8Array } {
  const rs = b(I.server_static_public);
  const e = nacl.scalarMult.base(b(side.client_ephemeral_secret));
  const re = nacl.scalarMult.base(b(side.server_ephemeral_secret));
  const cs = keyPairFromSecret(b(I.client_static_secret)).publicKey;
  const payload = { user: I.user, device: I.device, ts: side.client_now, ...(!resume && { reg: I.registration }) };
  let st: Ref;
  let first: Record<string, unknown>;
  if (!resume) {
    st = new Ref('Gravitas_IK_25519_XSalsa20Poly1305_SHA256', rs);
    st.mixHash(e);
    st.mixKey(x25519(side.client_ephemeral_secret, rs)); // es
    const s = st.encryptAndHash(cs);
    st.mixKey(x25519(I.client_static_secret, rs)); // ss
    const p = st.encryptAndHash(pack(payload));
    first = { t: 'hello', v: I.protocol_version, e, s, p };
  } else {
    st = new Ref('Gravitas_PSK_25519_XSalsa20Poly1305_SHA256', rs);
    st.mixHash(resume.ticket);
    st.mixKey(resume.secret); // psk
    st.mixHash(e);
    const p = st.encryptAndHash(pack(payload));
    first = { t: 'resume', v: I.protocol_version, e, tk: resume.ticket, p };
  }
  // server
  st.mixHash(re);
  st.mixKey(x25519(side.server_ephemeral_secret, e)); // ee
  if (!resume) st.mixKey(x25519(side.server_ephemeral_secret, cs)); // se
  const secret = hkdf(st.h, st.ck, 'gravitas resumption', 32);
  const [ticketId, ticketNonce] = side.server_random.map(b) as [Uint8Array, Uint8Array];
  const ticketBody = pack({ id: ticketId, u: I.user, d: I.device, c: cs, ri: I.rid, rs: secret, iat: side.server_now, exp: side.server_now + I.ticket_lifetime_ms });
  const ticket = Uint8Array.from([I.ticket_key.id, ...ticketNonce, ...nacl.secretbox(ticketBody, ticketNonce, b(I.ticket_key.key))]);
  const welcomePayload = { ...I.session_info, serverTime: side.server_now, resumed: !!resume, ticket, ticketExpires: side.server_now + I.ticket_lifetime_ms };
  const wp = st.encryptAndHash(pack(welcomePayload));
  const welcome = { t: 'welcome', e: re, p: wp };
  const okm = hkdf(st.h, st.ck, 'gravitas split', 64);
  const c2s = okm.slice(0, 32);
  const finishPlain = pack({ t: 'finish', h: st.h });
  const counter = new Uint8Array(8); // first frame: counter 0
  const finishFrame = Uint8Array.from([...counter, ...nacl.secretbox(finishPlain, new Uint8Array(24), c2s)]);
  return {
    client_ephemeral_public: hex(e),
    server_ephemeral_public: hex(re),
    first_flight_msgpack: hex(pack(first)),
    welcome_msgpack: hex(pack(welcome)),
    transcript_hash: hex(st.h),
    resumption_secret: hex(secret),
    key_client_to_server: hex(c2s),
    key_server_to_client: hex(okm.slice(32)),
    finish_frame: hex(encodeFrame(finishFrame)),
    ticketBytes: ticket,
  };
}

t.test('an independent implementation of the documented handshake gives the same bytes', async (t) => {
  const { ticketBytes, ...full } = reference(V.handshake.full.inputs);
  const fe = V.handshake.full.expected;
  for (const [k, v] of Object.entries(full)) t.equal(v, fe[k as keyof Expected], `full: ${k}`);
  t.equal(hex(ticketBytes), fe.welcome_payload.ticket, 'full: ticket');
  const { ticketBytes: t2, ...resumed } = reference(V.handshake.resume.inputs, { ticket: ticketBytes, secret: b(fe.resumption_secret) });
  const re = V.handshake.resume.expected;
  for (const [k, v] of Object.entries(resumed)) t.equal(v, re[k as keyof Expected], `resume: ${k}`);
  t.equal(hex(t2), re.welcome_payload.ticket, 'resume: ticket');
});
