/**
 * The chunked-body decoder of the web listener (packages/server/src/transport/chunked.ts)
 * on well-formed and hostile input, fed whole and one byte at a time: the same
 * data or the same code either way, and nothing buffered beyond one line.
 */
import t from 'tap';
import { ErrorCode } from '@gravitas/protocol';
import { ChunkedDecoder, HttpError, parseHead, type ChunkedLimits } from '@gravitas/server';

const LIMITS: ChunkedLimits = { maxChunkBytes: 64, maxChunks: 8, maxBodyBytes: 200, maxLineBytes: 32, maxTrailerBytes: 64 };

/** Decodes `input` in pieces of `step` bytes: the data, how many bytes the body took, or the error code. */
function run(input: string, step = Infinity, limits = LIMITS): { data: string; used: number } | { code: string; status: number } {
  const d = new ChunkedDecoder(limits);
  const buf = Buffer.from(input, 'latin1');
  let data = '';
  let used = 0;
  try {
    for (let i = 0; i < buf.length && !d.done; i += Math.min(step, buf.length)) {
      const piece = buf.subarray(i, Math.min(buf.length, i + step));
      used += d.push(piece, (b) => (data += Buffer.from(b).toString('latin1')));
    }
  } catch (err) {
    if (err instanceof HttpError) return { code: err.code, status: err.status };
    throw err;
  }
  return d.done ? { data, used } : { data: `${data}(incomplete)`, used };
}

t.test('well-formed bodies decode the same whole and byte by byte', async (t) => {
  const cases: Array<[string, string]> = [
    ['5\r\nhello\r\n0\r\n\r\n', 'hello'],
    ['5;name=value\r\nhello\r\n6\r\n world\r\n0\r\n\r\n', 'hello world'],
    ['A\r\n0123456789\r\n0\r\nTrailer: x\r\n\r\n', '0123456789'],
    ['0\r\n\r\n', ''],
  ];
  for (const [input, want] of cases) {
    for (const step of [Infinity, 1, 3]) t.same(run(input, step), { data: want, used: input.length }, `${JSON.stringify(input)} step ${step}`);
  }
  const next = run('3\r\nabc\r\n0\r\n\r\nPOST /next');
  t.same(next, { data: 'abc', used: 13 }, 'stops at the end of the body: the rest is the next request');
});

t.test('hostile bodies fail with their code, whole and byte by byte', async (t) => {
  const cases: Array<[string, string, string, number]> = [
    ['endless extension', `5;${'e'.repeat(1000)}`, ErrorCode.CHUNK_EXTENSION_TOO_LONG, 400],
    ['long whitespace before the extension', `5${' '.repeat(100)}\r\n`, ErrorCode.CHUNK_EXTENSION_TOO_LONG, 400],
    ['chunk over the cap', '41\r\n', ErrorCode.CHUNK_TOO_LARGE, 413],
    ['size beyond 32 bits', 'fffffffffffffffffffff\r\n', ErrorCode.CHUNK_TOO_LARGE, 413],
    ['leading zeros without end', '0000000000001\r\n', ErrorCode.CHUNK_TOO_LARGE, 413],
    ['garbage size', 'zz\r\n', ErrorCode.HTTP_BAD_REQUEST, 400],
    ['negative size', '-5\r\n', ErrorCode.HTTP_BAD_REQUEST, 400],
    ['empty size', '\r\nabc', ErrorCode.HTTP_BAD_REQUEST, 400],
    ['bare LF after the size', '3\nabc\r\n', ErrorCode.HTTP_BAD_REQUEST, 400],
    ['data longer than its size', '3\r\nabcd\r\n', ErrorCode.HTTP_BAD_REQUEST, 400],
    ['control byte in an extension', '3;\x00\r\nabc\r\n', ErrorCode.HTTP_BAD_REQUEST, 400],
    ['too many chunks', '1\r\na\r\n'.repeat(9), ErrorCode.TOO_MANY_CHUNKS, 413],
    ['body over the cap', '40\r\n' + 'a'.repeat(64) + '\r\n' + '40\r\n' + 'a'.repeat(64) + '\r\n' + '40\r\n' + 'a'.repeat(64) + '\r\n' + '40\r\n', ErrorCode.BODY_TOO_LARGE, 413],
    ['endless trailers', '0\r\n' + 'T: x\r\n'.repeat(20), ErrorCode.HEADERS_TOO_LARGE, 431],
    ['bare LF in a trailer', '0\r\nT: x\n\r\n', ErrorCode.HTTP_BAD_REQUEST, 400],
  ];
  for (const [name, input, code, status] of cases) {
    for (const step of [Infinity, 1]) t.same(run(input, step), { code, status }, `${name} (step ${step})`);
  }
});

t.test('request heads are parsed strictly', async (t) => {
  const ok = parseHead(Buffer.from('POST /gravitas/up?sid=ab HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:  chunked \r\nX-A: 1\r\nX-A: 2', 'latin1'));
  t.equal(ok.method, 'POST');
  t.equal(ok.path, '/gravitas/up');
  t.equal(ok.query.get('sid'), 'ab');
  t.equal(ok.headers.get('transfer-encoding'), 'chunked');
  t.equal(ok.headers.get('x-a'), '1, 2');
  const code = (head: string): string | undefined => {
    try {
      parseHead(Buffer.from(head, 'latin1'));
      return undefined;
    } catch (err) {
      return (err as HttpError).code;
    }
  };
  t.equal(code('GET / HTTP/2.0\r\nHost: x'), ErrorCode.HTTP_BAD_REQUEST, 'not HTTP/1.x');
  t.equal(code('GET /\r\nHost: x'), ErrorCode.HTTP_BAD_REQUEST, 'no version');
  t.equal(code('GET / HTTP/1.1\r\n folded'), ErrorCode.HTTP_BAD_REQUEST, 'folded line');
  t.equal(code('GET / HTTP/1.1\r\nBad Name: x'), ErrorCode.HTTP_BAD_REQUEST, 'space in a name');
  t.equal(code('GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2'), ErrorCode.HTTP_BAD_REQUEST, 'Content-Length twice');
  t.equal(code('GET / HTTP/1.1\r\nX: a\nb'), ErrorCode.HTTP_BAD_REQUEST, 'bare LF inside a line');
  t.equal(code('GET / HTTP/1.1\nHost: x'), ErrorCode.HTTP_BAD_REQUEST, 'bare LF ending the request line');
  t.equal(code('GET / HTTP/1.1\r\nHost: x\nX-B: y'), ErrorCode.HTTP_BAD_REQUEST, 'bare LF ending a header line');
});
