import { CAPABILITY_NAME, MAX_OFFERED_CAPABILITIES, MAX_OFFERED_VERSIONS } from './caps.js';
import { DecodeError, ErrorCode, isErrorCode, type ErrorCode as Code } from './errors.js';
import { DELIVERY_PROOF_BYTES, MAX_CREDENTIAL_LENGTH, MAX_ID_LENGTH, MAX_LINK_APPROVAL_BYTES, MAX_TEXT_LENGTH } from './limits.js';
import { MAX_WAKE_BYTES } from './wake.js';
import { bad, bytes, int, name, obj, oneOf, optBytes, optStr, str, type Obj } from './validate.js';

/*
 * Every message is a msgpack map with a string `t` (type). Handshake messages
 * travel in plaintext frames; everything after `welcome` travels in sealed frames.
 */

// ---- handshake (plaintext) ------------------------------------------------------

/**
 * The negotiation offer of a first flight (caps.ts): the versions the client speaks (`v` among
 * them) and the capabilities it asks for. Both absent: a client from before negotiation.
 */
export interface OfferFields { vs?: number[]; caps?: string[] }
/** Client → server: first flight of a full handshake (Noise IK shape). */
export interface Hello extends OfferFields { t: 'hello'; v: number; e: Uint8Array; s: Uint8Array; p: Uint8Array; cookie?: Uint8Array }
/** Client → server: first flight of a resumption with a ticket. */
export interface Resume extends OfferFields { t: 'resume'; v: number; e: Uint8Array; tk: Uint8Array; p: Uint8Array; cookie?: Uint8Array }
/** Server → client: prove your address first (sent under handshake load). */
export interface Cookie { t: 'cookie'; c: Uint8Array }
/** Server → client: second flight; `p` is sealed. */
export interface Welcome { t: 'welcome'; e: Uint8Array; p: Uint8Array }
export interface ErrorMsg { t: 'error'; code: Code; message: string; ref?: string }

/**
 * Contents of a hello/resume `p` once decrypted. A device that is not registered yet
 * offers at most one proof that it may join the account (docs/security.md):
 * `reg` the shared registration token of a development cluster ('' when open),
 * `cred` a credential (a JWT) from the operator's auth service, or `link` an
 * approval from one of the account's existing devices (`devices.link`).
 */
export interface HelloPayload { user: string; device: string; ts: number; reg?: string; cred?: string; link?: Uint8Array }

/** Contents of welcome `p` once decrypted. */
export interface WelcomePayload {
  session: string;
  cell: string;
  node: string;
  ticket?: Uint8Array;
  ticketExpires?: number;
  serverTime: number;
  resumed: boolean;
  /** The cluster's Ed25519 key for connect hints (authenticated by the handshake). */
  hk?: Uint8Array;
  /** This cell's web listener, host:port (WebSocket and chunked HTTP, docs/transports.md). */
  wa?: string;
  /** The server's choice when the first flight made an offer (caps.ts): the version and the capabilities granted. */
  ver?: number;
  caps?: string[];
}

// ---- sealed, client → server ---------------------------------------------------

export interface Finish { t: 'finish'; h: Uint8Array }
/** A chat message to a user (`to`) or a group (`g`): exactly one of the two. */
export type Send = { t: 'send'; id: string; text: string } & ({ to: string; g?: undefined } | { g: string; to?: undefined });
/** The device has the message (or receipt) `id` from `from`: the server may forget it. */
export interface Ack { t: 'ack'; id: string; from: string }
/**
 * The user has read message `id` from `from` (a read receipt, unless turned off).
 * `rk` is the delivery proof the message came with: only a reader it was
 * delivered to can produce it.
 */
export interface Read { t: 'read'; id: string; from: string; rk: Uint8Array }
/** Ephemeral: the user is typing to a user or in a group. Never stored. */
export type Typing = { t: 'typing'; on: boolean } & ({ to: string; g?: undefined } | { g: string; to?: undefined });
/** Sets the user's own presence (offline is implied by having no session). */
export interface SetPresence { t: 'presence'; s: 'online' | 'away' }
/** A request with an answer (`res` with the same `rid`): contacts, blocks, devices, groups, preferences. */
export interface Request { t: 'req'; rid: number; op: RequestOp; a: Record<string, unknown> }
export interface Ping { t: 'ping'; n: number }
export interface Bye { t: 'bye'; code?: Code; message?: string }
export type ClientMessage = Finish | Send | Ack | Read | Typing | SetPresence | Request | Ping | Bye;

