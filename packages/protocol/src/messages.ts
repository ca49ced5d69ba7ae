import { DecodeError, ErrorCode, isErrorCode, type ErrorCode as Code } from './errors.js';
import { MAX_TEXT_LENGTH, MAX_ID_LENGTH } from './limits.js';
import { bad, bytes, int, name, obj, oneOf, optBytes, optStr, str, type Obj } from './validate.js';

/*
 * Every message is a msgpack map with a string `t` (type). Handshake messages
 * travel in plaintext frames; everything after `welcome` travels in sealed frames.
 */

// ---- handshake (plaintext) ------------------------------------------------------

/** Client → server: first flight of a full handshake (Noise IK shape). */
export interface Hello { t: 'hello'; v: number; e: Uint8Array; s: Uint8Array; p: Uint8Array; cookie?: Uint8Array }
/** Client → server: first flight of a resumption with a ticket. */
export interface Resume { t: 'resume'; v: number; e: Uint8Array; tk: Uint8Array; p: Uint8Array; cookie?: Uint8Array }
/** Server → client: prove your address first (sent under handshake load). */
export interface Cookie { t: 'cookie'; c: Uint8Array }
/** Server → client: second flight; `p` is sealed. */
export interface Welcome { t: 'welcome'; e: Uint8Array; p: Uint8Array }
export interface ErrorMsg { t: 'error'; code: Code; message: string; ref?: string }

/** Contents of a hello/resume `p` once decrypted. */
export interface HelloPayload { user: string; device: string; ts: number; reg?: string }
/** Contents of welcome `p` once decrypted. */
export interface WelcomePayload {
  session: string;
  cell: string;
  node: string;
  ticket?: Uint8Array;
  ticketExpires?: number;
  serverTime: number;
  resumed: boolean;
}

// ---- sealed, client → server ---------------------------------------------------

export interface Finish { t: 'finish'; h: Uint8Array }
export interface Send { t: 'send'; id: string; to: string; text: string }
export interface Ack { t: 'ack'; id: string }
export interface Ping { t: 'ping'; n: number }
export interface Bye { t: 'bye'; code?: Code; message?: string }
export type ClientMessage = Finish | Send | Ack | Ping | Bye;

// ---- sealed, server → client ---------------------------------------------------

/** A chat message delivered to a device. */
export interface Msg { t: 'msg'; id: string; from: string; fd: string; to: string; text: string; ts: number }
export type DeliveryState = 'delivered' | 'failed';
/** Fate of a message the client sent. */
export interface Status { t: 'status'; id: string; s: DeliveryState; code?: Code }
export interface Pong { t: 'pong'; n: number }
export type ServerMessage = Msg | Status | Pong | ErrorMsg | Bye;

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

/** Server side: the first frame of a connection. */
export function decodeClientHandshake(v: unknown): Hello | Resume {
  const o = obj(v);
  const t = typeOf(o);
  if (t !== 'hello' && t !== 'resume') return unknownType(t);
  const cookie = optBytes(o, 'cookie', 16, 64);
  const base = { v: int(o, 'v', 0, 255), e: bytes(o, 'e', KEY), p: bytes(o, 'p', 16, 1024), ...(cookie && { cookie }) };
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
  return { user: name(o, 'user'), device: name(o, 'device', 32), ts: int(o, 'ts'), ...(reg !== undefined && { reg }) };
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
  };
}

export function decodeClientMessage(v: unknown): ClientMessage {
  const o = obj(v);
  const t = typeOf(o);
  switch (t) {
    case 'send':
      return { t, id: name(o, 'id'), to: name(o, 'to'), text: str(o, 'text', MAX_TEXT_LENGTH) };
    case 'ack':
      return { t, id: name(o, 'id') };
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
    case 'msg':
      return { t, id: name(o, 'id'), from: name(o, 'from'), fd: name(o, 'fd', 32), to: name(o, 'to'), text: str(o, 'text', MAX_TEXT_LENGTH), ts: int(o, 'ts') };
    case 'status': {
      const c = optCode(o, 'code');
      return { t, id: name(o, 'id'), s: oneOf(o, 's', ['delivered', 'failed'] as const), ...(c && { code: c }) };
    }
    case 'pong':
      return { t, n: int(o, 'n') };
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
