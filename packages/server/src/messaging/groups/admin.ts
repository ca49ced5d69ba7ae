import { ErrorCode, ProtocolError, type RequestArgs, type RequestOp } from '@gravitas/protocol';
import type { CellContext } from '../../core/context.js';
import type { DeviceRoster, InviteNotices, SocialGraph } from '../../core/ports.js';
import type { DeviceSession } from '../../core/session.js';
import { each } from '../../infra/limiter.js';
import type { LogStore } from './log.js';
import { newGroupId, storageError, type GroupRecord, type GroupRecords } from './records.js';
import { lapse, memberOf, requireAdmin, requireAdminMember, requireSeats, without } from './rules.js';
import { GroupViews } from './views.js';

/** KV requests in flight when one request touches many users. */
const FANOUT_CONCURRENCY = 32;

/** What the groups.* requests use of the other features. */
export interface AdminPorts {
  social: Pick<SocialGraph, 'refuses' | 'record'>;
  accounts: Pick<DeviceRoster, 'devices'>;
  /**
   * Where an invitee is told that it was invited: called once for every
   * invitation recorded in an invitee's list — never for a user who does not
   * exist or who blocks the inviter, so nothing the inviter sees depends on it.
   * The cell makes it a system notice under custody (from `_groups`, `sys:
   * group-invite`); the invitee also finds it with `groups.invites`.
   */
  invites: InviteNotices;
}

