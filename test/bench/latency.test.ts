import t from 'tap';
import { HarnessError } from '../../bench/src/harness/errors.js';
import { decodeHistogram, encodeHistogram, LatencyRecorder, mergeEncoded, newHistogram, Pacer, percentiles, recordMs } from '../../bench/src/harness/latency.js';
import { mulberry32 } from '../../bench/src/custody-types.js';

/*
 * A sender on a simulated clock (no timers: the assertions are about what is recorded, not how
 * fast this machine is). Every 1 ms of the 10 s schedule it wakes and sends what is due, except
 * for one 1 s stall at 5 s; the network takes 0.5 ms. Returns both measurements.
 */
function stalledSender(): { fromIntended: LatencyRecorder; serviceTime: LatencyRecorder; sent: number } {
  const pacer = new Pacer(() => 1000, 0);
  const fromIntended = new LatencyRecorder();
  const serviceTime = new LatencyRecorder();
  let sent = 0;
  for (let now = 0; now < 10_000; now++) {
    if (now > 5000 && now < 6000) continue; // stalled: GC pause, blocked event loop, full socket...
    for (const intended of pacer.due(now)) {
      const received = now + 0.5;
      fromIntended.record(intended, received);
      serviceTime.record(now, received); // the naive measurement: from when it was actually sent
      sent++;
    }
  }
  return { fromIntended, serviceTime, sent };
}

t.test('a 1 s stall shows in the percentiles measured from the intended send time', async (t) => {
  const { fromIntended, serviceTime, sent } = stalledSender();
  t.equal(sent, 10_000, 'the stall delays messages, it does not drop them: the schedule is kept');
  const ok = percentiles(fromIntended.total);
  const naive = percentiles(serviceTime.total);
  // ~1,000 of 10,000 messages waited up to 1 s: 10 % of samples spread over 0–1,000 ms.
  t.ok(ok.max >= 990 && ok.max <= 1001, `max ≈ the stall (${ok.max} ms)`);
  t.ok(ok.p99 >= 850 && ok.p99 <= 950, `p99 ≈ 900 ms (${ok.p99})`);
  t.ok(ok.p999 >= 980, `p99.9 ≈ 990 ms (${ok.p999})`);
  t.ok(ok.p90 < 5, `p90 ${ok.p90} ms: 90 % of messages were on time`);
  // Measured from the actual send, every message took the network's 0.5 ms: the stall is invisible.
  t.ok(naive.max < 1 && naive.p99 < 1, `service time p99 ${naive.p99} / max ${naive.max} ms hides it`);
});

t.test('a variable rate is followed and a stall beyond the backlog bound is counted, not hidden', async (t) => {
  // 100/s for the first second, then 1,000/s.
  const p = new Pacer((ms) => (ms < 1000 ? 100 : 1000), 0, 500);
  t.equal(p.due(999).length, 100);
  t.equal(p.due(1999).length, 1000 - 500, 'at most 500 per call...');
  t.equal(p.skipped, 500, '...the oldest rest counted as skipped');
  t.equal(p.due(1999).length, 0, 'nothing due twice');
  t.equal(p.nextAt, 2000);
  const z = new Pacer(() => 0, 0);
  t.equal(z.due(10_000).length, 0, 'a zero rate sends nothing');
});

t.test('merging encoded histograms equals recording every value into one', async (t) => {
  const rand = mulberry32(9);
  const a = newHistogram();
  const b = newHistogram();
  const all = newHistogram();
  for (let i = 0; i < 20_000; i++) {
    // Log-uniform from 10 µs to 10 s, and a separate heavy mode in b.
    const ms = 0.01 * 10 ** (rand() * 6);
    const into = i % 3 === 0 ? b : a;
    const v = into === b ? ms * 7 : ms;
    recordMs(into, v);
    recordMs(all, v);
  }
  const merged = mergeEncoded([encodeHistogram(a), '', encodeHistogram(b)]);
  t.equal(merged.totalCount, all.totalCount);
  // Encoding keeps bucket counts, not the exact max: equal at the histogram's resolution.
  t.equal(merged.maxValue, all.getValueAtPercentile(100));
  t.equal(merged.minNonZeroValue, all.minNonZeroValue);
  for (const q of [1, 10, 25, 50, 75, 90, 99, 99.9, 99.99, 100]) t.equal(merged.getValueAtPercentile(q), all.getValueAtPercentile(q), `p${q}`);
  t.same(percentiles(merged), percentiles(all));
});

t.test('intervals add up to the total, and survive the trip through encoding', async (t) => {
  const r = new LatencyRecorder();
  const shipped: string[] = [];
  for (let k = 0; k < 5; k++) {
    for (let i = 0; i < 1000; i++) r.record(k * 1000 + i, k * 1000 + i + (k + 1) * 2 + (i % 7));
    shipped.push(r.rotate());
  }
  const intervals = shipped.map((s) => percentiles(decodeHistogram(s)));
  t.same(intervals.map((p) => p.count), [1000, 1000, 1000, 1000, 1000]);
  t.ok(intervals[4]!.p50 > intervals[0]!.p50, 'each interval has its own values');
  t.same(percentiles(mergeEncoded(shipped)), percentiles(r.total));
  t.same(percentiles(decodeHistogram(r.rotate())).count, 0, 'a fresh interval after rotate()');
  t.ok(Number.isNaN(percentiles(newHistogram()).p99), 'empty: NaN, not 0');
});

t.test('garbage instead of a histogram is a HISTOGRAM_DECODE error', async (t) => {
  const err = t.throws(() => decodeHistogram('bm90IGEgaGlzdG9ncmFt'), { code: 'HISTOGRAM_DECODE', name: 'HarnessError' });
  t.type(err, HarnessError);
});
