import { isIP, isIPv4 } from 'node:net';

/* Client addresses: canonical forms, their networks, CIDR ranges (no knowledge of who uses them). */

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
