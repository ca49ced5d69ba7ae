import { BlockList, isIPv4 } from 'node:net';

/*
 * Who a connection comes from (docs/security.md, "Connections per source"): the one place every
 * transport asks. A connection's source is its socket's peer address or — only
 * when that peer is a configured trusted proxy — the client address the proxy
 * reports: the PROXY protocol header on a TCP listener (proxy-protocol.ts), the
 * X-Forwarded-For header on the web listener. Per-source caps (source-limits.ts)
 * and the handshake cookie (cell/guard.ts) use it.
 */

import type { ClientSource } from '../core/transport.js';
import { canonicalIp, parseCidr, prefixOf } from '../infra/addresses.js';
export { canonicalIp, expandIpv6, parseCidr, prefixOf } from '../infra/addresses.js';
export type { ClientSource };

export function sourceOf(ip: string, via: ClientSource['via']): ClientSource {
  return { ip, prefix: prefixOf(ip), via };
}

/** Peer addresses whose source objects are shared at once (the cache is emptied beyond). */
const MAX_INTERNED = 65_536;

/** A connection whose peer address Node could not tell (it closed at once): charged to one shared bucket. */
const UNKNOWN: ClientSource = { ip: 'unknown', prefix: 'unknown', via: 'peer' };

/**
 * Resolves the source of connections for one listener set, given the trusted
 * proxies (network.trustedProxies). Stateless apart from the CIDR list.
 */
export class SourceResolver {
  private readonly trusted = new BlockList();
  readonly hasTrusted: boolean;
  /** Sources by the peer address Node reports: bounded, emptied when full (a cache, nothing depends on it). */
  private readonly peers = new Map<string, ClientSource>();

  constructor(trustedProxies: readonly string[]) {
    for (const c of trustedProxies) {
      const p = parseCidr(c);
      if (typeof p === 'string') throw new Error(p); // validated with the config: a bug if reached
      this.trusted.addSubnet(p.address, p.prefix, p.family);
    }
    this.hasTrusted = trustedProxies.length > 0;
  }

  /** Is this canonical address one of the trusted proxies? */
  isTrusted(ip: string): boolean {
    return this.hasTrusted && ip !== UNKNOWN.ip && this.trusted.check(ip, isIPv4(ip) ? 'ipv4' : 'ipv6');
  }

  /** The source a socket's own peer address makes; one shared object per address (most clients hold one connection, many share an address). */
  peer(remoteAddress: string | undefined): ClientSource {
    if (remoteAddress === undefined) return UNKNOWN;
    let src = this.peers.get(remoteAddress);
    if (src) return src;
    const ip = canonicalIp(remoteAddress);
    src = ip ? sourceOf(ip, 'peer') : UNKNOWN;
    if (this.peers.size >= MAX_INTERNED) this.peers.clear();
    this.peers.set(remoteAddress, src);
    return src;
  }

  /**
   * The source of an HTTP request from a trusted proxy peer: the rightmost
   * X-Forwarded-For entry that is not itself a trusted proxy. Entries are walked
   * from the right (each proxy appends the address it saw); the walk stops at an
   * entry that is not an address (`unknown`, an obfuscated id, garbage) and the
   * request is charged to the hop that reported it. No header: the peer itself.
   * Call only for trusted peers: an untrusted peer's header is never read.
   */
  forwarded(peer: ClientSource, xff: string | undefined): ClientSource {
    if (!xff) return peer;
    const hops = xff.split(',');
    let last = peer;
    for (let i = hops.length - 1; i >= 0; i--) {
      const ip = canonicalIp(stripPort(hops[i]!.trim()));
      if (!ip) return last;
      last = sourceOf(ip, 'proxy');
      if (!this.isTrusted(ip)) return last;
    }
    return last; // every hop a trusted proxy: the leftmost one is the best we know
  }
}

/** `1.2.3.4:5678` → `1.2.3.4`, `[::1]:80` → `::1`; anything else unchanged. */
function stripPort(s: string): string {
  if (s.startsWith('[')) {
    const end = s.indexOf(']');
    return end > 0 ? s.slice(1, end) : s;
  }
  const colon = s.indexOf(':');
  return colon > 0 && colon === s.lastIndexOf(':') ? s.slice(0, colon) : s;
}
