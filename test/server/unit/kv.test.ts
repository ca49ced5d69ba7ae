import t from 'tap';
import { CAS_ATTEMPTS, casModify, casModifyRev, isCasConflict } from '@gravitas/server/internal';
import { FakeKv } from '../../fixtures/fake-cell.js';

/*
 * casModify (infra/kv.ts) against an in-memory bucket that keeps revisions the
 * way JetStream KV does and can be told to lose the next writes to a
 * concurrent writer, or to fail them outright.
 */

const enc = new TextEncoder();
const dec = new TextDecoder();

const contended = (): Error => new Error('too contended');
const append = (suffix: string) => (cur: Uint8Array | undefined) => {
  const next = `${cur ? dec.decode(cur) : ''}${suffix}`;
  return { write: enc.encode(next), result: next };
};

t.test('an absent key is created, a present one updated with the revision read', async (t) => {
  const kv = new FakeKv();
  t.same(await casModifyRev(kv, 'k', append('a'), { contended }), { result: 'a', rev: 1 }, 'the answer carries the revision written');
  t.same(await casModifyRev(kv, 'k', append('b'), { contended }), { result: 'ab', rev: 2 });
  t.same(kv.writes, ['create k', 'update k @1']);
  t.equal(kv.text('k'), 'ab');
});

t.test('a step that writes nothing ends the loop with its result, and writes nothing', async (t) => {
  const kv = new FakeKv();
  kv.put('k', 'x');
  const seen: Array<string | undefined> = [];
  const r = await casModify(kv, 'k', (cur) => (seen.push(cur && dec.decode(cur)), { result: 42 }), { contended });
  t.equal(r, 42);
  t.same(seen, ['x']);
  t.same(kv.writes, []);
});

t.test('null deletes a live key with its revision; an absent key is left alone', async (t) => {
  const kv = new FakeKv();
  const rev = kv.put('k', 'x');
  await casModify(kv, 'k', () => ({ write: null, result: undefined }), { contended });
  t.equal(kv.text('k'), undefined);
  t.same(kv.writes, [`delete k @${rev}`]);
  await casModify(kv, 'gone', () => ({ write: null, result: undefined }), { contended });
  t.same(kv.writes, [`delete k @${rev}`], 'nothing to delete: no write');
});

t.test('over a delete marker the step sees no value, and the write updates the marker', async (t) => {
  const kv = new FakeKv();
  const marker = kv.markDeleted('k');
  t.equal(await casModify(kv, 'k', append('a'), { contended }), 'a');
  t.same(kv.writes, [`update k @${marker}`]);
});

t.test('a conflict reads again and runs the step again; backoff is told the attempt', async (t) => {
  const kv = new FakeKv();
  kv.put('k', 'x');
  kv.conflicts = 2;
  const pauses: number[] = [];
  let steps = 0;
  const r = await casModify(kv, 'k', (cur) => (steps++, append('y')(cur)), { contended, backoff: async (i) => void pauses.push(i) });
  t.equal(r, 'xy');
  t.equal(steps, 3);
  t.same(pauses, [0, 1]);
  t.equal(kv.reads, 3);
});

t.test('conflicts until the attempts run out: the contended error, no pause after the last', async (t) => {
  const kv = new FakeKv();
  kv.conflicts = Infinity;
  const pauses: number[] = [];
  await t.rejects(casModify(kv, 'k', append('a'), { contended, attempts: 3, backoff: async (i) => void pauses.push(i) }), { message: 'too contended' });
  t.equal(kv.writes.length, 3);
  t.same(pauses, [0, 1]);
  kv.writes.length = 0;
  await t.rejects(casModify(kv, 'k', append('a'), { contended }), { message: 'too contended' });
  t.equal(kv.writes.length, CAS_ATTEMPTS, 'the default number of attempts');
});

t.test('any other failure ends it at once', async (t) => {
  const kv = new FakeKv();
  kv.failWith = new Error('no responders');
  await t.rejects(casModify(kv, 'k', append('a'), { contended }), { message: 'no responders' });
  t.equal(kv.writes.length, 1);
  t.notOk(isCasConflict(new Error('no responders')));
});

t.test('a step that throws ends it with its error', async (t) => {
  const kv = new FakeKv();
  await t.rejects(casModify(kv, 'k', () => { throw new Error('refused'); }, { contended }), { message: 'refused' });
  t.same(kv.writes, []);
});

t.test('read replaces kv.get', async (t) => {
  const kv = new FakeKv();
  kv.put('k', 'bucket');
  const other = new FakeKv();
  other.put('k', 'elsewhere');
  const r = await casModify(kv, 'k', (cur) => ({ result: cur && dec.decode(cur) }), { contended, read: (key) => other.get(key) });
  t.equal(r, 'elsewhere');
  t.equal(kv.reads, 0);
});
