import type { Typing } from '@gravitas/protocol';
import type { CellContext } from '../../core/context.js';
import type { Envelope } from '../../core/envelope.js';
import type { PresencePort, SocialGraph } from '../../core/ports.js';
import type { DeviceSession } from '../../core/session.js';
import { TtlCache } from '../../infra/ttl-cache.js';
import type { MemberLocator } from './locate.js';
import type { GroupRecords } from './records.js';

/** A repeated "typing on" to a group within this window is not fanned out again. */
const TYPING_REPEAT_MS = 1000;
const TYPING_MAX = 100_000;

/** Typing in a group: one `typ` envelope per online member (other than the typist) and cell, shown by presence there. */
export class GroupTyping {
  private readonly sent = new TtlCache<string, true>(TYPING_MAX, TYPING_REPEAT_MS);

  constructor(
    private readonly ctx: CellContext,
    private readonly records: GroupRecords,
    private readonly locator: MemberLocator,
    private readonly social: Pick<SocialGraph, 'refuses'>,
    private readonly presence: Pick<PresencePort, 'onTyping'>,
  ) {}

  async typing(s: DeviceSession, m: Typing & { g: string }): Promise<void> {
    const tkey = `${s.user}/${s.device}/${m.g}`;
    if (m.on && this.sent.get(tkey)) return;
    if (m.on) this.sent.set(tkey, true);
    else this.sent.delete(tkey);
    const rec = await this.records.get(m.g).catch(() => undefined);
    if (!rec?.members.has(s.user)) return;
    await Promise.all(
      [...rec.members.keys()].map(async (u) => {
        if (u === s.user || (await this.social.refuses(u, s.user).catch(() => false))) return;
        const cells = new Set((await this.locator.locate(u)).map((l) => l.cell));
        for (const cell of cells) {
          const env: Extract<Envelope, { k: 'typ' }> = { k: 'typ', from: s.user, to: u, on: m.on, g: m.g };
          if (cell === this.ctx.cellId) this.presence.onTyping(env);
          else this.ctx.bus.publish(cell, env);
        }
      }),
    );
  }
}
