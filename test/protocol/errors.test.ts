import { readFileSync } from 'node:fs';
import t from 'tap';
import {
  ChannelError, DecodeError, ErrorCode, FATAL_CODES, FramingError, HandshakeError, isErrorCode, isProtocolError, ProtocolError, RemoteError,
} from '@gravitas/protocol';

const DOC = new URL('../../docs/protocol.md', import.meta.url);

interface Row { code: string; when: string; fatal: string; line: number }

/** The rows of the markdown table whose header is `code | when | fatal`. */
function errorTable(md: string): Row[] {
  const lines = md.split('\n');
  const cells = (l: string): string[] => l.trim().replace(/^\|/, '').replace(/\|$/, '').split('|').map((c) => c.trim());
  const start = lines.findIndex((l) => l.trim().startsWith('|') && cells(l).join('|').toLowerCase() === 'code|when|fatal');
  if (start < 0) return [];
  const rows: Row[] = [];
  for (let i = start + 2; i < lines.length && lines[i]!.trim().startsWith('|'); i++) {
    const [code = '', when = '', fatal = '', ...rest] = cells(lines[i]!);
    if (rest.length > 0) throw new Error(`docs/protocol.md:${i + 1}: more than 3 cells (a "|" inside a cell?)`);
    rows.push({ code: code.replace(/`/g, ''), when, fatal, line: i + 1 });
  }
  return rows;
}

const rows = errorTable(readFileSync(DOC, 'utf8'));
const codes = Object.values(ErrorCode) as string[];

t.test('docs/protocol.md has the error-code table', async (t) => {
  t.ok(rows.length > 0, 'a table with the header "code | when | fatal"');
});

t.test('every ErrorCode is documented, and only those', async (t) => {
  const documented = rows.map((r) => r.code);
  for (const c of codes) t.ok(documented.includes(c), `${c} is in the table`);
  for (const r of rows) t.ok(codes.includes(r.code), `line ${r.line}: "${r.code}" is an ErrorCode`);
  t.equal(new Set(documented).size, documented.length, 'no code is listed twice');
  t.equal(documented.length, codes.length);
});

t.test('the table says when, and its fatal column matches FATAL_CODES', async (t) => {
  for (const r of rows) {
    t.ok(r.when.length > 10, `${r.code}: "when" is filled in`);
    t.match(r.fatal, /^(yes|no)$/, `${r.code}: fatal is yes or no`);
    if (isErrorCode(r.code)) t.equal(r.fatal === 'yes', FATAL_CODES.has(r.code), `${r.code}: fatal column`);
  }
});

t.test('ErrorCode values are their own names and stable strings', async (t) => {
  for (const [k, v] of Object.entries(ErrorCode)) t.equal(k, v);
  for (const c of codes) t.match(c, /^[A-Z][A-Z_]*[A-Z]$/);
  for (const c of FATAL_CODES) t.ok(codes.includes(c));
  t.ok(isErrorCode('BUSY'));
  for (const v of ['busy', 'NOPE', '', 1, null, undefined, { code: 'BUSY' }, 'toString', '__proto__']) t.notOk(isErrorCode(v), `not a code: ${String(v)}`);
});

t.test('error classes carry the code and the fatal flag', async (t) => {
  const cases: Array<[ProtocolError, string]> = [
    [new ProtocolError(ErrorCode.INTERNAL, 'x'), 'ProtocolError'],
    [new FramingError(ErrorCode.FRAME_TOO_LARGE, 'x'), 'FramingError'],
    [new DecodeError(ErrorCode.BAD_MESSAGE, 'x'), 'DecodeError'],
    [new HandshakeError(ErrorCode.HANDSHAKE_FAILED, 'x'), 'HandshakeError'],
    [new ChannelError(ErrorCode.NONCE_GAP, 'x'), 'ChannelError'],
    [new RemoteError(ErrorCode.RATE_LIMITED, 'x', 'm1'), 'RemoteError'],
  ];
  for (const [err, name] of cases) {
    t.ok(err instanceof ProtocolError && err instanceof Error, `${name} is a ProtocolError`);
    t.ok(isProtocolError(err));
    t.equal(err.name, name);
    t.equal(err.message, 'x');
    t.equal(err.fatal, FATAL_CODES.has(err.code), `${name}: fatal follows the code`);
  }
  t.equal(new DecodeError(ErrorCode.BAD_MESSAGE, 'x').fatal, false);
  t.equal(new DecodeError(ErrorCode.DECODE_FAILED, 'x').fatal, true);
  t.equal(new RemoteError(ErrorCode.RATE_LIMITED, 'x', 'm1').ref, 'm1');
  t.equal(new RemoteError(ErrorCode.RATE_LIMITED, 'x').ref, undefined);
  const cause = new Error('inner');
  t.equal(new HandshakeError(ErrorCode.BAD_PUBLIC_KEY, 'x', { cause }).cause, cause);
  t.notOk(isProtocolError(new Error('plain')));
  t.notOk(isProtocolError({ code: 'BUSY' }));
});
