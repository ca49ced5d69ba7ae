import { decodeRequestArgs, ErrorCode, ProtocolError, type Request, type RequestArgs, type RequestOp } from '@gravitas/protocol';
import type { Log } from '../core/context.js';
import type { RelayPort, RequestHandler } from '../core/ports.js';
import type { DeviceSession } from '../core/session.js';

/** The area of a request op: what comes before the first dot (the whole op without one). */
type Area<Op extends string> = Op extends `${infer A}.${string}` ? A : Op;
/** One handler per area: an op of a new area without a handler does not compile. */
export type RequestAreas = Record<Area<RequestOp>, RequestHandler>;

/** Requests from sessions (`req`), validated, routed by area, answered with `res` carrying the same rid. */
export class Requests {
  constructor(private readonly areas: RequestAreas, private readonly log: Log) {}

  async request(s: DeviceSession, m: Request): Promise<void> {
    try {
      const args = decodeRequestArgs(m.op, m.a);
      const dot = m.op.indexOf('.');
      const area = (dot < 0 ? m.op : m.op.slice(0, dot)) as Area<RequestOp>;
      const handler = Object.hasOwn(this.areas, area) ? this.areas[area] : undefined;
      if (!handler) throw new ProtocolError(ErrorCode.UNKNOWN_TYPE, `no handler for ${m.op}`);
      const data = await handler.handle(s, m.op, args);
      s.send({ t: 'res', rid: m.rid, ok: true, ...(data !== undefined && { data }) });
    } catch (err) {
      const pe = err instanceof ProtocolError ? err : undefined;
      if (!pe) this.log(`request ${m.op} failed`, err);
      s.send({ t: 'res', rid: m.rid, ok: false, code: pe?.code ?? ErrorCode.BUSY, message: pe?.message ?? 'the request could not be completed now' });
    }
  }
}

/** Which feature answers each area. */
export function requestAreas(p: {
  social: RequestHandler;
  groups: RequestHandler;
  devices: RequestHandler;
  intake: RequestHandler;
  profiles: RequestHandler;
  push: RequestHandler;
  relay: Pick<RelayPort, 'report'>;
}): RequestAreas {
  return {
    contacts: p.social,
    prefs: p.social,
    groups: p.groups,
    devices: p.devices,
    track: p.intake,
    profile: p.profiles,
    push: p.push,
    mute: p.push,
    reach: { handle: (s, _op, args) => p.relay.report(s, args as RequestArgs['reach.report']) },
  };
}
