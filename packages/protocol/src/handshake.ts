import { Capability, CAPABILITIES, checkChoice, choose, NO_CAPABILITIES, offerBytes, PROTOCOL_VERSIONS, type Negotiated, type Offer } from './caps.js';
import { pack, unpack } from './codec.js';
import { SecureChannel, type ChannelCipher } from './channel.js';
import { equalBytes, hkdf, open, random, seal, sha256, nativeSuite, NONCE_BYTES, type DhKey, type DhSuite, type KeyPair } from './crypto.js';
import { ErrorCode, HandshakeError, ProtocolError } from './errors.js';
import { HELLO_MAX_SKEW_MS } from './limits.js';
import { decodeHelloPayload, decodeWelcomePayload, type Hello, type HelloPayload, type Resume, type Welcome, type WelcomePayload } from './messages.js';
import { openTicket, sealTicket, TICKET_ID_BYTES, type TicketContents, type TicketKeyring } from './ticket.js';

/*
 * Handshake, documented in docs/protocol.md.
 *
 * Full (Noise IK shape, 1.5 round trips):
 *   -> hello   e, es, s, ss, {payload}
 *   <- welcome e, ee, se, {payload + ticket}
 *   -> finish  (first sealed frame) transcript hash: key confirmation by the client
 * Resume (PSK from a ticket plus a fresh ee, 1.5 round trips):
 *   -> resume  ticket, psk, e, {payload}
 *   <- welcome e, ee, {payload + new ticket}
 *   -> finish
 * Every byte of both flights goes into the transcript hash `h`, the negotiation offer
 * (caps.ts) right after the prologue; the server's choice travels in the sealed welcome. Each handshake
 * payload is sealed with the key of the latest MixKey and the nonce h[0..24]:
 * XSalsa20-Poly1305 derives its MAC key from the nonce, so a payload opens only
 * under the exact transcript it was sealed under.
 */

const NAME_FULL = 'Gravitas_IK_25519_XSalsa20Poly1305_SHA256';
const NAME_RESUME = 'Gravitas_PSK_25519_XSalsa20Poly1305_SHA256';
const enc = new TextEncoder();

class Transcript {
  ck: Uint8Array;
  h: Uint8Array;
  private k: Uint8Array | null = null;

  constructor(protocolName: string, version: number, serverPublic: Uint8Array, offer: Offer | undefined) {
    this.h = sha256(enc.encode(protocolName));
    this.ck = this.h;
    this.mixHash(enc.encode(`gravitas/${version}`));
    this.mixHash(serverPublic);
    if (offer) this.mixHash(offerBytes(offer));
  }

  mixHash(data: Uint8Array): void {
    this.h = sha256(this.h, data);
  }

  mixKey(ikm: Uint8Array): void {
    const okm = hkdf(ikm, this.ck, 'gravitas mixkey', 64);
    this.ck = okm.subarray(0, 32);
    this.k = okm.subarray(32, 64);
  }

  encryptAndHash(plain: Uint8Array): Uint8Array {
    if (!this.k) throw new Error('encrypt before any key was mixed');
    const ct = seal(plain, this.h.subarray(0, NONCE_BYTES), this.k);
    this.mixHash(ct);
    return ct;
  }

  decryptAndHash(ct: Uint8Array, what: string): Uint8Array {
    if (!this.k) throw new Error('decrypt before any key was mixed');
    const plain = open(ct, this.h.subarray(0, NONCE_BYTES), this.k);
    if (!plain) throw new HandshakeError(ErrorCode.HANDSHAKE_FAILED, `handshake ${what} failed authentication (wrong server key, or tampered)`);
    this.mixHash(ct);
    return plain;
  }

  resumptionSecret(): Uint8Array {
    return hkdf(this.ck, this.h, 'gravitas resumption', 32);
  }

  /** Final keys: [client→server, server→client]. */
  split(): [Uint8Array, Uint8Array] {
    const okm = hkdf(this.ck, this.h, 'gravitas split', 64);
    return [okm.subarray(0, 32), okm.subarray(32, 64)];
  }
}

