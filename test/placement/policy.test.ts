import t from 'tap';
import { CellTraffic, chooseHintCell, choosePartner, DecayingTopK, loadCap, planExchange, RateLimiter, type ExchangeSide } from '@gravitas/placement';

t.test('DecayingTopK keeps the heavy hitters in fixed space', async (t) => {
  const k = new DecayingTopK(8, 1e12);
  // Two heavy keys among 1,000 light ones: Space-Saving keeps any key above total/capacity.
  for (let i = 0; i < 1000; i++) {
    k.add(1_000_000 + i, 1, 0);
    if (i % 4 === 0) k.add(7, 1, 0);
    if (i % 5 === 0) k.add(9, 1, 0);
  }
  t.equal(k.length, 8, 'never more than capacity');
  t.ok(k.get(7, 0) >= 250, 'heavy key 7 counted (an overestimate at most)');
  t.ok(k.get(9, 0) >= 200, 'heavy key 9 counted');
  const seen: number[] = [];
  k.forEach(0, (key, count, err) => {
    seen.push(key);
    t.ok(count >= err, 'count is never below its error bound');
  });
  t.ok(seen.includes(7) && seen.includes(9));
});

t.test('DecayingTopK halves counts every half-life, and survives a long run', async (t) => {
  const k = new DecayingTopK(4, 1000);
  k.add(1, 8, 0);
  t.equal(k.get(1, 1000), 4);
  t.equal(k.get(1, 3000), 1);
  // Far beyond the rescaling threshold (2^30 half-lives would overflow without it).
  k.add(2, 1, 40_000);
  t.ok(Math.abs(k.get(2, 40_000) - 1) < 1e-9, 'new weight counts fully after a rebase');
  t.ok(k.get(1, 40_000) < 1e-9, 'old weight is gone');
  k.prune((key) => key === 1);
  t.equal(k.get(1, 40_000), 0, 'pruned');
  t.equal(k.length, 1);
  t.throws(() => new DecayingTopK(0, 1), RangeError);
  t.throws(() => new DecayingTopK(1, 0), RangeError);
});

t.test('CellTraffic: candidates gain by moving, spares have no pull toward the other cell', async (t) => {
  const c = new CellTraffic(0, 64, 1e12);
  // Session 1 talks mostly to cell 2; session 2 mostly at home; session 3 only to cell 5.
  for (let i = 0; i < 10; i++) c.record(1, 2, 1, 0);
  c.record(1, 0, 3, 0);
  c.record(2, 0, 10, 0);
  c.record(2, 2, 1, 0);
  c.record(3, 5, 4, 0);
  const s = c.summarize(0);
  t.same(CellTraffic.candidates(s, 2, 1, () => true, 10), [{ session: 1, cell: 2, gain: 7 }], 'only the session that gains, by its gain');
  t.same(CellTraffic.candidates(s, 2, 1, (x) => x !== 1, 10), [], 'ineligible sessions are left out');
  t.same(CellTraffic.crossTraffic(s), new Map([[2, 11], [5, 4]]));
  t.same(
    CellTraffic.spares(s, [1, 2, 3, 4], 2, () => true, 10).map((x) => [x.session, x.weight]),
    [[3, 0], [4, 0]],
    'sessions 1 and 2 have traffic toward cell 2: not spares; 3 and 4 cost nothing locally',
  );
  c.forget((x) => x === 1);
  t.notOk(c.summarize(0).has(1), 'forgotten');
});

const side = (load: number, gains: number[], spares: number[] = [], base = 0): ExchangeSide => ({
  load,
  toOther: gains.map((gain, i) => ({ session: base + i, cell: 0, gain })),
  spares: spares.map((weight, i) => ({ session: base + 100 + i, weight })),
});

