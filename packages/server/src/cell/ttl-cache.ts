/**
 * A bounded map whose entries expire: the shape of every read-through cache in a
 * cell (keys, device lists, contacts, groups). Insertion order is age order, so
 * the oldest entry is evicted first when full.
 */
export class TtlCache<K, V> {
  private readonly map = new Map<K, { v: V; at: number }>();

  constructor(private readonly max: number, private readonly ttlMs: number) {}

  get(k: K): V | undefined {
    const e = this.map.get(k);
    if (!e) return undefined;
    if (Date.now() - e.at >= this.ttlMs) {
      this.map.delete(k);
      return undefined;
    }
    return e.v;
  }

  set(k: K, v: V): void {
    this.map.delete(k);
    if (this.map.size >= this.max) this.map.delete(this.map.keys().next().value!);
    this.map.set(k, { v, at: Date.now() });
  }

  delete(k: K): void {
    this.map.delete(k);
  }

  get size(): number {
    return this.map.size;
  }
}
