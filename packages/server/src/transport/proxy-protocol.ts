import { ErrorCode, ProtocolError } from '@gravitas/protocol';
import { canonicalIp, expandIpv6 } from './source.js';

/*
 * The PROXY protocol header (HAProxy's spec, versions 1 and 2) that a trusted
 * proxy puts before the client's bytes on a TCP connection, naming the client's
 * address. Version 2 is binary; version 1 is one text line (nginx's stream
 * module sends only v1). Parsed only from peers in network.trustedProxies, and
 * then required: a trusted peer that does not open with a valid header is
 * refused (BAD_PROXY_HEADER). Bounded: at most V1_MAX_BYTES or 16 + V2_MAX_BODY
 * bytes are held, and a first byte that cannot begin a header fails at once.
 */

export const V1_MAX_BYTES = 107; // the spec's worst case, CRLF included
/** Addresses plus TLVs of a v2 header; the spec allows 65,535, no proxy we know sends more than a few hundred. */
export const V2_MAX_BODY = 1024;
const V2_SIG = Buffer.from('\r\n\r\n\0\r\nQUIT\n', 'latin1');
const V1_SIG = Buffer.from('PROXY ', 'latin1');

export type ProxyHeader =
  | { done: false }
  /** `used`: header bytes (what follows is the client's). `ip`: the client, or undefined for a LOCAL/UNKNOWN connection (the proxy's own, e.g. a health check). */
  | { done: true; used: number; ip: string | undefined };

export function badProxyHeader(why: string): ProtocolError {
  return new ProtocolError(ErrorCode.BAD_PROXY_HEADER, `a trusted proxy must open the connection with a PROXY protocol header: ${why}`);
}

/** Reads a header from the start of `buf` (all bytes received so far). Throws BAD_PROXY_HEADER. */
export function readProxyHeader(buf: Buffer): ProxyHeader {
  // Fail on the first byte that cannot belong to either signature.
  const n = Math.min(buf.length, V2_SIG.length);
  const v1 = buf.subarray(0, Math.min(n, V1_SIG.length)).equals(V1_SIG.subarray(0, Math.min(n, V1_SIG.length)));
  const v2 = buf.subarray(0, n).equals(V2_SIG.subarray(0, n));
  if (!v1 && !v2) throw badProxyHeader('no PROXY signature');
  return v2 ? readV2(buf) : readV1(buf);
}

function readV1(buf: Buffer): ProxyHeader {
  const end = buf.indexOf('\r\n');
  if (end < 0) {
    if (buf.length >= V1_MAX_BYTES) throw badProxyHeader(`v1 line longer than ${V1_MAX_BYTES} bytes`);
    return { done: false };
  }
  if (end + 2 > V1_MAX_BYTES) throw badProxyHeader(`v1 line longer than ${V1_MAX_BYTES} bytes`);
  const parts = buf.toString('latin1', 0, end).split(' ');
  const proto = parts[1];
  if (proto === 'UNKNOWN') return { done: true, used: end + 2, ip: undefined };
  if ((proto !== 'TCP4' && proto !== 'TCP6') || parts.length !== 6) throw badProxyHeader('v1 line is not "PROXY TCP4|TCP6 src dst sport dport"');
  const [, , src, dst, sport, dport] = parts as [string, string, string, string, string, string];
  const ip = canonicalIp(src);
  const family = proto === 'TCP4' ? 4 : 6;
  if (!ip || !canonicalIp(dst) || (family === 4) !== /^\d+\.\d+\.\d+\.\d+$/.test(src)) throw badProxyHeader(`v1 addresses are not ${proto} addresses`);
  if (!isPort(sport) || !isPort(dport)) throw badProxyHeader('v1 ports must be 0..65535');
  return { done: true, used: end + 2, ip };
}

function isPort(s: string): boolean {
  return /^(0|[1-9]\d{0,4})$/.test(s) && Number(s) <= 65535;
}

function readV2(buf: Buffer): ProxyHeader {
  if (buf.length < 16) return { done: false };
  const verCmd = buf[12]!;
  if (verCmd >> 4 !== 2) throw badProxyHeader(`v2 version ${verCmd >> 4}`);
  const cmd = verCmd & 0x0f;
  if (cmd > 1) throw badProxyHeader(`v2 command ${cmd}`);
  const fam = buf[13]!;
  const len = buf.readUInt16BE(14);
  if (len > V2_MAX_BODY) throw badProxyHeader(`v2 header body of ${len} bytes (at most ${V2_MAX_BODY})`);
  if (buf.length < 16 + len) return { done: false };
  const used = 16 + len;
  // LOCAL: the proxy speaking for itself (health checks); addresses, if any, are ignored.
  if (cmd === 0) return { done: true, used, ip: undefined };
  const af = fam >> 4;
  const body = buf.subarray(16, used);
  if (af === 1) {
    if (len < 12) throw badProxyHeader('v2 TCP4 address block too short');
    return { done: true, used, ip: `${body[0]}.${body[1]}.${body[2]}.${body[3]}` };
  }
  if (af === 2) {
    if (len < 36) throw badProxyHeader('v2 TCP6 address block too short');
    const groups: string[] = [];
    for (let i = 0; i < 16; i += 2) groups.push(body.readUInt16BE(i).toString(16));
    return { done: true, used, ip: canonicalIp(groups.join(':')) };
  }
  // UNSPEC or a UNIX socket: no IP to charge; the proxy's own address is used.
  if (af === 0 || af === 3) return { done: true, used, ip: undefined };
  throw badProxyHeader(`v2 address family ${af}`);
}

/** A v1 header line (for tests and for proxies we write ourselves). */
export function proxyV1(src: string, dst: string, sport: number, dport: number): Buffer {
  const fam = src.includes(':') ? 'TCP6' : 'TCP4';
  return Buffer.from(`PROXY ${fam} ${src} ${dst} ${sport} ${dport}\r\n`, 'latin1');
}

/** A v2 PROXY (or LOCAL) header for an IPv4 or IPv6 pair. */
export function proxyV2(src: string, dst: string, sport: number, dport: number, local = false): Buffer {
  const six = src.includes(':');
  const addrs = Buffer.alloc(six ? 36 : 12);
  const put = (ip: string, at: number): void => {
    if (!six) ip.split('.').forEach((o, i) => addrs.writeUInt8(Number(o), at + i));
    else {
      const g = expandIpv6(ip);
      if (!g) throw new TypeError(`${ip} is not an IPv6 address`);
      g.forEach((x, i) => addrs.writeUInt16BE(x, at + i * 2));
    }
  };
  put(src, 0);
  put(dst, six ? 16 : 4);
  addrs.writeUInt16BE(sport, six ? 32 : 8);
  addrs.writeUInt16BE(dport, six ? 34 : 10);
  const head = Buffer.alloc(16);
  V2_SIG.copy(head);
  head[12] = local ? 0x20 : 0x21;
  head[13] = six ? 0x21 : 0x11;
  head.writeUInt16BE(addrs.length, 14);
  return Buffer.concat([head, addrs]);
}
