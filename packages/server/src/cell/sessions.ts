import { ErrorCode, type PresenceState, type Read, type Request, type Send, type ServerHandshakeContext, type Typing } from '@gravitas/protocol';
import type { CellContext } from '../core/context.js';
import type { CustodyPort, DirectoryPort, GroupsPort, Placement, PresencePort } from '../core/ports.js';
import type { Delivery } from '../core/session.js';
import type { MailboxDrains } from '../messaging/drain.js';
import type { Routing } from '../messaging/routing.js';
import { REFUSED } from '../session/accounts.js';
import type { SessionHost } from '../session/host.js';
import type { Revocations } from '../session/revocations.js';
import type { Session } from '../session/session.js';
import type { Connections } from '../transport/connections.js';
import type { SessionHub } from './hub.js';

/** Everything a session is wired to (built at start, once the stores are open). */
export interface SessionWiring {
  hub: SessionHub;
  connections: Pick<Connections, 'handshakeDone'>;
  identity: Pick<SessionHost, 'handshake' | 'guard' | 'accounts' | 'tickets' | 'budgets' | 'proofs'>;
  revocations: Revocations;
  directory: Pick<DirectoryPort, 'register' | 'unregister'>;
  placement: Pick<Placement, 'registered' | 'detached' | 'hintPublicKey'>;
  drains: MailboxDrains;
  routing: Routing;
  custody: Pick<CustodyPort, 'submit' | 'read' | 'shedsNow'>;
  groups: Pick<GroupsPort, 'send' | 'catchUp' | 'detached'>;
  presence: Pick<PresencePort, 'online' | 'offline' | 'set' | 'typing'>;
  request(s: Session, m: Request): Promise<void>;
  webAddress(): string;
  noteOutbound(bytes: number): void;
}

/**
 * The cell's side of every session: registration when its handshake is done
 * (directory, hub, then the features that greet a device), what its traffic
 * is handed to, and the cleanup when it closes. This is the SessionHost a
 * session actor talks to; the order of each step is the cell's promise.
 */
export class CellSessions implements SessionHost<Session> {
  readonly handshake: ServerHandshakeContext;
  readonly guard: SessionHost['guard'];
  readonly accounts: SessionHost['accounts'];
  readonly tickets: SessionHost['tickets'];
  readonly budgets: SessionHost['budgets'];
  readonly proofs: SessionHost['proofs'];

  constructor(readonly ctx: CellContext, private readonly w: SessionWiring) {
    ({ handshake: this.handshake, guard: this.guard, accounts: this.accounts, tickets: this.tickets, budgets: this.budgets, proofs: this.proofs } = w.identity);
  }

  get hintPublicKey(): Uint8Array {
    return this.w.placement.hintPublicKey;
  }

  webAddress(): string {
    return this.w.webAddress();
  }

  noteOutbound(bytes: number): void {
    this.w.noteOutbound(bytes);
  }

  async opened(s: Session): Promise<void> {
    const { hub, directory, revocations } = this.w;
    this.w.connections.handshakeDone(s.transport); // registration is the first thing an open session does
    const { epoch, replaced } = await directory.register(s.user, s.device, this.ctx.cellId, this.ctx.config.nodeId);
    // Revoked while this session was being set up (its handshake read the account just before)?
    const revoked = revocations.refusalFor(s);
    if (revoked) s.bye(revoked, REFUSED[revoked]);
    if (!s.isOpen) {
      await directory.unregister(s.user, s.device, epoch);
      return;
    }
    s.epoch = epoch;
    s.registered = true;
    s.registeredAt = Date.now();
    // The device's older session here ends first (and leaves the hub), then this one takes its place.
    const local = hub.session(s.user, s.device);
    if (local && local !== s) local.bye(ErrorCode.SESSION_REPLACED, 'this device connected again elsewhere');
    hub.add(s);
    this.ctx.metrics.sessions.set(hub.count);
    this.w.placement.registered(s);
    if (replaced && replaced.cell !== this.ctx.cellId) this.ctx.bus.publish(replaced.cell, { k: 'kick', user: s.user, dev: s.device, ep: replaced.epoch });
    // Registered first, then drained: a store that raced with this registration is
    // followed by a lookup that finds the session and wakes the drain again.
    this.w.drains.drain(s);
    this.w.groups.catchUp(s);
    this.w.presence.online(s);
  }

  closed(s: Session, wasOpen: boolean): void {
    const { hub } = this.w;
    this.w.drains.forget(s);
    if (hub.remove(s)) {
      this.ctx.metrics.sessions.set(hub.count);
      this.w.placement.detached(s);
    }
    this.w.routing.sessionGone(s);
    if (wasOpen && s.registered) {
      this.w.presence.offline(s);
      this.w.groups.detached(s);
      this.w.directory
        .unregister(s.user, s.device, s.epoch)
        .catch((err: unknown) => this.ctx.log('directory unregister failed', err));
    }
  }

  /** A `kick` from another cell: a newer session of the device registered there. */
  kick(user: string, device: string, epoch: number): void {
    const s = this.w.hub.session(user, device);
    if (s && s.epoch <= epoch) s.bye(ErrorCode.SESSION_REPLACED, 'this device connected again elsewhere');
  }

  /** Shutdown: every session says goodbye and leaves the directory; resolves when all have left. */
  leaveAll(): Promise<unknown> {
    return Promise.all(
      this.w.hub.all().map((s) => {
        const done = s.registered ? this.w.directory.unregister(s.user, s.device, s.epoch).catch(() => undefined) : Promise.resolve();
        s.registered = false;
        s.bye(ErrorCode.SHUTTING_DOWN, 'server is shutting down');
        return done;
      }),
    );
  }

  send1to1(s: Session, m: Send & { to: string }): void | Promise<void> {
    return this.w.custody.submit(s, m);
  }

  sendGroup(s: Session, m: Send): void | Promise<void> {
    // A cell that sheds 1:1 sends sheds group sends too: the same BUSY, before any work.
    if (this.w.custody.shedsNow(s, m.id)) return;
    return this.w.groups.send(s, m);
  }

  read(s: Session, m: Read): Promise<void> {
    return this.w.custody.read(s, m);
  }

  typing(s: Session, m: Typing): Promise<void> {
    return this.w.presence.typing(s, m);
  }

  presence(s: Session, state: Exclude<PresenceState, 'offline'>): void {
    this.w.presence.set(s, state);
  }

  acked(s: Session, d: Delivery): void {
    this.w.routing.deviceAcked(s, d);
  }

  request(s: Session, m: Request): Promise<void> {
    return this.w.request(s, m);
  }
}
