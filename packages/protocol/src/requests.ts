import type { RequestOp } from './messages.js';
import { decodeChatRef, decodeMuteSet, decodePushTarget, muteCursor, type ChatRef, type MuteSet, type PushTarget } from './push.js';
import { DEFAULT_MAX_FRAME_BYTES, DELIVERY_PROOF_BYTES, MAX_ID_LENGTH } from './limits.js';
import { bad, bytes, int, isObj, name, oneOf, str, type Obj } from './validate.js';

/** Who may see a user's presence. */
export type PresenceVisibility = 'contacts' | 'nobody';
/** How a push for a muted chat goes out: data-only (the device syncs quietly) or not at all. */
export type MutedPush = 'silent' | 'suppress';
/** `pushPreview`: pushes may carry message text (off by default); `mutedPush`: docs/push.md. */
export interface Prefs { readReceipts: boolean; presence: PresenceVisibility; pushPreview: boolean; mutedPush: MutedPush }

/** Arguments of each request operation, after validation. */
export interface RequestArgs {
  /** A page of the contacts, then the blocked users, from position `from` (the answer's `next`). */
  'contacts.list': { from?: number };
  'contacts.add': { user: string };
  'contacts.remove': { user: string };
  'contacts.block': { user: string };
  'contacts.unblock': { user: string };
  'prefs.get': Record<string, never>;
  'prefs.set': Partial<Prefs>;
  'devices.list': Record<string, never>;
  'devices.remove': { device: string };
  /**
   * Approves a new device for the calling user's account: `key` is the new device's
   * X25519 public key (it shows it, e.g. as a QR code). The answer's `approval` is what
   * the new device presents in its first hello (docs/security.md, "Linking a device").
   */
  'devices.link': { device: string; key: Uint8Array };
  /** A page of the caller's groups, after group id `from` (the answer's `next`). */
  'groups.list': { from?: string };
  'groups.create': { name: string; members: string[] };
  /** A page of the group's members (then, for admins, its pending invitations), from cursor `from` (the answer's `next`). */
  'groups.info': { g: string; from?: string };
  'groups.add': { g: string; users: string[] };
  'groups.remove': { g: string; users: string[] };
  'groups.admin': { g: string; user: string; on: boolean };
  'groups.leave': { g: string };
  /** A page of the caller's pending invitations, after group id `from` (the answer's `next`). */
  'groups.invites': { from?: string };
  'groups.accept': { g: string };
  'groups.decline': { g: string };
  /**
   * Feedback on a campaign message: `eid` is the client's idempotency key for this event, `rk`
   * the delivery proof the campaign's message came with (only its recipients can send feedback).
   */
  track: { c: string; ev: CampaignEvent; eid: string; ts: number; rk: Uint8Array };
  'profile.get': Record<string, never>;
  /** Sets (or with null removes) profile attributes; every change makes a new version. */
  'profile.set': { attrs: ProfilePatch };
  /** Push targets of the calling device (docs/push.md). */
  'push.register': PushTarget;
  'push.unregister': { id: string };
  'push.list': Record<string, never>;
  /** Per-chat mutes of the calling user, synced to its other devices. */
  'mute.set': MuteSet;
  'mute.clear': ChatRef;
  /** One page of the user's active mutes, in chat-key order after the cursor `from` (the `next` of the previous page). */
  'mute.list': { from?: string };
  /** LAN peers this device reached directly (a probe) and can relay wake-ups to, for `ttlMs` (docs/relay.md). */
  'reach.report': { peers: ReachPeer[]; ttlMs: number };
}

/** A device another device can reach directly. */
export interface ReachPeer { user: string; device: string }
/** Bounds of one `reach.report`: peers listed, and the lifetime of the report (the server may shorten it). */
export const REACH_LIMITS = { maxPeers: 32, minTtlMs: 1000, maxTtlMs: 3_600_000 } as const;