function decodePayload<T>(bytes: Uint8Array, decode: (v: unknown) => T): T {
  return decode(unpack(bytes));
}

/** The offer of a first flight as sent: none when neither field is there (a client from before negotiation). */
function offerOf(m: Hello | Resume): Offer | undefined {
  return m.vs === undefined && m.caps === undefined ? undefined : { vs: m.vs ?? [m.v], caps: m.caps ?? [] };
}

function cipherOf(caps: ReadonlySet<string>): ChannelCipher {
  return caps.has(Capability.AEAD_CHACHA20POLY1305) ? 'chacha20poly1305' : 'xsalsa20poly1305';
}

function checkSkew(ts: number, now: number): void {
  if (Math.abs(now - ts) > HELLO_MAX_SKEW_MS) throw new HandshakeError(ErrorCode.HANDSHAKE_STALE, 'hello timestamp is outside the accepted window (replayed, or clock skew)');
}

// ---------------------------------------------------------------------------------
// client

export interface ResumptionState { ticket: Uint8Array; secret: Uint8Array; expiresAt: number }

/**
 * What a device that is not registered yet offers to join its account (docs/security.md):
 * a string is the shared registration token of a development cluster ('' when it is open);
 * `credential` a short-lived JWT from the operator's auth service naming the user, the
 * device and its public key; `link` an approval from one of the account's existing devices.
 */
export type Registration = string | { credential: string } | { link: Uint8Array };

function registrationFields(r: Registration | undefined): Pick<HelloPayload, 'reg' | 'cred' | 'link'> {
  if (r === undefined) return {};
  if (typeof r === 'string') return { reg: r };
  return 'credential' in r ? { cred: r.credential } : { link: r.link };
}

export interface ClientHandshakeOptions {
  serverPublicKey: Uint8Array;
  identity: KeyPair;
  user: string;
  device: string;
  /** What registers this device on first use (a token, '' for an open dev cluster, a credential or a link approval). */
  registration?: Registration;
  /** Ticket from an earlier session: attempt a one-round-trip resumption. */
  resume?: ResumptionState;
  suite?: DhSuite;
  now?: () => number;
  /**
   * What to negotiate (caps.ts): by default every version and capability this library
   * implements. `false`: the first flight of a client from before negotiation (v1, no offer).
   */
  offer?: { versions?: readonly number[]; capabilities?: readonly string[] } | false;
}

export interface ClientHandshakeResult {
  channel: SecureChannel;
  welcome: WelcomePayload;
  /** The version and capabilities the server chose (none without an offer). */
  negotiated: Negotiated;
  /** The first sealed frame to send: key confirmation. */
  finish: { t: 'finish'; h: Uint8Array };
  resumption?: ResumptionState;
}

export class ClientHandshake {
  private readonly t: Transcript;
  private readonly eph: DhKey;
  private readonly suite: DhSuite;
  private readonly opts: ClientHandshakeOptions;
  readonly first: Hello | Resume;
  /** What this flight offers (undefined: no offer, as before negotiation). */
  readonly offer: Offer | undefined;

  constructor(opts: ClientHandshakeOptions) {
    this.opts = opts;
    this.suite = opts.suite ?? nativeSuite;
    const o = opts.offer === false ? undefined : { vs: [...(opts.offer?.versions ?? PROTOCOL_VERSIONS)], caps: [...(opts.offer?.capabilities ?? CAPABILITIES)] };
    if (o && (o.vs.length === 0 || o.vs.some((x) => !Number.isInteger(x) || x < 0 || x > 255))) throw new TypeError('offer at least one protocol version, each 0..255');
    this.offer = o;
    const v = o ? Math.max(...o.vs) : 1;
    const fields = o ? { vs: o.vs, caps: o.caps } : {};
    const now = (opts.now ?? Date.now)();
    const payload: HelloPayload = { user: opts.user, device: opts.device, ts: now, ...registrationFields(opts.registration) };
    this.eph = this.suite.generate();
    if (opts.resume) {
      const t = (this.t = new Transcript(NAME_RESUME, v, opts.serverPublicKey, o));
      t.mixHash(opts.resume.ticket);
      t.mixKey(opts.resume.secret);
      t.mixHash(this.eph.publicKey);
      const p = t.encryptAndHash(pack(payload));
      this.first = { t: 'resume', v, e: this.eph.publicKey, tk: opts.resume.ticket, p, ...fields };
    } else {
      const t = (this.t = new Transcript(NAME_FULL, v, opts.serverPublicKey, o));
      const stat = this.suite.fromSecret(opts.identity.secretKey);
      t.mixHash(this.eph.publicKey);
      t.mixKey(this.eph.dh(opts.serverPublicKey));
      const s = t.encryptAndHash(opts.identity.publicKey);
      t.mixKey(stat.dh(opts.serverPublicKey));
      const p = t.encryptAndHash(pack(payload));
      this.first = { t: 'hello', v, e: this.eph.publicKey, s, p, ...fields };
    }
  }

