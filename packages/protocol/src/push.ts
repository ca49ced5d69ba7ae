import { fromBase64Url } from './crypto.js';
import { bad, int, isName, isObj, name, obj, oneOf, str, type Obj } from './validate.js';
import { MAX_ID_LENGTH } from './limits.js';

/*
 * Push targets and per-chat mutes (docs/push.md): the arguments of the `push.*`
 * and `mute.*` requests and the `mutes` server message. Everything a device
 * registers ends up in an HTTP request made by a cell, so it is checked strictly
 * here, before it reaches the server's code.
 */

/** A Web Push subscription (RFC 8030, keys for RFC 8291), as a browser's PushSubscription.toJSON() gives it. */
export interface WebPushTarget { kind: 'webpush'; endpoint: string; keys: { p256dh: string; auth: string } }
/** An HTTP endpoint that takes signed JSON (docs/push.md, "Webhook"). */
export interface WebhookTarget { kind: 'webhook'; url: string }
export type PushTarget = WebPushTarget | WebhookTarget;

export const PUSH_LIMITS = {
  /** Longest endpoint or webhook URL. Push services use ~200-500 characters. */
  maxUrlLength: 2048,
  /** p256dh: an uncompressed P-256 point; auth: the 16-byte authentication secret (RFC 8291). */
  p256dhBytes: 65,
  authBytes: 16,
} as const;

/** A chat: a peer user (`to`) or a group (`g`), exactly one, as in `send`. */
export type ChatRef = { to: string; g?: undefined } | { g: string; to?: undefined };

/** Named mute durations; `always` mutes until `mute.clear`. */
export const MUTE_DURATIONS = { '15m': 900_000, '1h': 3_600_000, '8h': 28_800_000, '1d': 86_400_000, '1w': 604_800_000 } as const;
export type MuteDurationName = keyof typeof MUTE_DURATIONS;
export const MUTE_LIMITS = { minMs: 1000, maxMs: 366 * 86_400_000, maxPerUser: 1000 } as const;

/**
 * `mute.set` after validation: `forMs` a duration, `until` an absolute time (ms),
 * `always` until cleared; none of them: a user's chat until cleared, a group's
 * for a time proportional to its size (docs/push.md).
 */
export type MuteSet = ChatRef & { forMs?: number; until?: number; always?: boolean };
/** One mute as listed and synced: `until` absent means until cleared. */
export type MuteEntry = ChatRef & { until?: number };

/** A URL a cell may POST to: http(s) only, no credentials, bounded. */
function httpUrl(o: Obj, field: string): string {
  const s = str(o, field, PUSH_LIMITS.maxUrlLength, 1);
  let u: URL;
  try {
    u = new URL(s);
  } catch {
    return bad(field, 'must be an absolute http(s) URL');
  }
  if (u.protocol !== 'https:' && u.protocol !== 'http:') bad(field, 'must be an http(s) URL');
  if (u.username !== '' || u.password !== '') bad(field, 'may not carry credentials');
  if (u.hostname === '') bad(field, 'must name a host');
  return s;
}

function b64key(o: Obj, field: string, bytes: number, path: string): string {
  // Browsers may pad; the stored form is unpadded base64url.
  const s = str(o, field, 128, 1).replace(/=+$/, '');
  let b: Uint8Array;
  try {
    b = fromBase64Url(s);
  } catch {
    return bad(path, 'must be base64url');
  }
  if (b.length !== bytes) bad(path, `must be ${bytes} bytes`);
  if (field === 'p256dh' && b[0] !== 4) bad(path, 'must be an uncompressed P-256 point');
  return s;
}

/** The arguments of `push.register`. Throws BAD_MESSAGE naming the field. */
export function decodePushTarget(a: Obj): PushTarget {
  const kind = oneOf(a, 'kind', ['webpush', 'webhook'] as const);
  if (kind === 'webhook') return { kind, url: httpUrl(a, 'url') };
  const keys = obj(a.keys, 'keys');
  return {
    kind,
    endpoint: httpUrl(a, 'endpoint'),
    keys: { p256dh: b64key(keys, 'p256dh', PUSH_LIMITS.p256dhBytes, 'keys.p256dh'), auth: b64key(keys, 'auth', PUSH_LIMITS.authBytes, 'keys.auth') },
  };
}

export function decodeChatRef(o: Obj): ChatRef {
  if ((o.to === undefined) === (o.g === undefined)) bad('to', 'exactly one of "to" and "g" is required');
  return o.to !== undefined ? { to: name(o, 'to') } : { g: name(o, 'g') };
}

/** The arguments of `mute.set`: at most one of `for` (ms or a name) and `until`. */
export function decodeMuteSet(a: Obj): MuteSet {
  const chat = decodeChatRef(a);
  if (a.for !== undefined && a.until !== undefined) bad('for', 'give at most one of "for" and "until"');
  if (typeof a.for === 'string') {
    if (a.for === 'always') return { ...chat, always: true };
    return { ...chat, forMs: MUTE_DURATIONS[oneOf(a, 'for', Object.keys(MUTE_DURATIONS) as MuteDurationName[])] };
  }
  if (a.for !== undefined) return { ...chat, forMs: int(a, 'for', MUTE_LIMITS.minMs, MUTE_LIMITS.maxMs) };
  if (a.until !== undefined) return { ...chat, until: int(a, 'until', 1) };
  return chat;
}

/** The `mutes` of a `mute.list` answer (client side): at most MUTE_LIMITS.maxPerUser entries. */
export function decodeMuteList(v: unknown, field = 'mutes'): MuteEntry[] {
  if (!Array.isArray(v) || v.length > MUTE_LIMITS.maxPerUser) return bad(field, `must be a list of at most ${MUTE_LIMITS.maxPerUser} mutes`);
  return v.map((e, i) => {
    if (!isObj(e)) return bad(`${field}[${i}]`, 'must be a map');
    const chat = decodeChatRef(e);
    return e.until === undefined ? chat : { ...chat, until: int(e, 'until') };
  });
}

/** A `mute.list` cursor: the chat key (`u:<user>` or `g:<group>`) of the last mute of the previous page. */
export function muteCursor(o: Obj, field: string): string {
  const v = str(o, field, MAX_ID_LENGTH + 2, 3);
  if (!chatOfKey(v)) bad(field, 'must be the "next" of a mute.list answer');
  return v;
}

/** The storage and cache key of a chat: `u:<user>` or `g:<group>` (user and group ids may look alike). */
export function chatKey(c: ChatRef): string {
  return c.g !== undefined ? `g:${c.g}` : `u:${c.to}`;
}

/** The inverse of chatKey, or undefined for anything else. */
export function chatOfKey(k: string): ChatRef | undefined {
  const id = k.slice(2);
  if (!isName(id)) return undefined;
  if (k.startsWith('g:')) return { g: id };
  if (k.startsWith('u:')) return { to: id };
  return undefined;
}
