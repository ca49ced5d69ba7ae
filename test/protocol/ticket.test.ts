import t, { type Test } from 'tap';
import {
  ErrorCode, HandshakeError, MAX_TICKET_LIFETIME_MS, NONCE_BYTES, open, openTicket, pack, random, sameTicketKey, seal, sealTicket, TICKET_ID_BYTES, unpack,
  type TicketContents, type TicketKey, type TicketKeyring,
} from '@gravitas/protocol';
import { codeOf } from '../fixtures/codes.js';

const codeOfClass = (fn: () => unknown): string | undefined => codeOf(fn, HandshakeError);

const NOW = 1_700_000_000_000;
const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');
const key = (id: number): TicketKey => ({ id, key: random(32) });

function contents(over: Partial<TicketContents> = {}): TicketContents {
  return {
    id: random(TICKET_ID_BYTES), user: 'alice', device: 'phone-1', clientStatic: random(32), rid: 123_456_789_012, secret: random(32),
    issuedAt: NOW, expiresAt: NOW + 3600_000, ...over,
  };
}


function same(t: Test, a: TicketContents, b: TicketContents): void {
  t.equal(hex(a.id), hex(b.id));
  t.equal(a.user, b.user);
  t.equal(a.device, b.device);
  t.equal(hex(a.clientStatic), hex(b.clientStatic));
  t.equal(a.rid, b.rid);
  t.equal(hex(a.secret), hex(b.secret));
  t.equal(a.issuedAt, b.issuedAt);
  t.equal(a.expiresAt, b.expiresAt);
}

t.test('round trip', async (t) => {
  const ring: TicketKeyring = { current: key(7) };
  const c = contents();
  const sealed = sealTicket(c, ring);
  t.equal(sealed[0], 7, 'first byte is the key id');
  t.equal(sealed.length, 1 + NONCE_BYTES + pack({ id: c.id, u: c.user, d: c.device, c: c.clientStatic, ri: c.rid, rs: c.secret, iat: c.issuedAt, exp: c.expiresAt }).length + 16);
  same(t, openTicket(sealed, ring, NOW), c);
  t.not(hex(sealTicket(c, ring)), hex(sealed), 'a fresh random nonce each time');
  t.equal(MAX_TICKET_LIFETIME_MS, 7 * 24 * 3600_000);
});

t.test('format: [keyId][24-byte nonce][secretbox(msgpack)]', async (t) => {
  const ring: TicketKeyring = { current: key(200) };
  const c = contents();
  const nonce = random(NONCE_BYTES);
  const sealed = sealTicket(c, ring, (n) => (n === NONCE_BYTES ? nonce : random(n)));
  t.equal(hex(sealed.subarray(1, 25)), hex(nonce), 'the injected nonce is used');
  const plain = open(sealed.subarray(25), sealed.subarray(1, 25), ring.current.key);
  t.ok(plain);
  const body = unpack(plain!) as Record<string, unknown>;
  t.strictSame(Object.keys(body), ['id', 'u', 'd', 'c', 'ri', 'rs', 'iat', 'exp']);
  t.equal(body.u, 'alice');
});

t.test('expiry', async (t) => {
  const ring: TicketKeyring = { current: key(1) };
  const sealed = sealTicket(contents({ expiresAt: NOW + 1000 }), ring);
  t.equal(codeOfClass(() => openTicket(sealed, ring, NOW + 999)), undefined, 'valid 1 ms before');
  t.equal(codeOfClass(() => openTicket(sealed, ring, NOW + 1000)), ErrorCode.TICKET_EXPIRED, 'expired at expiresAt');
  t.equal(codeOfClass(() => openTicket(sealed, ring, NOW + 365 * 86400_000)), ErrorCode.TICKET_EXPIRED);
});

t.test('unknown key id', async (t) => {
  const sealed = sealTicket(contents(), { current: key(1) });
  t.equal(codeOfClass(() => openTicket(sealed, { current: key(2) }, NOW)), ErrorCode.TICKET_INVALID);
  t.equal(codeOfClass(() => openTicket(sealed, { current: key(2), previous: key(3) }, NOW)), ErrorCode.TICKET_INVALID);
  // Same id, different key bytes (a key was replaced without changing its id).
  t.equal(codeOfClass(() => openTicket(sealed, { current: key(1) }, NOW)), ErrorCode.TICKET_INVALID);
});

