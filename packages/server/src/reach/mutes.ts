import type { KV } from '@nats-io/kv';
import { chatKey, chatOfKey, ErrorCode, MUTE_LIMITS, pack, ProtocolError, unpack, type ChatRef, type MuteEntry } from '@gravitas/protocol';
import { isCasConflict } from '../cell/nats.js';

/*
 * Per-chat mutes, per user, in the KV bucket `<prefix>_mutes`: key `<user>`,
 * value msgpack { m: { <chatKey>: until } } with chatKey `u:<user>` or
 * `g:<group>` and until in ms (0: until cleared). An expired mute simply stops
 * applying (`isMuted` compares with the clock); it is pruned at the next write.
 */

export type MuteMap = ReadonlyMap<string, number>;

const CAS_ATTEMPTS = 16;

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

/** The active mutes as listed and synced (`until` absent: until cleared). */
export function muteList(m: MuteMap, now: number): MuteEntry[] {
  const out: MuteEntry[] = [];
  for (const [k, until] of m) {
    const chat = chatOfKey(k);
    if (chat && active(until, now)) out.push(until === 0 ? chat : { ...chat, until });
  }
  return out;
}

export class MuteStore {
  constructor(private readonly kv: KV) {}

  private async read(user: string): Promise<{ m: Map<string, number>; rev: number }> {
    const e = await this.kv.get(user);
    if (!e || e.operation !== 'PUT') return { m: new Map(), rev: e?.revision ?? 0 };
    return { m: decode(e.value), rev: e.revision };
  }

  async get(user: string): Promise<MuteMap> {
    return (await this.read(user)).m;
  }

  /** Sets (until > 0: until then; 0: until cleared) or clears (undefined) the mute of one chat. Expired ones are pruned. */
  async change(user: string, chat: ChatRef, until: number | undefined, now: number): Promise<MuteMap> {
    const key = chatKey(chat);
    for (let i = 0; i < CAS_ATTEMPTS; i++) {
      const cur = await this.read(user);
      const next = new Map([...cur.m].filter(([, u]) => active(u, now)));
      if (until === undefined) next.delete(key);
      else {
        if (!next.has(key) && next.size >= MUTE_LIMITS.maxPerUser) throw new ProtocolError(ErrorCode.TOO_MANY_MUTES, `a user may mute at most ${MUTE_LIMITS.maxPerUser} chats`);
        next.set(key, until);
      }
      if (until === undefined && !cur.m.has(key)) return cur.m; // nothing to clear
      try {
        const value = pack({ m: Object.fromEntries(next) });
        if (cur.rev) await this.kv.update(user, value, cur.rev);
        else await this.kv.create(user, value);
        return next;
      } catch (err) {
        if (!isCasConflict(err)) throw err;
      }
    }
    throw new ProtocolError(ErrorCode.CONFLICT, 'the mutes are being changed too often; try again');
  }
}
