import { isName, MAX_TEXT_LENGTH } from '@gravitas/protocol';

/** A chat message as it travels between cells. */
export interface WireMsg { id: string; from: string; fd: string; to: string; text: string; ts: number }

/** Messages on a cell's inbox subject (msgpack, discriminated on `k`). */
export type Envelope =
  | { k: 'dlv'; m: WireMsg; dev: string; oc: string } // deliver to device; oc = origin cell
  | { k: 'ack'; id: string; from: string; fd: string; to: string; dev: string } // device `to/dev` acknowledged
  | { k: 'nh'; id: string; from: string; fd: string; dev: string } // "not here": the device has no session on this cell
  | { k: 'kick'; user: string; dev: string; ep: number }; // a newer session of the device exists

const s = (v: unknown): v is string => typeof v === 'string';
const n = (v: unknown): v is string => typeof v === 'string' && isName(v, 128);

/** Envelopes come from other cells of the cluster; still, a bad one must never crash a cell. */
export function decodeEnvelope(v: unknown): Envelope {
  const o = v as Record<string, unknown>;
  if (typeof o !== 'object' || o === null) throw new TypeError('envelope must be a map');
  switch (o.k) {
    case 'dlv': {
      const m = o.m as Record<string, unknown>;
      if (typeof m === 'object' && m && n(m.id) && n(m.from) && n(m.fd) && n(m.to) && s(m.text) && m.text.length <= MAX_TEXT_LENGTH && typeof m.ts === 'number' && n(o.dev) && n(o.oc)) {
        return { k: 'dlv', m: { id: m.id, from: m.from, fd: m.fd, to: m.to, text: m.text, ts: m.ts }, dev: o.dev, oc: o.oc };
      }
      break;
    }
    case 'ack':
      if (n(o.id) && n(o.from) && n(o.fd) && n(o.to) && n(o.dev)) return { k: 'ack', id: o.id, from: o.from, fd: o.fd, to: o.to, dev: o.dev };
      break;
    case 'nh':
      if (n(o.id) && n(o.from) && n(o.fd) && n(o.dev)) return { k: 'nh', id: o.id, from: o.from, fd: o.fd, dev: o.dev };
      break;
    case 'kick':
      if (n(o.user) && n(o.dev) && typeof o.ep === 'number') return { k: 'kick', user: o.user, dev: o.dev, ep: o.ep };
      break;
  }
  throw new TypeError(`malformed envelope of kind ${String(o.k)}`);
}
