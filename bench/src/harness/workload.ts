import { mulberry32 } from '../custody-types.js';
import { sampleContact, type Rand } from '../placement-graph.js';
import type { DriverCapabilities } from './driver.js';
import type { Population } from './population.js';
import type { Scenario } from './scenario.js';

/*
 * The scenario's behaviours as schedules, for one generator: which users it hosts, when each
 * connects during the ramp-up, when it goes offline and comes back, who a message goes to, and
 * how many deliveries an accepted message owes. Pure code over seeded random streams — the
 * generator (generator.ts) does the I/O — so it is unit-tested without sockets.
 */

/** Users are dealt to generators round-robin: generator `index` of `count` hosts users u ≡ index (mod count), all devices of a user together. */
export function localUsers(users: number, index: number, count: number): Int32Array {
  return Int32Array.from({ length: Math.max(0, Math.ceil((users - index) / count)) }, (_, j) => index + j * count);
}

/** A stream of its own per generator and per purpose, so changing one behaviour does not reshuffle the others. */
export function stream(seed: number, purpose: number, generator: number): Rand {
  return mulberry32((seed ^ purpose ^ Math.imul(generator + 1, 0x9e3779b1)) >>> 0);
}

export const STREAM = { ramp: 0x1f3a5c7e, offline: 0x2b4d6f81, storm: 0x3c5e7092, send: 0x4d6f81a3, presence: 0x5e7092b4, retry: 0x6f81a3c5 } as const;

/** Exponential with the given mean (inverse CDF; 1 − u keeps the log away from 0). */
export const exponential = (rand: Rand, mean: number): number => -Math.log(1 - rand()) * mean;

/**
 * The offline behaviour as an alternating renewal process: online for Exp(meanOnline), offline for
 * Exp(meanOffline). With meanOnline = D(1 − s)/s the long-run share of time offline is s — the
 * scenario's `offline.share` — and D its `meanDuration`.
 */
export function offlineMeans(share: number, meanDurationMs: number): { onlineMs: number; offlineMs: number } | undefined {
  if (!(share > 0)) return undefined;
  return { onlineMs: (meanDurationMs * (1 - share)) / share, offlineMs: meanDurationMs };
}

/**
 * A set of small integers with O(1) add, delete and uniform sample: who may send now. The
 * generator picks a random sender per message among them.
 */
export class ActiveSet {
  private readonly items: Int32Array;
  private readonly pos: Int32Array;
  private n = 0;

  constructor(capacity: number) {
    this.items = new Int32Array(capacity);
    this.pos = new Int32Array(capacity).fill(-1);
  }

  get size(): number {
    return this.n;
  }

  has(x: number): boolean {
    return this.pos[x]! >= 0;
  }

  add(x: number): void {
    if (this.pos[x]! >= 0) return;
    this.items[this.n] = x;
    this.pos[x] = this.n++;
  }

  delete(x: number): void {
    const i = this.pos[x]!;
    if (i < 0) return;
    const last = this.items[--this.n]!;
    this.items[i] = last;
    this.pos[last] = i;
    this.pos[x] = -1;
  }

  /** A uniform member, or -1 when empty. */
  sample(rand: Rand): number {
    return this.n === 0 ? -1 : this.items[Math.floor(rand() * this.n)]!;
  }
}

/**
 * Timed actions of one generator (ramp-up connects, offline transitions, storm reconnects,
 * retries): a binary min-heap on time, payloads in parallel arrays so that 15,000 users cost no
 * object per entry.
 */
export class TimerQueue {
  private at = new Float64Array(64);
  private kind = new Uint8Array(64);
  private arg = new Int32Array(64);
  private n = 0;

  get size(): number {
    return this.n;
  }

  /** Time of the earliest action, or Infinity. */
  get next(): number {
    return this.n === 0 ? Infinity : this.at[0]!;
  }

