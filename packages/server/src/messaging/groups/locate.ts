import type { DeviceLocation, DirectoryPort } from '../../core/ports.js';
import { TtlCache } from '../../infra/ttl-cache.js';

/** A member with no online device is not looked up again for this long (1 s of staleness is settled by the readers' settle probe). */
const OFFLINE_TTL_MS = 1000;
const OFFLINE_MAX = 100_000;

/**
 * Where group members' devices are, for fan-out and typing: the directory,
 * with members found offline remembered for a second (a big group's offline
 * members would otherwise cost a lookup each per message).
 */
export class MemberLocator {
  private readonly offline = new TtlCache<string, true>(OFFLINE_MAX, OFFLINE_TTL_MS);

  constructor(private readonly directory: Pick<DirectoryPort, 'lookup'>) {}

  /** Online devices of a member; a member found offline is not looked up again for a second. */
  async locate(user: string): Promise<DeviceLocation[]> {
    if (this.offline.get(user)) return [];
    try {
      const locs = await this.directory.lookup(user);
      if (locs.length === 0) this.offline.set(user, true);
      return locs;
    } catch {
      return []; // directory unreachable: the log has the message, readers catch up
    }
  }

  /** The user has a session here now: look it up again. */
  online(user: string): void {
    this.offline.delete(user);
  }
}
