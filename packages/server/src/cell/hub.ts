import type { Hub } from '../core/context.js';
import type { Session } from '../session/session.js';

/** The sessions of this cell by `user/device` and by user: registered sessions only. */
export class SessionHub implements Hub {
  private readonly sessions = new Map<string, Session>();
  private readonly byUser = new Map<string, Set<Session>>();

  get count(): number {
    return this.sessions.size;
  }

  session(user: string, device: string): Session | undefined {
    return this.sessions.get(`${user}/${device}`);
  }

  sessionsOf(user: string): Iterable<Session> {
    return this.byUser.get(user) ?? [];
  }

  all(): Session[] {
    return [...this.sessions.values()];
  }

  /** Adds `s` as its device's session here (an older one must have left first). */
  add(s: Session): void {
    this.sessions.set(`${s.user}/${s.device}`, s);
    let mine = this.byUser.get(s.user);
    if (!mine) this.byUser.set(s.user, (mine = new Set()));
    mine.add(s);
  }

  /** Removes `s` if it is the device's current session here; false if it was not. */
  remove(s: Session): boolean {
    const key = `${s.user}/${s.device}`;
    if (this.sessions.get(key) !== s) return false;
    this.sessions.delete(key);
    const mine = this.byUser.get(s.user);
    mine?.delete(s);
    if (mine?.size === 0) this.byUser.delete(s.user);
    return true;
  }
}
