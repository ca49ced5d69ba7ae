/*
 * Delivery accounting by id (docs/benchmarking.md, "Loss and duplicates").
 *
 * Each delivery an accepted message owes has an id: (sending generator, the message's ref, the
 * recipient device). The sending generator knows what it owes (the message's recipients once the
 * server accepted it); the generators hosting the recipient devices know what arrived. Missing =
 * owed ids that never arrived. A difference of counts would be wrong whenever something extra
 * arrived — a re-delivery the driver's window no longer remembers, a copy on a device nothing was
 * owed to — because each extra receipt would hide one missing delivery.
 *
 * An id is one number: ((ref × generators) + generator) × devices + device, exact while below
 * 2^53 (a generator's refs × generators × devices; 10^7 × 64 × 10^6 fits).
 */

/** The number a delivery is known by in both ledgers. */
export function deliveryId(ref: number, generator: number, generators: number, device: number, devices: number): number {
  return (ref * generators + generator) * devices + device;
}

/** Global device numbers: user u's device k is base[u] + k. */
export function deviceBase(devicesPerUser: ArrayLike<number>): Int32Array {
  const base = new Int32Array(devicesPerUser.length + 1);
  for (let u = 0; u < devicesPerUser.length; u++) base[u + 1] = base[u]! + devicesPerUser[u]!;
  return base;
}

export interface IdAccount {
  /** Distinct deliveries owed. */
  expected: number;
  /** Owed deliveries that arrived (each counted once, however often it arrived). */
  received: number;
  /** Owed deliveries that never arrived: expected − received, by id. */
  missing: number;
  /** Distinct deliveries that arrived but were never owed (a device nothing was sent to, a message never accepted). */
  unexpected: number;
  /** Arrivals beyond the first of the same id (re-deliveries the driver did not drop). */
  repeats: number;
}

function sortedUnique(ids: readonly number[]): Float64Array {
  const a = Float64Array.from(ids).sort();
  let n = 0;
  for (let i = 0; i < a.length; i++) if (i === 0 || a[i] !== a[n - 1]) a[n++] = a[i]!;
  return a.subarray(0, n);
}

/** Owed ids against arrived ids (duplicates allowed in both lists). */
export function accountDeliveries(owed: readonly number[], arrived: readonly number[]): IdAccount {
  const o = sortedUnique(owed);
  const a = sortedUnique(arrived);
  let i = 0;
  let j = 0;
  let both = 0;
  while (i < o.length && j < a.length) {
    if (o[i] === a[j]) {
      both++;
      i++;
      j++;
    } else if (o[i]! < a[j]!) i++;
    else j++;
  }
  return { expected: o.length, received: both, missing: o.length - both, unexpected: a.length - both, repeats: arrived.length - a.length };
}

/** Ids per control message: ~17 bytes each as JSON, well under NATS's 1 MiB payload. */
export const LEDGER_CHUNK = 30_000;

/** Splits the two lists into messages of at most LEDGER_CHUNK ids together (at least one message). */
export function ledgerChunks(owed: readonly number[], arrived: readonly number[]): Array<{ owed: number[]; received: number[] }> {
  const out: Array<{ owed: number[]; received: number[] }> = [];
  for (let i = 0; i < owed.length; i += LEDGER_CHUNK) out.push({ owed: owed.slice(i, i + LEDGER_CHUNK), received: [] });
  for (let i = 0; i < arrived.length; i += LEDGER_CHUNK) out.push({ owed: [], received: arrived.slice(i, i + LEDGER_CHUNK) });
  if (out.length === 0) out.push({ owed: [], received: [] });
  return out;
}

/** The owed ids that never arrived, and every arrival beyond the first of an id (for placing them in time). */
export function missingAndRepeated(owed: readonly number[], arrived: readonly number[]): { missing: number[]; repeated: number[] } {
  const o = sortedUnique(owed);
  const a = Float64Array.from(arrived).sort();
  const missing: number[] = [];
  const repeated: number[] = [];
  for (let j = 1; j < a.length; j++) if (a[j] === a[j - 1]) repeated.push(a[j]!);
  let j = 0;
  for (let i = 0; i < o.length; i++) {
    while (j < a.length && a[j]! < o[i]!) j++;
    if (j >= a.length || a[j] !== o[i]) missing.push(o[i]!);
  }
  return { missing, repeated };
}

/** The sending generator and ref of a delivery id (deliveryId's inverse). */
export function sendOf(id: number, generators: number, devices: number): { generator: number; ref: number } {
  const x = Math.floor(id / devices);
  return { generator: x % generators, ref: Math.floor(x / generators) };
}