/** Operations of `req`; their arguments are checked by decodeRequestArgs. */
export const REQUEST_OPS = [
  'contacts.list', 'contacts.add', 'contacts.remove', 'contacts.block', 'contacts.unblock',
  'prefs.get', 'prefs.set',
  'devices.list', 'devices.remove', 'devices.link',
  'groups.list', 'groups.create', 'groups.info', 'groups.add', 'groups.remove', 'groups.admin', 'groups.leave',
  'groups.invites', 'groups.accept', 'groups.decline',
  'track', 'profile.get', 'profile.set',
  'push.register', 'push.unregister', 'push.list', 'mute.set', 'mute.clear', 'mute.list',
  'reach.report',
] as const;
export type RequestOp = (typeof REQUEST_OPS)[number];

// ---- sealed, server → client ---------------------------------------------------

/**
 * A chat message delivered to a device. `g` names the group; `seq` orders a group's log; `c` the campaign that sent it.
 * `sys` marks a message the system originated (its sender is a reserved `_` name no client can hold): `campaign`,
 * a notice (`device-added`, `device-removed`, `group-invite`; `about` names the device or the group it is about). `rk` is the delivery proof
 * (DELIVERY_PROOF_BYTES): a `read` or a campaign's `track` must carry it back.
 */
export interface Msg { t: 'msg'; id: string; from: string; fd: string; to: string; text: string; ts: number; g?: string; seq?: number; c?: string; sys?: string; about?: string; rk?: Uint8Array }
export type ReceiptState = 'delivered' | 'read' | 'expired';
/**
 * A receipt about message `ref` that this user sent: device `bd` of `by` got it,
 * `by` read it, or it expired undelivered in `by`'s mailbox. Receipts travel
 * under custody like messages (acked by `id`, from `by`).
 */
export interface Receipt { t: 'rcpt'; id: string; ref: string; by: string; bd?: string; s: ReceiptState; ts: number }
export type DeliveryState = 'delivered' | 'stored' | 'failed';
/** Fate of a message the client sent: every device acknowledged, durable in the mailbox, or refused. */
export interface Status { t: 'status'; id: string; s: DeliveryState; code?: Code }
export type PresenceState = 'online' | 'away' | 'offline';
export interface Presence { t: 'pres'; user: string; s: PresenceState; last?: number }
export interface TypingEvent { t: 'typing'; from: string; on: boolean; g?: string }
export type Response = { t: 'res'; rid: number; ok: true; data?: unknown } | { t: 'res'; rid: number; ok: false; code: Code; message: string };
export interface Pong { t: 'pong'; n: number }
/** Move to another cell: `h` is a signed connect hint (hint.ts) naming it; `why` says who asked. */
export interface Move { t: 'move'; h: Uint8Array; why: 'rebalance' | 'associate' }
/**
 * Relay a wake token (wake.ts) to device `u`/`d`, a LAN peer this device reported
 * reaching (docs/relay.md). Never shown to anyone; the SDK forwards it and keeps nothing.
 */
export interface Relay { t: 'relay'; u: string; d: string; w: Uint8Array }
/**
 * The user's mutes changed on another of its devices: a notice only, which any
 * number of mutes fits in one small frame; the SDK lists them again (docs/push.md).
 */
export interface Mutes { t: 'mutes' }
export type ServerMessage = Msg | Receipt | Status | Presence | TypingEvent | Response | Pong | Move | Relay | Mutes | ErrorMsg | Bye;

const KEY = 32;

function typeOf(o: Obj): string {
  const t = o.t;
  if (typeof t !== 'string') bad('t', 'must be a string');
  return t;
}

function unknownType(t: string): never {
  throw new DecodeError(ErrorCode.UNKNOWN_TYPE, `unknown message type "${t.slice(0, 32)}"`);
}

function code(o: Obj, field: string): Code {
  const v = o[field];
  if (!isErrorCode(v)) bad(field, 'must be a known error code');
  return v;
}

function optCode(o: Obj, field: string): Code | undefined {
  return o[field] === undefined ? undefined : code(o, field);
}

function errorMsg(o: Obj): ErrorMsg {
  const ref = optStr(o, 'ref', MAX_ID_LENGTH);
  return { t: 'error', code: code(o, 'code'), message: str(o, 'message', 1024), ...(ref !== undefined && { ref }) };
}

