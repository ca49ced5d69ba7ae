import t from 'tap';
import { check } from '@gravitas/testkit';
import { accountDeliveries, deliveryId, deviceBase, LEDGER_CHUNK, ledgerChunks } from '../../bench/src/harness/ledger.js';
import { nowMs, type DeviceEvents, type DeviceRef, type Driver, type DriverDevice, type Incoming } from '../../bench/src/harness/driver.js';
import { LoadSession } from '../../bench/src/harness/load-session.js';
import { buildPopulation } from '../../bench/src/harness/population.js';
import { validateScenario } from '../../bench/src/harness/scenario.js';

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
  const same = (a: number[], b: number[]): boolean => a.length === b.length && a.every((x, i) => x === b[i]);
  t.ok(same(chunks.flatMap((c) => c.owed), owed), 'owed ids whole, in order');
  t.ok(same(chunks.flatMap((c) => c.received), arrived), 'arrived ids whole, in order');
  t.equal(ledgerChunks([], []).length, 1, 'an empty ledger is still one message (the runner counts them)');
});

/**
 * A stand-in target in the generator's process (the harness is what is tested here): it takes
 * every send, delivers it to every device of the recipient and the sender's other devices — except
 * that it loses one delivery and delivers another twice, which its driver does not drop.
 */
class LossyTarget implements Driver {
  readonly name = 'lossy';
  readonly capabilities = { acceptance: true, ownDeviceCopies: true, offlineDelivery: { direct: true, groups: true } };
  private readonly byUser = new Map<string, Array<{ events: DeviceEvents; inbox: Incoming[]; up: boolean }>>();
  private sends = 0;
  lost = '';
  doubled = '';
  async provision(): Promise<void> {}
  async createGroup(): Promise<string> {
    throw new Error('no groups here');
  }
  device(d: DeviceRef, events: DeviceEvents): DriverDevice {
    const me = { events, inbox: [] as Incoming[], up: false };
    const list = this.byUser.get(d.user) ?? [];
    this.byUser.set(d.user, list);
    list.push(me);
    const deliver = (to: typeof me, m: Incoming): void => {
      if (to.up) to.events.message(m);
      else to.inbox.push(m);
    };
    const target = this;
    return {
      get connected() {
        return me.up;
      },
      async connect() {
        me.up = true;
        for (const m of me.inbox.splice(0)) events.message(m);
      },
      send(ref, to, body) {
        const n = ++target.sends;
        const recipients = [...(target.byUser.get(to) ?? []), ...list.filter((x) => x !== me)];
        setImmediate(() => {
          events.outcome(ref, true);
          recipients.forEach((r, i) => {
            const m = { from: d.user, body };
            if (n === 3 && i === 0) {
              target.lost = body.split(' ')[1]!; // the 3rd message never reaches its first recipient device
              return;
            }
            deliver(r, m);
            if (n === 5 && i === 0) {
              target.doubled = body.split(' ')[1]!;
              deliver(r, m); // the 5th reaches it twice
            }
          });
        });
      },
      sendToGroup() {
        throw new Error('no groups here');
      },
      setPresence() {},
      async ping() {},
      async disconnect() {
        me.up = false;
      },
      drop() {
        me.up = false;
      },
    };
  }
  async close(): Promise<void> {}
}

t.test('a generator’s own ledger: a lost delivery and a doubled one leave the counts equal, the ids do not', async (t) => {
  const scenario = validateScenario({
    name: 'ledger',
    users: 6,
    devicesPerUser: 1.5,
    seed: 3,
    behaviours: { messages: { perUserPerMinute: 300, diurnal: { curve: 'flat' } }, presence: { changesPerUserPerMinute: 0 } },
    duration: 1,
    interval: 1,
    generators: { count: 1, maxConnections: 100 },
    target: { driver: 'gravitas', local: { nodes: 1 } },
  });
  const target = new LossyTarget();
  const ledger: Array<{ owed: number[]; received: number[] }> = [];
  const session = new LoadSession({
    scenario, population: buildPopulation(scenario), index: 0, count: 1, namespace: 'lg', runTag: 'run1', driver: target, clockOffsetMs: 0,
    emit: (m) => void (m.type === 'ledger' && ledger.push(m as unknown as { owed: number[]; received: number[] })),
    log: () => undefined,
  });
  await session.provision();
  session.start(nowMs() + 50);
  // The run (1 s) and its drain: everything the target delivers arrives at once.
  await check('the run sent more than five messages and ended', () => target.lost !== '' && target.doubled !== '' ? true : undefined, { timeout: 10_000, interval: 50 });
  await new Promise((r) => setTimeout(r, 1500));
  const totals = await session.finish();
  t.equal(totals.pending, 0, 'every send has its outcome');
  t.equal(totals.receivedTotal, totals.expected, `by counts: ${totals.expected} owed, ${totals.receivedTotal} received — nothing missing`);
  t.equal(totals.ledgerChunks, ledger.length, 'done counts the ledger messages');
  const a = accountDeliveries(ledger.flatMap((c) => c.owed), ledger.flatMap((c) => c.received));
  t.equal(a.expected, totals.expected, 'the ledger owes what the counts owe');
  t.match(a, { missing: 1, repeats: 1, unexpected: 0 }, `by id: the delivery of ${target.lost} is missing, ${target.doubled} came twice`);
});