function reachPeers(o: Obj): ReachPeer[] {
  const v = o.peers;
  if (!Array.isArray(v)) bad('peers', 'must be a list of { user, device }');
  if (v.length > REACH_LIMITS.maxPeers) bad('peers', `may list at most ${REACH_LIMITS.maxPeers} devices`);
  const out = new Map<string, ReachPeer>();
  v.forEach((p: unknown, i) => {
    if (!isObj(p)) bad(`peers[${i}]`, 'must be a map { user, device }');
    const peer = { user: name(p, 'user'), device: name(p, 'device', 32) };
    out.set(`${peer.user}/${peer.device}`, peer);
  });
  return [...out.values()];
}

/** What a device reports about a campaign message. */
export const CAMPAIGN_EVENTS = ['delivered', 'opened', 'clicked', 'dismissed', 'converted'] as const;
export type CampaignEvent = (typeof CAMPAIGN_EVENTS)[number];

export type ProfileValue = string | number | boolean;
export type ProfilePatch = Record<string, ProfileValue | null>;
/** Bounds of a profile: attributes, name length, string value length, encoded size. */
export const PROFILE_LIMITS = { maxAttrs: 64, maxNameLength: 64, maxStringLength: 1024, maxBytes: 8192 } as const;
const ATTR_NAME_RE = /^[A-Za-z_][A-Za-z0-9_.-]*$/;
/**
 * A profile attribute name: [A-Za-z_][A-Za-z0-9_.-]*, at most maxNameLength, and
 * never `__proto__` (msgpackr renames such keys; as a plain object's key it sets
 * the prototype). One rule for profiles and for the audience predicates over them.
 */
export function isAttrName(k: string): boolean {
  return k.length <= PROFILE_LIMITS.maxNameLength && ATTR_NAME_RE.test(k) && k !== '__proto__';
}

/** Validates a profile patch (also used by the admin API): names, types, sizes. Throws BAD_MESSAGE. */
export function decodeProfilePatch(v: unknown, field = 'attrs'): ProfilePatch {
  if (!isObj(v)) bad(field, 'must be a map of attribute name to string, number, boolean or null');
  const keys = Object.keys(v);
  if (keys.length === 0) bad(field, 'must set at least one attribute');
  if (keys.length > PROFILE_LIMITS.maxAttrs) bad(field, `may set at most ${PROFILE_LIMITS.maxAttrs} attributes`);
  const out: ProfilePatch = {};
  for (const k of keys) {
    if (!isAttrName(k)) bad(`${field}.${k.slice(0, 64)}`, `is not an attribute name ([A-Za-z_][A-Za-z0-9_.-]*, at most ${PROFILE_LIMITS.maxNameLength})`);
    const x = v[k];
    if (x === null || typeof x === 'boolean') out[k] = x;
    else if (typeof x === 'number' && Number.isFinite(x)) out[k] = x;
    else if (typeof x === 'string' && x.length <= PROFILE_LIMITS.maxStringLength) out[k] = x;
    else bad(`${field}.${k}`, `must be a string (at most ${PROFILE_LIMITS.maxStringLength}), a finite number, a boolean or null`);
  }
  return out;
}

/**
 * Users named in one request (a group's initial members, users to add or
 * remove): at most this many, so that the request fits the default frame with
 * the longest names (msgpack str header + name each, a group name of up to 3
 * UTF-8 bytes per UTF-16 unit, the envelope and the seal). The SDK splits
 * longer lists over several requests.
 */
export const MAX_USERS_PER_REQUEST = 512;
export const MAX_GROUP_NAME_LENGTH = 128;
if (MAX_USERS_PER_REQUEST * (MAX_ID_LENGTH + 2) + MAX_GROUP_NAME_LENGTH * 3 + 256 > DEFAULT_MAX_FRAME_BYTES) throw new Error('a request naming MAX_USERS_PER_REQUEST users does not fit one frame');
/** A `groups.info` cursor: `m` (members) or `i` (invitations), then the last user name of the previous page. */
const INFO_CURSOR = /^[mi][A-Za-z0-9_-]{1,64}$/;