function list<T>(o: Obj, field: string, max: number, item: (x: unknown) => x is T, what: string): T[] | undefined {
  const v = o[field];
  if (v === undefined) return undefined;
  if (!Array.isArray(v) || v.length > max || !v.every(item)) bad(field, `must be a list of at most ${max} ${what}`);
  return v;
}

const isVersion = (x: unknown): x is number => typeof x === 'number' && Number.isInteger(x) && x >= 0 && x <= 255;
const isCapName = (x: unknown): x is string => typeof x === 'string' && CAPABILITY_NAME.test(x);

function offerFields(o: Obj, v: number): OfferFields {
  const vs = list(o, 'vs', MAX_OFFERED_VERSIONS, isVersion, 'versions 0..255');
  const caps = list(o, 'caps', MAX_OFFERED_CAPABILITIES, isCapName, 'capability names');
  if (vs && !vs.includes(v)) bad('vs', 'must include "v"');
  return { ...(vs && { vs }), ...(caps && { caps }) };
}

/** Server side: the first frame of a connection. */
export function decodeClientHandshake(v: unknown): Hello | Resume {
  const o = obj(v);
  const t = typeOf(o);
  if (t !== 'hello' && t !== 'resume') return unknownType(t);
  const cookie = optBytes(o, 'cookie', 16, 64);
  const ver = int(o, 'v', 0, 255);
  const base = { v: ver, e: bytes(o, 'e', KEY), p: bytes(o, 'p', 16, 8192), ...(cookie && { cookie }), ...offerFields(o, ver) };
  if (t === 'hello') return { t, ...base, s: bytes(o, 's', KEY + 16) };
  return { t, ...base, tk: bytes(o, 'tk', 32, 1024) };
}

/** Client side: the server's answer to hello/resume. */
export function decodeServerHandshake(v: unknown): Cookie | Welcome | ErrorMsg {
  const o = obj(v);
  const t = typeOf(o);
  if (t === 'cookie') return { t, c: bytes(o, 'c', 16, 64) };
  if (t === 'welcome') return { t, e: bytes(o, 'e', KEY), p: bytes(o, 'p', 16, 4096) };
  if (t === 'error') return errorMsg(o);
  return unknownType(t);
}

export function decodeHelloPayload(v: unknown): HelloPayload {
  const o = obj(v, 'payload');
  const reg = optStr(o, 'reg', 256);
  const cred = optStr(o, 'cred', MAX_CREDENTIAL_LENGTH);
  const link = optBytes(o, 'link', 65, MAX_LINK_APPROVAL_BYTES);
  if (Number(reg !== undefined) + Number(cred !== undefined) + Number(link !== undefined) > 1) bad('reg', 'at most one of "reg", "cred" and "link" may be offered');
  return { user: name(o, 'user'), device: name(o, 'device', 32), ts: int(o, 'ts'), ...(reg !== undefined && { reg }), ...(cred !== undefined && { cred }), ...(link !== undefined && { link }) };
}

export function decodeWelcomePayload(v: unknown): WelcomePayload {
  const o = obj(v, 'payload');
  const ticket = optBytes(o, 'ticket', 32, 1024);
  const resumed = o.resumed;
  if (typeof resumed !== 'boolean') bad('resumed', 'must be a boolean');
  return {
    session: str(o, 'session', MAX_ID_LENGTH, 1),
    cell: str(o, 'cell', 128, 1),
    node: str(o, 'node', 128, 1),
    serverTime: int(o, 'serverTime'),
    resumed,
    ...(ticket && { ticket, ticketExpires: int(o, 'ticketExpires') }),
    ...(o.hk !== undefined && { hk: bytes(o, 'hk', 32) }),
    ...(o.wa !== undefined && { wa: str(o, 'wa', 300, 3) }),
    ...(o.ver !== undefined && { ver: int(o, 'ver', 0, 255) }),
    ...(o.caps !== undefined && { caps: list(o, 'caps', MAX_OFFERED_CAPABILITIES, isCapName, 'capability names')! }),
  };
}

/** `to` (a user) or `g` (a group), exactly one. */
function target(o: Obj): { to: string } | { g: string } {
  if ((o.to === undefined) === (o.g === undefined)) bad('to', 'exactly one of "to" and "g" is required');
  return o.to !== undefined ? { to: name(o, 'to') } : { g: name(o, 'g') };
}

function bool(o: Obj, field: string): boolean {
  const v = o[field];
  if (typeof v !== 'boolean') bad(field, 'must be a boolean');
  return v;
}

