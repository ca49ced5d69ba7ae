/*
 * The user's mutes as this client knows them (docs/push.md): set and cleared through
 * requests, listed page by page, and listed again when the server says another device
 * changed them.
 */
import { decodeMuteList, ErrorCode, MUTE_LIMITS, ProtocolError, type MuteDurationName, type MuteEntry, type RequestArgs } from '@gravitas/protocol';
import { pages, type Request } from './requests.js';
import type { Emit } from './private.js';
import type { Target } from './types.js';

function sameChat(e: MuteEntry, c: Target): boolean {
  return 'g' in c ? e.g === c.g : e.to === c.to;
}

export class Mutes {
  private list: MuteEntry[] = [];
  /** A re-list after a `mutes` notice, and whether another notice came while it ran. */
  private sync: Promise<void> | undefined;
  private again = false;

  constructor(
    private readonly request: Request,
    private readonly emit: Emit,
  ) {}

  async mute(chat: Target, duration?: number | MuteDurationName | 'always'): Promise<MuteEntry> {
    const { mute } = (await this.request('mute.set', { ...chat, ...(duration !== undefined && { for: duration }) } as unknown as RequestArgs['mute.set'])) as { mute: MuteEntry };
    this.list = [...this.list.filter((e) => !sameChat(e, chat)), mute];
    return mute;
  }

  async unmute(chat: Target): Promise<void> {
    await this.request('mute.clear', chat as RequestArgs['mute.clear']);
    this.list = this.list.filter((e) => !sameChat(e, chat));
  }

  async fetch(): Promise<MuteEntry[]> {
    const all: MuteEntry[] = [];
    await pages<'mute.list', { mutes: unknown; next?: string }>(this.request, 'mute.list', {}, (p) => {
      all.push(...decodeMuteList(p.mutes));
      if (all.length > MUTE_LIMITS.maxPerUser) throw new ProtocolError(ErrorCode.BAD_MESSAGE, `mute.list answered more than ${MUTE_LIMITS.maxPerUser} mutes`);
    });
    this.list = all;
    return all;
  }

  /**
   * The server's notice that the mutes changed on another device: list them again
   * (once more if another notice arrives meanwhile), then emit `mutes`. A re-list
   * that fails (the connection went) leaves the list as it was.
   */
  resync(): void {
    if (this.sync) {
      this.again = true;
      return;
    }
    this.sync = (async () => {
      do {
        this.again = false;
        await this.fetch();
      } while (this.again);
      this.emit('mutes', this.current);
    })()
      .catch(() => undefined)
      .finally(() => {
        this.sync = undefined;
      });
  }

  /** The mutes last known, expired ones left out. */
  get current(): MuteEntry[] {
    const now = Date.now();
    return this.list.filter((e) => e.until === undefined || e.until > now);
  }
}
