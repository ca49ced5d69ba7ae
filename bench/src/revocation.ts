import { connect } from '@nats-io/transport-node';
import { GravitasClient, RemoteError } from '@gravitas/client';
import { ErrorCode, generateKeyPair, type ResumptionState } from '@gravitas/protocol';
import { NatsServer } from '@gravitas/testkit';
import { MergeableHistogram } from './custody-types.js';
import { clusterKeys, log, Resources, startGravitasNode, waitFor, type ClusterKeys } from './procs.js';
import { makeResult, posInt, type BenchOptions, type BenchResult, type Row } from './report.js';

/*
 * Issue 14: how fast a removed device's live session on another node ends. For each of
 * `--accounts` accounts, a phone on node A removes the account's tablet, which is
 * connected to node B. Measured in this one process (one clock): the removal's answer
 * at the phone, and the tablet's `bye DEVICE_REVOKED` relative to that answer (negative:
 * it came first). Right after each answer the tablet's latest ticket is tried on node B,
 * which must refuse it (DEVICE_REVOKED): the refusal is promised, not its speed. The floor
 * a broadcast cannot beat is measured in the same run: core NATS from one connection to
 * another on the same server.
 */

export const name = 'revocation';
export const description = 'removing a device: the answer, and its live session on another node ending (DEVICE_REVOKED), against the core NATS floor';
export const defaultDurationS = 1;
export const flags = {
  accounts: 'accounts whose second device is removed, one after another (default 200)',
} as const;

/** Core NATS, one connection to another: the floor of any cluster-wide broadcast. */
async function natsFloor(url: string, n: number): Promise<MergeableHistogram> {
  const [a, b] = await Promise.all([connect({ servers: url }), connect({ servers: url })]);
  const h = new MergeableHistogram();
  try {
    let pending: ((t: number) => void) | undefined;
    b.subscribe('floor', { callback: () => pending?.(performance.now()) });
    await b.flush();
    for (let i = 0; i < n; i++) {
      const got = new Promise<number>((r) => (pending = r));
      const t0 = performance.now();
      a.publish('floor', new Uint8Array(8));
      h.recordMs((await got) - t0);
    }
  } finally {
    await Promise.all([a.close(), b.close()]);
  }
  return h;
}

interface Device { client: GravitasClient; ticket: ResumptionState | undefined; revokedAt: number | undefined }

function device(keys: ClusterKeys, server: string, user: string, name: string): Device {
  const d: Device = { client: undefined as unknown as GravitasClient, ticket: undefined, revokedAt: undefined };
  d.client = new GravitasClient({
    servers: [server], serverPublicKey: keys.server.publicKey, identity: generateKeyPair(), user, device: name, registration: '', connectTimeoutMs: 10_000,
    onResumption: (r) => (d.ticket = r),
  });
  d.client.on('error', (e) => {
    if (e instanceof RemoteError && e.code === ErrorCode.DEVICE_REVOKED) d.revokedAt ??= performance.now();
  });
  return d;
}

export async function run(opts: BenchOptions): Promise<BenchResult> {
  const startedAt = new Date();
  const accounts = posInt(opts, 'accounts', 200, 100_000);
  const res = new Resources();
  try {
    log('starting nats-server (JetStream) and two nodes');
    const nats = await NatsServer.start({ jetstream: true });
    res.deferLast(() => nats.stop());
    const dir = await res.tempDir('gravitas-bench-revocation-');
    const keys = clusterKeys();
    const [a, b] = await Promise.all([startGravitasNode(res, dir, 'rev-a', nats.url, keys), startGravitasNode(res, dir, 'rev-b', nats.url, keys)]);

    log('floor: core NATS, one connection to another');
    const floor = await natsFloor(nats.url, 2000);

    const answer = new MergeableHistogram();
    const drop = new MergeableHistogram();
    const fromRequest = new MergeableHistogram();
    let dropBeforeAnswer = 0;
    let refused = 0;
    const refusals: Record<string, number> = {};
    log(`${accounts} accounts: phone on node A removes the tablet on node B`);
    for (let i = 0; i < accounts; i++) {
      const user = `rev${i}`;
      const phone = device(keys, a.clientAddress, user, 'phone');
      const tablet = device(keys, b.clientAddress, user, 'tablet');
      try {
        await Promise.all([phone.client.connect(), tablet.client.connect()]);
        await waitFor(`${user} registered`, () => Promise.all([phone.client.ping(), tablet.client.ping()]).then(() => true, () => false), 30_000, 20);
        const t0 = performance.now();
        await phone.client.request('devices.remove', { device: 'tablet' });
        const answered = performance.now();
        answer.recordMs(answered - t0);
        // The promise: from the answer on, the ticket is refused (here on the tablet's own node).
        const again = new GravitasClient({
          servers: [b.clientAddress], serverPublicKey: keys.server.publicKey, identity: generateKeyPair(), user, device: 'tablet', reconnect: false, resumption: tablet.ticket!,
        });
        again.on('error', () => undefined);
        const code = await again.connect().then(() => 'ok', (e: Error & { code?: string }) => e.code ?? e.message);
        await again.close();
        refusals[code] = (refusals[code] ?? 0) + 1;
        if (code === ErrorCode.DEVICE_REVOKED) refused++;
        await waitFor(`${user}'s tablet told`, () => tablet.revokedAt !== undefined, 10_000, 1);
        fromRequest.recordMs(tablet.revokedAt! - t0);
        const after = tablet.revokedAt! - answered;
        if (after < 0) dropBeforeAnswer++;
        drop.recordMs(Math.max(0, after));
      } finally {
        await Promise.all([phone.client.close(), tablet.client.close()]);
      }
    }
    const [f, an, d, r] = [floor.summary(), answer.summary(), drop.summary(), fromRequest.summary()];
    const rows: Row[] = [
      { metric: 'floor.nats_one_way.p50', value: f.p50, unit: 'ms', note: 'core NATS publish → subscriber, another connection (2,000 samples)' },
      { metric: 'floor.nats_one_way.p99', value: f.p99, unit: 'ms' },
      { metric: 'remove.answer.p50', value: an.p50, unit: 'ms', note: 'devices.remove sent → answered (the account record written)' },
      { metric: 'remove.answer.p99', value: an.p99, unit: 'ms' },
      { metric: 'session_end.after_request.p50', value: r.p50, unit: 'ms', note: 'devices.remove sent → bye DEVICE_REVOKED at the tablet on node B' },
      { metric: 'session_end.after_request.p99', value: r.p99, unit: 'ms' },
      { metric: 'session_end.after_answer.p50', value: d.p50, unit: 'ms', ceiling: 'floor.nats_one_way.p50', ratio: d.p50 / f.p50, note: `bye DEVICE_REVOKED at the tablet on node B after the phone had the answer; ${dropBeforeAnswer} of ${accounts} came before it (counted as 0.001)` },
      { metric: 'session_end.after_answer.p99', value: d.p99, unit: 'ms' },
      { metric: 'session_end.after_answer.max', value: d.max, unit: 'ms' },
      { metric: 'ticket_refused_after_answer', value: refused, unit: `of ${accounts}`, note: `resumption right after the answer: ${Object.entries(refusals).map(([k, v]) => `${k} ${v}`).join(', ')}` },
    ];
    if (refused !== accounts) throw new Error(`a removed device's ticket was not refused after the answer: ${JSON.stringify(refusals)}`);
    return makeResult(name, startedAt, { accounts }, rows, { floor: f, answer: an, afterAnswer: d, afterRequest: r, dropBeforeAnswer, refusals });
  } finally {
    log('stopping child processes');
    await res.close();
  }
}
