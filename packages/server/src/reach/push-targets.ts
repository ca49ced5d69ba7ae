import { createHash } from 'node:crypto';
import type { KV } from '@nats-io/kv';
import { ErrorCode, pack, ProtocolError, unpack, type PushTarget } from '@gravitas/protocol';
import { casModify } from '../infra/kv.js';

/*
 * Push targets, per device, in the KV bucket `<prefix>_push`: key `<user>.<device>`,
 * value msgpack { t: [StoredTarget] }. Changed only by compare-and-set. Not cached:
 * the gateway reads a device's targets once per coalesced push, and a target
 * registered on one cell must be used by every other at once.
 */

export type Provider = 'webpush' | 'webhook';

export interface StoredTarget {
  /** Derived from the URL: registering the same endpoint again replaces it. */
  id: string;
  kind: Provider;
  /** The endpoint (webpush) or URL (webhook). */
  url: string;
  /** webpush only: the subscription's keys (base64url). */
  p256dh?: string;
  auth?: string;
  at: number;
}

/** A target's id: 16 base64url characters of SHA-256 over kind and URL. */
export function targetId(t: PushTarget): string {
  const url = t.kind === 'webpush' ? t.endpoint : t.url;
  return createHash('sha256').update(`${t.kind}\n${url}`).digest('base64url').slice(0, 16);
}

function decode(v: Uint8Array | undefined): StoredTarget[] {
  if (!v || v.length === 0) return [];
  try {
    const o = unpack(v) as { t?: unknown };
    if (!Array.isArray(o?.t)) return [];
    // A foreign or older writer's malformed entry is skipped, never sent to.
    return o.t.filter((x): x is StoredTarget => {
      const e = x as Partial<StoredTarget>;
      return typeof e === 'object' && e !== null && typeof e.id === 'string' && typeof e.url === 'string' && typeof e.at === 'number'
        && (e.kind === 'webhook' || (e.kind === 'webpush' && typeof e.p256dh === 'string' && typeof e.auth === 'string'));
    });
  } catch {
    return [];
  }
}

export class PushTargets {
  constructor(private readonly kv: KV) {}

  private static key(user: string, device: string): string {
    return `${user}.${device}`;
  }

  async list(user: string, device: string): Promise<StoredTarget[]> {
    const e = await this.kv.get(PushTargets.key(user, device));
    return e && e.operation === 'PUT' ? decode(e.value) : [];
  }

  /** Read, change, compare-and-set. `change` returns the new list, or undefined for "nothing to write". */
  private modify(user: string, device: string, change: (list: StoredTarget[]) => StoredTarget[] | undefined): Promise<void> {
    return casModify(
      this.kv,
      PushTargets.key(user, device),
      (cur) => {
        const next = change(decode(cur));
        return next ? { write: pack({ t: next }), result: undefined } : { result: undefined };
      },
      { contended: () => new ProtocolError(ErrorCode.CONFLICT, 'the push targets are being changed too often; try again') },
    );
  }

  /** Adds or replaces (same id) a target; TOO_MANY_PUSH_TARGETS past `max`. Returns its id. */
  async register(user: string, device: string, t: PushTarget, max: number, now: number): Promise<string> {
    const id = targetId(t);
    const entry: StoredTarget = t.kind === 'webpush'
      ? { id, kind: 'webpush', url: t.endpoint, p256dh: t.keys.p256dh, auth: t.keys.auth, at: now }
      : { id, kind: 'webhook', url: t.url, at: now };
    await this.modify(user, device, (list) => {
      const others = list.filter((x) => x.id !== id);
      if (others.length >= max) throw new ProtocolError(ErrorCode.TOO_MANY_PUSH_TARGETS, `a device may register at most ${max} push targets`);
      return [...others, entry];
    });
    return id;
  }

  /** Removes a target; true if it was there (idempotent). */
  async remove(user: string, device: string, id: string): Promise<boolean> {
    let removed = false;
    await this.modify(user, device, (list) => {
      const next = list.filter((x) => x.id !== id);
      removed = next.length !== list.length;
      return removed ? next : undefined;
    });
    return removed;
  }

  /** The device left its account: its targets go too. */
  async forgetDevice(user: string, device: string): Promise<void> {
    await this.kv.purge(PushTargets.key(user, device));
  }
}
