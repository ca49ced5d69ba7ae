import { isIPv4 } from 'node:net';

/*
 * Source addresses for a generator's connections (docs/benchmarking.md, "Client
 * addresses"). A Gravitas target caps connections, handshakes in progress and
 * pending streams per client address and per /24 (docs/security.md, "Connections per source"), and
 * a generator is thousands of clients on one host: from one address it would trip
 * those caps like a flood would. When the target is on this machine (a loopback
 * address) and the host is Linux — where the whole of 127.0.0.0/8 is the loopback
 * interface, so any 127.x.y.z can be bound without configuration — each device
 * connects from its own address 127.G.H.L: G for the generator, H.L for the
 * device's slot. A /24 then holds at most 254 devices, an address one.
 * A remote target sees the generator host's own address: raise that target's
 * network.* caps, or give generators addresses of their own (several hosts or pods).
 */

/** Is `host` a loopback address (127.0.0.0/8 or localhost)? IPv6 ::1 has no range to spread over. */
export function isLoopbackHost(host: string): boolean {
  return host === 'localhost' || (isIPv4(host) && host.startsWith('127.'));
}

/** Can this host bind any 127.x.y.z? Linux can; macOS and others have only 127.0.0.1 configured. */
export const CAN_SPREAD_LOOPBACK = process.platform === 'linux';

/** The local address of slot `slot` of generator `generator` (0-based): 127.(generator+1).H.L, L in 1..254. */
export function loopbackSource(generator: number, slot: number): string {
  const g = (generator % 254) + 1;
  const s = slot % (256 * 254);
  return `127.${g}.${Math.floor(s / 254)}.${(s % 254) + 1}`;
}