function users(o: Obj, field: string): string[] {
  const v = o[field];
  if (!Array.isArray(v)) bad(field, 'must be a list of user names');
  if (v.length > MAX_USERS_PER_REQUEST) bad(field, `may list at most ${MAX_USERS_PER_REQUEST} users`);
  const out = new Set<string>();
  v.forEach((u, i) => out.add(name({ [`${field}[${i}]`]: u }, `${field}[${i}]`)));
  return [...out];
}

function flag(o: Obj, field: string): boolean {
  const v = o[field];
  if (typeof v !== 'boolean') bad(field, 'must be a boolean');
  return v;
}

const none = (): Record<string, never> => ({});
const user = (a: Obj) => ({ user: name(a, 'user') });
const group = (a: Obj) => ({ g: name(a, 'g') });

const DECODERS: { [K in RequestOp]: (a: Obj) => RequestArgs[K] } = {
  'contacts.list': (a) => ({ from: a.from === undefined ? 0 : int(a, 'from', 0, 1_000_000) }),
  'contacts.add': user,
  'contacts.remove': user,
  'contacts.block': user,
  'contacts.unblock': user,
  'prefs.get': none,
  'prefs.set': (a) => ({
    ...(a.readReceipts !== undefined && { readReceipts: flag(a, 'readReceipts') }),
    ...(a.presence !== undefined && { presence: oneOf(a, 'presence', ['contacts', 'nobody'] as const) }),
    ...(a.pushPreview !== undefined && { pushPreview: flag(a, 'pushPreview') }),
    ...(a.mutedPush !== undefined && { mutedPush: oneOf(a, 'mutedPush', ['silent', 'suppress'] as const) }),
  }),
  'devices.list': none,
  'devices.remove': (a) => ({ device: name(a, 'device', 32) }),
  'devices.link': (a) => ({ device: name(a, 'device', 32), key: bytes(a, 'key', 32) }),
  'groups.list': (a) => (a.from === undefined ? {} : { from: name(a, 'from') }),
  'groups.create': (a) => ({ name: str(a, 'name', MAX_GROUP_NAME_LENGTH, 1), members: a.members === undefined ? [] : users(a, 'members') }),
  'groups.info': (a) => {
    if (a.from === undefined) return group(a);
    const from = str(a, 'from', MAX_ID_LENGTH + 1, 2);
    if (!INFO_CURSOR.test(from)) bad('from', 'must be the `next` of an earlier groups.info answer');
    return { ...group(a), from };
  },
  'groups.add': (a) => ({ ...group(a), users: users(a, 'users') }),
  'groups.remove': (a) => ({ ...group(a), users: users(a, 'users') }),
  'groups.admin': (a) => ({ ...group(a), user: name(a, 'user'), on: flag(a, 'on') }),
  'groups.leave': group,
  'groups.invites': (a) => (a.from === undefined ? {} : { from: name(a, 'from') }),
  'groups.accept': group,
  'groups.decline': group,
  track: (a) => ({ c: name(a, 'c'), ev: oneOf(a, 'ev', CAMPAIGN_EVENTS), eid: name(a, 'eid'), ts: int(a, 'ts'), rk: bytes(a, 'rk', DELIVERY_PROOF_BYTES) }),
  'profile.get': none,
  'profile.set': (a) => ({ attrs: decodeProfilePatch(a.attrs) }),
  'push.register': decodePushTarget,
  'push.unregister': (a) => ({ id: name(a, 'id') }),
  'push.list': none,
  'mute.set': decodeMuteSet,
  'mute.clear': decodeChatRef,
  'mute.list': (a) => (a.from === undefined ? {} : { from: muteCursor(a, 'from') }),
  'reach.report': (a) => ({ peers: reachPeers(a), ttlMs: int(a, 'ttlMs', REACH_LIMITS.minTtlMs, REACH_LIMITS.maxTtlMs) }),
};

/** Validates the arguments of a `req`; throws BAD_MESSAGE naming the field. */
export function decodeRequestArgs<K extends RequestOp>(op: K, a: unknown): RequestArgs[K] {
  if (!isObj(a)) bad('a', 'must be a map');
  return DECODERS[op](a);
}
