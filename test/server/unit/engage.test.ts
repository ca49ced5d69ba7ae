import t from 'tap';
import { Counter, Histogram, Registry } from 'prom-client';
import type { JetStreamClient, JsMsg } from '@nats-io/jetstream';
import type { KV } from '@nats-io/kv';
import { ErrorCode, pack, unpack } from '@gravitas/protocol';
import {
  CampaignError, CampaignJobError, CampaignRecords, CampaignStore, decodeLedger, encodeLedger, Expansion, JobRun, ledgerKey, markerKey, Sending, sentEventId, Warnings,
  type Ledger, type SendDeps, type SendMetrics, type TrackingRecord,
} from '@gravitas/server/internal';
import { FakeKv } from '../../fixtures/fake-cell.js';

/*
 * The campaign runner's failure branches that a real cluster does not produce
 * on demand: custody settling a campaign message as failed (final or not), a
 * profile store that throws (while sending, and while listing an audience),
 * and a compare-and-set that keeps losing until its attempts run out. The parts
 * of the runner (runner-send, runner-expand, runner-ledger) run against an
 * in-memory bucket and fake ports; real-process tests (campaign-*.test.ts)
 * remain the proof of the guarantees.
 */

const C = 'c00000000001122334455';
const PUB = 'p1';

function campaignRecord(over: Record<string, unknown> = {}): Uint8Array {
  return pack({
    id: C, publisher: PUB, name: 'spring', audience: { users: ['alice', 'bob'] }, content: { text: 'hello', push: false },
    ratePerSec: 100, state: 'running', createdAt: 1, startedAt: 1, ...over,
  });
}

function ledger(over: Partial<Ledger> = {}): Ledger {
  return { run: 1, base: 0, next: 1024, t0: 0, beat: 0, from: '_acme', batches: 1, recipients: 2, done: new Uint8Array(0), sent: 0, failed: {}, shift: 0, ...over };
}

function metrics(): SendMetrics {
  const registers = [new Registry()];
  return {
    sent: new Counter({ name: 'sent', help: 'sent', registers }),
    failed: new Counter({ name: 'failed', help: 'failed', labelNames: ['code'] as const, registers }),
    lag: new Histogram({ name: 'lag', help: 'lag', registers }),
    recordFailures: new Counter({ name: 'record_failures', help: 'record failures', registers }),
  };
}

async function count(c: Counter<string>, labels?: Record<string, string>): Promise<number> {
  const { values } = await c.get();
  return values.filter((v) => !labels || Object.entries(labels).every(([k, x]) => v.labels[k] === x)).reduce((n, v) => n + v.value, 0);
}

/** A delivered job whose answers are recorded. */
function job(t: { teardown(f: () => void): void }, deliveries = 1): { r: JobRun; answers: string[] } {
  const answers: string[] = [];
  const m = {
    info: { deliveryCount: deliveries, timestampNanos: Date.now() * 1e6 },
    ack: () => answers.push('ack'),
    nak: (ms?: number) => answers.push(`nak ${ms}`),
    term: () => answers.push('term'),
    working: () => undefined,
  } as unknown as JsMsg;
  const r = new JobRun(m);
  t.teardown(() => r.end());
  return { r, answers };
}

interface World {
  campaigns: FakeKv;
  publishers: FakeKv;
  records: CampaignRecords;
  metrics: SendMetrics;
  logs: string[];
  recorded: TrackingRecord[];
  submitted: string[];
  sending: Sending;
}

/** A running campaign to alice and bob with one batch, and a sender whose ports answer as told. */
function world(ports: { settle: (user: string) => { s: 'delivered' } | { s: 'failed'; code: ErrorCode }; version?: (user: string) => Promise<number> }): World {
  const campaigns = new FakeKv();
  const publishers = new FakeKv();
  campaigns.put(`c.${C}`, campaignRecord());
  campaigns.put(ledgerKey(C), encodeLedger(ledger()));
  const records = new CampaignRecords(campaigns, publishers);
  const logs: string[] = [];
  const recorded: TrackingRecord[] = [];
  const submitted: string[] = [];
  const deps: SendDeps = {
    custody: {
      submitSystem: async (item) => {
        submitted.push(item.to);
        return ports.settle(item.to);
      },
    },
    social: { refuses: async () => false },
    profiles: { version: ports.version ?? (async () => 7) },
    intake: { record: async (rec) => void recorded.push(rec) },
  };
  const m = metrics();
  return { campaigns, publishers, records, metrics: m, logs, recorded, submitted, sending: new Sending(records, deps, m, new Warnings((msg) => logs.push(msg))) };
}

