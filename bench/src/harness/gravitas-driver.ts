import { GravitasClient } from '@gravitas/client';
import { nativeKeyPair } from '../procs.js';
import type { DeviceRef, Driver, DriverConnection, Incoming } from './driver.js';

/*
 * The Gravitas driver: one SDK client (@gravitas/client) per device, so the harness measures what
 * an application sees, retries and outbox included. An SDK client costs far more memory and CPU
 * than the raw sessions of custody-gen.ts; at 50,000 devices per host that may make the generators
 * the bottleneck (the report will say so) — a raw-session driver is the next step if it does.
 */

export interface GravitasDriverOptions {
  /** Cell addresses (host:port); devices are spread over them by a hash of the device. */
  addresses: string[];
  serverPublicKey: Uint8Array;
  /** Registration token ('' for an open cluster). */
  registration?: string;
  connectTimeoutMs?: number;
}

/** FNV-1a: a stable cell for each device, whichever generator hosts it. */
function hash(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

export class GravitasDriver implements Driver {
  readonly name = 'gravitas';
  private readonly open = new Set<GravitasClient>();

  constructor(private readonly o: GravitasDriverOptions) {
    if (o.addresses.length === 0) throw new RangeError('GravitasDriver needs at least one address');
  }

  async connect(d: DeviceRef, onReceive: (m: Incoming, receivedAtMs: number) => void): Promise<DriverConnection> {
    const key = `${d.user}/${d.device}`;
    const first = hash(key) % this.o.addresses.length;
    // Its own cell first, then the others: the SDK tries them in turn if one is down.
    const servers = [...this.o.addresses.slice(first), ...this.o.addresses.slice(0, first)];
    const client = new GravitasClient({
      servers,
      transports: ['tcp'],
      serverPublicKey: this.o.serverPublicKey,
      identity: nativeKeyPair(),
      user: d.user,
      device: d.device,
      registration: this.o.registration ?? '',
      ...(this.o.connectTimeoutMs !== undefined && { connectTimeoutMs: this.o.connectTimeoutMs }),
    });
    client.on('message', (m) => onReceive({ from: m.from, ...(m.g !== undefined && { group: m.g }), body: m.text }, performance.timeOrigin + performance.now()));
    // Errors surface through send()/connect(); an unhandled 'error' event would kill the generator.
    client.on('error', () => undefined);
    await client.connect();
    this.open.add(client);
    return {
      send: async (to, body) => void (await client.send(to, body)),
      sendToGroup: async (g, body) => void (await client.sendToGroup(g, body)),
      ping: () => client.ping(),
      setPresence: (s) => client.setPresence(s),
      disconnect: async () => {
        this.open.delete(client);
        await client.close();
      },
    };
  }

  async close(): Promise<void> {
    const all = [...this.open];
    this.open.clear();
    await Promise.allSettled(all.map((c) => c.close()));
  }
}
