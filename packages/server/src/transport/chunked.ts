import { ErrorCode, ProtocolError } from '@gravitas/protocol';

/*
 * A strict, bounded decoder of an HTTP/1.1 chunked request body (RFC 9112 §7.1),
 * for the chunked-HTTP upstream (docs/transports.md). Node's parser hides chunk
 * boundaries and bounds nothing we care about, so the web listener reads upstream
 * bodies with this instead. It holds at most one chunk-size line (or trailer
 * line) in memory, never a chunk: data is handed on as it arrives. Every cap
 * fails with its own code, before the bytes that break it are buffered.
 */

export interface ChunkedLimits {
  /** Largest chunk (its declared size). */
  maxChunkBytes: number;
  /** Chunks in one body, the last (empty) chunk not counted. */
  maxChunks: number;
  /** Sum of all chunk sizes of one body. */
  maxBodyBytes: number;
  /** A chunk-size line: hex size, extensions and whitespace, without CRLF. */
  maxLineBytes: number;
  /** All trailer lines together. */
  maxTrailerBytes: number;
}

export const DEFAULT_CHUNK_LINE_BYTES = 256;
export const DEFAULT_TRAILER_BYTES = 1024;

/** A coded failure of the HTTP layer, with the status the listener answers. */
export class HttpError extends ProtocolError {
  override name = 'HttpError';
  constructor(readonly status: number, code: ErrorCode, message: string) {
    super(code, message);
  }
}

const enum S {
  Size,
  Ext,
  SizeLF,
  Data,
  DataCR,
  DataLF,
  Trailer,
  TrailerLF,
  Done,
}

const CR = 0x0d;
const LF = 0x0a;

function hexValue(b: number): number {
  if (b >= 0x30 && b <= 0x39) return b - 0x30;
  if (b >= 0x41 && b <= 0x46) return b - 0x37;
  if (b >= 0x61 && b <= 0x66) return b - 0x57;
  return -1;
}

export class ChunkedDecoder {
  private s = S.Size;
  private size = 0;
  private digits = 0;
  private line = 0;
  private remaining = 0;
  private trailerBytes = 0;
  private trailerLine = 0;
  chunks = 0;
  bodyBytes = 0;

  constructor(private readonly limits: ChunkedLimits) {}

  /** The last chunk and the trailers are in: the body is complete. */
  get done(): boolean {
    return this.s === S.Done;
  }

  /**
   * Feeds bytes; calls `onData` with chunk data as it arrives (a view valid only
   * during the call). Returns how many bytes of `buf` belong to the body: once
   * done, the rest is the next request on the connection. Throws HttpError.
   */
  push(buf: Uint8Array, onData: (data: Uint8Array) => void): number {
    const L = this.limits;
    let i = 0;
    while (i < buf.length && this.s !== S.Done) {
      switch (this.s) {
        case S.Data: {
          const n = Math.min(this.remaining, buf.length - i);
          onData(buf.subarray(i, i + n));
          i += n;
          this.remaining -= n;
          if (this.remaining === 0) this.s = S.DataCR;
          continue;
        }
        case S.DataCR:
          if (buf[i++] !== CR) throw bad('chunk data not followed by CRLF');
          this.s = S.DataLF;
          continue;
        case S.DataLF:
          if (buf[i++] !== LF) throw bad('chunk data not followed by CRLF');
          this.s = S.Size;
          continue;
        case S.Size: {
          const b = buf[i++]!;
          if (++this.line > L.maxLineBytes) throw new HttpError(400, ErrorCode.CHUNK_EXTENSION_TOO_LONG, `chunk-size line longer than ${L.maxLineBytes} bytes`);
          const v = hexValue(b);
          if (v >= 0) {
            // Checked per digit: a huge size is refused before its line is even complete.
            this.size = this.size * 16 + v;
            if (++this.digits > 8 || this.size > L.maxChunkBytes) throw new HttpError(413, ErrorCode.CHUNK_TOO_LARGE, `chunk larger than ${L.maxChunkBytes} bytes`);
            continue;
          }
          if (this.digits === 0) throw bad('chunk size is not a hex number');
          if (b === 0x3b || b === 0x20 || b === 0x09) this.s = S.Ext;
          else if (b === CR) this.s = S.SizeLF;
          else throw bad('chunk size is not a hex number');
          continue;
        }
        case S.Ext: {
          const b = buf[i++]!;
          if (++this.line > L.maxLineBytes) throw new HttpError(400, ErrorCode.CHUNK_EXTENSION_TOO_LONG, `chunk extension longer than ${L.maxLineBytes} bytes`);
          if (b === CR) this.s = S.SizeLF;
          else if (b === LF || (b < 0x20 && b !== 0x09) || b === 0x7f) throw bad('control character in a chunk extension');
          continue;
        }
        case S.SizeLF: {
          if (buf[i++] !== LF) throw bad('chunk-size line not ended by CRLF');
          const size = this.size;
          this.size = this.digits = this.line = 0;
          if (size === 0) {
            this.s = S.Trailer;
            continue;
          }
          if (++this.chunks > L.maxChunks) throw new HttpError(413, ErrorCode.TOO_MANY_CHUNKS, `more than ${L.maxChunks} chunks in one request`);
          this.bodyBytes += size;
          if (this.bodyBytes > L.maxBodyBytes) throw new HttpError(413, ErrorCode.BODY_TOO_LARGE, `request body larger than ${L.maxBodyBytes} bytes`);
          this.remaining = size;
          this.s = S.Data;
          continue;
        }
        case S.Trailer: {
          const b = buf[i++]!;
          if (++this.trailerBytes > L.maxTrailerBytes) throw new HttpError(431, ErrorCode.HEADERS_TOO_LARGE, `trailers longer than ${L.maxTrailerBytes} bytes`);
          if (b === CR) this.s = S.TrailerLF;
          else if (b === LF) throw bad('bare LF in the trailers');
          else this.trailerLine++;
          continue;
        }
        case S.TrailerLF: {
          if (buf[i++] !== LF) throw bad('bare CR in the trailers');
          // An empty line ends the trailers (and the body); any other was a trailer field, ignored.
          if (this.trailerLine === 0) this.s = S.Done;
          else {
            this.trailerLine = 0;
            this.s = S.Trailer;
          }
          continue;
        }
      }
    }
    return i;
  }
}

function bad(why: string): HttpError {
  return new HttpError(400, ErrorCode.HTTP_BAD_REQUEST, `malformed chunked body: ${why}`);
}