const sendJob = { k: 'send' as const, c: C, n: 0, users: ['alice', 'bob'], notBefore: 0 };

t.test('custody settles both recipients as finally failed: marked with the code, counted, batch done, campaign done', async (t) => {
  const w = world({ settle: (u) => ({ s: 'failed', code: u === 'alice' ? ErrorCode.UNDELIVERABLE : ErrorCode.MAILBOX_FULL }) });
  const { r, answers } = job(t);
  t.equal(await w.sending.send(sendJob, r), 'ok');
  t.same(answers, ['ack']);
  t.equal(w.campaigns.text(markerKey(C, 'alice')), ErrorCode.UNDELIVERABLE);
  t.equal(w.campaigns.text(markerKey(C, 'bob')), ErrorCode.MAILBOX_FULL);
  const l = decodeLedger(w.campaigns.value(ledgerKey(C))!);
  t.same({ done: [...l.done], sent: l.sent, failed: l.failed }, { done: [1], sent: 0, failed: { [ErrorCode.UNDELIVERABLE]: 1, [ErrorCode.MAILBOX_FULL]: 1 } });
  t.same(unpack(w.campaigns.value(`progress.${C}`)!), { batches: 1, batchesDone: 1, recipients: 2, sent: 0, failed: { [ErrorCode.UNDELIVERABLE]: 1, [ErrorCode.MAILBOX_FULL]: 1 } });
  t.equal((unpack(w.campaigns.value(`c.${C}`)!) as { state: string }).state, 'done');
  t.same(w.recorded, [], 'no sent record for a message that was not sent');
  t.equal(await count(w.metrics.failed, { code: ErrorCode.UNDELIVERABLE }), 1);
  t.equal(await count(w.metrics.sent), 0);

  // As if the runner had died after the markers and before the ledger: the re-run takes the markers as the outcome.
  w.campaigns.put(ledgerKey(C), encodeLedger(ledger()));
  w.campaigns.put(`c.${C}`, campaignRecord());
  const again = job(t, 2);
  t.equal(await w.sending.send(sendJob, again.r), 'ok');
  t.same(w.submitted, ['alice', 'bob'], 'custody is not asked again');
  t.same(decodeLedger(w.campaigns.value(ledgerKey(C))!).failed, l.failed, 'the same counts');
  t.equal(await count(w.metrics.failed), 2, 'counted once, by whoever made the marker');
});

t.test('custody answers BUSY for one recipient: the other is marked, the batch is handed back with backoff, nothing counted', async (t) => {
  const w = world({ settle: (u) => (u === 'bob' ? { s: 'failed', code: ErrorCode.BUSY } : { s: 'delivered' }) });
  const { r, answers } = job(t, 3);
  t.equal(await w.sending.send(sendJob, r), 'retry');
  t.same(answers, ['nak 2000'], 'third delivery: 0.5 s doubled twice');
  t.equal(w.campaigns.text(markerKey(C, 'alice')), '', 'alice: sent');
  t.equal(w.campaigns.text(markerKey(C, 'bob')), undefined, 'bob: left unmarked for the retry');
  t.same(w.recorded.map((x) => [x.u, x.eid, x.ev, x.pv]), [['alice', sentEventId(C), 'sent', 7]]);
  const l = decodeLedger(w.campaigns.value(ledgerKey(C))!);
  t.same({ done: [...l.done], sent: l.sent }, { done: [], sent: 0 }, 'the ledger waits for the whole batch');
  t.equal(w.campaigns.value(`progress.${C}`), undefined);
  t.equal((unpack(w.campaigns.value(`c.${C}`)!) as { state: string }).state, 'running');
});

t.test('the profile store throws while sent records are written: the sends stand, the failures are counted and logged once', async (t) => {
  const w = world({
    settle: () => ({ s: 'delivered' }),
    version: async () => {
      throw new Error('profiles stream unavailable');
    },
  });
  const { r, answers } = job(t);
  t.equal(await w.sending.send(sendJob, r), 'ok');
  t.same(answers, ['ack']);
  t.equal(w.campaigns.text(markerKey(C, 'alice')), '');
  t.equal(w.campaigns.text(markerKey(C, 'bob')), '');
  t.same(w.recorded, []);
  t.equal(await count(w.metrics.recordFailures), 2);
  t.equal(await count(w.metrics.sent), 2);
  t.equal(decodeLedger(w.campaigns.value(ledgerKey(C))!).sent, 2);
  t.equal(w.logs.length, 1, 'one line for both (rate-limited per campaign)');
  t.match(w.logs[0], /the sent record of (alice|bob) could not be written/);
});