  get resuming(): boolean {
    return this.first.t === 'resume';
  }

  /** The first flight, with a server cookie attached when asked for one (outside the transcript). */
  hello(cookie?: Uint8Array): Hello | Resume {
    return cookie ? { ...this.first, cookie } : this.first;
  }

  complete(w: Welcome): ClientHandshakeResult {
    const t = this.t;
    t.mixHash(w.e);
    t.mixKey(this.eph.dh(w.e));
    if (!this.resuming) t.mixKey(this.suite.fromSecret(this.opts.identity.secretKey).dh(w.e));
    const secret = t.resumptionSecret();
    const welcome = decodePayload(t.decryptAndHash(w.p, 'welcome'), decodeWelcomePayload);
    const negotiated = this.offer ? checkChoice(this.offer, welcome.ver, welcome.caps) : { version: this.first.v, caps: NO_CAPABILITIES };
    const [c2s, s2c] = t.split();
    return {
      channel: new SecureChannel(c2s, s2c, cipherOf(negotiated.caps)),
      welcome,
      negotiated,
      finish: { t: 'finish', h: t.h },
      ...(welcome.ticket && welcome.ticketExpires !== undefined && { resumption: { ticket: welcome.ticket, secret, expiresAt: welcome.ticketExpires } }),
    };
  }
}

// ---------------------------------------------------------------------------------
// server

export interface ServerHandshakeContext {
  staticKey: DhKey;
  ticketKeys: TicketKeyring;
  ticketLifetimeMs: number;
  suite: DhSuite;
  now: () => number;
  /** Source of the ticket id and nonce; defaults to crypto random (inject only for test vectors). */
  random?: (n: number) => Uint8Array;
  /** Versions this server speaks and capabilities it grants; default: all this library implements (caps.ts). */
  versions?: readonly number[];
  capabilities?: readonly string[];
}

/** A first flight that authenticated; the caller checks device/ticket state before answering. */
export interface PendingHandshake {
  kind: 'full' | 'resume';
  user: string;
  device: string;
  clientStatic: Uint8Array;
  clientEphemeral: Uint8Array;
  /** The proof of account membership the client offered (full handshake only). */
  registration: Registration | undefined;
  /** Resume only: the ticket being spent. */
  ticket: TicketContents | undefined;
  /**
   * The registration of the device key (ticket.ts): from the ticket on a resume; on a full
   * handshake the server sets it once the key is checked, and the new ticket carries it.
   */
  rid: number;
  /** The client's offer (undefined: it made none) and what this server chose from it. */
  offer: Offer | undefined;
  negotiated: Negotiated;
  readonly transcript: Transcript;
}

function negotiate(msg: Hello | Resume, ctx: ServerHandshakeContext): { offer: Offer | undefined; negotiated: Negotiated } {
  const offer = offerOf(msg);
  return { offer, negotiated: choose(msg.v, offer, ctx.versions ?? PROTOCOL_VERSIONS, ctx.capabilities ?? CAPABILITIES) };
}