  push(at: number, kind: number, arg: number): void {
    if (this.n === this.at.length) this.grow();
    let i = this.n++;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (this.at[p]! <= at) break;
      this.move(p, i);
      i = p;
    }
    this.at[i] = at;
    this.kind[i] = kind;
    this.arg[i] = arg;
  }

  /** Removes the earliest action into `out` (kind, arg) and returns its time; Infinity when empty. */
  pop(out: { kind: number; arg: number }): number {
    if (this.n === 0) return Infinity;
    const t = this.at[0]!;
    out.kind = this.kind[0]!;
    out.arg = this.arg[0]!;
    const lastAt = this.at[--this.n]!;
    const lastKind = this.kind[this.n]!;
    const lastArg = this.arg[this.n]!;
    let i = 0;
    for (;;) {
      const l = 2 * i + 1;
      if (l >= this.n) break;
      const c = l + 1 < this.n && this.at[l + 1]! < this.at[l]! ? l + 1 : l;
      if (this.at[c]! >= lastAt) break;
      this.move(c, i);
      i = c;
    }
    this.at[i] = lastAt;
    this.kind[i] = lastKind;
    this.arg[i] = lastArg;
    return t;
  }

  private move(from: number, to: number): void {
    this.at[to] = this.at[from]!;
    this.kind[to] = this.kind[from]!;
    this.arg[to] = this.arg[from]!;
  }

  private grow(): void {
    const n = this.at.length * 2;
    const at = new Float64Array(n);
    at.set(this.at);
    const kind = new Uint8Array(n);
    kind.set(this.kind);
    const arg = new Int32Array(n);
    arg.set(this.arg);
    this.at = at;
    this.kind = kind;
    this.arg = arg;
  }
}

/** A recipient for a 1:1 message from `u`: a contact drawn by how much they talk, or anyone else when `u` has none. */
export function recipientOf(pop: Population, u: number, rand: Rand): number {
  const v = sampleContact(pop.graph, u, rand);
  if (v >= 0) return v;
  const n = pop.graph.users;
  const w = Math.floor(rand() * (n - 1));
  return w >= u ? w + 1 : w;
}

/**
 * How many deliveries an accepted message owes, under the driver's semantics: every device of
 * the recipient (and the sender's other devices when the server copies to them); a group message
 * reaches every member device but the sending one.
 */
export function expectedDirect(pop: Population, from: number, to: number, caps: DriverCapabilities): number {
  return pop.devices[to]! + (caps.ownDeviceCopies ? pop.devices[from]! - 1 : 0);
}

/** Devices of every group's members, summed once per group (the sending device is subtracted per message). */
export function groupDevices(pop: Population): Int32Array {
  return Int32Array.from(pop.groups, (members) => {
    let n = 0;
    for (const m of members) n += pop.devices[m]!;
    return n;
  });
}

/** Whether lost messages can be counted: the server says what it accepted and keeps it for offline devices. */
export function tracksDeliveries(caps: DriverCapabilities, s?: Scenario): boolean {
  if (caps.acceptance && caps.offlineDelivery.direct && caps.offlineDelivery.groups) return true;
  // Without acceptance a send's outcome is its write; it still owes exactly one delivery per
  // recipient device when every recipient stays connected: 1:1 messages only, one device per
  // user, no offline periods or storms, and no sends before every user connected (steps).
  if (!s) return false;
  const b = s.behaviours;
  return !caps.ownDeviceCopies && b.messages.steps !== undefined && b.groups.share === 0 && b.offline.share === 0 && b.reconnectStorms.length === 0 && s.devicesPerUser === 1;
}

/** Which users a campaign reaches: a seeded choice of ⌈audience × users⌉, the same in the runner and in every re-run. */
export function campaignAudience(s: Scenario, campaign: number): Int32Array {
  const n = s.users;
  const k = Math.max(1, Math.ceil(s.behaviours.campaigns[campaign]!.audience * n));
  const rand = mulberry32((s.seed ^ 0x7092b4d6 ^ Math.imul(campaign + 1, 0x85ebca6b)) >>> 0);
  // Partial Fisher–Yates: the first k of a shuffled 0..n-1.
  const order = Int32Array.from({ length: n }, (_, i) => i);
  for (let i = 0; i < k; i++) {
    const j = i + Math.floor(rand() * (n - i));
    const t = order[i]!;
    order[i] = order[j]!;
    order[j] = t;
  }
  return order.slice(0, k);
}

/** The group memberships of one generator's users, as parallel arrays (user slot, group index), for picking group senders. */
export function localMemberships(pop: Population, users: Int32Array): { slot: Int32Array; group: Int32Array; groupsOfSlot: number[][] } {
  const slotOf = new Map<number, number>();
  users.forEach((u, slot) => slotOf.set(u, slot));
  const slots: number[] = [];
  const groups: number[] = [];
  const groupsOfSlot: number[][] = Array.from({ length: users.length }, () => []);
  pop.groups.forEach((members, gi) => {
    for (const m of members) {
      const slot = slotOf.get(m);
      if (slot === undefined) continue;
      slots.push(slot);
      groups.push(gi);
      groupsOfSlot[slot]!.push(gi);
    }
  });
  return { slot: Int32Array.from(slots), group: Int32Array.from(groups), groupsOfSlot };
}