t.test('the profile listing throws during an expansion: the claim is given up, so the retry takes over at once', async (t) => {
  const campaigns = new FakeKv();
  const publishers = new FakeKv();
  campaigns.put(`c.${C}`, campaignRecord({ audience: { where: { attr: 'plan', op: 'exists' } } }));
  publishers.put(`p.${PUB}`, pack({ id: PUB, name: 'Acme', roles: ['campaigns'], keyHash: 'ab', sender: '_acme', createdAt: 1 }));
  const records = new CampaignRecords(campaigns, publishers);
  const published: Array<{ subject: string; msgID: string }> = [];
  const js = {
    publish: async (subject: string, _data: Uint8Array, o: { msgID: string }) => {
      published.push({ subject, msgID: o.msgID });
      return { seq: published.length, duplicate: false };
    },
  } as unknown as JetStreamClient;
  const names = { campaignWorkSubject: (c: string) => `t.cwork.${c}` } as unknown as ConstructorParameters<typeof Expansion>[2];
  const config = { batchSize: 100, defaultRatePerSec: 10, maxRatePerSec: 1000, maxListSize: 1000 };
  let failing = true;
  const profiles = {
    async *all() {
      yield { user: 'alice', attrs: { plan: 'pro' } };
      if (failing) throw new Error('listing profiles stalled');
      yield { user: 'bob', attrs: {} };
      yield { user: 'carol', attrs: { plan: 'free' } };
    },
  };
  const expansion = new Expansion(records, js, names, config, profiles);

  const first = job(t);
  await t.rejects(expansion.expand(C, first.r), { message: 'listing profiles stalled' });
  t.same(published, [], 'no batch was enqueued');
  const given = decodeLedger(campaigns.value(ledgerKey(C))!);
  t.same({ run: given.run, beat: given.beat, batches: given.batches, from: given.from }, { run: 1, beat: 0, batches: undefined, from: '_acme' });

  failing = false;
  const retry = job(t, 2);
  t.equal(await expansion.expand(C, retry.r), 'ok');
  t.same(retry.answers, ['ack']);
  const l = decodeLedger(campaigns.value(ledgerKey(C))!);
  t.same({ run: l.run, base: l.base, batches: l.batches, recipients: l.recipients }, { run: 2, base: 1024, batches: 1, recipients: 2 }, 'a new run above the first one\'s numbers');
  t.same(published, [{ subject: `t.cwork.${C}`, msgID: `${C}.b1024` }]);
});

t.test('a ledger that keeps changing under the runner: BUSY after 50 attempts (retried as a job, not dropped)', async (t) => {
  const campaigns = new FakeKv();
  campaigns.put(ledgerKey(C), encodeLedger(ledger()));
  campaigns.conflicts = Infinity;
  const records = new CampaignRecords(campaigns, new FakeKv());
  const err = await records.changeLedger(C, (x) => x && { ...x, sent: x.sent + 1 }).then(() => undefined, (e: unknown) => e);
  t.ok(err instanceof CampaignJobError);
  t.match(err, { code: ErrorCode.BUSY, message: `ledger of campaign ${C} is too contended` });
  t.equal(campaigns.writes.length, 50);
  t.equal(decodeLedger(campaigns.value(ledgerKey(C))!).sent, 0);
});

t.test('a campaign state change that keeps losing is CONFLICT; a storage failure is UNAVAILABLE', async (t) => {
  const kv = new FakeKv();
  kv.put(`c.${C}`, campaignRecord({ state: 'running', startedAt: 1 }));
  const store = new CampaignStore(kv as unknown as KV, {} as JetStreamClient, {} as ConstructorParameters<typeof CampaignStore>[2], 1 << 20);
  kv.conflicts = Infinity;
  await t.rejects(store.transition(C, 'pause'), { code: 'CONFLICT', message: `campaign ${C} is being changed concurrently; try again` });
  t.equal(kv.writes.length, 16);
  kv.conflicts = 0;
  kv.failWith = new Error('timeout');
  await t.rejects(store.transition(C, 'pause'), { code: 'UNAVAILABLE', message: 'pause of the campaign failed: timeout' });
  kv.getFails = new Error('no responders');
  const e = await store.transition(C, 'pause').catch((x: unknown) => x);
  t.ok(e instanceof CampaignError);
  t.match(e, { code: 'UNAVAILABLE', message: 'reading a campaign failed: no responders' });
  kv.getFails = undefined;
  await t.rejects(store.transition(C, 'resume'), { code: 'CONFLICT', message: `campaign ${C} is running: resume needs it paused` });
  t.same(await store.transition(C, 'pause').then((c) => c.state), 'paused');
});