export function readHello(msg: Hello, ctx: ServerHandshakeContext): PendingHandshake {
  const n = negotiate(msg, ctx);
  const t = new Transcript(NAME_FULL, msg.v, ctx.staticKey.publicKey, n.offer);
  t.mixHash(msg.e);
  t.mixKey(ctx.staticKey.dh(msg.e));
  const clientStatic = t.decryptAndHash(msg.s, 'client key');
  t.mixKey(ctx.staticKey.dh(clientStatic));
  const payload = decodePayload(t.decryptAndHash(msg.p, 'hello payload'), decodeHelloPayload);
  checkSkew(payload.ts, ctx.now());
  const registration: Registration | undefined = payload.reg ?? (payload.cred !== undefined ? { credential: payload.cred } : payload.link && { link: payload.link });
  return { kind: 'full', user: payload.user, device: payload.device, clientStatic, clientEphemeral: msg.e, registration, ticket: undefined, rid: 0, ...n, transcript: t };
}

export function readResume(msg: Resume, ctx: ServerHandshakeContext): PendingHandshake {
  const n = negotiate(msg, ctx);
  const ticket = openTicket(msg.tk, ctx.ticketKeys, ctx.now());
  const t = new Transcript(NAME_RESUME, msg.v, ctx.staticKey.publicKey, n.offer);
  t.mixHash(msg.tk);
  t.mixKey(ticket.secret);
  t.mixHash(msg.e);
  const payload = decodePayload(t.decryptAndHash(msg.p, 'resume payload'), decodeHelloPayload);
  if (payload.user !== ticket.user || payload.device !== ticket.device) throw new HandshakeError(ErrorCode.TICKET_INVALID, 'ticket was issued to another device');
  checkSkew(payload.ts, ctx.now());
  return { kind: 'resume', user: ticket.user, device: ticket.device, clientStatic: ticket.clientStatic, clientEphemeral: msg.e, registration: undefined, ticket, rid: ticket.rid, ...n, transcript: t };
}

export interface ServerHandshakeResult {
  welcome: Welcome;
  channel: SecureChannel;
  /** What the client's `finish` must carry. */
  expectedFinish: Uint8Array;
  /** The version and capabilities of this session (none for a client that offered nothing). */
  negotiated: Negotiated;
}

export function writeWelcome(p: PendingHandshake, info: { session: string; cell: string; node: string; hk?: Uint8Array; wa?: string }, ctx: ServerHandshakeContext): ServerHandshakeResult {
  const t = p.transcript;
  const eph = ctx.suite.generate();
  t.mixHash(eph.publicKey);
  t.mixKey(eph.dh(p.clientEphemeral));
  if (p.kind === 'full') t.mixKey(eph.dh(p.clientStatic));
  const now = ctx.now();
  const expiresAt = now + ctx.ticketLifetimeMs;
  const rnd = ctx.random ?? random;
  const ticket = sealTicket(
    { id: rnd(TICKET_ID_BYTES), user: p.user, device: p.device, clientStatic: p.clientStatic, rid: p.rid, secret: t.resumptionSecret(), issuedAt: now, expiresAt },
    ctx.ticketKeys,
    rnd,
  );
  const choice = p.offer && { ver: p.negotiated.version, caps: [...p.negotiated.caps] };
  const payload: WelcomePayload = { ...info, serverTime: now, resumed: p.kind === 'resume', ticket, ticketExpires: expiresAt, ...choice };
  const sealed = t.encryptAndHash(pack(payload));
  const [c2s, s2c] = t.split();
  const channel = new SecureChannel(s2c, c2s, cipherOf(p.negotiated.caps));
  return { welcome: { t: 'welcome', e: eph.publicKey, p: sealed }, channel, expectedFinish: t.h, negotiated: p.negotiated };
}

/** Verifies the client's key confirmation. */
export function checkFinish(expected: Uint8Array, h: Uint8Array): void {
  if (!equalBytes(expected, h)) throw new HandshakeError(ErrorCode.HANDSHAKE_FAILED, 'key confirmation does not match the transcript');
}

export function isProtocolError(err: unknown): err is ProtocolError {
  return err instanceof ProtocolError;
}
