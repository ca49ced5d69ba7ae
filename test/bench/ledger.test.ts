import t from 'tap';
import { accountDeliveries, deliveryId, deviceBase, LEDGER_CHUNK, ledgerChunks } from '../../bench/src/harness/ledger.js';

/*
 * The load harness counts loss by delivery id (bench/src/harness/ledger.ts): the ids accepted
 * sends owe against the ids that arrived. The run itself is tested in run.test.ts (where nothing
 * extra arrives); here the cases a real run rarely shows: extra arrivals that a difference of
 * counts would take for the missing ones.
 */

t.test('extra arrivals do not hide a missing delivery', async (t) => {
  const devices = 10;
  const id = (ref: number, gen: number, dev: number): number => deliveryId(ref, gen, 2, dev, devices);
  // Message 1 of generator 0 owes devices 3 and 4; message 2 of generator 1 owes device 7.
  const owed = [id(1, 0, 3), id(1, 0, 4), id(2, 1, 7)];
  // Device 4 never got message 1. Device 3 got it twice (a re-delivery the driver's window forgot),
  // and device 5, to which nothing was owed, got a copy: four arrivals for three owed deliveries.
  const arrived = [id(1, 0, 3), id(2, 1, 7), id(1, 0, 3), id(1, 0, 5)];
  t.ok(arrived.length >= owed.length, 'by counts, nothing would be missing');
  const a = accountDeliveries(owed, arrived);
  t.same(a, { expected: 3, received: 2, missing: 1, unexpected: 1, repeats: 1 }, 'by id: one missing, one unexpected, one repeat');
});

t.test('every owed delivery arrived, in any order, some twice', async (t) => {
  const owed = [5, 1, 9, 3];
  t.same(accountDeliveries(owed, [9, 3, 3, 1, 5, 5]), { expected: 4, received: 4, missing: 0, unexpected: 0, repeats: 2 });
  t.same(accountDeliveries([], []), { expected: 0, received: 0, missing: 0, unexpected: 0, repeats: 0 }, 'nothing sent');
  t.same(accountDeliveries(owed, []), { expected: 4, received: 0, missing: 4, unexpected: 0, repeats: 0 }, 'nothing arrived');
});

t.test('ids: one per (message, generator, device), exact in the range a run reaches', async (t) => {
  const base = deviceBase(Uint8Array.from([1, 3, 2]));
  t.same([...base], [0, 1, 4, 6], 'user u’s device k is base[u] + k');
  const seen = new Set<number>();
  for (let ref = 1; ref <= 50; ref++) for (let g = 0; g < 3; g++) for (let d = 0; d < 6; d++) seen.add(deliveryId(ref, g, 3, d, 6));
  t.equal(seen.size, 50 * 3 * 6, 'no two deliveries share an id');
  const big = deliveryId(10_000_000, 63, 64, 999_999, 1_000_000);
  t.ok(Number.isSafeInteger(big), `10^7 refs × 64 generators × 10^6 devices: ${big} is exact`);
});

t.test('the ledger travels in bounded messages and arrives whole', async (t) => {
  const owed = Array.from({ length: 2 * LEDGER_CHUNK + 5 }, (_, i) => i);
  const arrived = Array.from({ length: LEDGER_CHUNK + 1 }, (_, i) => i * 2);
  const chunks = ledgerChunks(owed, arrived);
  t.ok(chunks.every((c) => c.owed.length + c.received.length <= LEDGER_CHUNK), 'each message bounded');
  t.ok(chunks.every((c) => JSON.stringify(c).length < 1024 * 1024), 'each under NATS’s default 1 MiB payload');
  t.same(chunks.flatMap((c) => c.owed), owed, 'owed ids whole, in order');
  t.same(chunks.flatMap((c) => c.received), arrived, 'arrived ids whole, in order');
  t.equal(ledgerChunks([], []).length, 1, 'an empty ledger is still one message (the runner counts them)');
});
