import t from 'tap';
import { formatProgress, Progress, type ProgressStats, type ProgressStream } from '../../bench/src/harness/progress.js';

class FakeStream implements ProgressStream {
  written: string[] = [];
  constructor(
    readonly isTTY: boolean,
    readonly columns?: number,
  ) {}
  write(s: string): boolean {
    this.written.push(s);
    return true;
  }
  get text(): string {
    return this.written.join('');
  }
}

const at = (s: number, extra: Partial<ProgressStats> = {}): ProgressStats => ({ elapsedMs: s * 1000, totalMs: 60_000, connected: 12_345, msgsPerSec: 4_200, p99: 3.25, ...extra });

t.test('the line says elapsed, connected users, msgs/s and p99', async (t) => {
  t.equal(formatProgress(at(30)), '0:30/1:00  50%  connected 12.3k  4200 msgs/s  p99 3.3 ms');
  t.equal(formatProgress(at(0, { p99: null, connected: 0, msgsPerSec: 0 })), '0:00/1:00   0%  connected 0  0 msgs/s  p99 –');
  t.match(formatProgress(at(90, { saturated: true, p99: 1234 })), /^1:30\/1:00 100% .* p99 1234 ms {2}GENERATOR SATURATED$/);
});

t.test('on a TTY one line is redrawn in place', async (t) => {
  const s = new FakeStream(true, 200);
  const p = new Progress(s, 10_000);
  for (let i = 1; i <= 5; i++) p.update(at(i));
  t.equal(s.written.length, 5, 'every update redraws');
  for (const w of s.written) {
    t.ok(w.startsWith('\r') && w.endsWith('\x1b[K'), 'carriage return, text, erase to end of line');
    t.notOk(w.includes('\n'), 'no newline while running');
  }
  t.match(s.written[2]!, /^\r\[#-{19}\] 0:03\/1:00 {3}5%/, 'a bar that fills with elapsed time');
  p.done(at(60));
  t.match(s.text, /\[#{20}\] 1:00\/1:00 100%.*\x1b\[K\n$/, 'the final state ends the line');
});

t.test('on a narrow TTY the line is cut, never wrapped', async (t) => {
  const s = new FakeStream(true, 40);
  new Progress(s).update(at(10));
  t.equal(s.written[0]!.replace('\r', '').replace('\x1b[K', '').length, 39);
});

t.test('interrupting the redrawn line starts a fresh one, only when needed', async (t) => {
  const s = new FakeStream(true, 200);
  const p = new Progress(s);
  p.interrupt();
  t.equal(s.written.length, 0, 'nothing drawn yet: nothing to end');
  p.update(at(1));
  p.interrupt();
  t.equal(s.written[1], '\n');
});

t.test('elsewhere: plain lines, at most one per period, and the last state', async (t) => {
  const s = new FakeStream(false);
  const p = new Progress(s, 10_000);
  for (let i = 0; i <= 25; i++) p.update(at(i));
  t.same(
    s.written.map((w) => w.slice(0, 9)),
    ['0:00/1:00', '0:10/1:00', '0:20/1:00'],
    'every 10 s of the run',
  );
  t.ok(s.written.every((w) => w.endsWith('\n') && !w.includes('\r') && !w.includes('\x1b')), 'no control characters');
  p.done(at(26));
  t.equal(s.written.length, 4);
  t.match(s.written[3]!, /^0:26\/1:00/, 'the final state is printed');
  p.done(at(26));
  t.equal(s.written.length, 4, 'not twice');
  t.equal(new Progress(new FakeStream(false)).tty, false);
  t.equal(new Progress({ write: () => true }).tty, false, 'a stream without isTTY is not a terminal');
});