export function decodeClientMessage(v: unknown): ClientMessage {
  const o = obj(v);
  const t = typeOf(o);
  switch (t) {
    case 'send':
      return { t, id: name(o, 'id'), text: str(o, 'text', MAX_TEXT_LENGTH), ...target(o) } as Send;
    case 'ack':
      return { t, id: name(o, 'id'), from: name(o, 'from') };
    case 'read':
      return { t, id: name(o, 'id'), from: name(o, 'from'), rk: bytes(o, 'rk', DELIVERY_PROOF_BYTES) };
    case 'typing':
      return { t, on: bool(o, 'on'), ...target(o) } as Typing;
    case 'presence':
      return { t, s: oneOf(o, 's', ['online', 'away'] as const) };
    case 'req':
      return { t, rid: int(o, 'rid', 0, 2 ** 32), op: oneOf(o, 'op', REQUEST_OPS), a: o.a === undefined ? {} : obj(o.a, 'a') };
    case 'ping':
      return { t, n: int(o, 'n') };
    case 'finish':
      return { t, h: bytes(o, 'h', 32) };
    case 'bye': {
      const c = optCode(o, 'code');
      const message = optStr(o, 'message', 1024);
      return { t, ...(c && { code: c }), ...(message !== undefined && { message }) };
    }
    default:
      return unknownType(t);
  }
}

export function decodeServerMessage(v: unknown): ServerMessage {
  const o = obj(v);
  const t = typeOf(o);
  switch (t) {
    case 'msg': {
      const g = o.g === undefined ? undefined : name(o, 'g');
      const seq = o.seq === undefined ? undefined : int(o, 'seq');
      const c = o.c === undefined ? undefined : name(o, 'c');
      const sys = o.sys === undefined ? undefined : name(o, 'sys', 32);
      const about = o.about === undefined ? undefined : name(o, 'about');
      const rk = o.rk === undefined ? undefined : bytes(o, 'rk', DELIVERY_PROOF_BYTES);
      return {
        t, id: name(o, 'id'), from: name(o, 'from'), fd: name(o, 'fd', 32), to: name(o, 'to'), text: str(o, 'text', MAX_TEXT_LENGTH), ts: int(o, 'ts'),
        ...(g !== undefined && { g }), ...(seq !== undefined && { seq }), ...(c !== undefined && { c }),
        ...(sys !== undefined && { sys }), ...(about !== undefined && { about }), ...(rk !== undefined && { rk }),
      };
    }
    case 'rcpt': {
      const bd = o.bd === undefined ? undefined : name(o, 'bd', 32);
      return { t, id: name(o, 'id'), ref: name(o, 'ref'), by: name(o, 'by'), s: oneOf(o, 's', ['delivered', 'read', 'expired'] as const), ts: int(o, 'ts'), ...(bd !== undefined && { bd }) };
    }
    case 'status': {
      const c = optCode(o, 'code');
      return { t, id: name(o, 'id'), s: oneOf(o, 's', ['delivered', 'stored', 'failed'] as const), ...(c && { code: c }) };
    }
    case 'pres': {
      const last = o.last === undefined ? undefined : int(o, 'last');
      return { t, user: name(o, 'user'), s: oneOf(o, 's', ['online', 'away', 'offline'] as const), ...(last !== undefined && { last }) };
    }
    case 'typing': {
      const g = o.g === undefined ? undefined : name(o, 'g');
      return { t, from: name(o, 'from'), on: bool(o, 'on'), ...(g !== undefined && { g }) };
    }
    case 'res': {
      const rid = int(o, 'rid', 0, 2 ** 32);
      if (o.ok === true) return { t, rid, ok: true, ...(o.data !== undefined && { data: o.data }) };
      return { t, rid, ok: false, code: code(o, 'code'), message: str(o, 'message', 1024) };
    }
    case 'pong':
      return { t, n: int(o, 'n') };
    case 'move':
      return { t, h: bytes(o, 'h', 65, 512), why: oneOf(o, 'why', ['rebalance', 'associate'] as const) };
    case 'relay':
      return { t, u: name(o, 'u'), d: name(o, 'd', 32), w: bytes(o, 'w', 65, MAX_WAKE_BYTES) };
    case 'mutes':
      return { t };
    case 'error':
      return errorMsg(o);
    case 'bye': {
      const c = optCode(o, 'code');
      const message = optStr(o, 'message', 1024);
      return { t, ...(c && { code: c }), ...(message !== undefined && { message }) };
    }
    default:
      return unknownType(t);
  }
}
