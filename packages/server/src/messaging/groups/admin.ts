import { DEFAULT_MAX_FRAME_BYTES, ErrorCode, MAX_GROUP_NAME_LENGTH, MAX_ID_LENGTH, ProtocolError, type RequestArgs, type RequestOp } from '@gravitas/protocol';
import type { Cell } from '../../cell/cell.js';
import type { GroupLog } from './log.js';
import { each } from '../../infra/limiter.js';
import { newGroupId, storageError, type GroupRecord, type GroupRecords, type InviteEntry } from './records.js';
import type { Session } from '../../session/session.js';

/** KV requests in flight when one request touches many users. */
const FANOUT_CONCURRENCY = 32;

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

/**
 * Where an invitee is told that it was invited: called once for every invitation
 * recorded in an invitee's list — never for a user who does not exist or who
 * blocks the inviter, so nothing the inviter sees depends on it. The cell makes it
 * a system notice under custody (from `_groups`, `sys: group-invite`); set with
 * `Groups.setInviteNotices`, and until then nobody is told (the invitee still
 * finds it with `groups.invites`).
 */
export interface InviteNotices {
  onInvited(invitee: string, g: string, by: string): void;
}
export const NO_INVITE_NOTICES: InviteNotices = { onInvited() {} };

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
 * The groups.* requests (docs/groups.md): create, list, info, add, remove,
 * admins, leave, and the invitee's side: invites, accept, decline. Each change
 * is a compare-and-set of the group record (the source of truth); users' group
 * indexes are written before they join and after they left, so an index may name
 * a stale group but never misses one. Every change is announced cluster-wide,
 * which re-syncs the readers of affected devices (Groups.invalidate).
 *
 * Consent (`groups.policy`): with `invite`, the users an admin names are invited
 * and join only by accepting; with `contacts`, only users who list the admin as
 * a contact join (at once). Either way, whatever an admin sees — answers, errors,
 * the group's pending invitations — is the same whether a named user exists,
 * blocks the admin, declined, or holds too many groups or invitations.
 */
export class GroupAdmin {
  notices: InviteNotices = NO_INVITE_NOTICES;

  constructor(
    private readonly cell: Cell,
    private readonly records: GroupRecords,
    private readonly log: GroupLog,
  ) {}

  private get cfg() {
    return this.cell.config.groups;
  }

  private get maxSize(): number {
    return this.cell.config.limits.maxGroupSize;
  }

  async handle(s: Session, op: RequestOp, args: unknown): Promise<unknown> {
    try {
      switch (op) {
        case 'groups.list':
          return await this.list(s, args as RequestArgs['groups.list']);
        case 'groups.create':
          return await this.create(s, args as RequestArgs['groups.create']);
        case 'groups.info':
          return await this.info(s, args as RequestArgs['groups.info']);
        case 'groups.add':
          return await this.add(s, args as RequestArgs['groups.add']);
        case 'groups.remove':
          return await this.remove(s, args as RequestArgs['groups.remove']);
        case 'groups.admin':
          return await this.setAdmin(s, args as RequestArgs['groups.admin']);
        case 'groups.leave':
          return await this.leave(s, args as RequestArgs['groups.leave']);
        case 'groups.invites':
          return await this.invites(s, args as RequestArgs['groups.invites']);
        case 'groups.accept':
          return await this.accept(s, args as RequestArgs['groups.accept']);
        case 'groups.decline':
          await this.records.uninvite(s.user, (args as RequestArgs['groups.decline']).g);
          return undefined;
        default:
          throw new ProtocolError(ErrorCode.NOT_ALLOWED, `${op} is not a group operation`);
      }
    } catch (err) {
      if (!(err instanceof ProtocolError)) this.cell.log(`${op} failed`, err);
      throw storageError(err);
    }
  }

  // ---- the caller's groups and invitations ------------------------------------------------

