import type { KV } from '@nats-io/kv';
import { chatKey, chatOfKey, DEFAULT_MAX_FRAME_BYTES, ErrorCode, MAX_ID_LENGTH, MUTE_LIMITS, pack, ProtocolError, unpack, type ChatRef, type MuteEntry } from '@gravitas/protocol';
import { casModify } from '../infra/kv.js';

/*
 * Per-chat mutes, per user, in the KV bucket `<prefix>_mutes`: key `<user>`,
 * value msgpack { m: { <chatKey>: until } } with chatKey `u:<user>` or
 * `g:<group>` and until in ms (0: until cleared). An expired mute simply stops
 * applying (`isMuted` compares with the clock); it is pruned at the next write.
 */

export type MuteMap = ReadonlyMap<string, number>;

/**
 * Mutes per `mute.list` answer. The largest entry in msgpack: a 2-field map (1),
 * "to" (3), the longest name (2 + MAX_ID_LENGTH), "until" (6) and a 64-bit number
 * (9); the page, the `next` cursor, the answer's envelope and the seal must fit
 * the SDK's frame limit (a full mute list is ~85 KB: it never goes in one frame).
 */
export const MUTE_LIST_PAGE = 500;
const MUTE_ENTRY_MAX = 1 + 3 + 2 + MAX_ID_LENGTH + 6 + 9;
if (MUTE_LIST_PAGE * MUTE_ENTRY_MAX + (MAX_ID_LENGTH + 16) + 256 > DEFAULT_MAX_FRAME_BYTES) throw new Error('a mute.list page does not fit one frame');

function decode(v: Uint8Array | undefined): Map<string, number> {
  const out = new Map<string, number>();
  if (!v || v.length === 0) return out;
  try {
    const o = unpack(v) as { m?: unknown };
    if (typeof o?.m !== 'object' || o.m === null) return out;
    for (const [k, until] of Object.entries(o.m as Record<string, unknown>)) {
      if (out.size >= MUTE_LIMITS.maxPerUser) break;
      if (chatOfKey(k) && typeof until === 'number' && Number.isFinite(until) && until >= 0) out.set(k, until);
    }
  } catch {
    // unreadable: no mutes rather than a failing push path
  }
  return out;
}

/** Active at `now`: until cleared, or until a time still ahead. */
export const active = (until: number, now: number): boolean => until === 0 || until > now;

export function isMuted(m: MuteMap, chat: ChatRef, now: number): boolean {
  const until = m.get(chatKey(chat));
  return until !== undefined && active(until, now);
}

/**
 * One page of the active mutes, in chat-key order after the cursor `from` (a chat
 * key); `next` is the cursor of the following page, absent on the last. Keyed, not
 * counted: mutes set or expired between two pages never make the next one skip or
 * repeat the others.
 */
export function mutePage(m: MuteMap, now: number, from?: string): { mutes: MuteEntry[]; next?: string } {
  const keys = [...m.keys()].filter((k) => (from === undefined || k > from) && active(m.get(k)!, now)).sort();
  const page = keys.slice(0, MUTE_LIST_PAGE);
  const mutes: MuteEntry[] = [];
  for (const k of page) {
    const chat = chatOfKey(k)!;
    const until = m.get(k)!;
    mutes.push(until === 0 ? chat : { ...chat, until });
  }
  return { mutes, ...(keys.length > page.length && { next: page[page.length - 1]! }) };
}

export class MuteStore {
  constructor(private readonly kv: KV) {}

  async get(user: string): Promise<MuteMap> {
    const e = await this.kv.get(user);
    return e && e.operation === 'PUT' ? decode(e.value) : new Map();
  }

  /** Sets (until > 0: until then; 0: until cleared) or clears (undefined) the mute of one chat. Expired ones are pruned. */
  change(user: string, chat: ChatRef, until: number | undefined, now: number): Promise<MuteMap> {
    const key = chatKey(chat);
    return casModify(
      this.kv,
      user,
      (cur) => {
        const m = decode(cur);
        const next = new Map([...m].filter(([, u]) => active(u, now)));
        if (until === undefined) next.delete(key);
        else {
          if (!next.has(key) && next.size >= MUTE_LIMITS.maxPerUser) throw new ProtocolError(ErrorCode.TOO_MANY_MUTES, `a user may mute at most ${MUTE_LIMITS.maxPerUser} chats`);
          next.set(key, until);
        }
        if (until === undefined && !m.has(key)) return { result: m }; // nothing to clear
        return { write: pack({ m: Object.fromEntries(next) }), result: next };
      },
      { contended: () => new ProtocolError(ErrorCode.CONFLICT, 'the mutes are being changed too often; try again') },
    );
  }
}
