/**
 * A bounded map whose entries expire: the shape of every cache in a cell (keys,
 * device lists, contacts, groups). Insertion order is age order, so the oldest
 * entry is evicted first when full. Optionally entries have a weight (e.g. the
 * names a record holds) and the total weight is bounded too.
 */
export class TtlCache<K, V> {
  private readonly map = new Map<K, { v: V; at: number; w: number }>();
  private weight = 0;

  constructor(
    private readonly max: number,
    private readonly ttlMs: number,
    private readonly maxWeight = Number.POSITIVE_INFINITY,
    private readonly weigh: (v: V) => number = () => 0,
  ) {}

  get(k: K): V | undefined {
    const e = this.map.get(k);
    if (!e) return undefined;
    if (Date.now() - e.at >= this.ttlMs) {
      this.delete(k);
      return undefined;
    }
    return e.v;
  }

  set(k: K, v: V): void {
    this.delete(k);
    const w = this.weigh(v);
    while (this.map.size > 0 && (this.map.size >= this.max || this.weight + w > this.maxWeight)) this.delete(this.map.keys().next().value!);
    this.map.set(k, { v, at: Date.now(), w });
    this.weight += w;
  }

  delete(k: K): void {
    const e = this.map.get(k);
    if (!e) return;
    this.map.delete(k);
    this.weight -= e.w;
  }

  clear(): void {
    this.map.clear();
    this.weight = 0;
  }

  get size(): number {
    return this.map.size;
  }
}

/**
 * A read-through cache: a miss reads once however many callers ask at the same
 * time (a change to a big group makes every cell re-check all its members at
 * once), and a read that an invalidation overtook is answered but not kept.
 */
export class ReadThrough<K, V> {
  private readonly loading = new Map<K, { p: Promise<V>; stale: boolean }>();

  constructor(readonly cache: TtlCache<K, V>) {}

  /**
   * The cached value (if `usable`), else the shared read in flight, else a new read.
   * `fresh` skips both. A cached value that is not `usable` (e.g. due for a cheap
   * revalidation) stays cached until the read replaces it.
   */
  get(k: K, read: () => Promise<V>, fresh = false, usable?: (v: V) => boolean): Promise<V> {
    if (!fresh) {
      const hit = this.cache.get(k);
      if (hit !== undefined && (!usable || usable(hit))) return Promise.resolve(hit);
      const cur = this.loading.get(k);
      if (cur) return cur.p;
    }
    const l: { p: Promise<V>; stale: boolean } = { p: Promise.resolve(undefined as V), stale: false };
    l.p = read()
      .then((v) => {
        if (!l.stale && v !== undefined) this.cache.set(k, v);
        return v;
      })
      .finally(() => {
        if (this.loading.get(k) === l) this.loading.delete(k);
      });
    this.loading.set(k, l);
    return l.p;
  }

  /** The cached value, without reading (a caller with a synchronous fast path). */
  peek(k: K): V | undefined {
    return this.cache.get(k);
  }

  /** Every value may have changed unseen (invalidations were lost): forget them all, and the reads in flight. */
  clear(): void {
    for (const l of this.loading.values()) l.stale = true;
    this.loading.clear();
    this.cache.clear();
  }

  /** A value known from a write: cached, and any read in flight no longer counts. */
  set(k: K, v: V): void {
    this.drop(k);
    this.cache.set(k, v);
  }

  /** The value changed elsewhere: forget it, and do not keep what a read in flight brings. */
  invalidate(k: K): void {
    this.drop(k);
    this.cache.delete(k);
  }

  private drop(k: K): void {
    const l = this.loading.get(k);
    if (!l) return;
    l.stale = true;
    this.loading.delete(k);
  }
}