t.test('rotation: previous still opens, a retired key does not', async (t) => {
  const k1 = key(1);
  const k2 = key(2);
  const k3 = key(3);
  const underK1 = sealTicket(contents(), { current: k1 });
  const r2: TicketKeyring = { current: k2, previous: k1 };
  t.equal(codeOfClass(() => openTicket(underK1, r2, NOW)), undefined, 'sealed under previous: opens');
  const underK2 = sealTicket(contents(), r2);
  t.equal(underK2[0], 2, 'new tickets are sealed under current');
  const r3: TicketKeyring = { current: k3, previous: k2 };
  t.equal(codeOfClass(() => openTicket(underK1, r3, NOW)), ErrorCode.TICKET_INVALID, 'k1 was retired');
  t.equal(codeOfClass(() => openTicket(underK2, r3, NOW)), undefined);
  t.equal(codeOfClass(() => openTicket(underK2, { current: k3 }, NOW)), ErrorCode.TICKET_INVALID, 'no previous key: only current opens');
  t.ok(sameTicketKey(k1, { id: 1, key: Uint8Array.from(k1.key) }));
  t.notOk(sameTicketKey(k1, { id: 4, key: k1.key }));
  t.notOk(sameTicketKey(k1, k2));
});

t.test('any tampered bit is TICKET_INVALID', async (t) => {
  const ring: TicketKeyring = { current: key(9), previous: key(8) };
  const sealed = sealTicket(contents(), ring);
  let n = 0;
  for (let i = 0; i < sealed.length * 8; i++) {
    const bad = Uint8Array.from(sealed);
    bad[i >> 3] = bad[i >> 3]! ^ (1 << (i & 7));
    const got = codeOfClass(() => openTicket(bad, ring, NOW));
    if (got !== ErrorCode.TICKET_INVALID) t.fail(`bit ${i}: ${got}`);
    else n++;
  }
  t.equal(n, sealed.length * 8, 'every bit, including the key id (9 -> 8 opens under the wrong key)');
  t.equal(codeOfClass(() => openTicket(sealed.subarray(0, sealed.length - 1), ring, NOW)), ErrorCode.TICKET_INVALID, 'truncated');
  t.equal(codeOfClass(() => openTicket(sealed.subarray(0, 1 + NONCE_BYTES + 15), ring, NOW)), ErrorCode.TICKET_INVALID, 'too short');
  t.equal(codeOfClass(() => openTicket(new Uint8Array(0), ring, NOW)), ErrorCode.TICKET_INVALID, 'empty');
  // Expiry is only looked at after authentication: a forged "expired" ticket is INVALID.
  const expired = sealTicket(contents({ expiresAt: NOW - 1 }), ring);
  const forged = Uint8Array.from(expired);
  forged[forged.length - 1] = forged[forged.length - 1]! ^ 1;
  t.equal(codeOfClass(() => openTicket(forged, ring, NOW)), ErrorCode.TICKET_INVALID);
});

t.test('authentic but malformed contents are TICKET_INVALID', async (t) => {
  const k = key(5);
  const ring: TicketKeyring = { current: k };
  const forge = (body: Uint8Array): Uint8Array => {
    const nonce = random(NONCE_BYTES);
    return Uint8Array.from([k.id, ...nonce, ...seal(body, nonce, k.key)]);
  };
  const good = { id: random(16), u: 'alice', d: 'phone', c: random(32), ri: 5, rs: random(32), iat: NOW, exp: NOW + 1 };
  t.equal(codeOfClass(() => openTicket(forge(pack(good)), ring, NOW)), undefined, 'the forge helper itself works');
  t.equal(codeOfClass(() => openTicket(forge(new Uint8Array([0xc1, 0xc1])), ring, NOW)), ErrorCode.TICKET_INVALID, 'not one msgpack value');
  t.equal(codeOfClass(() => openTicket(forge(pack([1, 2])), ring, NOW)), ErrorCode.TICKET_INVALID, 'not a map');
  t.equal(codeOfClass(() => openTicket(forge(pack({ ...good, id: random(15) })), ring, NOW)), ErrorCode.TICKET_INVALID, 'short id');
  t.equal(codeOfClass(() => openTicket(forge(pack({ ...good, rs: random(31) })), ring, NOW)), ErrorCode.TICKET_INVALID, 'short secret');
  t.equal(codeOfClass(() => openTicket(forge(pack({ ...good, u: 'a.b' })), ring, NOW)), ErrorCode.TICKET_INVALID, 'bad user name');
  t.equal(codeOfClass(() => openTicket(forge(pack({ ...good, exp: 'soon' })), ring, NOW)), ErrorCode.TICKET_INVALID, 'bad expiry');
  t.equal(codeOfClass(() => openTicket(forge(pack({ ...good, exp: undefined })), ring, NOW)), ErrorCode.TICKET_INVALID, 'no expiry');
  t.equal(codeOfClass(() => openTicket(forge(pack({ ...good, ri: undefined })), ring, NOW)), ErrorCode.TICKET_INVALID, 'no registration id (a ticket from before revocation)');
});

t.test('ticket errors are fatal HandshakeErrors', async (t) => {
  try {
    openTicket(new Uint8Array(10), { current: key(1) }, NOW);
    t.fail('should throw');
  } catch (err) {
    t.ok(err instanceof HandshakeError);
    t.ok((err as HandshakeError).fatal);
  }
});
