import { DEFAULT_MAX_FRAME_BYTES, MAX_GROUP_NAME_LENGTH, MAX_ID_LENGTH, type RequestArgs } from '@gravitas/protocol';
import type { CellContext } from '../../core/context.js';
import type { SocialGraph } from '../../core/ports.js';
import type { DeviceSession } from '../../core/session.js';
import type { GroupRecords, InviteEntry } from './records.js';
import { lapse, memberOf } from './rules.js';

/*
 * Pages of list answers, each checked here against the SDK's default frame (64 KiB)
 * with the longest names: user names of 64 ASCII characters, group names of 128
 * UTF-16 units (up to 3 UTF-8 bytes each), msgpack headers and keys, plus 256
 * bytes for the answer's envelope and the seal.
 */
/** Longest msgpack encoding of a group id (16) / user name / group name / number, with its header. */
const ID_BYTES = 16 + 1;
const USER_BYTES = MAX_ID_LENGTH + 2;
const NAME_BYTES = MAX_GROUP_NAME_LENGTH * 3 + 3;
const NUM_BYTES = 9;
const ENVELOPE_BYTES = 256;
/** `groups.list`: `{ g, name }` per group. */
export const LIST_PAGE = 128;
/** `groups.invites`: `{ g, name, by, at, expires }` per invitation. */
export const INVITES_PAGE = 96;
/**
 * `groups.info`: the head (`g`, `name`, `owner`, counts), then member names (an
 * admin's twice: in `members` and `admins`) and invitations `{ user, by, expires }`
 * while they fit this many bytes, counted with each name's real length.
 */
export const INFO_PAGE_BYTES = 60_000;
const INFO_HEAD_BYTES = 64 + ID_BYTES + NAME_BYTES + USER_BYTES + 2 * NUM_BYTES;
const INVITED_BYTES = (user: string, by: string): number => user.length + by.length + 2 * 2 + NUM_BYTES + 20;
if (LIST_PAGE * (16 + ID_BYTES + NAME_BYTES) + ENVELOPE_BYTES > DEFAULT_MAX_FRAME_BYTES) throw new Error('a groups.list page does not fit one frame');
if (INVITES_PAGE * (40 + ID_BYTES + NAME_BYTES + USER_BYTES + 2 * NUM_BYTES) + ENVELOPE_BYTES > DEFAULT_MAX_FRAME_BYTES) throw new Error('a groups.invites page does not fit one frame');
if (INFO_HEAD_BYTES + INFO_PAGE_BYTES + Math.max(2 * USER_BYTES, INVITED_BYTES('x'.repeat(MAX_ID_LENGTH), 'x'.repeat(MAX_ID_LENGTH))) + ENVELOPE_BYTES > DEFAULT_MAX_FRAME_BYTES) {
  throw new Error('a groups.info page does not fit one frame');
}

const byName = (a: string, b: string): number => (a < b ? -1 : a > b ? 1 : 0);