t.test('planExchange moves one way, within the cap, pairing with spares when full', async (t) => {
  const p = { mean: 10, epsilon: 0.2, maxMoves: 100, minGain: 1 };
  t.equal(loadCap(10, 0.2), 12);
  t.equal(loadCap(3, 0.01), 4, 'at least one above the mean');
  t.equal(loadCap(0.5, 0.1), 2);
  // A gains more: A's candidates move to B until B reaches 12, then pair with B's spares.
  const plan = planExchange(side(10, [9, 8, 7, 6, 0.5]), side(10, [5, 1], [0, 2, 10], 1000), p);
  t.same(plan.aToB, [0, 1, 2, 3], 'best first; the one below minGain stays');
  t.same(plan.bToA, [1100, 1101], 'B at its cap: two moves paired with its lightest spares');
  t.equal(plan.gain, 9 + 8 + 7 - 0 + 6 - 2);
  // Two sessions that only talk to each other: one moves, not both (they would swap).
  const pair = planExchange(side(10, [5], [], 0), side(10, [5], [], 1000), p);
  t.equal(pair.aToB.length + pair.bToA.length, 1, 'a talking pair is joined, not swapped');
  // A spare that loses more than the move gains is not worth it.
  const full = planExchange(side(12, [3]), side(12, [], [5], 1000), p);
  t.same(full, { aToB: [], bToA: [], gain: 0 });
  t.equal(planExchange(side(10, [9, 8, 7]), side(10, []), { ...p, maxMoves: 2 }).aToB.length, 2, 'maxMoves bounds it');
});

t.test('planExchange sheds load from a cell over its cap', async (t) => {
  const plan = planExchange(side(15, [], [0, 0, 0, 0, 1]), side(8, []), { mean: 10, epsilon: 0.2, maxMoves: 100, minGain: 1 });
  t.same(plan.aToB, [100, 101, 102], 'down to the cap (12), lightest first');
  t.same(plan.bToA, []);
});

t.test('chooseHintCell: where most associate weight lives, with room; else the preferred cell', async (t) => {
  const load = (c: string): number | undefined => ({ a: 5, b: 12, c: 7, d: 3 })[c];
  const w = (...pairs: Array<[string, number]>) => pairs.map(([cell, weight]) => ({ cell, weight }));
  t.equal(chooseHintCell('a', w(['c', 2], ['d', 1], ['c', 2]), load, 10), 'c', 'c holds weight 4');
  t.equal(chooseHintCell('a', w(['b', 9], ['d', 1]), load, 10), 'd', 'b has the most but is at its cap');
  t.equal(chooseHintCell('a', [], load, 10), 'a', 'no associates online: the preferred cell');
  t.equal(chooseHintCell('b', w(['b', 1]), load, 10), undefined, 'nowhere with room');
  t.equal(chooseHintCell(undefined, w(['zz', 5]), load, 10), undefined, 'unknown (dead) cells are skipped');
});

t.test('RateLimiter spreads migrations', async (t) => {
  const r = new RateLimiter(10, 5, 0);
  t.equal(r.take(8, 0), 5, 'burst');
  t.equal(r.take(8, 0), 0);
  t.equal(r.take(8, 300), 3, '10/s refills 3 in 300 ms');
  t.equal(r.take(1, 100_000), 1);
});

t.test('planExchange takes the better direction; a full cell makes room', async (t) => {
  const p = { mean: 4, epsilon: 0.25, maxMoves: 10, minGain: 1 };
  // A is at its cap (5) and B below: A's session cannot go to B... B's can come to A? No: A is full.
  // B at the cap with no spare, A with room: the move goes B → A.
  const back = planExchange(side(4, [5]), side(5, [5], [], 1000), p);
  t.same(back, { aToB: [], bToA: [1000], gain: 5 }, 'the direction that can move wins');
  // A at its cap, B below the mean: one spare of A goes to B, making room.
  const room = planExchange(side(5, [], [0, 0]), side(3, []), p);
  t.same(room.aToB, [100], 'one spare, not more');
});

t.test('choosePartner: most traffic, unless full; then the least-loaded cell below the mean', async (t) => {
  const loads: Record<string, number> = { a: 4, b: 5, c: 3, d: 4 };
  const load = (c: string): number | undefined => loads[c];
  const cells = Object.keys(loads);
  t.equal(choosePartner('a', [['b', 10], ['c', 20], ['d', 5]], load, () => false, cells, 4, 5), 'c');
  t.equal(choosePartner('a', [['b', 10], ['c', 20]], load, (c) => c === 'c', cells, 4, 5), 'b', 'resting cells are skipped');
  t.equal(choosePartner('a', [['x', 99]], load, () => false, cells, 4, 5), undefined, 'dead cells are skipped');
  t.equal(choosePartner('b', [['d', 10]], load, () => false, cells, 4, 5), 'c', 'a full cell asks the emptiest cell for room');
});
