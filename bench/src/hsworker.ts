import { parentPort, workerData } from 'node:worker_threads';
import type { ClientHandshake, ResumptionState } from '@gravitas/protocol';
import { LatencyHistogram, type LatencySummary } from './histogram.js';
import { nativeKeyPair } from './procs.js';
import { cachingSuite, handshake, newHandshake, type Identity, type Target } from './rawclient.js';

/*
 * Handshake load generator, one per worker thread. It owns a disjoint set of identities and
 * the tickets they earn; the main thread drives it phase by phase (hsload.ts) so that it can
 * read the server's CPU time around exactly the timed window.
 */

export interface HsWorkerData {
  target: Target;
  serverPublicKey: Uint8Array;
  /** Prefix of this worker's user names (unique per worker). */
  userPrefix: string;
  identities: number;
  concurrency: number;
}

export type HsKind = 'full' | 'resume';

export type HsRequest =
  | { id: number; cmd: 'register' }
  | { id: number; cmd: 'prepare'; kind: HsKind; n: number }
  | { id: number; cmd: 'run'; kind: HsKind; startAt: number; durationMs: number };

export interface PhaseResult {
  /** Handshakes that completed (pong received) inside the window. */
  completed: number;
  /** Failures by code, inside the window. */
  errors: Record<string, number>;
  /** Handshakes whose client hello had to be computed inside the window (pool ran dry). */
  onTheFly: number;
  elapsedMs: number;
  latency: LatencySummary;
  ticketsLeft: number;
}

export type HsResponse = { id: number; ok: true; result: unknown } | { id: number; ok: false; error: string };

interface Ticketed {
  id: Identity;
  r: ResumptionState;
}

const data = workerData as HsWorkerData;
const suite = cachingSuite();
const identities: Identity[] = Array.from({ length: data.identities }, (_, i) => ({ user: `${data.userPrefix}${i}`, device: 'd', keys: nativeKeyPair() }));
/** Unspent tickets, oldest first; consecutive entries belong to different identities (round robin). */
const tickets: Ticketed[] = [];
const prepared: Record<HsKind, Array<{ id: Identity; hs: ClientHandshake }>> = { full: [], resume: [] };
let nextIdentity = 0;

function nextFull(): { id: Identity; hs: ClientHandshake } {
  const id = identities[nextIdentity++ % identities.length]!;
  return { id, hs: newHandshake(data.serverPublicKey, id, suite) };
}

function nextResume(): { id: Identity; hs: ClientHandshake } | undefined {
  const t = tickets.shift();
  return t && { id: t.id, hs: newHandshake(data.serverPublicKey, t.id, suite, t.r) };
}

/**
 * Closed loop with `concurrency` handshakes in flight until `endAt` (epoch ms). Counts only
 * handshakes that finish before the end; stragglers are awaited but not counted.
 */
async function loop(take: () => { id: Identity; hs: ClientHandshake } | undefined, endAt: number): Promise<PhaseResult> {
  const hist = new LatencyHistogram();
  const errors: Record<string, number> = {};
  let completed = 0;
  const t0 = Date.now();
  await Promise.all(
    Array.from({ length: data.concurrency }, async () => {
      while (Date.now() < endAt) {
        const next = take();
        if (!next) break;
        const o = await handshake(data.target, next.hs);
        if (Date.now() > endAt) {
          if (o.ok && o.resumption) tickets.push({ id: next.id, r: o.resumption });
          break;
        }
        if (o.ok) {
          completed++;
          hist.recordMicros(o.ms * 1000);
          if (o.resumption) tickets.push({ id: next.id, r: o.resumption });
        } else errors[o.code] = (errors[o.code] ?? 0) + 1;
      }
    }),
  );
  return { completed, errors, onTheFly: 0, elapsedMs: Math.min(Date.now(), endAt) - t0, latency: hist.summary(), ticketsLeft: tickets.length };
}

async function handle(req: HsRequest): Promise<unknown> {
  switch (req.cmd) {
    case 'register': {
      // One full handshake per identity: registers the device (KV create) and earns a first ticket.
      let i = 0;
      const take = (): { id: Identity; hs: ClientHandshake } | undefined => (i < identities.length ? { id: identities[i]!, hs: newHandshake(data.serverPublicKey, identities[i++]!, suite) } : undefined);
      return loop(take, Date.now() + 600_000);
    }
    case 'prepare': {
      const t0 = performance.now();
      const pool = prepared[req.kind];
      while (pool.length < req.n) {
        const next = req.kind === 'full' ? nextFull() : nextResume();
        if (!next) break;
        pool.push(next);
      }
      return { prepared: pool.length, ms: performance.now() - t0, ticketsLeft: tickets.length };
    }
    case 'run': {
      const pool = prepared[req.kind];
      let fly = 0;
      const take = (): { id: Identity; hs: ClientHandshake } | undefined => {
        const p = pool.shift();
        if (p) return p;
        fly++;
        return req.kind === 'full' ? nextFull() : nextResume();
      };
      const wait = req.startAt - Date.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      const r = await loop(take, req.startAt + req.durationMs);
      // Precomputed hellos left over are stale for the next phase only in their timestamp (±120 s): drop them.
      pool.length = 0;
      return { ...r, onTheFly: fly };
    }
  }
}

parentPort!.on('message', (req: HsRequest) => {
  handle(req).then(
    (result) => parentPort!.postMessage({ id: req.id, ok: true, result } satisfies HsResponse),
    (e: Error) => parentPort!.postMessage({ id: req.id, ok: false, error: e.stack ?? e.message } satisfies HsResponse),
  );
});
