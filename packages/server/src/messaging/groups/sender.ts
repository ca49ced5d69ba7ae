import { ErrorCode, ProtocolError, type ErrorCode as Code, type Send } from '@gravitas/protocol';
import type { CellContext } from '../../core/context.js';
import type { ChatItem } from '../../core/envelope.js';
import type { MessagingEvents, SocialGraph } from '../../core/ports.js';
import type { DeviceSession } from '../../core/session.js';
import { TtlCache } from '../../infra/ttl-cache.js';
import type { MemberLocator } from './locate.js';
import type { LogStore } from './log.js';
import { storageError, type GroupRecord, type GroupRecords } from './records.js';

const SETTLED_MAX = 100_000;
const SETTLED_TTL_MS = 10 * 60_000;

type Status = { s: 'stored' | 'failed'; code?: Code };

/** What sending needs of the other features. */
export interface SenderPorts {
  social: Pick<SocialGraph, 'refuses'>;
  events: Pick<MessagingEvents, 'groupMessage'>;
  locator: MemberLocator;
  /** Hands a stored message to member devices on this cell (Groups.onDelivery). */
  deliverHere(item: ChatItem, to: Array<[string, string]>): void;
}

/**
 * Sending to a group (docs/groups.md): the message is appended to the group's
 * log (custody), the sender hears `stored` once the log acknowledged it, then
 * each cell hosting an online member device is told (one `gdlv` per cell).
 */
export class GroupSender {
  /** Final statuses of sent messages, to answer re-sends without storing them again. */
  private readonly settled = new TtlCache<string, Status>(SETTLED_MAX, SETTLED_TTL_MS);
  /** Messages whose log append is under way (`user/device/id`), and their count per sending device. */
  private readonly sending = new Set<string>();
  private readonly inFlight = new Map<string, number>();

  constructor(
    private readonly ctx: CellContext,
    private readonly ports: SenderPorts,
    private readonly records: GroupRecords,
    private readonly log: LogStore,
  ) {}

  /**
   * A message to a group: appended to the group's log (custody), `stored` to the
   * sender, then fanned out. Returns once the append is under way, so the
   * session's next message goes to the log after this one.
   */
  async send(s: DeviceSession, m: Send): Promise<void> {
    const g = m.g!;
    const key = `${s.user}/${s.device}/${m.id}`;
    if (this.sending.has(key)) return; // a re-send of a message being stored: its status will come
    const done = this.settled.get(key);
    if (done) return s.send({ t: 'status', id: m.id, ...done });
    const sender = `${s.user}/${s.device}`;
    const n = this.inFlight.get(sender) ?? 0;
    if (n >= this.ctx.config.limits.maxInFlightPerSession) return s.send({ t: 'status', id: m.id, s: 'failed', code: ErrorCode.TOO_MANY_IN_FLIGHT });
    let rec: GroupRecord | undefined;
    try {
      rec = await this.records.get(g);
      // Not a member by a cached record: make sure with a fresh read (it may have just been added).
      if (!rec?.members.has(s.user)) rec = await this.records.get(g, true);
    } catch (err) {
      throw storageError(err);
    }
    if (!rec?.members.has(s.user)) return s.send({ t: 'status', id: m.id, s: 'failed', code: ErrorCode.NOT_A_MEMBER });
    if (this.sending.has(key)) return;
    // A group message costs what it fans out to (a 1,024-member burst would hold a cell up for seconds).
    let ok = s.spend('fanout', rec.members.size);
    if (typeof ok !== 'boolean') ok = await ok;
    if (!ok) return s.refused('fanout', m.id);
    if (this.sending.has(key)) return;
    this.sending.add(key);
    this.inFlight.set(sender, (this.inFlight.get(sender) ?? 0) + 1);
    const item: ChatItem = { k: 'm', id: m.id, from: s.user, fd: s.device, to: g, text: m.text, ts: Date.now(), g };
    const members = rec;
    this.log
      .append(item)
      .then(
        ({ seq }) => {
          this.ctx.metrics.groupMessages.inc();
          this.finish(s, key, m.id, { s: 'stored' }, true);
          void this.fanOut(members, { ...item, seq }, s.device).catch((err) => this.ctx.log('group fan-out failed', err));
        },
        (err: unknown) => {
          const code = err instanceof ProtocolError ? err.code : ErrorCode.STORAGE_UNAVAILABLE;
          if (code === ErrorCode.STORAGE_UNAVAILABLE) this.ctx.log('group log append failed', err);
          this.finish(s, key, m.id, { s: 'failed', code }, code !== ErrorCode.STORAGE_UNAVAILABLE);
        },
      )
      .finally(() => {
        this.sending.delete(key);
        const left = (this.inFlight.get(sender) ?? 1) - 1;
        if (left > 0) this.inFlight.set(sender, left);
        else this.inFlight.delete(sender);
      });
  }

  private finish(s: DeviceSession, key: string, id: string, st: Status, remember: boolean): void {
    if (remember) this.settled.set(key, st);
    // The sending session, or the one that replaced it on this cell.
    (s.isOpen ? s : this.ctx.hub.session(s.user, s.device))?.send({ t: 'status', id, ...st });
  }

  /** Online member devices, by cell: one `gdlv` per cell. Members who block the sender are skipped. */
  private async fanOut(rec: GroupRecord, item: ChatItem, senderDevice: string): Promise<void> {
    const { social, events, locator } = this.ports;
    const byCell = new Map<string, Array<[string, string]>>();
    await Promise.all(
      [...rec.members.keys()].map(async (u) => {
        if (u !== item.from && (await social.refuses(u, item.from).catch(() => false))) return;
        const locs = await locator.locate(u);
        events.groupMessage(u, locs, item); // its offline devices get a push
        for (const l of locs) {
          if (u === item.from && l.device === senderDevice) continue;
          let to = byCell.get(l.cell);
          if (!to) byCell.set(l.cell, (to = []));
          to.push([u, l.device]);
        }
      }),
    );
    for (const [cell, to] of byCell) {
      if (cell === this.ctx.cellId) this.ports.deliverHere(item, to);
      else this.ctx.bus.publish(cell, { k: 'gdlv', m: item, to });
    }
  }
}
