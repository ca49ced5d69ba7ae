import type { NatsConnection } from '@nats-io/transport-node';
import { nowMs } from './driver.js';

/*
 * One clock for a run: the runner's. Latency is receive time − intended send time, and sender and
 * receiver may be different generators on different hosts, so every generator converts its clock
 * to the runner's with an offset estimated as NTP does: ask the runner for its time, and assume it
 * read it half-way through the round trip. The sample with the smallest round trip bounds the
 * error best (|error| ≤ rtt / 2); the result reports each generator's offset and that bound.
 * On one host the offset is ~0 (one clock), and the bound says how good the estimate is.
 */

export interface ClockEstimate {
  /** Add to the local clock to get the runner's. */
  offsetMs: number;
  /** Round trip of the sample used: the offset is right to within half of it. */
  rttMs: number;
}

const enc = new TextEncoder();
const dec = new TextDecoder();

/** The runner side: answers every request with its clock. */
export function serveClock(nc: NatsConnection, subject: string): { stop(): void } {
  const sub = nc.subscribe(subject, { callback: (err, msg) => void (err || msg.respond(enc.encode(String(nowMs())))) });
  return { stop: () => sub.unsubscribe() };
}

/** Pure: the estimate from (sent, runner time, received) samples — the one with the smallest round trip. */
export function bestEstimate(samples: ReadonlyArray<{ sentMs: number; remoteMs: number; receivedMs: number }>): ClockEstimate {
  let best: ClockEstimate | undefined;
  for (const s of samples) {
    const rttMs = s.receivedMs - s.sentMs;
    if (!(rttMs >= 0) || !Number.isFinite(s.remoteMs)) continue;
    if (!best || rttMs < best.rttMs) best = { offsetMs: s.remoteMs - (s.sentMs + rttMs / 2), rttMs };
  }
  if (!best) throw new RangeError('no usable clock sample');
  return best;
}

/** The generator side: `rounds` round trips to the runner's clock subject. */
export async function estimateClock(nc: NatsConnection, subject: string, rounds = 16): Promise<ClockEstimate> {
  const samples: Array<{ sentMs: number; remoteMs: number; receivedMs: number }> = [];
  for (let i = 0; i < rounds; i++) {
    const sentMs = nowMs();
    const r = await nc.request(subject, enc.encode(''), { timeout: 5000 });
    samples.push({ sentMs, remoteMs: Number(dec.decode(r.data)), receivedMs: nowMs() });
  }
  return bestEstimate(samples);
}
