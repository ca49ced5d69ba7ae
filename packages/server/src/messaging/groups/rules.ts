import { ErrorCode, ProtocolError } from '@gravitas/protocol';
import type { GroupRecord, GroupRecords, Invitation } from './records.js';

/*
 * Who may do what to a group record, and what a change leaves of it: pure
 * functions of the record (docs/groups.md), shared by the requests that change
 * groups (admin.ts) and those that show them (views.ts).
 */

/** The record without invitations made at or before `cutoff` (ms) (the same object if none lapsed). */
export function lapse(r: GroupRecord, cutoff: number): GroupRecord {
  let invited: Map<string, Invitation> | undefined;
  for (const [u, x] of r.invited) {
    if (x.at > cutoff) continue;
    invited ??= new Map(r.invited);
    invited.delete(u);
  }
  return invited ? { ...r, invited } : r;
}

/** The record without `gone`: admins kept, the oldest admin (else member) owns it if the owner left; null if empty. */
export function without(r: GroupRecord, gone: string[]): GroupRecord | null {
  const members = new Map(r.members);
  for (const u of gone) members.delete(u);
  if (members.size === 0) return null;
  const order = [...members.keys()];
  let admins = r.admins.filter((u) => members.has(u));
  if (admins.length === 0) admins = [order[0]!]; // the last admin left: the oldest member takes over
  const owner = members.has(r.owner) ? r.owner : order.find((u) => admins.includes(u))!;
  return { ...r, members, admins, owner, v: r.v + 1 };
}

/** Members and pending invitations together may not pass the group size. */
export function requireSeats(r: GroupRecord, more: number, maxSize: number): void {
  if (r.members.size + r.invited.size + more > maxSize) throw new ProtocolError(ErrorCode.GROUP_FULL, `a group has at most ${maxSize} members and invitations`);
}

export function requireAdmin(r: GroupRecord, user: string): void {
  if (!r.admins.includes(user)) throw new ProtocolError(ErrorCode.NOT_ALLOWED, 'only admins may do this');
}

export function requireAdminMember(r: GroupRecord, user: string): void {
  if (!r.members.has(user)) throw new ProtocolError(ErrorCode.NOT_A_MEMBER, 'you are not a member of this group');
  requireAdmin(r, user);
}

/** The record, if `user` is a member: NOT_FOUND if there is no such group, NOT_A_MEMBER if it is not in it. */
export async function memberOf(records: GroupRecords, user: string, g: string, fresh = false): Promise<GroupRecord> {
  const r = await records.get(g, fresh);
  if (!r) throw new ProtocolError(ErrorCode.NOT_FOUND, 'no such group');
  if (!r.members.has(user)) throw new ProtocolError(ErrorCode.NOT_A_MEMBER, 'you are not a member of this group');
  return r;
}
