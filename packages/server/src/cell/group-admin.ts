import { ErrorCode, ProtocolError, type RequestArgs, type RequestOp } from '@gravitas/protocol';
import type { Cell } from './cell.js';
import type { GroupLog } from './group-log.js';
import { newGroupId, storageError, type GroupRecord, type GroupRecords } from './group-records.js';
import type { Session } from './session.js';

/** KV requests in flight when one request touches many users. */
const FANOUT_CONCURRENCY = 32;
/** Names in one groups.info answer, in bytes: the answer must fit a frame (64 KiB by default) with its seal and envelope. */
const INFO_NAME_BYTES = 60_000;

/**
 * The groups.* requests: create, list, info, add, remove, admins, leave. Each
 * change is a compare-and-set of the group record (the source of truth); users'
 * group indexes are written before they are added and after they left, so an
 * index may name a stale group but never misses one. Every change is announced
 * cluster-wide, which re-syncs the readers of affected devices (Groups.invalidate).
 */
export class GroupAdmin {
  constructor(
    private readonly cell: Cell,
    private readonly records: GroupRecords,
    private readonly log: GroupLog,
  ) {}

  async handle(s: Session, op: RequestOp, args: unknown): Promise<unknown> {
    try {
      switch (op) {
        case 'groups.list':
          return await this.list(s);
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
        default:
          throw new ProtocolError(ErrorCode.NOT_ALLOWED, `${op} is not a group operation`);
      }
    } catch (err) {
      if (!(err instanceof ProtocolError)) this.cell.log(`${op} failed`, err);
      throw storageError(err);
    }
  }

  /** The user's groups (cut to one frame, with `truncated`, for a user in very many). */
  private async list(s: Session): Promise<{ groups: Array<{ g: string; name: string }>; truncated?: true }> {
    const ids = await this.records.groupsOf(s.user);
    const recs = await Promise.all(ids.map((g) => this.records.get(g)));
    const groups: Array<{ g: string; name: string }> = [];
    let budget = INFO_NAME_BYTES;
    for (const r of recs) {
      if (!r?.members.has(s.user)) continue;
      if ((budget -= r.id.length + r.name.length + 12) < 0) return { groups, truncated: true };
      groups.push({ g: r.id, name: r.name });
    }
    return { groups };
  }

  private async create(s: Session, a: RequestArgs['groups.create']): Promise<{ g: string }> {
    const users = [s.user, ...a.members.filter((u) => u !== s.user)];
    if (users.length > this.cell.config.limits.maxGroupSize) throw new ProtocolError(ErrorCode.GROUP_FULL, `a group has at most ${this.cell.config.limits.maxGroupSize} members`);
    await this.requireKnown(users.slice(1));
    const now = Date.now();
    for (let attempt = 0; attempt < 4; attempt++) {
      const g = newGroupId();
      // A new subject: position 0 means "everything in this group's log".
      const rec: GroupRecord = { id: g, name: a.name, owner: s.user, admins: [s.user], members: new Map(users.map((u) => [u, { j: 0, t: now }])), v: 1, created: now };
      // Indexes first: a user's index never misses a group it is in.
      await each(users, FANOUT_CONCURRENCY, (u) => this.records.index(u, g, true));
      if (await this.records.create(rec)) {
        this.announce(g, users);
        return { g };
      }
    }
    throw new ProtocolError(ErrorCode.CONFLICT, 'could not allocate a group id, try again');
  }

  /**
   * The group as its members see it. Members in join order; a list of long names
   * that would not fit one frame is cut (`truncated`, with the full `count`).
   */
  private async info(s: Session, a: RequestArgs['groups.info']): Promise<unknown> {
    const r = await this.memberOf(s, a.g);
    let budget = INFO_NAME_BYTES - r.name.length - r.owner.length;
    const fit = (list: Iterable<string>): string[] => {
      const out: string[] = [];
      for (const u of list) {
        if ((budget -= u.length + 2) < 0) break;
        out.push(u);
      }
      return out;
    };
    const admins = fit(r.admins);
    const members = fit(r.members.keys());
    const cut = admins.length < r.admins.length || members.length < r.members.size;
    return { g: r.id, name: r.name, owner: r.owner, admins, members, ...(cut && { truncated: true, count: r.members.size }) };
  }

