import { BlockList, isIP, isIPv4 } from 'node:net';

/*
 * Who a connection comes from (docs/security.md, "Connections per source"): the one place every
 * transport asks. A connection's source is its socket's peer address or — only
 * when that peer is a configured trusted proxy — the client address the proxy
 * reports: the PROXY protocol header on a TCP listener (proxy-protocol.ts), the
 * X-Forwarded-For header on the web listener. Per-source caps (source-limits.ts)
 * and the handshake cookie (cell/guard.ts) use it.
 */

import type { ClientSource } from '../core/transport.js';
export type { ClientSource };

/** Canonical form of an IP address, or undefined if `addr` is none (a bracketed or zone-less form is accepted). */
export function canonicalIp(addr: string | undefined): string | undefined {
  if (!addr) return undefined;
  let a = addr.trim();
  if (a.startsWith('[') && a.endsWith(']')) a = a.slice(1, -1);
  const family = isIP(a);
  if (family === 4) return a.split('.').map((o) => String(Number(o))).join('.');
  if (family !== 6) return undefined;
  const groups = expandIpv6(a);
  if (!groups) return undefined;
  // ::ffff:a.b.c.d — an IPv4 client seen through a dual-stack socket.
  if (groups.slice(0, 5).every((g) => g === 0) && groups[5] === 0xffff) {
    return `${groups[6]! >> 8}.${groups[6]! & 255}.${groups[7]! >> 8}.${groups[7]! & 255}`;
  }
  return compressIpv6(groups);
}

/** The eight 16-bit groups of an IPv6 address (validated by isIP already), or undefined if it is none. */
export function expandIpv6(a: string): number[] | undefined {
  let s = a.toLowerCase();
  const pct = s.indexOf('%');
  if (pct >= 0) s = s.slice(0, pct);
  // An embedded IPv4 tail becomes two groups.
  const v4 = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(s);
  if (v4) {
    const [a0, a1, a2, a3] = v4.slice(1).map(Number) as [number, number, number, number];
    s = `${s.slice(0, v4.index)}${((a0 << 8) | a1).toString(16)}:${((a2 << 8) | a3).toString(16)}`;
  }
  const halves = s.split('::');
  if (halves.length > 2) return undefined;
  const parse = (part: string): number[] => (part === '' ? [] : part.split(':').map((g) => parseInt(g, 16)));
  const head = parse(halves[0]!);
  const tail = halves.length === 2 ? parse(halves[1]!) : [];
  const fill = 8 - head.length - tail.length;
  if (fill < 0 || (halves.length === 1 && fill !== 0)) return undefined;
  const out = [...head, ...new Array<number>(fill).fill(0), ...tail];
  return out.length === 8 && out.every((g) => Number.isInteger(g) && g >= 0 && g <= 0xffff) ? out : undefined;
}

/** RFC 5952: lower case, the longest run of two or more zero groups as `::`. */
function compressIpv6(g: number[]): string {
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (g[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > bestLen) {
      best = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = g.map((x) => x.toString(16));
  if (best < 0) return hex.join(':');
  return `${hex.slice(0, best).join(':')}::${hex.slice(best + bestLen).join(':')}`;
}

/** The network a canonical address belongs to, for per-prefix caps: IPv4 /24, IPv6 /64. */
export function prefixOf(ip: string): string {
  if (isIPv4(ip)) return `${ip.slice(0, ip.lastIndexOf('.'))}.0/24`;
  const g = expandIpv6(ip) ?? [];
  return `${compressIpv6([...g.slice(0, 4), 0, 0, 0, 0])}/64`;
}

export function sourceOf(ip: string, via: ClientSource['via']): ClientSource {
  return { ip, prefix: prefixOf(ip), via };
}

/** Peer addresses whose source objects are shared at once (the cache is emptied beyond). */
const MAX_INTERNED = 65_536;

/** A connection whose peer address Node could not tell (it closed at once): charged to one shared bucket. */
const UNKNOWN: ClientSource = { ip: 'unknown', prefix: 'unknown', via: 'peer' };

/** Parses `a.b.c.d/n`, `x::/n` or a bare address (a /32 or /128). Returns why not, or the parts. */
export function parseCidr(s: string): { address: string; prefix: number; family: 'ipv4' | 'ipv6' } | string {
  const slash = s.indexOf('/');
  const addr = canonicalIp(slash < 0 ? s : s.slice(0, slash));
  if (!addr) return `"${s}" is not an IP address or CIDR`;
  const family = isIPv4(addr) ? 'ipv4' : 'ipv6';
  const max = family === 'ipv4' ? 32 : 128;
  if (slash < 0) return { address: addr, prefix: max, family };
  const bits = s.slice(slash + 1);
  if (!/^\d{1,3}$/.test(bits) || Number(bits) > max) return `"${s}": the prefix length must be 0..${max}`;
  return { address: addr, prefix: Number(bits), family };
}

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
