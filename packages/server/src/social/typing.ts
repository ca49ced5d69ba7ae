import type { Typing, TypingEvent } from '@gravitas/protocol';
import type { CellContext } from '../core/context.js';
import type { Envelope } from '../core/envelope.js';
import type { DirectoryPort, GroupsPort, SocialGraph } from '../core/ports.js';
import type { DeviceSession } from '../core/session.js';
import { TokenBucket } from '../infra/rate.js';

/*
 * Typing indicators (docs/social.md): never stored, one envelope per cell hosting
 * a session of the recipient, unless the recipient blocked the sender. The
 * presence hub owns the sessions; this is what it does with their indicators.
 */

/** Typing indicators per session: a token bucket; the excess is dropped silently. */
export const TYPING_RATE_PER_SEC = 5;
export const TYPING_BURST = 10;
/** Recipients a session's last typing state is remembered for (to send "off" when it closes). */
const TYPING_TARGETS = 32;

/** The typing side of one local session. */
export interface TypingState {
  /** Made on the first typing indicator: an idle session holds none. */
  rate: TokenBucket | undefined;
  /** Recipient → last typing state sent to it. */
  to: Map<string, boolean>;
}

export const typingState = (): TypingState => ({ rate: undefined, to: new Map() });

export interface TypingPorts {
  social: Pick<SocialGraph, 'refuses'>;
  directory: Pick<DirectoryPort, 'lookup'>;
  groups: Pick<GroupsPort, 'typing'>;
}

export class TypingRelay {
  constructor(private readonly ctx: CellContext, private readonly ports: TypingPorts) {}

  /**
   * A typing indicator from session `s` (whose state is `t`). Awaited by the
   * session, so a sender's indicators keep their order.
   */
  async typing(t: TypingState, s: DeviceSession, m: Typing): Promise<void> {
    if (!(t.rate ??= new TokenBucket(TYPING_RATE_PER_SEC, TYPING_BURST)).take()) {
      this.ctx.metrics.typingDropped.inc();
      return;
    }
    if (m.g !== undefined) return this.groupTyping(s, m);
    const to = m.to;
    if (to === s.user) return;
    t.to.delete(to);
    if (t.to.size >= TYPING_TARGETS) t.to.delete(t.to.keys().next().value!);
    t.to.set(to, m.on);
    await this.send(s.user, to, m.on);
  }

  /** The session of `user` closed: an indicator left on would stay on at the recipient, so it is turned off. */
  closed(t: TypingState, user: string): void {
    for (const [to, on] of t.to) if (on) void this.send(user, to, false);
    t.to.clear();
  }

  private async groupTyping(s: DeviceSession, m: Typing & { g: string }): Promise<void> {
    try {
      await this.ports.groups.typing(s, m);
    } catch (err) {
      this.ctx.log('group typing failed', err); // ephemeral: dropped, the session lives on
    }
  }

  private async send(from: string, to: string, on: boolean): Promise<void> {
    try {
      const [refused, locs] = await Promise.all([this.ports.social.refuses(to, from), this.ports.directory.lookup(to)]);
      if (refused) return;
      const e: Extract<Envelope, { k: 'typ' }> = { k: 'typ', from, to, on };
      const cells = new Set<string>();
      for (const l of locs) cells.add(l.cell);
      for (const c of cells) {
        if (c === this.ctx.cellId) this.onTyping(e);
        else this.ctx.bus.publish(c, e);
      }
    } catch {
      // Ephemeral: with NATS away it is simply lost.
    }
  }

  /** A typing indicator for every local session of `e.to`. */
  onTyping(e: Extract<Envelope, { k: 'typ' }>): void {
    const m: TypingEvent = { t: 'typing', from: e.from, on: e.on, ...(e.g !== undefined && { g: e.g }) };
    for (const s of this.ctx.hub.sessionsOf(e.to)) s.send(m);
  }
}