  private async add(s: Session, a: RequestArgs['groups.add']): Promise<{ added: string[] }> {
    const r0 = await this.memberOf(s, a.g, true);
    this.requireAdmin(r0, s.user);
    const fresh = a.users.filter((u) => !r0.members.has(u));
    if (fresh.length === 0) return { added: [] };
    if (r0.members.size + fresh.length > this.cell.config.limits.maxGroupSize) throw new ProtocolError(ErrorCode.GROUP_FULL, `a group has at most ${this.cell.config.limits.maxGroupSize} members`);
    await this.requireKnown(fresh);
    // New members get what is stored after this position: nothing from before they joined.
    const j = await this.log.position(a.g);
    await each(fresh, FANOUT_CONCURRENCY, (u) => this.records.index(u, a.g, true));
    const { before, after } = await this.records.modify(a.g, (r) => {
      if (!r.members.has(s.user)) throw new ProtocolError(ErrorCode.NOT_A_MEMBER, 'you are not a member of this group');
      this.requireAdmin(r, s.user);
      const add = a.users.filter((u) => !r.members.has(u));
      if (add.length === 0) return undefined;
      if (r.members.size + add.length > this.cell.config.limits.maxGroupSize) throw new ProtocolError(ErrorCode.GROUP_FULL, `a group has at most ${this.cell.config.limits.maxGroupSize} members`);
      const members = new Map(r.members);
      const now = Date.now();
      for (const u of add) members.set(u, { j, t: now });
      return { ...r, members, v: r.v + 1 };
    });
    const added = after ? [...after.members.keys()].filter((u) => !before.members.has(u)) : [];
    this.announce(a.g, added);
    return { added };
  }

  private async remove(s: Session, a: RequestArgs['groups.remove']): Promise<{ removed: string[] }> {
    const r0 = await this.memberOf(s, a.g, true);
    this.requireAdmin(r0, s.user);
    const { before, after } = await this.records.modify(a.g, (r) => {
      if (!r.members.has(s.user)) throw new ProtocolError(ErrorCode.NOT_A_MEMBER, 'you are not a member of this group');
      this.requireAdmin(r, s.user);
      const gone = a.users.filter((u) => r.members.has(u));
      if (gone.includes(r.owner) && r.owner !== s.user) throw new ProtocolError(ErrorCode.NOT_ALLOWED, 'the owner cannot be removed');
      return gone.length === 0 ? undefined : without(r, gone);
    });
    return { removed: await this.departed(a.g, before, after) };
  }

  private async setAdmin(s: Session, a: RequestArgs['groups.admin']): Promise<undefined> {
    const r0 = await this.memberOf(s, a.g, true);
    this.requireAdmin(r0, s.user);
    await this.records.modify(a.g, (r) => {
      if (!r.members.has(s.user)) throw new ProtocolError(ErrorCode.NOT_A_MEMBER, 'you are not a member of this group');
      this.requireAdmin(r, s.user);
      if (!r.members.has(a.user)) throw new ProtocolError(ErrorCode.NOT_FOUND, `${a.user} is not a member of this group`);
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

  /** After members left: their indexes, the cluster's caches, and the log of a group that is gone. */
  private async departed(g: string, before: GroupRecord, after: GroupRecord | null): Promise<string[]> {
    const gone = [...before.members.keys()].filter((u) => !after?.members.has(u));
    this.announce(g, gone);
    await each(gone, FANOUT_CONCURRENCY, (u) => this.records.index(u, g, false).catch((err) => this.cell.log('group index update failed', err)));
    if (after === null) await this.log.purge(g).catch((err) => this.cell.log('group log purge failed', err));
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

  /** Unknown users (no registered device) cannot be added. */
  private async requireKnown(users: string[]): Promise<void> {
    const unknown: string[] = [];
    await each(users, FANOUT_CONCURRENCY, async (u) => {
      if ((await this.cell.accounts.devices(u)).length === 0) unknown.push(u);
    });
    if (unknown.length > 0) {
      const shown = unknown.slice(0, 5).join(', ');
      throw new ProtocolError(ErrorCode.NOT_FOUND, `unknown user${unknown.length > 1 ? 's' : ''}: ${shown}${unknown.length > 5 ? ` and ${unknown.length - 5} more` : ''}`);
    }
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

/** Runs `fn` over `items`, at most `limit` at a time. */
async function each<T>(items: readonly T[], limit: number, fn: (x: T) => Promise<void>): Promise<void> {
  let i = 0;
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (i < items.length) await fn(items[i++]!);
  }));
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
