import { isName, MAX_TEXT_LENGTH, MAX_WAKE_BYTES, type Msg, type Receipt, type ReceiptState } from '@gravitas/protocol';

/*
 * What travels between cells (core NATS) and into mailboxes (JetStream): items
 * under custody, and the envelopes that carry them. All msgpack; every decoder
 * checks shapes, because a bad envelope must never crash a cell.
 */

/**
 * A chat message under custody. `g`/`seq`: a group message and its place in the group's log; `c` the campaign that
 * sent it; `sys` set only on what the system originates (its sender is a reserved `_` name), `about` the device or
 * account notice is about.
 */
export interface ChatItem { k: 'm'; id: string; from: string; fd: string; to: string; text: string; ts: number; g?: string; seq?: number; c?: string; sys?: string; about?: string }
/**
 * A receipt under custody, addressed to `to` (who sent message `ref`): `from` is the
 * user it is about, `fd` its device (or '_' for a user-level read/expired receipt).
 */
export interface ReceiptItem { k: 'r'; id: string; from: string; fd: string; to: string; ref: string; s: ReceiptState; ts: number }
export type Item = ChatItem | ReceiptItem;

/** A receipt about a whole user rather than one device. */
export const ANY_DEVICE = '_';
/** The senders of system notices (no client can hold a `_` name), and the device name system items come from. */
export const ACCOUNT_SENDER = '_account';
export const GROUPS_SENDER = '_groups';
export const SYSTEM_DEVICE = 'system';
/** The `sys` of notices; `about` names the device added or removed, or the group one is invited to. */
export const NOTICE = { deviceAdded: 'device-added', deviceRemoved: 'device-removed', groupInvite: 'group-invite' } as const;

/** Where a delivered item came from, so the device's ack can find its way back. */
export interface Origin { cell: string; user: string; device: string }

/** Messages on a cell's inbox subject (discriminated on `k`). */
export type Envelope =
  | { k: 'dlv'; m: Item; u: string; dev: string; oc: string } // deliver to device `u/dev`; oc = origin cell holding custody
  | { k: 'ack'; id: string; from: string; fd: string; u: string; dev: string } // device `u/dev` acknowledged item from/fd/id
  | { k: 'nh'; id: string; from: string; fd: string; u: string; dev: string } // "not here": device `u/dev` has no session on this cell
  | { k: 'kick'; user: string; dev: string; ep: number } // a newer session of the device exists
  | { k: 'mbx'; user: string; dev: string } // the device's mailbox has new items: drain again
  | { k: 'gdlv'; m: ChatItem; to: Array<[string, string]> } // a group message for these (user, device) sessions
  | { k: 'typ'; from: string; to: string; on: boolean; g?: string } // typing indicator for every session of `to`
  | { k: 'exp'; user: string; dev: string } // device `user/dev` was sent a connect hint to this cell
  | { k: 'rly'; u: string; dev: string; tu: string; td: string; w: Uint8Array }; // send relayer `u/dev` a wake token `w` for its peer `tu/td`

/**
 * Envelope on the invalidations subject: a cached record changed. `revoked`: keys of
 * user `key` were revoked — of device `dev` at registration `rid`, or (no `dev`) of
 * every device (a suspension); their live sessions end wherever they are. `social`
 * may carry `d`, the change itself, for cells whose copy it applies to (validated by `Social`).
 */
export type Invalidation =
  | { kind: 'devices' | 'group' | 'profile' | 'mutes'; key: string }
  | { kind: 'social'; key: string; d?: unknown }
  | { kind: 'revoked'; key: string; dev?: string; rid?: number };

type O = Record<string, unknown>;
const s = (v: unknown): v is string => typeof v === 'string';
const n = (v: unknown): v is string => typeof v === 'string' && isName(v, 128);
const num = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);
const RECEIPT_STATES = new Set(['delivered', 'read', 'expired']);

/** The frame a device gets for an item; a message carries its delivery proof `rk` for that reader (proofs.ts). */
export function toClient(i: Item, rk?: Uint8Array): Msg | Receipt {
  if (i.k === 'r') return { t: 'rcpt', id: i.id, ref: i.ref, by: i.from, s: i.s, ts: i.ts, ...(i.fd !== ANY_DEVICE && { bd: i.fd }) };
  // Built field by field (this runs for every delivery): no temporary objects for the optional ones.
  const m: Msg = { t: 'msg', id: i.id, from: i.from, fd: i.fd, to: i.to, text: i.text, ts: i.ts };
  if (i.g !== undefined) m.g = i.g;
  if (i.seq !== undefined) m.seq = i.seq;
  if (i.c !== undefined) m.c = i.c;
  if (i.sys !== undefined) m.sys = i.sys;
  if (i.about !== undefined) m.about = i.about;
  if (rk !== undefined) m.rk = rk;
  return m;
}

