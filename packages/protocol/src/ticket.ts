import { pack, unpack } from './codec.js';
import { equalBytes, open, random, seal, NONCE_BYTES, KEY_BYTES } from './crypto.js';
import { ErrorCode, HandshakeError, ProtocolError } from './errors.js';
import { bytes, int, name, obj } from './validate.js';

/** A cluster-wide ticket key. `id` (0..255) tells which key sealed a ticket. */
export interface TicketKey { id: number; key: Uint8Array }

/**
 * The keys a server accepts: it seals with `current` and opens with either, so a
 * rotation is "new key becomes current, old current becomes previous".
 */
export interface TicketKeyring { current: TicketKey; previous?: TicketKey }

/** What a resumption ticket vouches for. Only the server can read it. */
export interface TicketContents {
  id: Uint8Array; // 16 random bytes: the single-use handle
  user: string;
  device: string;
  clientStatic: Uint8Array;
  /**
   * The registration of the device key this ticket vouches for (the account's device
   * index names it): a resumption is refused once the device was removed or registered
   * again, so removing a device revokes its tickets on every cell.
   */
  rid: number;
  secret: Uint8Array; // resumption secret, derived from the handshake that issued it
  issuedAt: number;
  expiresAt: number;
}

export const TICKET_ID_BYTES = 16;
/** Upper bound of a ticket lifetime (the server's setting may be shorter). */
export const MAX_TICKET_LIFETIME_MS = 7 * 24 * 3600_000;

/** `rnd` supplies the nonce (injectable for deterministic test vectors only). */
export function sealTicket(t: TicketContents, keyring: TicketKeyring, rnd: (n: number) => Uint8Array = random): Uint8Array {
  const body = pack({ id: t.id, u: t.user, d: t.device, c: t.clientStatic, ri: t.rid, rs: t.secret, iat: t.issuedAt, exp: t.expiresAt });
  const nonce = rnd(NONCE_BYTES);
  const box = seal(body, nonce, keyring.current.key);
  const out = new Uint8Array(1 + NONCE_BYTES + box.length);
  out[0] = keyring.current.id;
  out.set(nonce, 1);
  out.set(box, 1 + NONCE_BYTES);
  return out;
}

/** Opens and checks a ticket. Expiry is checked here; single use is the caller's job. */
export function openTicket(sealed: Uint8Array, keyring: TicketKeyring, now: number): TicketContents {
  const invalid = (why: string): never => {
    throw new HandshakeError(ErrorCode.TICKET_INVALID, `resumption ticket rejected: ${why}`);
  };
  if (sealed.length < 1 + NONCE_BYTES + 16) invalid('too short');
  const keyId = sealed[0];
  const key = [keyring.current, keyring.previous].find((k) => k !== undefined && k.id === keyId);
  if (!key) return invalid('sealed under an unknown or retired key');
  const plain = open(sealed.subarray(1 + NONCE_BYTES), sealed.subarray(1, 1 + NONCE_BYTES), key.key);
  if (!plain) return invalid('failed authentication');
  let t: TicketContents;
  try {
    const o = obj(unpack(plain), 'ticket');
    t = {
      id: bytes(o, 'id', TICKET_ID_BYTES),
      user: name(o, 'u'),
      device: name(o, 'd', 32),
      clientStatic: bytes(o, 'c', KEY_BYTES),
      rid: int(o, 'ri'),
      secret: bytes(o, 'rs', KEY_BYTES),
      issuedAt: int(o, 'iat'),
      expiresAt: int(o, 'exp'),
    };
  } catch (err) {
    if (err instanceof ProtocolError) return invalid('malformed contents');
    throw err;
  }
  if (t.expiresAt <= now) throw new HandshakeError(ErrorCode.TICKET_EXPIRED, 'resumption ticket has expired');
  return t;
}

export function sameTicketKey(a: TicketKey, b: TicketKey): boolean {
  return a.id === b.id && equalBytes(a.key, b.key);
}
