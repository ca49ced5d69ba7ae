import { ErrorCode } from '@gravitas/protocol';
import { HttpError } from './chunked.js';

/*
 * HTTP/1.1 request heads as the web listener reads them itself (RFC 9112), and
 * Content-Length bodies: strict, because a lenient parser is how requests get
 * smuggled past a proxy.
 */

export interface RequestHead {
  method: string;
  path: string;
  query: URLSearchParams;
  /** 1.0 or 1.1 (minor version). */
  minor: number;
  headers: Map<string, string>;
}

const TOKEN_RE = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
const REQUEST_LINE_RE = /^([A-Z]+) (\/[^\s]*) HTTP\/1\.([01])$/;
/** Headers that must not appear twice: a disagreement between them is how requests get smuggled. */
const SINGLE = new Set(['content-length', 'transfer-encoding', 'host', 'upgrade']);

/** Parses a request head (without its final CRLFCRLF). Throws HttpError 400. */
export function parseHead(bytes: Buffer): RequestHead {
  const bad = (why: string): never => {
    throw new HttpError(400, ErrorCode.HTTP_BAD_REQUEST, why);
  };
  // latin1: every byte maps to one char, so no decoding step can hide a CR or LF.
  const lines = bytes.toString('latin1').split('\r\n');
  // Empty lines before the request line are allowed (RFC 9112 §2.2).
  while (lines.length > 1 && lines[0] === '') lines.shift();
  const m = REQUEST_LINE_RE.exec(lines[0]!);
  if (!m) return bad('malformed request line');
  const target = m[2]!;
  const q = target.indexOf('?');
  const headers = new Map<string, string>();
  for (const line of lines.slice(1)) {
    if (/[\r\n\0]/.test(line)) bad('control character in a header');
    if (line.startsWith(' ') || line.startsWith('\t')) bad('folded header line');
    const c = line.indexOf(':');
    if (c <= 0) bad('header line without a name');
    const name = line.slice(0, c).toLowerCase();
    if (!TOKEN_RE.test(name)) bad('malformed header name');
    const value = line.slice(c + 1).trim();
    const prev = headers.get(name);
    if (prev !== undefined && SINGLE.has(name)) bad(`header ${name} given twice`);
    headers.set(name, prev === undefined ? value : `${prev}, ${value}`);
  }
  return { method: m[1]!, path: q < 0 ? target : target.slice(0, q), query: new URLSearchParams(q < 0 ? '' : target.slice(q + 1)), minor: Number(m[3]), headers };
}

/** Reads a Content-Length body. */
export class LengthReader {
  constructor(private left: number) {}
  get done(): boolean {
    return this.left === 0;
  }
  push(buf: Uint8Array, onData: (d: Uint8Array) => void): number {
    const n = Math.min(this.left, buf.length);
    if (n > 0) onData(buf.subarray(0, n));
    this.left -= n;
    return n;
  }
}
