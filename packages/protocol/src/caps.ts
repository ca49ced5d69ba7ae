import { ErrorCode, HandshakeError } from './errors.js';
import { PROTOCOL_VERSION } from './limits.js';

/*
 * Versions and capabilities (docs/protocol.md, section 4.7). A client offers the versions it
 * speaks and the capabilities it wants in its first flight; the server picks the highest common
 * version and the offered capabilities it grants, and says so in the sealed welcome. The offer
 * is hashed into the transcript, the choice travels sealed: a man in the middle who strips a
 * capability or lowers the version makes the handshake fail (HANDSHAKE_FAILED).
 *
 * A feature that needs both ends to agree adds its name here — one line — and checks
 * `caps.has(Capability.X)` on the session (server) or the connection (SDK).
 */
export const Capability = {
  /** A sealed frame's plaintext may be a msgpack array of 1..MAX_BATCH_MESSAGES messages, both ways (batch.ts). */
  BATCH: 'batch',
  /** Sealed frames use ChaCha20-Poly1305 instead of XSalsa20-Poly1305 (channel.ts). */
  AEAD_CHACHA20POLY1305: 'aead:chacha20poly1305',
} as const;
export type Capability = (typeof Capability)[keyof typeof Capability];

/** Everything this library implements: what a client offers and a server grants unless told otherwise. */
export const CAPABILITIES: readonly string[] = Object.values(Capability);
/** The protocol versions this library speaks, lowest first. */
export const PROTOCOL_VERSIONS: readonly number[] = [PROTOCOL_VERSION];

/** Bounds of an offer: versions 1..255, names of [A-Za-z0-9:._/+-]. */
export const MAX_OFFERED_VERSIONS = 16;
export const MAX_OFFERED_CAPABILITIES = 32;
export const MAX_CAPABILITY_LENGTH = 64;
export const CAPABILITY_NAME = /^[A-Za-z0-9:._/+-]{1,64}$/;

export const NO_CAPABILITIES: ReadonlySet<string> = new Set();

/** What a first flight offers: `vs` includes the flight's own `v`. */
export interface Offer { vs: readonly number[]; caps: readonly string[] }
/** What the server chose, in the welcome payload (`ver`, `caps`). */
export interface Negotiated { version: number; caps: ReadonlySet<string> }

const ascii = new TextEncoder();

/** The bytes the transcript hashes for an offer: ASCII `vs=1,2;caps=batch,aead:chacha20poly1305`, in the order sent. */
export function offerBytes(o: Offer): Uint8Array {
  return ascii.encode(`vs=${o.vs.join(',')};caps=${o.caps.join(',')}`);
}

/**
 * The server's choice: the highest version both speak (none: UNSUPPORTED_VERSION, before any DH)
 * and the offered capabilities it grants, in the order offered; unknown names are ignored. A first
 * flight without an offer (a client from before negotiation) speaks its `v` only and gets none.
 */
export function choose(v: number, offer: Offer | undefined, versions: readonly number[], granted: readonly string[]): Negotiated {
  const offered = offer?.vs ?? [v];
  let version = -1;
  for (const x of offered) if (versions.includes(x) && x > version) version = x;
  if (version < 0) throw new HandshakeError(ErrorCode.UNSUPPORTED_VERSION, `protocol version ${offered.join(', ')} is not supported (this server speaks ${versions.join(', ')})`);
  return { version, caps: new Set(offer ? offer.caps.filter((c) => granted.includes(c)) : []) };
}

/** The client's check of the welcome's choice: a version it offered, capabilities it asked for. */
export function checkChoice(offer: Offer, ver: number | undefined, caps: readonly string[] | undefined): Negotiated {
  const version = ver ?? PROTOCOL_VERSION;
  if (!offer.vs.includes(version)) throw new HandshakeError(ErrorCode.HANDSHAKE_FAILED, `the server chose version ${version}, which was not offered`);
  const got = caps ?? [];
  for (const c of got) if (!offer.caps.includes(c)) throw new HandshakeError(ErrorCode.HANDSHAKE_FAILED, `the server granted capability "${c}", which was not offered`);
  return { version, caps: new Set(got) };
}
