/**
 * Space-Saving top-K over numeric keys, with exponential decay.
 *
 * At most `capacity` keys are counted. A new key arriving when the table is full
 * takes the slot of the smallest count and inherits that count as its error
 * bound (Metwally et al., "Efficient computation of frequent and top-k elements
 * in data streams"), so any key whose true weight exceeds total/capacity is kept.
 * Memory is fixed: three typed arrays and one Map of `capacity` entries.
 *
 * Decay is lazy: a weight added at time t is stored as w·2^((t−t0)/halfLife), so
 * old weight shrinks relative to new without touching every entry; the scale is
 * folded back into the counts before it can overflow. Ordering by stored count is
 * ordering by decayed count, so the min-heap never needs re-sorting.
 */
export class DecayingTopK {
  private readonly keys: Float64Array;
  private readonly counts: Float64Array;
  private readonly errors: Float64Array;
  /** heap[i] = slot; pos[slot] = i. A min-heap by counts[slot]. */
  private readonly heap: Int32Array;
  private readonly pos: Int32Array;
  private readonly index = new Map<number, number>();
  private size = 0;
  private t0: number;

  constructor(readonly capacity: number, readonly halfLifeMs: number, now = 0) {
    if (!(capacity >= 1) || !Number.isInteger(capacity)) throw new RangeError('capacity must be a positive integer');
    if (!(halfLifeMs > 0)) throw new RangeError('halfLifeMs must be positive');
    this.keys = new Float64Array(capacity);
    this.counts = new Float64Array(capacity);
    this.errors = new Float64Array(capacity);
    this.heap = new Int32Array(capacity);
    this.pos = new Int32Array(capacity);
    this.t0 = now;
  }

  get length(): number {
    return this.size;
  }

  private scale(now: number): number {
    return 2 ** ((now - this.t0) / this.halfLifeMs);
  }

  /** Adds `weight` to `key` at time `now` (monotonic within one sketch). */
  add(key: number, weight: number, now: number): void {
    let f = this.scale(now);
    if (f > 2 ** 30) {
      this.rebase(now);
      f = 1;
    }
    const w = weight * f;
    const slot = this.index.get(key);
    if (slot !== undefined) {
      this.counts[slot]! += w;
      this.down(this.pos[slot]!);
      return;
    }
    if (this.size < this.capacity) {
      const s = this.size++;
      this.keys[s] = key;
      this.counts[s] = w;
      this.errors[s] = 0;
      this.heap[s] = s;
      this.pos[s] = s;
      this.index.set(key, s);
      this.up(s);
      return;
    }
    // Full: the smallest makes room and its count becomes the newcomer's error bound.
    const s = this.heap[0]!;
    this.index.delete(this.keys[s]!);
    const floor = this.counts[s]!;
    this.keys[s] = key;
    this.errors[s] = floor;
    this.counts[s] = floor + w;
    this.index.set(key, s);
    this.down(0);
  }

  /** Decayed count of `key` (0 if not tracked), as of `now`. */
  get(key: number, now: number): number {
    const slot = this.index.get(key);
    return slot === undefined ? 0 : this.counts[slot]! / this.scale(now);
  }

  /** Calls `f(key, count, error)` for every tracked key, counts decayed to `now`. */
  forEach(now: number, f: (key: number, count: number, error: number) => void): void {
    const inv = 1 / this.scale(now);
    for (let s = 0; s < this.size; s++) f(this.keys[s]!, this.counts[s]! * inv, this.errors[s]! * inv);
  }

  /** Forgets keys for which `drop(key)` is true (a session that left). O(capacity). */
  prune(drop: (key: number) => boolean): void {
    let w = 0;
    for (let s = 0; s < this.size; s++) {
      const k = this.keys[s]!;
      if (drop(k)) {
        this.index.delete(k);
        continue;
      }
      this.keys[w] = k;
      this.counts[w] = this.counts[s]!;
      this.errors[w] = this.errors[s]!;
      this.index.set(k, w);
      w++;
    }
    this.size = w;
    for (let s = 0; s < w; s++) {
      this.heap[s] = s;
      this.pos[s] = s;
    }
    for (let i = (w >> 1) - 1; i >= 0; i--) this.down(i);
  }

  private rebase(now: number): void {
    const inv = 1 / this.scale(now);
    for (let s = 0; s < this.size; s++) {
      this.counts[s]! *= inv;
      this.errors[s]! *= inv;
    }
    this.t0 = now;
  }

  private swap(i: number, j: number): void {
    const a = this.heap[i]!;
    const b = this.heap[j]!;
    this.heap[i] = b;
    this.heap[j] = a;
    this.pos[b] = i;
    this.pos[a] = j;
  }

  private up(i: number): void {
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (this.counts[this.heap[p]!]! <= this.counts[this.heap[i]!]!) return;
      this.swap(i, p);
      i = p;
    }
  }

  private down(i: number): void {
    for (;;) {
      const l = 2 * i + 1;
      if (l >= this.size) return;
      const r = l + 1;
      const c = r < this.size && this.counts[this.heap[r]!]! < this.counts[this.heap[l]!]! ? r : l;
      if (this.counts[this.heap[i]!]! <= this.counts[this.heap[c]!]!) return;
      this.swap(i, c);
      i = c;
    }
  }
}