export function decodeItem(v: unknown): Item {
  const m = v as O;
  if (typeof m === 'object' && m && n(m.id) && n(m.from) && n(m.fd) && n(m.to) && num(m.ts)) {
    if (
      m.k === 'm' && s(m.text) && m.text.length <= MAX_TEXT_LENGTH && (m.g === undefined || n(m.g)) && (m.seq === undefined || num(m.seq)) && (m.c === undefined || n(m.c)) &&
      (m.sys === undefined || n(m.sys)) && (m.about === undefined || n(m.about))
    ) {
      return {
        k: 'm', id: m.id, from: m.from, fd: m.fd, to: m.to, text: m.text, ts: m.ts,
        ...(m.g !== undefined && { g: m.g as string }), ...(m.seq !== undefined && { seq: m.seq as number }), ...(m.c !== undefined && { c: m.c as string }),
        ...(m.sys !== undefined && { sys: m.sys as string }), ...(m.about !== undefined && { about: m.about as string }),
      };
    }
    if (m.k === 'r' && n(m.ref) && s(m.s) && RECEIPT_STATES.has(m.s)) {
      return { k: 'r', id: m.id, from: m.from, fd: m.fd, to: m.to, ref: m.ref, s: m.s as ReceiptState, ts: m.ts };
    }
  }
  throw new TypeError('malformed item');
}

export function decodeEnvelope(v: unknown): Envelope {
  const o = v as O;
  if (typeof o !== 'object' || o === null) throw new TypeError('envelope must be a map');
  switch (o.k) {
    case 'dlv':
      if (n(o.u) && n(o.dev) && n(o.oc)) return { k: 'dlv', m: decodeItem(o.m), u: o.u, dev: o.dev, oc: o.oc };
      break;
    case 'ack':
    case 'nh':
      if (n(o.id) && n(o.from) && n(o.fd) && n(o.u) && n(o.dev)) return { k: o.k, id: o.id, from: o.from, fd: o.fd, u: o.u, dev: o.dev };
      break;
    case 'kick':
      if (n(o.user) && n(o.dev) && num(o.ep)) return { k: 'kick', user: o.user, dev: o.dev, ep: o.ep };
      break;
    case 'mbx':
    case 'exp':
      if (n(o.user) && n(o.dev)) return { k: o.k, user: o.user, dev: o.dev };
      break;
    case 'gdlv': {
      const item = decodeItem(o.m);
      if (item.k === 'm' && Array.isArray(o.to) && o.to.every((p) => Array.isArray(p) && p.length === 2 && n(p[0]) && n(p[1]))) {
        return { k: 'gdlv', m: item, to: o.to as Array<[string, string]> };
      }
      break;
    }
    case 'rly':
      if (n(o.u) && n(o.dev) && n(o.tu) && n(o.td) && o.w instanceof Uint8Array && o.w.length <= MAX_WAKE_BYTES) return { k: 'rly', u: o.u, dev: o.dev, tu: o.tu, td: o.td, w: o.w };
      break;
    case 'typ':
      if (n(o.from) && n(o.to) && typeof o.on === 'boolean' && (o.g === undefined || n(o.g))) {
        return { k: 'typ', from: o.from, to: o.to, on: o.on, ...(o.g !== undefined && { g: o.g as string }) };
      }
      break;
  }
  throw new TypeError(`malformed envelope of kind ${String(o.k)}`);
}

export function decodeInvalidation(v: unknown): Invalidation {
  const o = v as O;
  if (typeof o === 'object' && o && n(o.key)) {
    if (o.kind === 'social') return { kind: 'social', key: o.key, ...(o.d !== undefined && { d: o.d }) };
    if (o.kind === 'devices' || o.kind === 'group' || o.kind === 'profile' || o.kind === 'mutes') return { kind: o.kind, key: o.key };
    if (o.kind === 'revoked' && (o.dev === undefined || (n(o.dev) && num(o.rid)))) return { kind: 'revoked', key: o.key, ...(o.dev !== undefined && { dev: o.dev as string, rid: o.rid as number }) };
  }
  throw new TypeError('malformed invalidation');
}