/**
 * The groups.* requests (docs/groups.md): create, add, remove, admins, leave,
 * and the invitee's side: accept, decline; list, info and invites are read by
 * GroupViews (views.ts). Each change
 is a compare-and-set of the group record (the source of truth); users' group
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
  private readonly views: GroupViews;

  constructor(
    private readonly ctx: CellContext,
    private readonly ports: AdminPorts,
    private readonly records: GroupRecords,
    private readonly log: LogStore,
  ) {
    this.views = new GroupViews(ctx, ports.social, records);
  }

  private get cfg() {
    return this.ctx.config.groups;
  }

  private get maxSize(): number {
    return this.ctx.config.limits.maxGroupSize;
  }

  async handle(s: DeviceSession, op: RequestOp, args: unknown): Promise<unknown> {
    try {
      switch (op) {
        case 'groups.list':
          return await this.views.list(s, args as RequestArgs['groups.list']);
        case 'groups.create':
          return await this.create(s, args as RequestArgs['groups.create']);
        case 'groups.info':
          return await this.views.info(s, args as RequestArgs['groups.info']);
        case 'groups.add':
          return await this.add(s, args as RequestArgs['groups.add']);
        case 'groups.remove':
          return await this.remove(s, args as RequestArgs['groups.remove']);
        case 'groups.admin':
          return await this.setAdmin(s, args as RequestArgs['groups.admin']);
        case 'groups.leave':
          return await this.leave(s, args as RequestArgs['groups.leave']);
        case 'groups.invites':
          return await this.views.invites(s, args as RequestArgs['groups.invites']);
        case 'groups.accept':
          return await this.accept(s, args as RequestArgs['groups.accept']);
        case 'groups.decline':
          await this.records.uninvite(s.user, (args as RequestArgs['groups.decline']).g);
          return undefined;
        default:
          throw new ProtocolError(ErrorCode.NOT_ALLOWED, `${op} is not a group operation`);
      }
    } catch (err) {
      if (!(err instanceof ProtocolError)) this.ctx.log(`${op} failed`, err);
      throw storageError(err);
    }
  }

  // ---- the invitee's side -------------------------------------------------------------------

  /** Joins a group the user was invited to: NOT_FOUND if there is no such invitation (any more), TOO_MANY_GROUPS at the cap. */
  private async accept(s: DeviceSession, a: RequestArgs['groups.accept']): Promise<{ g: string; name: string }> {
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
        await this.records.leave(s.user, a.g).catch((e) => this.ctx.log('group index update failed', e));
        if (err.code === ErrorCode.NOT_FOUND) await this.records.uninvite(s.user, a.g).catch((e) => this.ctx.log('dropping a void invitation failed', e));
      }
      throw err;
    }
    await this.records.uninvite(s.user, a.g).catch((err) => this.ctx.log('invitation cleanup failed', err));
    this.announce(a.g, [s.user]);
    return { g: a.g, name: after?.name ?? mine.name };
  }

  // ---- creating and changing groups ----------------------------------------------------

  private async create(s: DeviceSession, a: RequestArgs['groups.create']): Promise<{ g: string; added: string[]; invited: string[] }> {
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
  private async add(s: DeviceSession, a: RequestArgs['groups.add']): Promise<{ added: string[]; invited: string[] }> {
    const r0 = this.lapse(await memberOf(this.records, s.user, a.g, true));
    requireAdmin(r0, s.user);
    const fresh = a.users.filter((u) => !r0.members.has(u) && !r0.invited.has(u));
    if (fresh.length === 0) return { added: [], invited: [] };
    this.requireSeats(r0, fresh.length);
    if (this.cfg.policy === 'invite') {
      const now = Date.now();
      const { before, after } = await this.records.modify(a.g, (r1) => {
        const r = this.lapse(r1);
        requireAdminMember(r, s.user);
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
        requireAdminMember(r, s.user);
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
      if (err instanceof ProtocolError) await each(joined, FANOUT_CONCURRENCY, (u) => this.records.leave(u, a.g).catch((e) => this.ctx.log('group index update failed', e)));
      throw err;
    }
    const added = after ? [...after.members.keys()].filter((u) => !before.members.has(u)) : [];
    this.announce(a.g, added);
    return { added, invited: [] };
  }

  /** Removes members and revokes pending invitations of the named users; others are ignored. */
  private async remove(s: DeviceSession, a: RequestArgs['groups.remove']): Promise<{ removed: string[]; revoked: string[] }> {
    const r0 = await memberOf(this.records, s.user, a.g, true);
    requireAdmin(r0, s.user);
    let revoked: string[] = [];
    const { before, after } = await this.records.modify(a.g, (r1) => {
      const r = this.lapse(r1);
      requireAdminMember(r, s.user);
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
    await each(revoked, FANOUT_CONCURRENCY, (u) => this.records.uninvite(u, a.g).catch((err) => this.ctx.log('revoking an invitation failed', err)));
    return { removed, revoked };
  }

  private async setAdmin(s: DeviceSession, a: RequestArgs['groups.admin']): Promise<undefined> {
    const r0 = await memberOf(this.records, s.user, a.g, true);
    requireAdmin(r0, s.user);
    await this.records.modify(a.g, (r) => {
      requireAdminMember(r, s.user);
      if (!r.members.has(a.user)) throw new ProtocolError(ErrorCode.NOT_FOUND, 'no such member in this group');
      if (!a.on && a.user === r.owner) throw new ProtocolError(ErrorCode.NOT_ALLOWED, 'the owner is always an admin');
      if (r.admins.includes(a.user) === a.on) return undefined;
      return { ...r, admins: a.on ? [...r.admins, a.user] : r.admins.filter((u) => u !== a.user), v: r.v + 1 };
    });
    this.announce(a.g, []);
    return undefined;
  }

  private async leave(s: DeviceSession, a: RequestArgs['groups.leave']): Promise<undefined> {
    await memberOf(this.records, s.user, a.g, true);
    const { before, after } = await this.records.modify(a.g, (r) => {
      if (!r.members.has(s.user)) throw new ProtocolError(ErrorCode.NOT_A_MEMBER, 'you are not a member of this group');
      return without(r, [s.user]);
    });
    await this.departed(a.g, before, after);
    return undefined;
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
        if (u === by || (await this.ports.accounts.devices(u)).length === 0 || (await this.ports.social.refuses(u, by))) return;
        await this.records.invite(u, { g: r.id, name: r.name, by, at }, lim);
        this.ports.invites.onInvited(u, r.id, by);
      } catch (err) {
        this.ctx.log('recording an invitation failed', err);
      }
    });
  }

  /** Of `users`, those who exist and list `by` as a contact without blocking it (the `contacts` policy), in order. */
  private async consenting(by: string, users: string[]): Promise<string[]> {
    const yes = new Set<string>();
    await each(users, FANOUT_CONCURRENCY, async (u) => {
      if ((await this.ports.accounts.devices(u)).length === 0) return;
      const rec = await this.ports.social.record(u);
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
    return lapse(r, Date.now() - this.cfg.inviteTtlMs);
  }

  /** Members and pending invitations together may not pass the group size. */
  private requireSeats(r: GroupRecord, more: number): void {
    requireSeats(r, more, this.maxSize);
  }

  /** After members left: their indexes, the cluster's caches, and the log and invitations of a group that is gone. */
  private async departed(g: string, before: GroupRecord, after: GroupRecord | null): Promise<string[]> {
    const gone = [...before.members.keys()].filter((u) => !after?.members.has(u));
    this.announce(g, gone);
    await each(gone, FANOUT_CONCURRENCY, (u) => this.records.leave(u, g).catch((err) => this.ctx.log('group index update failed', err)));
    if (after === null) {
      await this.log.purge(g).catch((err) => this.ctx.log('group log purge failed', err));
      await each([...before.invited.keys()], FANOUT_CONCURRENCY, (u) => this.records.uninvite(u, g).catch((err) => this.ctx.log('revoking an invitation failed', err)));
    }
    return gone;
  }

  /**
   * Tells every cell that the group changed, then that these users' group lists
   * changed (same connection, so in this order: a cell re-reads the record before
   * it re-reads a user's list).
   */
  private announce(g: string, users: string[]): void {
    this.ctx.bus.invalidate({ kind: 'group', key: g });
    for (const u of users) this.ctx.bus.invalidate({ kind: 'group', key: u });
  }
}
