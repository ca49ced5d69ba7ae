import { connect, type NatsConnection } from '@nats-io/transport-node';
import { GravitasClient } from '@gravitas/client';
import { generateKeyPair } from '@gravitas/protocol';
import { NatsServer } from '@gravitas/testkit';
import { clusterKeys, log, Resources, startGravitasNode, waitFor } from './procs.js';
import { makeResult, posInt, type BenchOptions, type BenchResult, type Row } from './report.js';

/*
 * Issue 14: what a contact list costs the store. One user adds `--contacts` contacts one by one
 * (names of `--name-length` characters), then lists them, then removes them all. A raw NATS
 * subscription on the social bucket's subjects ($KV.<prefix>_social.>) counts every message
 * written into the bucket's stream — payload and headers, i.e. what JetStream stores and
 * replicates — per phase. One nats-server, one node (1 cell), one client.
 */

export const name = 'social';
export const description = 'KV bytes written by contacts.add/remove for one growing contact list, and contacts.list pages';
export const defaultDurationS = 1;
export const flags = {
  contacts: 'contacts added one by one, then removed (default 2000)',
  'name-length': 'characters per contact name, 1..64 (default 64: the longest name)',
} as const;

const PREFIX = 'gravitas';
const MiB = 2 ** 20;

interface Counter {
  bytes: number;
  msgs: number;
  largest: number;
}

/** Counts what is written to the bucket's subjects; `take()` returns the count so far and restarts it. */
async function countWrites(nc: NatsConnection, bucket: string): Promise<{ take(): Promise<Counter> }> {
  let cur: Counter = { bytes: 0, msgs: 0, largest: 0 };
  const sub = nc.subscribe(`$KV.${bucket}.>`, {
    callback: (_err, m) => {
      // Header bytes as they travel (NATS/1.0 block); the payload as stored.
      const size = m.data.length + (m.headers ? m.headers.toString().length : 0);
      cur.bytes += size;
      cur.msgs++;
      if (size > cur.largest) cur.largest = size;
    },
  });
  return {
    async take() {
      // A flush makes sure every publish made before it has been seen by this subscription.
      await nc.flush();
      const out = cur;
      cur = { bytes: 0, msgs: 0, largest: 0 };
      void sub;
      return out;
    },
  };
}

export async function run(opts: BenchOptions): Promise<BenchResult> {
  const startedAt = new Date();
  const n = posInt(opts, 'contacts', 2000, 5000);
  const len = posInt(opts, 'name-length', 64, 64);
  const params = { contacts: n, nameLength: len };
  const res = new Resources();
  try {
    log('starting nats-server (JetStream)');
    const nats = await NatsServer.start({ jetstream: true });
    res.deferLast(() => nats.stop());
    const dir = await res.tempDir('gravitas-bench-social-');
    const keys = clusterKeys();
    const node = await startGravitasNode(res, dir, 'bench-social', nats.url, keys, { config: { prefix: PREFIX } });
    const nc = await connect({ servers: nats.url });
    res.defer(() => nc.close());
    const writes = await countWrites(nc, `${PREFIX}_social`);

    const client = new GravitasClient({
      servers: [node.clientAddress],
      serverPublicKey: keys.server.publicKey,
      identity: generateKeyPair(),
      user: 'owner',
      device: 'd1',
      registration: '',
      connectTimeoutMs: 10_000,
    });
    client.on('error', () => undefined);
    res.defer(() => client.close());
    await client.connect();
    await waitFor('owner registered', () => client.ping().then(() => true, () => false), 30_000, 50);

    const names = Array.from({ length: n }, (_, i) => `c${String(i).padStart(len - 1, '0')}`.slice(-len));
    await writes.take();

    log(`adding ${n} contacts (${len}-character names)`);
    let t0 = performance.now();
    for (const u of names) await client.request('contacts.add', { user: u });
    const addMs = performance.now() - t0;
    const add = await writes.take();

    log('listing');
    t0 = performance.now();
    let listed = 0;
    let pages = 0;
    for (let from: number | undefined = 0; from !== undefined; pages++) {
      const page = (await client.request('contacts.list', { from })) as { contacts: string[]; next?: number };
      listed += page.contacts.length;
      from = page.next;
    }
    const listMs = performance.now() - t0;
    if (listed !== n) throw new Error(`contacts.list gave ${listed} names, expected ${n}`);
    const list = await writes.take();

    log(`removing ${n} contacts`);
    t0 = performance.now();
    for (const u of names) await client.request('contacts.remove', { user: u });
    const removeMs = performance.now() - t0;
    const remove = await writes.take();

    const rows: Row[] = [
      { metric: 'add.kv_bytes', value: add.bytes / MiB, unit: 'MiB', note: `${add.msgs} messages written to the bucket for ${n} contacts.add` },
      { metric: 'add.kv_bytes_per_add', value: add.bytes / n, unit: 'B', note: 'mean' },
      { metric: 'add.largest_write', value: add.largest, unit: 'B', note: 'largest single message (the last add, for a whole-list record)' },
      { metric: 'add.rate', value: (n * 1000) / addMs, unit: 'adds/s', note: 'one at a time, answer awaited' },
      { metric: 'list.pages', value: pages, unit: 'pages', note: `${listed} names in ${listMs.toFixed(0)} ms; ${list.bytes} B written` },
      { metric: 'remove.kv_bytes', value: remove.bytes / MiB, unit: 'MiB', note: `${remove.msgs} messages written for ${n} contacts.remove` },
      { metric: 'remove.rate', value: (n * 1000) / removeMs, unit: 'removes/s' },
    ];
    return makeResult(name, startedAt, params, rows, { add, list, remove, ms: { add: addMs, list: listMs, remove: removeMs } });
  } finally {
    log('stopping child processes');
    await res.close();
  }
}
