/*
 * Round trips on the session: `req`/`res` by request id and `ping`/`pong` by number, both
 * cut when the connection is lost; and the request helpers of groups (docs/groups.md),
 * which page through long answers and split long user lists into several requests.
 */
import {
  ErrorCode, MAX_USERS_PER_REQUEST, ProtocolError, RemoteError, type RequestArgs, type RequestOp, type Response,
} from '@gravitas/protocol';
import { ClientError, ClientErrorCode } from './errors.js';
import type { GroupInfo, GroupInvite, GroupSummary } from './types.js';

interface Waiter<T> { resolve: (v: T) => void; reject: (e: Error) => void }

/** Requests and pings waiting for their answer. */
export class Calls {
  private readonly pings = new Map<number, Waiter<void>>();
  private readonly requests = new Map<number, Waiter<unknown>>();
  private pingSeq = 0;
  private requestSeq = 0;

  /** `online`: there is a session; `write` seals onto it (throws NOT_CONNECTED without one). */
  constructor(private readonly session: { readonly online: boolean; write(m: object): void }) {}

  request<K extends RequestOp>(op: K, args: RequestArgs[K]): Promise<unknown> {
    if (!this.session.online) return Promise.reject(new ClientError(ClientErrorCode.NOT_CONNECTED, 'not connected'));
    const rid = (this.requestSeq = (this.requestSeq + 1) % 2 ** 32);
    return new Promise((resolve, reject) => {
      this.requests.set(rid, { resolve, reject });
      this.session.write({ t: 'req', rid, op, a: args });
    });
  }

  ping(): Promise<void> {
    const n = ++this.pingSeq;
    return new Promise((resolve, reject) => {
      this.session.write({ t: 'ping', n });
      this.pings.set(n, { resolve, reject });
    });
  }

  answer(m: Response): void {
    const r = this.requests.get(m.rid);
    if (!r) return;
    this.requests.delete(m.rid);
    if (m.ok) r.resolve(m.data);
    else r.reject(new RemoteError(m.code, m.message));
  }

  pong(n: number): void {
    this.pings.get(n)?.resolve();
    this.pings.delete(n);
  }

  /** A refused ping names its number: it settles now rather than waiting for a pong that will not come. True if `ref` was one. */
  refused(ref: string | undefined, err: RemoteError): boolean {
    const ping = ref !== undefined && /^\d{1,15}$/.test(ref) ? this.pings.get(Number(ref)) : undefined;
    if (!ping) return false;
    this.pings.delete(Number(ref));
    ping.reject(err);
    return true;
  }

  /** A round trip cut by the connection loss will never complete: say so. */
  cut(): void {
    for (const p of this.pings.values()) p.reject(new ClientError(ClientErrorCode.NOT_CONNECTED, 'connection lost before the pong'));
    this.pings.clear();
    for (const r of this.requests.values()) r.reject(new ClientError(ClientErrorCode.NOT_CONNECTED, 'connection lost before the answer'));
    this.requests.clear();
  }
}

export type Request = <K extends RequestOp>(op: K, args: RequestArgs[K]) => Promise<unknown>;

/**
 * Asks for every page of a paginated answer: `from` the previous page's `next`
 * until an answer has none. Each page fits a frame; the whole list may not.
 */
export async function pages<K extends 'groups.list' | 'groups.info' | 'groups.invites' | 'mute.list', P extends { next?: string }>(
  request: Request, op: K, args: RequestArgs[K], each: (page: P) => void,
): Promise<void> {
  let from: string | undefined;
  for (;;) {
    const page = (await request(op, { ...args, ...(from !== undefined && { from }) })) as P;
    each(page);
    if (page.next === undefined) return;
    if (page.next === from) throw new ProtocolError(ErrorCode.BAD_MESSAGE, `${op} answered the same cursor twice`);
    from = page.next;
  }
}

export async function listGroups(request: Request): Promise<GroupSummary[]> {
  const out: GroupSummary[] = [];
  await pages<'groups.list', { groups: GroupSummary[]; next?: string }>(request, 'groups.list', {}, (p) => out.push(...p.groups));
  return out;
}

export async function groupInfo(request: Request, g: string): Promise<GroupInfo> {
  let info: GroupInfo | undefined;
  await pages<'groups.info', GroupInfo & { next?: string; pending?: number }>(request, 'groups.info', { g }, (p) => {
    if (!info) {
      info = { g: p.g, name: p.name, owner: p.owner, count: p.count, members: [...p.members], admins: [...p.admins], ...(p.invited && { invited: [...p.invited] }) };
      return;
    }
    info.members.push(...p.members);
    info.admins.push(...p.admins);
    if (p.invited) (info.invited ??= []).push(...p.invited);
  });
  return info!;
}

export async function invites(request: Request): Promise<GroupInvite[]> {
  const out: GroupInvite[] = [];
  await pages<'groups.invites', { invites: GroupInvite[]; next?: string }>(request, 'groups.invites', {}, (p) => out.push(...p.invites));
  return out;
}

export async function createGroup(request: Request, name: string, members: string[]): Promise<{ g: string; added: string[]; invited: string[] }> {
  const rest = [...new Set(members)];
  const first = rest.splice(0, MAX_USERS_PER_REQUEST);
  const r = (await request('groups.create', { name, members: first })) as { g: string; added: string[]; invited: string[] };
  if (rest.length === 0) return r;
  const more = await inBatches(request, 'groups.add', r.g, rest, { added: [], invited: [] });
  return { g: r.g, added: [...r.added, ...more.added], invited: [...r.invited, ...more.invited] };
}

/** A group request naming many users, one request per MAX_USERS_PER_REQUEST of them; the answers' lists joined into `out`. */
export async function inBatches<T extends Record<string, string[]>>(request: Request, op: 'groups.add' | 'groups.remove', g: string, users: string[], out: T): Promise<T> {
  const list = [...new Set(users)];
  for (let i = 0; i < list.length; i += MAX_USERS_PER_REQUEST) {
    const r = (await request(op, { g, users: list.slice(i, i + MAX_USERS_PER_REQUEST) })) as Record<string, string[]>;
    for (const [k, names] of Object.entries(out)) names.push(...(r[k] ?? []));
  }
  return out;
}
