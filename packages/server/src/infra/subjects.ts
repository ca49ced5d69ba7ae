/**
 * Every NATS subject, stream and bucket name the cluster uses, in one place. A
 * cluster is all nodes sharing one prefix; bucket and stream names cannot contain
 * dots, so the prefix is restricted to [A-Za-z0-9_-]. User, device, group and
 * message ids are single subject tokens by the same rule (protocol `name`).
 */
export class Names {
  constructor(readonly prefix: string, readonly partitions = 1) {}

  /** Deliveries and control messages for one cell. */
  cellInbox(cellId: string): string {
    return `${this.prefix}.cell.${cellId}.in`;
  }
  /** Cell heartbeats (liveness), every cell listens. */
  get heartbeats(): string {
    return `${this.prefix}.cells.hb`;
  }
  /** Cache invalidations every cell listens to (devices, contacts, groups changed). */
  get invalidations(): string {
    return `${this.prefix}.inval`;
  }
  /** Presence changes of one user (watched by cells hosting its contacts). */
  presence(user: string): string {
    return `${this.prefix}.pres.${user}`;
  }

  // ---- mailboxes (JetStream) ----------------------------------------------------

  /** The mailbox partition of a user: FNV-1a of the id, so leaders spread over a NATS cluster. */
  partition(user: string): number {
    let h = 0x811c9dc5;
    for (let i = 0; i < user.length; i++) h = Math.imul(h ^ user.charCodeAt(i), 0x01000193);
    return (h >>> 0) % this.partitions;
  }
  mailboxStream(k: number): string {
    return `${this.prefix}_MBOX_${k}`;
  }
  mailboxStreamSubjects(k: number): string {
    return `${this.prefix}.mbox.${k}.>`;
  }
  /**
   * One subject per stored message: `…mbox.<k>.<user>.<device>.<from>.<id>`. With one
   * message allowed per subject (discard new) a re-store of the same message is refused
   * by the stream itself, long after the Nats-Msg-Id window.
   */
  mailboxSubject(user: string, device: string, from: string, id: string): string {
    return `${this.prefix}.mbox.${this.partition(user)}.${user}.${device}.${from}.${id}`;
  }
  /** Everything in one device's mailbox. */
  mailboxFilter(user: string, device: string): string {
    return `${this.prefix}.mbox.${this.partition(user)}.${user}.${device}.>`;
  }

  // ---- groups (JetStream) -------------------------------------------------------

  groupStream(k: number): string {
    return `${this.prefix}_GROUP_${k}`;
  }
  groupStreamSubjects(k: number): string {
    return `${this.prefix}.grp.${k}.>`;
  }
  /** A group's message log (stored once for all members). */
  groupSubject(g: string): string {
    return `${this.prefix}.grp.${this.partition(g)}.${g}`;
  }

  // ---- KV buckets ---------------------------------------------------------------

  /** Membership and load heartbeats of cells (short max age). */
  get cellsBucket(): string {
    return `${this.prefix}_cells`;
  }
  /** user → { device → cell, epoch }. */
  get directoryBucket(): string {
    return `${this.prefix}_directory`;
  }
  /** `user.device` → registered public key; `user` → the user's devices. */
  get accountsBucket(): string {
    return `${this.prefix}_accounts`;
  }
  /** Spent resumption tickets (single use, cluster-wide). */
  get ticketsBucket(): string {
    return `${this.prefix}_tickets`;
  }
  /** Per-account budgets leased by cells: `<user>.<kind>.<window>` → units taken (cell/budgets.ts). */
  get budgetsBucket(): string {
    return `${this.prefix}_budgets`;
  }
  /** user → contacts, blocks and preferences. */
  get socialBucket(): string {
    return `${this.prefix}_social`;
  }
  /** user → presence state and last seen. */
  get presenceBucket(): string {
    return `${this.prefix}_presence`;
  }
  /** `g.<group>` → group record; `u.<user>` → the user's groups; `c.<user>.<device>` → group cursors. */
  get groupsBucket(): string {
    return `${this.prefix}_groups`;
  }
  /** `<user>.<device>` → the device's push targets (docs/push.md). */
  get pushBucket(): string {
    return `${this.prefix}_push`;
  }
  /** `<user>` → the user's per-chat mutes. */
  get mutesBucket(): string {
    return `${this.prefix}_mutes`;
  }
  // ---- engagement: profiles, campaigns, tracking ----------------------------------

  /** Versioned profiles: one subject per user, the stream sequence is the version. */
  get profilesStream(): string {
    return `${this.prefix}_PROFILES`;
  }
  profileSubject(user: string): string {
    return `${this.prefix}.profile.${user}`;
  }
  get profileSubjects(): string {
    return `${this.prefix}.profile.*`;
  }
  /** The tracking archive: `…track.<user>.<campaign>`, so one user's or one campaign's records can be read back. */
  get trackingStream(): string {
    return `${this.prefix}_TRACKING`;
  }
  trackingSubject(user: string, campaign: string): string {
    return `${this.prefix}.track.${user}.${campaign}`;
  }
  trackingUserFilter(user: string): string {
    return `${this.prefix}.track.${user}.*`;
  }
  trackingCampaignFilter(campaign: string): string {
    return `${this.prefix}.track.*.${campaign}`;
  }
  /** Campaign work queue (expansion and send jobs), shared by every cell of the cluster. */
  get campaignWorkStream(): string {
    return `${this.prefix}_CWORK`;
  }
  campaignWorkSubject(campaign: string): string {
    return `${this.prefix}.cwork.${campaign}`;
  }
  /** Scatter-gather: every node answers with its local tracking records not yet archived. */
  get trackingLocalQuery(): string {
    return `${this.prefix}.track.local`;
  }
  /** Campaign records, progress and per-recipient sent markers. */
  get campaignsBucket(): string {
    return `${this.prefix}_campaigns`;
  }
  /** Publishers: API key hashes and roles. */
  get publishersBucket(): string {
    return `${this.prefix}_publishers`;
  }

  /** `user.device` → devices that reach it directly, and its relay rate stamps (docs/relay.md). */
  get reachBucket(): string {
    return `${this.prefix}_reach`;
  }

  /** Short leases (one expiry sweeper per mailbox partition in the cluster). */
  get leasesBucket(): string {
    return `${this.prefix}_leases`;
  }
}