/** Index of the first element of a sorted list greater than `x` (0 without `x`). */
function after(sorted: readonly string[], x: string | undefined): number {
  if (x === undefined) return 0;
  let lo = 0;
  let hi = sorted.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (sorted[mid]! <= x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/**
 * The groups.* requests that only read (docs/groups.md): the caller's groups
 * (`groups.list`), its pending invitations (`groups.invites`) and a group as its
 * members see it (`groups.info`), each a page at a time within one frame.
 */
export class GroupViews {
  constructor(
    private readonly ctx: CellContext,
    private readonly social: Pick<SocialGraph, 'refuses'>,
    private readonly records: GroupRecords,
  ) {}

  private get inviteTtlMs(): number {
    return this.ctx.config.groups.inviteTtlMs;
  }

  /** A page of the user's groups, in group id order, after `from`. */
  async list(s: DeviceSession, a: RequestArgs['groups.list']): Promise<{ groups: Array<{ g: string; name: string }>; next?: string }> {
    const ids = [...new Set(await this.records.groupsOf(s.user))].sort(byName);
    const groups: Array<{ g: string; name: string }> = [];
    let i = after(ids, a?.from);
    // The index may name groups the user left: read a page's worth at a time until the page is full.
    while (i < ids.length && groups.length < LIST_PAGE) {
      const batch = ids.slice(i, i + LIST_PAGE - groups.length);
      const recs = await Promise.all(batch.map((g) => this.records.get(g)));
      for (const r of recs) if (r?.members.has(s.user)) groups.push({ g: r.id, name: r.name });
      i += batch.length;
    }
    return { groups, ...(i < ids.length && { next: ids[i - 1]! }) };
  }

  /**
   * A page of the user's pending invitations, in group id order, after `from`.
   * Invitations that lapsed, were revoked, whose group is gone, or whose inviter
   * the user blocks are left out (the void ones are dropped from the list).
   */
  async invites(s: DeviceSession, a: RequestArgs['groups.invites']): Promise<{ invites: Array<{ g: string; name: string; by: string; at: number; expires: number }>; next?: string }> {
    const cutoff = Date.now() - this.inviteTtlMs;
    const all = (await this.records.invitesOf(s.user)).filter((x) => x.at > cutoff).sort((x, y) => byName(x.g, y.g));
    const ids = all.map((x) => x.g);
    const out: Array<{ g: string; name: string; by: string; at: number; expires: number }> = [];
    let i = after(ids, a?.from);
    while (i < all.length && out.length < INVITES_PAGE) {
      const batch = all.slice(i, i + INVITES_PAGE - out.length);
      const ok = await Promise.all(batch.map((x) => this.stillInvited(s.user, x)));
      batch.forEach((x, k) => {
        if (ok[k]) out.push({ g: x.g, name: x.name, by: x.by, at: x.at, expires: x.at + this.inviteTtlMs });
      });
      i += batch.length;
    }
    return { invites: out, ...(i < all.length && { next: ids[i - 1]! }) };
  }

  /** Whether an invitation in the user's list still stands; one that is void is dropped from the list. */
  private async stillInvited(user: string, x: InviteEntry): Promise<boolean> {
    if (await this.social.refuses(user, x.by)) return false; // blocked since: hidden, kept (an unblock shows it again)
    // A cached record may predate the invitation (its invalidation still on the way): then read it fresh.
    let r = await this.records.get(x.g);
    if (!r?.invited.has(user)) r = await this.records.get(x.g, true);
    if (r?.invited.has(user)) return true;
    // Revoked, lapsed in the group, the group gone, or accepted already: void.
    void this.records.uninvite(user, x.g).catch((err) => this.ctx.log('dropping a void invitation failed', err));
    return false;
  }

  /**
   * The group as its members see it, a page at a time: members in name order with
   * the admins among them, then (for admins) the pending invitations in name
   * order. `count` is the number of members, `pending` (admins) of invitations.
   */
  async info(s: DeviceSession, a: RequestArgs['groups.info']): Promise<unknown> {
    const r = lapse(await memberOf(this.records, s.user, a.g), Date.now() - this.inviteTtlMs);
    const isAdmin = r.admins.includes(s.user);
    const members = [...r.members.keys()].sort(byName);
    const invitedNames = isAdmin ? [...r.invited.keys()].sort(byName) : [];
    const from = a.from;
    let mi = 0;
    let ii = 0;
    if (from?.[0] === 'm') mi = after(members, from.slice(1));
    else if (from?.[0] === 'i') {
      mi = members.length;
      ii = after(invitedNames, from.slice(1));
    }
    let budget = INFO_PAGE_BYTES;
    const page: string[] = [];
    const admins: string[] = [];
    const invited: Array<{ user: string; by: string; expires: number }> = [];
    let last: string | undefined;
    for (; mi < members.length; mi++) {
      const u = members[mi]!;
      const admin = r.admins.includes(u);
      if ((budget -= (u.length + 2) * (admin ? 2 : 1)) < 0) break;
      page.push(u);
      if (admin) admins.push(u);
      last = `m${u}`;
    }
    if (mi === members.length) {
      for (; ii < invitedNames.length; ii++) {
        const u = invitedNames[ii]!;
        const x = r.invited.get(u)!;
        if ((budget -= INVITED_BYTES(u, x.by)) < 0) break;
        invited.push({ user: u, by: x.by, expires: x.at + this.inviteTtlMs });
        last = `i${u}`;
      }
    }
    const more = mi < members.length || ii < invitedNames.length;
    return {
      g: r.id,
      name: r.name,
      owner: r.owner,
      count: r.members.size,
      members: page,
      admins,
      ...(isAdmin && { invited, pending: r.invited.size }),
      ...(more && last !== undefined && { next: last }),
    };
  }
}
