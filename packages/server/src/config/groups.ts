import type { ConfigCheck } from './check.js';

/**
 * Group membership by consent (docs/groups.md#consent). `invite`: named users are
 * invited and join when they accept; `contacts`: only users who list the adder as
 * a contact can be added, and they join at once.
 */
export interface GroupsConfig {
  policy: 'invite' | 'contacts';
  /** Groups one user may be in (TOO_MANY_GROUPS when creating or accepting beyond). */
  maxPerUser: number;
  /** Pending invitations one user holds; beyond, the oldest is dropped. */
  maxInvitesPerUser: number;
  /** An invitation not accepted within this time lapses. */
  inviteTtlMs: number;
}

export const DEFAULT_GROUPS: GroupsConfig = {
  policy: 'invite',
  maxPerUser: 512,
  maxInvitesPerUser: 256,
  inviteTtlMs: 7 * 24 * 3600_000,
};

export function validateGroups(c: ConfigCheck): GroupsConfig {
  const GR = DEFAULT_GROUPS;
  const policy = c.get('groups.policy') ?? GR.policy;
  if (policy !== 'invite' && policy !== 'contacts') c.fail('groups.policy', `must be "invite" or "contacts", got ${JSON.stringify(policy)}`);
  return {
    policy: policy === 'contacts' ? 'contacts' : 'invite',
    maxPerUser: c.int('groups.maxPerUser', GR.maxPerUser, 1, 100_000),
    maxInvitesPerUser: c.int('groups.maxInvitesPerUser', GR.maxInvitesPerUser, 1, 4096),
    inviteTtlMs: c.int('groups.inviteTtlMs', GR.inviteTtlMs, 1000, 365 * 24 * 3600_000),
  };
}
