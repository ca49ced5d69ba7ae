import { hostInfo } from '../../bench/src/report.js';
import { mulberry32 } from '../../bench/src/custody-types.js';
import { LatencyRecorder, decodeHistogram, percentiles } from '../../bench/src/harness/latency.js';
import { RESULT_FORMAT, judge, latencyJson, type IntervalSample, type RunResult } from '../../bench/src/harness/result.js';
import { validateScenario } from '../../bench/src/harness/scenario.js';

/*
 * A made-up but plausible run for the report tests and the docs picture: 60 s, 10 s ramp-up,
 * a reconnect storm at 30 s, and generator 1 saturated from 40 to 46 s (its sends fall behind,
 * so latency from intended time climbs there). Latencies go through the real recorder.
 */
export function syntheticResult(opts: { saturate?: boolean } = {}): RunResult {
  const saturate = opts.saturate ?? true;
  const scenario = validateScenario({
    name: 'synthetic',
    description: 'made-up data for the report tests',
    users: 10_000,
    rampUp: 10,
    duration: 50,
    behaviours: { messages: { perUserPerMinute: 30 }, reconnectStorms: [{ at: 30, share: 0.3, over: 3 }], campaigns: [{ at: 50, audience: 0.2 }] },
    generators: { count: 2, maxConnections: 6000 },
    target: { driver: 'gravitas', local: { nodes: 2 } },
  });
  const rand = mulberry32(3);
  const rec = new LatencyRecorder();
  const intervals: IntervalSample[] = [];
  let sent = 0;
  let received = 0;
  for (let t = 1; t <= 60; t++) {
    const ramp = Math.min(1, t / 10);
    const storm = t >= 30 && t < 33 ? 0.7 + (t - 30) * 0.1 : 1;
    const connected = Math.round(10_000 * ramp * storm);
    const sat = saturate && t > 40 && t <= 46;
    const rate = (connected * 30) / 60;
    const n = Math.round(rate);
    for (let i = 0; i < 400; i++) {
      const base = 1.2 + rand() * 2 + (rand() < 0.01 ? 20 * rand() : 0) + (t >= 30 && t < 33 ? 15 * rand() : 0);
      const intended = t * 1000 + i;
      rec.record(intended, intended + base + (sat ? 300 * rand() * (t - 40) : 0));
    }
    sent += n;
    received += n;
    intervals.push({
      t,
      sentPerSec: n,
      receivedPerSec: sat ? n * 0.8 : n * (0.99 + rand() * 0.02),
      latency: latencyJson(percentiles(decodeHistogram(rec.rotate()))),
      connected,
      locality: 0.5 + 0.3 * (1 - Math.exp(-t / 20)),
      servers: {
        nats: { cpu: 10 + rate / 400, rssMiB: 40 + t * 0.1 },
        node1: { cpu: 20 + rate / 80 + rand() * 5, rssMiB: 120 + connected * 0.006 },
        node2: { cpu: 18 + rate / 80 + rand() * 5, rssMiB: 115 + connected * 0.006 },
      },
      generators: {
        gen0: { cpu: 15 + rate / 120, rssMiB: 90, loopLagP99Ms: 2 + rand(), loopLagMaxMs: 5, skipped: 0, saturated: false },
        gen1: { cpu: sat ? 97 : 15 + rate / 120, rssMiB: 95, loopLagP99Ms: sat ? 120 : 2 + rand(), loopLagMaxMs: sat ? 300 : 6, skipped: 0, saturated: sat },
      },
    });
  }
  return {
    format: RESULT_FORMAT,
    scenario,
    startedAt: '2026-11-24T10:00:00.000Z',
    host: hostInfo(),
    target: 'gravitas, 2 local nodes × 1 cell',
    intervals,
    totals: { sent, received, latency: latencyJson(percentiles(rec.total)), skipped: 0, errors: saturate ? { CONNECT_TIMEOUT: 3 } : {} },
    verdict: judge(intervals, scenario),
    notes: ['synthetic data'],
  };
}
