import { hostInfo } from '../../bench/src/report.js';
import { mulberry32 } from '../../bench/src/custody-types.js';
import { LatencyRecorder, decodeHistogram, newHistogram, percentiles } from '../../bench/src/harness/latency.js';
import { RESULT_FORMAT, bottlenecks, capacity, judge, latencyJson, phaseAt, type IntervalSample, type RunResult } from '../../bench/src/harness/result.js';
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
    const connects = t <= 10 ? 1000 : t >= 30 && t < 33 ? 1000 : 5 + Math.round(rand() * 10);
    intervals.push({
      t,
      phase: phaseAt(scenario, t),
      sentPerSec: n,
      acceptedPerSec: sat ? n * 0.9 : n,
      failedPerSec: 0,
      receivedPerSec: sat ? n * 0.8 : n * (0.99 + rand() * 0.02),
      catchupPerSec: t >= 31 && t < 35 ? n * 0.05 : 0,
      campaignPerSec: t >= 50 && t < 55 ? 400 : 0,
      presencePerSec: 0,
      latency: latencyJson(percentiles(decodeHistogram(rec.rotate()))),
      sendLagP99: sat ? 250 : 0.8 + rand() * 0.4,
      connected,
      connectsPerSec: connects,
      connectFailedPerSec: t === 31 ? 3 : 0,
      connectTime: { p50: 2 + rand(), p99: (t >= 30 && t < 33 ? 40 : 6) + rand() * 3 },
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
      hosts: { bench1: { cpu: 60 + rate / 40 + rand() * 10, rssMiB: 3000, cores: 2 } },
    });
  }
  const none = latencyJson(percentiles(newHistogram()));
  const verdict = judge(intervals, scenario);
  const totals: RunResult['totals'] = {
    sent,
    accepted: sent,
    failed: 0,
    received,
    catchup: 0,
    campaign: 2000,
    presence: 0,
    stray: 0,
    latency: latencyJson(percentiles(rec.total)),
    catchupLatency: none,
    campaignReach: none,
    sendLag: none,
    connectTime: none,
    skipped: 0,
    errors: saturate ? { CONNECT_TIMEOUT: 3 } : {},
    delivery: { tracked: true, expected: received, received, missing: 0, unexpected: 0, repeats: 0, drainMs: 1200, complete: true },
    campaigns: { expected: 2000, received: 2000 },
    driver: {},
  };
  return {
    format: RESULT_FORMAT,
    scenario,
    startedAt: '2026-11-24T10:00:00.000Z',
    host: hostInfo(),
    target: 'gravitas: 2 local nodes × 1 cell',
    namespace: 'synthetic',
    generators: [
      { name: 'gen0', host: 'bench1', pid: 100, users: 5000, devices: 5000, clockOffsetMs: 0.01, clockErrorMs: 0.2 },
      { name: 'gen1', host: 'bench1', pid: 101, users: 5000, devices: 5000, clockOffsetMs: -0.02, clockErrorMs: 0.2 },
    ],
    setup: { provisionMs: 4200, groupsMs: 0, groupsCreated: 0, groupsFailed: 0, errors: {} },
    intervals,
    totals,
    verdict,
    capacity: capacity(intervals),
    bottlenecks: bottlenecks({ intervals, verdict, totals }),
    notes: ['synthetic data'],
  };
}
