/**
 * Every NATS subject and bucket name the cluster uses, in one place. A cluster is
 * all nodes sharing one prefix; bucket names cannot contain dots, so the prefix is
 * restricted to [A-Za-z0-9_-].
 */
export class Names {
  constructor(readonly prefix: string) {}
  /** Deliveries and control messages for one cell. */
  cellInbox(cellId: string): string {
    return `${this.prefix}.cell.${cellId}.in`;
  }
  /** Membership and load heartbeats of cells (short max age). */
  get cellsBucket(): string {
    return `${this.prefix}_cells`;
  }
  /** user → { device → cell, epoch }. */
  get directoryBucket(): string {
    return `${this.prefix}_directory`;
  }
  /** user.device → registered public key. */
  get accountsBucket(): string {
    return `${this.prefix}_accounts`;
  }
  /** Spent resumption tickets (single use, cluster-wide). */
  get ticketsBucket(): string {
    return `${this.prefix}_tickets`;
  }
}
