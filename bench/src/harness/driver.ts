/*
 * What the harness needs from a system under test, so one scenario can drive Gravitas, an XMPP
 * server or anything else: connect a device, send to a user or a group, receive, ping, disconnect.
 * A driver knows nothing about schedules or histograms; the generator owns those.
 *
 * Latency needs the *intended* send time at the receiver, and servers do not carry it for us, so
 * every message body starts with it (`encodeBody`); the receiver's driver hands the body back and
 * the generator decodes it. Sender and receiver share one clock when they run on one host
 * (performance.timeOrigin + performance.now()); across hosts the clocks must be synchronised and
 * the report says so (not built yet).
 */

export interface DeviceRef {
  user: string;
  /** Device name, unique per user. */
  device: string;
}

export interface Incoming {
  from: string;
  /** Set for group messages. */
  group?: string;
  body: string;
}

export interface DriverConnection {
  /** Resolves when the server accepted the message (for Gravitas: `delivered` or `stored`). */
  send(to: string, body: string): Promise<void>;
  sendToGroup(group: string, body: string): Promise<void>;
  /** One round trip to the server. */
  ping(): Promise<void>;
  setPresence(state: 'online' | 'away'): void;
  /** Ends the session cleanly (no reconnect). */
  disconnect(): Promise<void>;
}

export interface Driver {
  readonly name: string;
  /** Opens a session for the device; `onReceive` is called for every message it gets, with the receive time. */
  connect(device: DeviceRef, onReceive: (m: Incoming, receivedAtMs: number) => void): Promise<DriverConnection>;
  /** Releases whatever the driver holds across connections. */
  close(): Promise<void>;
}

/** Epoch ms with sub-ms precision, the same in every process of a host. */
export const nowMs = (): number => performance.timeOrigin + performance.now();

/** `<intended ms, 3 decimals> ` then padding up to `bytes` (at least the timestamp). */
export function encodeBody(intendedMs: number, bytes: number): string {
  const head = `${intendedMs.toFixed(3)} `;
  return bytes > head.length ? head + 'x'.repeat(bytes - head.length) : head;
}

/** The intended send time in a body, or undefined for a body the harness did not write. */
export function decodeBody(body: string): number | undefined {
  const sp = body.indexOf(' ');
  const v = Number(sp < 0 ? body : body.slice(0, sp));
  return sp > 0 && Number.isFinite(v) ? v : undefined;
}