  /** A page of the user's groups, in group id order, after `from`. */
  private async list(s: Session, a: RequestArgs['groups.list']): Promise<{ groups: Array<{ g: string; name: string }>; next?: string }> {
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
  private async invites(s: Session, a: RequestArgs['groups.invites']): Promise<{ invites: Array<{ g: string; name: string; by: string; at: number; expires: number }>; next?: string }> {
    const cutoff = Date.now() - this.cfg.inviteTtlMs;
    const all = (await this.records.invitesOf(s.user)).filter((x) => x.at > cutoff).sort((x, y) => byName(x.g, y.g));
    const ids = all.map((x) => x.g);
    const out: Array<{ g: string; name: string; by: string; at: number; expires: number }> = [];
    let i = after(ids, a?.from);
    while (i < all.length && out.length < INVITES_PAGE) {
      const batch = all.slice(i, i + INVITES_PAGE - out.length);
      const ok = await Promise.all(batch.map((x) => this.stillInvited(s.user, x)));
      batch.forEach((x, k) => {
        if (ok[k]) out.push({ g: x.g, name: x.name, by: x.by, at: x.at, expires: x.at + this.cfg.inviteTtlMs });
      });
      i += batch.length;
    }
    return { invites: out, ...(i < all.length && { next: ids[i - 1]! }) };
  }

  /** Whether an invitation in the user's list still stands; one that is void is dropped from the list. */
  private async stillInvited(user: string, x: InviteEntry): Promise<boolean> {
    if (await this.cell.social.refuses(user, x.by)) return false; // blocked since: hidden, kept (an unblock shows it again)
    // A cached record may predate the invitation (its invalidation still on the way): then read it fresh.
    let r = await this.records.get(x.g);
    if (!r?.invited.has(user)) r = await this.records.get(x.g, true);
    if (r?.invited.has(user)) return true;
    // Revoked, lapsed in the group, the group gone, or accepted already: void.
    void this.records.uninvite(user, x.g).catch((err) => this.cell.log('dropping a void invitation failed', err));
    return false;
  }

  /** Joins a group the user was invited to: NOT_FOUND if there is no such invitation (any more), TOO_MANY_GROUPS at the cap. */
  private async accept(s: Session, a: RequestArgs['groups.accept']): Promise<{ g: string; name: string }> {
    const now = Date.now();
    const mine = (await this.records.invitesOf(s.user)).find((x) => x.g === a.g && x.at > now - this.cfg.inviteTtlMs);
    if (!mine) throw new ProtocolError(ErrorCode.NOT_FOUND, 'no such invitation');
    await this.records.join(s.user, a.g, this.cfg.maxPerUser);
    let after: GroupRecord | null;
    try {
      // Members get what is stored after this position: nothing from before they joined.
      const j = await this.log.position(a.g);
      ({ after } = await this.records.modify(a.g, (r0) => {
        const r = this.lapse(r0);
        if (r.members.has(s.user)) return r === r0 ? undefined : r;
        if (!r.invited.has(s.user)) throw new ProtocolError(ErrorCode.NOT_FOUND, 'no such invitation');
        if (r.members.size >= this.maxSize) throw new ProtocolError(ErrorCode.GROUP_FULL, `a group has at most ${this.maxSize} members`);
        const members = new Map(r.members).set(s.user, { j, t: Date.now() });
        const invited = new Map(r.invited);
        invited.delete(s.user);
        return { ...r, members, invited, v: r.v + 1 };
      }));
    } catch (err) {
      if (err instanceof ProtocolError && (err.code === ErrorCode.NOT_FOUND || err.code === ErrorCode.GROUP_FULL)) {
        // Refused by the record, so nothing was written there: the index entry goes again.
        await this.records.leave(s.user, a.g).catch((e) => this.cell.log('group index update failed', e));
        if (err.code === ErrorCode.NOT_FOUND) await this.records.uninvite(s.user, a.g).catch((e) => this.cell.log('dropping a void invitation failed', e));
      }
      throw err;
    }
    await this.records.uninvite(s.user, a.g).catch((err) => this.cell.log('invitation cleanup failed', err));
    this.announce(a.g, [s.user]);
    return { g: a.g, name: after?.name ?? mine.name };
  }

  // ---- creating and changing groups ----------------------------------------------------

  private async create(s: Session, a: RequestArgs['groups.create']): Promise<{ g: string; added: string[]; invited: string[] }> {
    const named = a.members.filter((u) => u !== s.user);
    // Counted over every name, known or not: the answer cannot depend on who exists.
    if (1 + named.length > this.maxSize) throw new ProtocolError(ErrorCode.GROUP_FULL, `a group has at most ${this.maxSize} members`);
    const invite = this.cfg.policy === 'invite';
    const now = Date.now();
    for (let attempt = 0; attempt < 4; attempt++) {
      const g = newGroupId();
      // Indexes first: a user's index never misses a group it is in. The creator's may refuse (TOO_MANY_GROUPS).
      await this.records.join(s.user, g, this.cfg.maxPerUser);
      const joined = invite ? [] : await this.joinIndexes(g, await this.consenting(s.user, named));
      const users = [s.user, ...joined];
      // A new subject: position 0 means "everything in this group's log".
      const rec: GroupRecord = {
        id: g,
        name: a.name,
        owner: s.user,
        admins: [s.user],
        members: new Map(users.map((u) => [u, { j: 0, t: now }])),
        invited: new Map(invite ? named.map((u) => [u, { by: s.user, at: now }]) : []),
        v: 1,
        created: now,
      };
      if (await this.records.create(rec)) {
        this.announce(g, users);
        if (invite) await this.offer(rec, named, s.user, now);
        return { g, added: joined, invited: invite ? named : [] };
      }
      await each(users, FANOUT_CONCURRENCY, (u) => this.records.leave(u, g));
    }
    throw new ProtocolError(ErrorCode.CONFLICT, 'could not allocate a group id, try again');
  }

  /**
   * Adds users: invites them (`invite`), or adds those who list the caller as a
   * contact (`contacts`). Users already members or invited are left as they are.
   */
  private async add(s: Session, a: RequestArgs['groups.add']): Promise<{ added: string[]; invited: string[] }> {
    const r0 = this.lapse(await this.memberOf(s, a.g, true));
    this.requireAdmin(r0, s.user);
    const fresh = a.users.filter((u) => !r0.members.has(u) && !r0.invited.has(u));
    if (fresh.length === 0) return { added: [], invited: [] };
    this.requireSeats(r0, fresh.length);
    if (this.cfg.policy === 'invite') {
      const now = Date.now();
      const { before, after } = await this.records.modify(a.g, (r1) => {
        const r = this.lapse(r1);
        this.requireAdminMember(r, s.user);
        const add = fresh.filter((u) => !r.members.has(u) && !r.invited.has(u));
        if (add.length === 0) return r === r1 ? undefined : r;
        this.requireSeats(r, add.length);
        const invited = new Map(r.invited);
        for (const u of add) invited.set(u, { by: s.user, at: now });
        return { ...r, invited, v: r.v + 1 };
      });
      const invited = after ? [...after.invited.keys()].filter((u) => !before.invited.has(u)) : [];
      this.announce(a.g, []);
      if (after) await this.offer(after, invited, s.user, now);
      return { added: [], invited };
    }
    const joined = await this.joinIndexes(a.g, await this.consenting(s.user, fresh));
    if (joined.length === 0) return { added: [], invited: [] };
    let before: GroupRecord;
    let after: GroupRecord | null;
    try {
      const j = await this.log.position(a.g);
      ({ before, after } = await this.records.modify(a.g, (r1) => {
        const r = this.lapse(r1);
        this.requireAdminMember(r, s.user);
        const add = joined.filter((u) => !r.members.has(u));
        if (add.length === 0) return r === r1 ? undefined : r;
        this.requireSeats(r, add.length);
        const members = new Map(r.members);
        const invited = new Map(r.invited);
        const t = Date.now();
        for (const u of add) {
          members.set(u, { j, t });
          invited.delete(u);
        }
        return { ...r, members, invited, v: r.v + 1 };
      }));
    } catch (err) {
      if (err instanceof ProtocolError) await each(joined, FANOUT_CONCURRENCY, (u) => this.records.leave(u, a.g).catch((e) => this.cell.log('group index update failed', e)));
      throw err;
    }
    const added = after ? [...after.members.keys()].filter((u) => !before.members.has(u)) : [];
    this.announce(a.g, added);
    return { added, invited: [] };
  }

  /** Removes members and revokes pending invitations of the named users; others are ignored. */
  private async remove(s: Session, a: RequestArgs['groups.remove']): Promise<{ removed: string[]; revoked: string[] }> {
    const r0 = await this.memberOf(s, a.g, true);
    this.requireAdmin(r0, s.user);
    let revoked: string[] = [];
    const { before, after } = await this.records.modify(a.g, (r1) => {
      const r = this.lapse(r1);
      this.requireAdminMember(r, s.user);
      const gone = a.users.filter((u) => r.members.has(u));
      revoked = a.users.filter((u) => r.invited.has(u));
      if (gone.includes(r.owner) && r.owner !== s.user) throw new ProtocolError(ErrorCode.NOT_ALLOWED, 'the owner cannot be removed');
      if (gone.length === 0 && revoked.length === 0) return r === r1 ? undefined : r;
      const invited = new Map(r.invited);
      for (const u of revoked) invited.delete(u);
      const next = { ...r, invited, v: r.v + 1 };
      return gone.length === 0 ? next : without(next, gone);
    });
    const removed = await this.departed(a.g, before, after);
    await each(revoked, FANOUT_CONCURRENCY, (u) => this.records.uninvite(u, a.g).catch((err) => this.cell.log('revoking an invitation failed', err)));
    return { removed, revoked };
  }

  private async setAdmin(s: Session, a: RequestArgs['groups.admin']): Promise<undefined> {
    const r0 = await this.memberOf(s, a.g, true);
    this.requireAdmin(r0, s.user);
    await this.records.modify(a.g, (r) => {
      this.requireAdminMember(r, s.user);
      if (!r.members.has(a.user)) throw new ProtocolError(ErrorCode.NOT_FOUND, 'no such member in this group');
      if (!a.on && a.user === r.owner) throw new ProtocolError(ErrorCode.NOT_ALLOWED, 'the owner is always an admin');
      if (r.admins.includes(a.user) === a.on) return undefined;
      return { ...r, admins: a.on ? [...r.admins, a.user] : r.admins.filter((u) => u !== a.user), v: r.v + 1 };
    });
    this.announce(a.g, []);
    return undefined;
  }

  private async leave(s: Session, a: RequestArgs['groups.leave']): Promise<undefined> {
    await this.memberOf(s, a.g, true);
    const { before, after } = await this.records.modify(a.g, (r) => {
      if (!r.members.has(s.user)) throw new ProtocolError(ErrorCode.NOT_A_MEMBER, 'you are not a member of this group');
      return without(r, [s.user]);
    });
    await this.departed(a.g, before, after);
    return undefined;
  }

  /**
   * The group as its members see it, a page at a time: members in name order with
   * the admins among them, then (for admins) the pending invitations in name
   * order. `count` is the number of members, `pending` (admins) of invitations.
   */
  private async info(s: Session, a: RequestArgs['groups.info']): Promise<unknown> {
    const r = this.lapse(await this.memberOf(s, a.g));
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
        invited.push({ user: u, by: x.by, expires: x.at + this.cfg.inviteTtlMs });
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

  // ---- helpers ------------------------------------------------------------------------------

  /**
   * Records the invitation in the list of each named user who exists and does not
   * block the inviter, and tells it (InviteNotices). Others get nothing, and
   * nothing the inviter sees differs. A failed write is logged: the invitation
   * then stays pending in the group until it lapses or is revoked.
   */
  private async offer(r: GroupRecord, users: string[], by: string, at: number): Promise<void> {
    const lim = { max: this.cfg.maxInvitesPerUser, perInviter: Math.max(1, Math.floor(this.cfg.maxInvitesPerUser / 8)), cutoff: Date.now() - this.cfg.inviteTtlMs };
    await each(users, FANOUT_CONCURRENCY, async (u) => {
      try {
        if (u === by || (await this.cell.accounts.devices(u)).length === 0 || (await this.cell.social.refuses(u, by))) return;
        await this.records.invite(u, { g: r.id, name: r.name, by, at }, lim);
        this.notices.onInvited(u, r.id, by);
      } catch (err) {
        this.cell.log('recording an invitation failed', err);
      }
    });
  }

  /** Of `users`, those who exist and list `by` as a contact without blocking it (the `contacts` policy), in order. */
  private async consenting(by: string, users: string[]): Promise<string[]> {
    const yes = new Set<string>();
    await each(users, FANOUT_CONCURRENCY, async (u) => {
      if ((await this.cell.accounts.devices(u)).length === 0) return;
      const rec = await this.cell.social.record(u);
      if (rec.contacts.has(by) && !rec.blocked.has(by)) yes.add(u);
    });
    return users.filter((u) => yes.has(u));
  }

  /** Writes `g` into each user's index; those at their group cap are left out, silently. The users written, in order. */
  private async joinIndexes(g: string, users: string[]): Promise<string[]> {
    const ok = new Set<string>();
    await each(users, FANOUT_CONCURRENCY, async (u) => {
      try {
        await this.records.join(u, g, this.cfg.maxPerUser);
        ok.add(u);
      } catch (err) {
        if (!(err instanceof ProtocolError && err.code === ErrorCode.TOO_MANY_GROUPS)) throw err;
      }
    });
    return users.filter((u) => ok.has(u));
  }

  /** The record without invitations that lapsed (the same object if none did). */
  private lapse(r: GroupRecord): GroupRecord {
    const cutoff = Date.now() - this.cfg.inviteTtlMs;
    let invited: Map<string, { by: string; at: number }> | undefined;
    for (const [u, x] of r.invited) {
      if (x.at > cutoff) continue;
      invited ??= new Map(r.invited);
      invited.delete(u);
    }
    return invited ? { ...r, invited } : r;
  }

  /** Members and pending invitations together may not pass the group size. */
  private requireSeats(r: GroupRecord, more: number): void {
    if (r.members.size + r.invited.size + more > this.maxSize) throw new ProtocolError(ErrorCode.GROUP_FULL, `a group has at most ${this.maxSize} members and invitations`);
  }

  /** After members left: their indexes, the cluster's caches, and the log and invitations of a group that is gone. */
  private async departed(g: string, before: GroupRecord, after: GroupRecord | null): Promise<string[]> {
    const gone = [...before.members.keys()].filter((u) => !after?.members.has(u));
    this.announce(g, gone);
    await each(gone, FANOUT_CONCURRENCY, (u) => this.records.leave(u, g).catch((err) => this.cell.log('group index update failed', err)));
    if (after === null) {
      await this.log.purge(g).catch((err) => this.cell.log('group log purge failed', err));
      await each([...before.invited.keys()], FANOUT_CONCURRENCY, (u) => this.records.uninvite(u, g).catch((err) => this.cell.log('revoking an invitation failed', err)));
    }
    return gone;
  }

  /** The record, if `s` is a member: NOT_FOUND if there is no such group, NOT_A_MEMBER if it is not in it. */
  private async memberOf(s: Session, g: string, fresh = false): Promise<GroupRecord> {
    const r = await this.records.get(g, fresh);
    if (!r) throw new ProtocolError(ErrorCode.NOT_FOUND, 'no such group');
    if (!r.members.has(s.user)) throw new ProtocolError(ErrorCode.NOT_A_MEMBER, 'you are not a member of this group');
    return r;
  }

  private requireAdmin(r: GroupRecord, user: string): void {
    if (!r.admins.includes(user)) throw new ProtocolError(ErrorCode.NOT_ALLOWED, 'only admins may do this');
  }

  private requireAdminMember(r: GroupRecord, user: string): void {
    if (!r.members.has(user)) throw new ProtocolError(ErrorCode.NOT_A_MEMBER, 'you are not a member of this group');
    this.requireAdmin(r, user);
  }

  /**
   * Tells every cell that the group changed, then that these users' group lists
   * changed (same connection, so in this order: a cell re-reads the record before
   * it re-reads a user's list).
   */
  private announce(g: string, users: string[]): void {
    this.cell.invalidate({ kind: 'group', key: g });
    for (const u of users) this.cell.invalidate({ kind: 'group', key: u });
  }
}

/** The record without `gone`: admins kept, the oldest admin (else member) owns it if the owner left; null if empty. */
function without(r: GroupRecord, gone: string[]): GroupRecord | null {
  const members = new Map(r.members);
  for (const u of gone) members.delete(u);
  if (members.size === 0) return null;
  const order = [...members.keys()];
  let admins = r.admins.filter((u) => members.has(u));
  if (admins.length === 0) admins = [order[0]!]; // the last admin left: the oldest member takes over
  const owner = members.has(r.owner) ? r.owner : order.find((u) => admins.includes(u))!;
  return { ...r, members, admins, owner, v: r.v + 1 };
}
