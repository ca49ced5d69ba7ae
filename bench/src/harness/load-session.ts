import { hostname } from 'node:os';
import type { DeviceEvents, DeviceRef, Driver, DriverDevice } from './driver.js';
import { DriverError, encodeBody, decodeBody, nowMs } from './driver.js';
import type { GeneratorInterval, GeneratorTotals } from './control.js';
import { deviceRef, userName } from './identity.js';
import { encodeHistogram, LatencyRecorder, Pacer } from './latency.js';
import { HarnessError } from './errors.js';
import { deliveryId, deviceBase, ledgerChunks } from './ledger.js';
import { HostSampler, SelfMonitor } from './monitor.js';
import { tally } from './result.js';
import type { Population } from './population.js';
import { diurnalFactor, scenarioTotalMs, stepAt, type Scenario } from './scenario.js';
import {
  ActiveSet, exponential, expectedDirect, groupDevices, localMemberships, localUsers, offlineMeans, recipientOf, stream, STREAM, TimerQueue, tracksDeliveries,
} from './workload.js';

/*
 * One generator's part of one run: its users and their devices, played against the driver on the
 * scenario's schedule. Everything is driven from one timer (`tick`): the timed actions of a
 * min-heap (ramp-up connects, offline periods, storm reconnects, retries), the open-loop message
 * and presence schedules (Pacer), and the interval boundaries at which it reports. Counters are
 * plain numbers reset per interval; latencies go to HDR histograms. No promise or closure is made
 * per message: a generator must stay cheap at the highest rate the target sustains.
 *
 * Times: `clock()` is the runner's clock (local clock + the estimated offset); schedule times
 * are ms since t0 ("run time").
 */

const enum Act {
  RampConnect = 1,
  GoOffline = 2,
  GoOnline = 3,
  Reconnect = 4,
  Storm = 5,
  /** The closed-loop step begins: every active user sends its first `inFlight` messages. */
  ClosedLoop = 6,
}

const enum Dev {
  Down = 0,
  Connecting = 1,
  Up = 2,
}

/** Handshakes one generator keeps in flight: a bound on its connect queue's burst, not on what it holds. */
const CONNECTS_IN_FLIGHT = 64;
const PROVISION_CONCURRENCY = 64;
const PROVISION_ATTEMPTS = 3;
const GROUP_CONCURRENCY = 8;
const DISCONNECT_CONCURRENCY = 256;
const RETRY_BASE_MS = 250;
const RETRY_MAX_MS = 10_000;
/** Contacts added per user while provisioning (the server's own cap is 5,000). */
const MAX_CONTACTS = 1000;
/** Largest send backlog the pacer keeps after a stall; older sends are dropped and make the run generator-bound. */
const MAX_BACKLOG = 50_000;
/**
 * Longest a tick spends sending what came due before it yields (ms): a backlog after a stall is
 * worked off over several ticks, so heartbeats, reports and receives go on meanwhile (each send
 * still carries its intended time: the lateness is measured, not hidden).
 */
const SEND_SLICE_MS = 20;

export type SessionEmit = (m: Record<string, unknown> & { type: string }) => void;

export interface LoadSessionOptions {
  scenario: Scenario;
  population: Population;
  index: number;
  count: number;
  namespace: string;
  runTag: string;
  driver: Driver;
  /** Add to the local clock to get the runner's (clock.ts). */
  clockOffsetMs: number;
  emit: SessionEmit;
  log: (msg: string) => void;
}


const codeOf = (e: unknown): string => (e instanceof DriverError ? e.driverCode : ((e as { code?: unknown }).code as string | undefined) ?? 'ERROR');

async function each<T>(items: readonly T[], concurrency: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(concurrency, items.length) }, async () => {
      while (next < items.length) await fn(items[next++]!);
    }),
  );
}

export class LoadSession {
  private readonly s: Scenario;
  private readonly pop: Population;
  private readonly driver: Driver;
  private readonly offset: number;
  private readonly track: boolean;

  // ---- who ----
  private readonly users: Int32Array;
  /** Every user's wire name, by population index: made once, not per message. */
  private readonly names: string[];
  private readonly firstDev: Int32Array;
  private readonly nDev: Uint8Array;
  private readonly devSlot: Int32Array;
  private readonly refs: DeviceRef[] = [];
  private devices: DriverDevice[] = [];
  private groupIds: string[] = [];
  private readonly groupDev: Int32Array;
  private readonly memberships: ReturnType<typeof localMemberships>;

  // ---- state ----
  private readonly devState: Uint8Array;
  private readonly queued: Uint8Array;
  private readonly retries: Uint8Array;
  private readonly liveSince: Float64Array;
  private readonly wantOnline: Uint8Array;
  private readonly away: Uint8Array;
  private readonly active: ActiveSet;
  private readonly timers = new TimerQueue();
  private readonly popped = { kind: 0, arg: 0 };
  private readonly connectQueue: number[] = [];
  private connectHead = 0;
  private connectsInFlight = 0;
  private connected = 0;
  /** Per tracked send awaiting its outcome: deliveries it owes, its target (user v, or −(group + 1)) and the sending device (global number). */
  private readonly pending = new Map<number, { expected: number; to: number; from: number }>();
  private ref = 0;
  /** Closed loop: the sending slot of each message on its way, and when the step ends (run time). */
  private readonly closedSender = new Map<number, number>();
  private closedUntil = 0;
  /**
   * Closed loop: the senders whose message arrived and who send next, with the arrival time (the
   * next send's intended time), worked off by the tick under the same SEND_SLICE_MS as the open
   * loop's due sends. Never sent from the receive callback itself: there a saturated generator
   * would answer every arrival with a write within the same I/O phase and never get back to its
   * timers (heartbeats, reports), for as long as arrivals keep coming. At most one entry per
   * closed-loop message in flight (users × inFlight).
   */
  private closedSlots: number[] = [];
  private closedAt: number[] = [];
  private closedHead = 0;
  // ---- the delivery ledger (ledger.ts): accepted sends, and what arrived here, by id ----
  /** Global device numbers: user u's device k is devBase[u] + k. */
  private readonly devBase: Int32Array;
  private readonly acceptedRef: number[] = [];
  private readonly acceptedTo: number[] = [];
  private readonly acceptedFrom: number[] = [];
  private readonly arrived: number[] = [];

  // ---- schedule ----
  private t0 = 0;
  private readonly totalMs: number;
  private pacer: Pacer | undefined;
  private presencePacer: Pacer | undefined;
  private nextIntervalAt = Infinity;
  private k = 0;
  private timer: NodeJS.Timeout | undefined;
  private phase: 'idle' | 'run' | 'drain' | 'stopped' = 'idle';
  private readonly offMeans: ReturnType<typeof offlineMeans>;
  private readonly rand = { ramp: Math.random, offline: Math.random, storm: Math.random, send: Math.random, presence: Math.random, retry: Math.random };

  // ---- counters (per interval unless said) ----
  private c = { sent: 0, accepted: 0, failed: 0, received: 0, catchup: 0, campaign: 0, presence: 0, stray: 0, connects: 0, connectFailed: 0 };
  private errors: Record<string, number> = {};
  /** The pacer's dropped sends already reported (it counts them for the whole run). */
  private skippedReported = 0;
  /** Intended times that came due and wait to be sent (worked off SEND_SLICE_MS at a time). */
  private dueTimes: number[] = [];
  private dueHead = 0;
  /** Sends dropped from that queue (backlog over MAX_BACKLOG, or still waiting when the run ended), and the pacer's own. */
  private dueDropped = 0;
  private pacerSkipped = 0;
  private expectedTotal = 0;
  private receivedTotal = 0;
  private readonly latency = new LatencyRecorder();
  private readonly catchupLatency = new LatencyRecorder();
  private readonly campaignReach = new LatencyRecorder();
  private readonly sendLag = new LatencyRecorder();
  private readonly connectTime = new LatencyRecorder();
  private readonly self: SelfMonitor;
  private readonly host = new HostSampler();
  private readonly hostName = hostname();
  /** `<run>.`: a body tag of this run. */
  private readonly tagPrefix: string;
  /** `<run>.<generator>.`: this generator's messages, each followed by its ref. */
  private readonly sendTag: string;

  constructor(private readonly o: LoadSessionOptions) {
    this.s = o.scenario;
    this.pop = o.population;
    this.driver = o.driver;
    this.offset = o.clockOffsetMs;
    this.track = tracksDeliveries(o.driver.capabilities, this.s);
    this.totalMs = scenarioTotalMs(this.s);
    this.tagPrefix = `${o.runTag}.`;
    this.sendTag = `${this.tagPrefix}${o.index}.`;
    this.self = new SelfMonitor(this.s.generators.saturation);
    for (const k of Object.keys(this.rand) as Array<keyof typeof this.rand>) this.rand[k] = stream(this.s.seed, STREAM[k], o.index);

    this.users = localUsers(this.s.users, o.index, o.count);
    const n = this.users.length;
    this.names = Array.from({ length: this.pop.graph.users }, (_, u) => userName(o.namespace, u));
    this.firstDev = new Int32Array(n);
    this.nDev = new Uint8Array(n);
    let d = 0;
    for (let slot = 0; slot < n; slot++) {
      const u = this.users[slot]!;
      this.firstDev[slot] = d;
      this.nDev[slot] = this.pop.devices[u]!;
      for (let k = 0; k < this.nDev[slot]!; k++) this.refs.push(deviceRef(o.namespace, u, k));
      d += this.nDev[slot]!;
    }
    this.devSlot = new Int32Array(d);
    this.devBase = deviceBase(this.pop.devices);
    for (let slot = 0; slot < n; slot++) for (let k = 0; k < this.nDev[slot]!; k++) this.devSlot[this.firstDev[slot]! + k] = slot;
    if (d > this.s.generators.maxConnections) {
      // Validation checks the total; the round-robin deal can still give one generator a few more.
      throw new HarnessError('SCENARIO_INVALID', `generator ${o.index} would host ${d} devices, over generators.maxConnections (${this.s.generators.maxConnections}): raise it or generators.count`);
    }
    this.devState = new Uint8Array(d);
    this.queued = new Uint8Array(d);
    this.retries = new Uint8Array(d);
    this.liveSince = new Float64Array(d).fill(Infinity);
    this.wantOnline = new Uint8Array(n);
    this.away = new Uint8Array(n);
    this.active = new ActiveSet(n);
    this.groupDev = groupDevices(this.pop);
    this.memberships = localMemberships(this.pop, this.users);
    this.offMeans = offlineMeans(this.s.behaviours.offline.share, this.s.behaviours.offline.meanDurationMs);
  }

  get userCount(): number {
    return this.users.length;
  }

  get deviceCount(): number {
    return this.refs.length;
  }

  /** The runner's clock. */
  private clock(): number {
    return nowMs() + this.offset;
  }

  // ---------- before the run ----------

  /** Registers every device (and the contacts of users whose presence others follow); reports progress about once a second. */
  async provision(): Promise<{ ms: number; errors: Record<string, number> }> {
    const t = performance.now();
    const withContacts = this.s.behaviours.presence.changesPerUserPerMinute > 0;
    const jobs = Array.from({ length: this.refs.length }, (_, di) => di);
    const errors = await this.setupPhase('provision', jobs, (di) => {
      const slot = this.devSlot[di]!;
      const contacts = di === this.firstDev[slot] && withContacts ? this.contactNames(this.users[slot]!) : [];
      return this.driver.provision(this.refs[di]!, contacts);
    }, (di) => ({ what: `provision ${this.refs[di]!.user}/${this.refs[di]!.device} failed`, count: 1 }));
    return { ms: performance.now() - t, errors };
  }

  /**
   * One set-up phase: `step` for every job, PROVISION_CONCURRENCY at a time, each tried up
   * to PROVISION_ATTEMPTS times with backoff; a job that never succeeds counts its error
   * (`count` times) and is logged. Progress goes out about once a second.
   */
  private async setupPhase<J>(
    phase: 'provision' | 'join',
    jobs: readonly J[],
    step: (job: J) => Promise<void>,
    failure: (job: J) => { what: string; count: number },
  ): Promise<Record<string, number>> {
    const errors: Record<string, number> = {};
    let done = 0;
    let lastReport = 0;
    await each(jobs, PROVISION_CONCURRENCY, async (job) => {
      for (let attempt = 1; ; attempt++) {
        try {
          await step(job);
          break;
        } catch (e) {
          if (attempt >= PROVISION_ATTEMPTS) {
            const f = failure(job);
            tally(errors, codeOf(e), f.count);
            this.o.log(`${f.what}: ${(e as Error).message}`);
            break;
          }
          await new Promise((r) => setTimeout(r, RETRY_BASE_MS * 2 ** attempt));
        }
      }
      done++;
      if (performance.now() - lastReport > 1000) {
        lastReport = performance.now();
        this.o.emit({ type: 'progress', phase, done, total: jobs.length, errors });
      }
    });
    return errors;
  }

  private contactNames(u: number): string[] {
    const g = this.pop.graph;
    const seen = new Set<number>();
    for (let i = g.offsets[u]!; i < g.offsets[u + 1]! && seen.size < MAX_CONTACTS; i++) if (g.adj[i] !== u) seen.add(g.adj[i]!);
    return [...seen].map((v) => this.names[v]!);
  }

  /** Creates the groups (by index) whose creator this generator hosts. */
  async createGroups(groups: readonly number[]): Promise<{ ids: Record<string, string>; errors: Record<string, number> }> {
    const ids: Record<string, string> = {};
    const errors: Record<string, number> = {};
    const slotOf = new Map<number, number>();
    this.users.forEach((u, slot) => slotOf.set(u, slot));
    await each(groups, GROUP_CONCURRENCY, async (gi) => {
      const members = this.pop.groups[gi];
      const slot = members ? slotOf.get(members[0]!) : undefined;
      if (!members || slot === undefined) return void tally(errors, 'NOT_LOCAL');
      try {
        ids[gi] = await this.driver.createGroup(this.refs[this.firstDev[slot]!]!, `g${gi}`, Array.from(members, (m) => this.names[m]!));
      } catch (e) {
        tally(errors, codeOf(e));
        this.o.log(`group ${gi} not created: ${(e as Error).message}`);
      }
    });
    return { ids, errors };
  }

  /**
   * Where membership is by consent (the driver has joinGroups): each local user accepts its
   * invitations to the groups it is in but did not create, in one set-up session per user with
   * the requests pipelined. Reports progress about once a second. Before setGroups(): the
   * set-up sessions pass their tickets on to the devices' first connects.
   */
  async joinGroups(ids: readonly string[]): Promise<{ ms: number; joins: number; errors: Record<string, number> }> {
    const t = performance.now();
    this.groupIds = [...ids];
    const join = this.driver.joinGroups?.bind(this.driver);
    if (!join) return { ms: 0, joins: 0, errors: {} };
    const jobs: Array<{ slot: number; ids: string[] }> = [];
    let joins = 0;
    this.memberships.groupsOfSlot.forEach((gs, slot) => {
      const u = this.users[slot]!;
      const ids = gs.filter((gi) => this.pop.groups[gi]![0] !== u && (this.groupIds[gi] ?? '') !== '').map((gi) => this.groupIds[gi]!);
      if (ids.length === 0) return;
      jobs.push({ slot, ids });
      joins += ids.length;
    });
    const errors = await this.setupPhase('join', jobs, ({ slot, ids }) => join(this.refs[this.firstDev[slot]!]!, ids), ({ slot, ids }) => ({
      what: `${this.refs[this.firstDev[slot]!]!.user} could not join its groups`,
      count: ids.length,
    }));
    return { ms: performance.now() - t, joins, errors };
  }

  /** Every group's id; then the devices are made (XMPP devices join their groups' rooms at connect). */
  setGroups(ids: readonly string[]): void {
    this.groupIds = [...ids];
    const groupsOfUser = this.memberships.groupsOfSlot.map((gs) => gs.map((gi) => this.groupIds[gi] ?? '').filter((g) => g !== ''));
    this.devices = this.refs.map((ref, di) => this.driver.device(ref, this.events(di), groupsOfUser[this.devSlot[di]!]!));
  }

  // ---------- the run ----------

  start(t0: number): void {
    if (this.devices.length !== this.refs.length) this.setGroups(this.groupIds);
    this.t0 = t0;
    const s = this.s;
    for (let slot = 0; slot < this.users.length; slot++) this.timers.push(s.rampUpMs > 0 ? this.rand.ramp() * s.rampUpMs : 0, Act.RampConnect, slot);
    s.behaviours.reconnectStorms.forEach((st, i) => this.timers.push(st.atMs, Act.Storm, i));
    const m = s.behaviours.messages;
    const perUser = m.perUserPerMinute / 60;
    if (m.steps) {
      // This generator's share of each step's offered rate; nothing in the ramp-up or the closed-loop step.
      const share = this.users.length / s.users;
      this.pacer = new Pacer((at) => (stepAt(s, at - t0)?.rate ?? 0) * share, t0, MAX_BACKLOG, this.rand.send());
      if (m.steps.closedLoop) this.timers.push(s.rampUpMs + m.steps.rates.length * (m.steps.warmupMs + m.steps.holdMs), Act.ClosedLoop, 0);
    } else if (perUser > 0) this.pacer = new Pacer((at) => this.active.size * perUser * diurnalFactor(m.diurnal, at - t0), t0, MAX_BACKLOG, this.rand.send());
    const pres = s.behaviours.presence.changesPerUserPerMinute / 60;
    if (pres > 0) this.presencePacer = new Pacer(() => this.active.size * pres, t0, MAX_BACKLOG, this.rand.presence());
    this.nextIntervalAt = t0 + s.intervalMs;
    this.phase = 'run';
    this.self.sample(0); // starts the CPU window at t0's neighbourhood
    this.host.sample();
    this.schedule();
  }

  private schedule(): void {
    if (this.phase === 'stopped') return;
    const now = this.clock();
    const waiting = this.dueHead < this.dueTimes.length || this.closedHead < this.closedSlots.length ? now : Infinity;
    const next = Math.min(waiting, this.t0 + this.timers.next, this.pacer?.nextAt ?? Infinity, this.presencePacer?.nextAt ?? Infinity, this.nextIntervalAt);
    clearTimeout(this.timer);
    this.timer = setTimeout(this.tick, Math.max(0, Math.min(next - now, 1000)));
  }

  private readonly tick = (): void => {
    try {
      const now = this.clock();
      const t = now - this.t0;
      while (this.timers.next <= t) {
        const at = this.timers.pop(this.popped);
        this.act(this.popped.kind, this.popped.arg, at);
      }
      if (this.phase === 'run' && t >= this.totalMs) this.beginDrain();
      if (this.pacer) for (const intended of this.pacer.due(now)) this.dueTimes.push(intended);
      this.sendDue(now);
      if (this.presencePacer) for (let n = this.presencePacer.due(now).length; n > 0; n--) this.togglePresence();
      if (now >= this.nextIntervalAt) this.report();
    } catch (e) {
      this.o.log(`tick failed: ${(e as Error).stack ?? String(e)}`);
      tally(this.errors, 'GENERATOR_BUG');
    }
    this.schedule();
  };

  private act(kind: number, arg: number, at: number): void {
    switch (kind) {
      case Act.RampConnect:
        return this.online(arg, at);
      case Act.GoOnline:
        if (this.phase === 'run') this.online(arg, at);
        return;
      case Act.GoOffline:
        if (this.phase === 'run' && this.wantOnline[arg]) this.offline(arg, at);
        return;
      case Act.Reconnect:
        return this.requestConnect(arg);
      case Act.Storm:
        return this.storm(arg, at);
      case Act.ClosedLoop:
        return this.startClosedLoop();
    }
  }

  private online(slot: number, at: number): void {
    this.wantOnline[slot] = 1;
    this.active.add(slot);
    for (let di = this.firstDev[slot]!, end = di + this.nDev[slot]!; di < end; di++) this.requestConnect(di);
    if (this.offMeans && this.phase === 'run') this.timers.push(at + exponential(this.rand.offline, this.offMeans.onlineMs), Act.GoOffline, slot);
  }

  private offline(slot: number, at: number): void {
    this.wantOnline[slot] = 0;
    this.active.delete(slot);
    for (let di = this.firstDev[slot]!, end = di + this.nDev[slot]!; di < end; di++) if (this.devState[di] === Dev.Up) this.goodbye(di);
    this.timers.push(at + exponential(this.rand.offline, this.offMeans!.offlineMs), Act.GoOnline, slot);
  }

  private storm(i: number, at: number): void {
    const st = this.s.behaviours.reconnectStorms[i]!;
    for (let di = 0; di < this.devices.length; di++) {
      if (this.devState[di] !== Dev.Up || this.rand.storm() >= st.share) continue;
      this.devices[di]!.drop();
      this.down(di);
      this.timers.push(at + this.rand.storm() * st.overMs, Act.Reconnect, di);
    }
  }

  private goodbye(di: number): void {
    this.down(di);
    this.devices[di]!.disconnect().catch((e) => tally(this.errors, `disconnect:${codeOf(e)}`));
  }

  private down(di: number): void {
    if (this.devState[di] === Dev.Up) this.connected--;
    this.devState[di] = Dev.Down;
    this.liveSince[di] = Infinity;
  }

  private requestConnect(di: number): void {
    if (this.devState[di] !== Dev.Down || this.queued[di] || !this.wantOnline[this.devSlot[di]!] || this.phase === 'stopped') return;
    this.queued[di] = 1;
    this.connectQueue.push(di);
    this.pumpConnects();
  }

  private pumpConnects(): void {
    while (this.connectsInFlight < CONNECTS_IN_FLIGHT && this.connectHead < this.connectQueue.length) {
      const di = this.connectQueue[this.connectHead++]!;
      this.queued[di] = 0;
      if (this.devState[di] !== Dev.Down || !this.wantOnline[this.devSlot[di]!]) continue;
      this.devState[di] = Dev.Connecting;
      this.connectsInFlight++;
      const startedAt = this.clock();
      this.devices[di]!.connect().then(
        () => this.connectDone(di, startedAt, undefined),
        (e: unknown) => this.connectDone(di, startedAt, e),
      );
    }
    if (this.connectHead > 4096 && this.connectHead * 2 > this.connectQueue.length) {
      this.connectQueue.splice(0, this.connectHead);
      this.connectHead = 0;
    }
  }

  private connectDone(di: number, startedAt: number, err: unknown): void {
    this.connectsInFlight--;
    if (this.phase === 'stopped') return;
    const now = this.clock();
    if (err === undefined) {
      this.devState[di] = Dev.Up;
      this.connected++;
      this.liveSince[di] = now;
      this.retries[di] = 0;
      this.c.connects++;
      this.connectTime.add(now - startedAt);
      // Went offline (or the run ended) while connecting: leave again.
      if (!this.wantOnline[this.devSlot[di]!]) this.goodbye(di);
    } else {
      this.devState[di] = Dev.Down;
      this.c.connectFailed++;
      tally(this.errors, `connect:${codeOf(err)}`);
      this.retryLater(di, now);
    }
    this.pumpConnects();
  }

  /** Exponential backoff with full jitter, as a client app would (a thundering herd after an outage is the server's test, not ours). */
  private retryLater(di: number, now: number): void {
    const n = Math.min(this.retries[di]!, 15);
    this.retries[di] = n + 1;
    const wait = this.rand.retry() * Math.min(RETRY_MAX_MS, RETRY_BASE_MS * 2 ** n);
    this.timers.push(now - this.t0 + wait, Act.Reconnect, di);
  }

  private events(di: number): DeviceEvents {
    return {
      message: (m) => {
        const at = this.clock();
        const b = decodeBody(m.body);
        if (b === undefined || !b.tag.startsWith(this.tagPrefix)) {
          this.c.stray++;
          return;
        }
        if (m.campaign !== undefined) {
          this.c.campaign++;
          this.campaignReach.add(at - b.intendedMs);
          return;
        }
        this.receivedTotal++;
        if (this.track) this.noteArrival(b.tag, di);
        if (this.closedUntil > 0 && b.tag.startsWith(this.sendTag)) this.onClosedArrival(b.tag);
        if (b.intendedMs < this.liveSince[di]!) {
          this.c.catchup++;
          this.catchupLatency.add(at - b.intendedMs);
        } else {
          this.c.received++;
          this.latency.add(at - b.intendedMs);
        }
      },
      outcome: (ref, ok, code) => {
        const p = this.pending.get(ref);
        if (p !== undefined) this.pending.delete(ref);
        if (ok) {
          this.c.accepted++;
          if (p !== undefined) {
            this.expectedTotal += p.expected;
            this.acceptedRef.push(ref);
            this.acceptedTo.push(p.to);
            this.acceptedFrom.push(p.from);
          }
        } else {
          this.c.failed++;
          tally(this.errors, `send:${code ?? 'FAILED'}`);
        }
      },
      presence: () => void this.c.presence++,
      lost: (code) => {
        if (this.devState[di] === Dev.Down) return;
        tally(this.errors, `lost:${code}`);
        this.down(di);
        this.retryLater(di, this.clock());
      },
    };
  }

  /** Closed loop: each active user's first messages; every arrival sends the next (onClosedArrival). */
  private startClosedLoop(): void {
    const n = this.s.behaviours.messages.steps?.closedLoop?.inFlight ?? 0;
    this.closedUntil = this.s.rampUpMs + this.s.durationMs;
    // The open-loop steps are over: what they left unsent was never made (dropped behind schedule),
    // rather than sent into the closed loop's measurement.
    this.dropDue();
    const now = this.clock();
    for (let slot = 0; slot < this.users.length; slot++) {
      if (!this.active.has(slot)) continue;
      for (let i = 0; i < n; i++) this.queueClosed(slot, now);
    }
  }

  /** A closed-loop sender sends next (on the next tick, not from the caller). */
  private queueClosed(slot: number, at: number): void {
    this.closedSlots.push(slot);
    this.closedAt.push(at);
    // From empty: the tick is asleep until its next timed action; wake it now.
    if (this.closedSlots.length - this.closedHead === 1 && this.phase === 'run') this.schedule();
  }

  /** A closed-loop message of this generator arrived: its sender sends the next, while the step lasts. */
  private onClosedArrival(tag: string): void {
    const rest = tag.slice(this.sendTag.length);
    const ref = parseInt(rest, 36);
    const slot = this.closedSender.get(ref);
    if (slot === undefined) return;
    this.closedSender.delete(ref);
    const now = this.clock();
    if (now - this.t0 < this.closedUntil && this.phase === 'run') this.queueClosed(slot, now);
  }

  private sendOne(intended: number, now: number, closedSlot = -1): void {
    const rand = this.rand.send;
    let slot = closedSlot;
    let gi = -1;
    const ms = this.memberships;
    if (slot < 0 && ms.slot.length > 0 && this.s.behaviours.groups.share > 0 && rand() < this.s.behaviours.groups.share) {
      // A member of a group, among the active ones (a few tries: most users are active).
      for (let tries = 0; tries < 8; tries++) {
        const k = Math.floor(rand() * ms.slot.length);
        if (this.active.has(ms.slot[k]!) && (this.groupIds[ms.group[k]!] ?? '') !== '') {
          slot = ms.slot[k]!;
          gi = ms.group[k]!;
          break;
        }
      }
    }
    if (slot < 0) slot = this.active.sample(rand);
    if (slot < 0) return;
    const u = this.users[slot]!;
    const nd = this.nDev[slot]!;
    const di = this.firstDev[slot]! + (nd > 1 ? Math.floor(rand() * nd) : 0);
    const ref = ++this.ref;
    if (closedSlot >= 0) this.closedSender.set(ref, closedSlot);
    const body = encodeBody(intended, this.sendTag + ref.toString(36), this.s.behaviours.messages.bodyBytes);
    let expected: number;
    if (gi >= 0) {
      expected = this.groupDev[gi]! - 1;
      if (this.track) this.pending.set(ref, { expected, to: -(gi + 1), from: this.globalDevice(di) });
      this.devices[di]!.sendToGroup(ref, this.groupIds[gi]!, body);
    } else {
      const v = recipientOf(this.pop, u, rand);
      expected = expectedDirect(this.pop, u, v, this.driver.capabilities);
      if (this.track) this.pending.set(ref, { expected, to: v, from: this.globalDevice(di) });
      this.devices[di]!.send(ref, this.names[v]!, body);
    }
    this.c.sent++;
    this.sendLag.add(now - intended);
  }

  private togglePresence(): void {
    const slot = this.active.sample(this.rand.presence);
    if (slot < 0) return;
    for (let di = this.firstDev[slot]!, end = di + this.nDev[slot]!; di < end; di++) {
      if (this.devState[di] !== Dev.Up) continue;
      this.away[slot] = this.away[slot]! ^ 1;
      this.devices[di]!.setPresence(this.away[slot] ? 'away' : 'online');
      return;
    }
  }

  /** Sends what came due, oldest first, for at most SEND_SLICE_MS; beyond MAX_BACKLOG waiting, the oldest are dropped. */
  private sendDue(now: number): void {
    const backlog = this.dueTimes.length - this.dueHead;
    if (backlog > MAX_BACKLOG) {
      this.dueDropped += backlog - MAX_BACKLOG;
      this.dueHead += backlog - MAX_BACKLOG;
    }
    const end = performance.now() + SEND_SLICE_MS;
    while (this.dueHead < this.dueTimes.length) {
      this.sendOne(this.dueTimes[this.dueHead++]!, now);
      if ((this.dueHead & 63) === 0 && performance.now() > end) break;
    }
    if (this.dueHead === this.dueTimes.length) {
      this.dueTimes = [];
      this.dueHead = 0;
    } else if (this.dueHead > 4096) {
      this.dueTimes = this.dueTimes.slice(this.dueHead);
      this.dueHead = 0;
    }
    if (this.closedHead >= this.closedSlots.length) return;
    const open = now - this.t0 < this.closedUntil && this.phase === 'run';
    while (this.closedHead < this.closedSlots.length) {
      const i = this.closedHead++;
      if (open) this.sendOne(this.closedAt[i]!, now, this.closedSlots[i]!);
      if ((this.closedHead & 63) === 0 && performance.now() > end) break;
    }
    if (this.closedHead === this.closedSlots.length) {
      this.closedSlots = [];
      this.closedAt = [];
      this.closedHead = 0;
    } else if (this.closedHead > 4096) {
      this.closedSlots = this.closedSlots.slice(this.closedHead);
      this.closedAt = this.closedAt.slice(this.closedHead);
      this.closedHead = 0;
    }
  }

  /** The open loop's sends still waiting are dropped behind schedule. */
  private dropDue(): void {
    this.dueDropped += this.dueTimes.length - this.dueHead;
    this.dueTimes = [];
    this.dueHead = 0;
  }

  /** End of the run: no new sends; everyone comes back online so that every mailbox drains. */
  private beginDrain(): void {
    this.phase = 'drain';
    if (this.pacer) this.pacerSkipped = this.pacer.skipped;
    // Sends still waiting were never made: dropped behind schedule.
    this.dropDue();
    this.closedSlots = [];
    this.closedAt = [];
    this.closedHead = 0;
    this.pacer = undefined;
    this.presencePacer = undefined;
    for (let slot = 0; slot < this.users.length; slot++) if (!this.wantOnline[slot]) this.online(slot, this.totalMs);
  }

  private report(): void {
    // The pacer is gone after the run: its count stays where it was.
    if (this.pacer) this.pacerSkipped = this.pacer.skipped;
    const skipped = this.pacerSkipped + this.dueDropped;
    const interval: GeneratorInterval = {
      k: ++this.k,
      phase: this.phase === 'drain' ? 'drain' : 'run',
      ...this.c,
      latency: this.latency.rotate(),
      campaignReach: this.campaignReach.rotate(),
      sendLag: this.sendLag.rotate(),
      connectTime: this.connectTime.rotate(),
      connected: this.connected,
      expected: this.expectedTotal,
      receivedTotal: this.receivedTotal,
      pending: this.pending.size,
      lastRef: this.ref,
      errors: this.errors,
      self: this.self.sample(skipped - this.skippedReported),
      host: { name: this.hostName, sample: this.host.sample() },
    };
    this.skippedReported = skipped;
    this.catchupLatency.rotate();
    this.o.emit({ type: 'interval', ...interval });
    this.c = { sent: 0, accepted: 0, failed: 0, received: 0, catchup: 0, campaign: 0, presence: 0, stray: 0, connects: 0, connectFailed: 0 };
    this.errors = {};
    this.nextIntervalAt += this.s.intervalMs;
  }

  /** The global number of local device `di`. */
  private globalDevice(di: number): number {
    const slot = this.devSlot[di]!;
    return this.devBase[this.users[slot]!]! + (di - this.firstDev[slot]!);
  }

  /** A message of this run arrived on local device `di`: its delivery id (tag `<run>.<generator>.<ref base 36>`). */
  private noteArrival(tag: string, di: number): void {
    const rest = tag.slice(this.tagPrefix.length);
    const dot = rest.indexOf('.');
    const gen = Number(rest.slice(0, dot));
    const ref = parseInt(rest.slice(dot + 1), 36);
    if (dot <= 0 || !Number.isInteger(gen) || gen < 0 || gen >= this.o.count || !(ref > 0)) return;
    this.arrived.push(deliveryId(ref, gen, this.o.count, this.globalDevice(di), this.devBase[this.devBase.length - 1]!));
  }

  /** Every delivery id the accepted sends of this generator owe: the recipient's devices (and the sender's others), or the group's but the sending device. */
  private owedIds(): number[] {
    const out: number[] = [];
    const devices = this.devBase[this.devBase.length - 1]!;
    const base = this.devBase;
    const own = this.driver.capabilities.ownDeviceCopies;
    const userOf = (dev: number): number => {
      let lo = 0;
      let hi = base.length - 2;
      while (lo < hi) {
        const mid = (lo + hi + 1) >> 1;
        if (base[mid]! <= dev) lo = mid;
        else hi = mid - 1;
      }
      return lo;
    };
    const owe = (ref: number, user: number, except: number): void => {
      for (let d = base[user]!; d < base[user + 1]!; d++) if (d !== except) out.push(deliveryId(ref, this.o.index, this.o.count, d, devices));
    };
    for (let i = 0; i < this.acceptedRef.length; i++) {
      const ref = this.acceptedRef[i]!;
      const to = this.acceptedTo[i]!;
      const from = this.acceptedFrom[i]!;
      if (to >= 0) {
        owe(ref, to, -1);
        if (own) owe(ref, userOf(from), from);
      } else for (const m of this.pop.groups[-to - 1]!) owe(ref, m, from);
    }
    return out;
  }

  /** After the drain: every device leaves cleanly; the whole-run histograms. */
  async finish(): Promise<GeneratorTotals> {
    this.phase = 'stopped';
    clearTimeout(this.timer);
    const up: number[] = [];
    for (let di = 0; di < this.devices.length; di++) if (this.devState[di] === Dev.Up) up.push(di);
    await each(up, DISCONNECT_CONCURRENCY, async (di) => {
      this.down(di);
      await this.devices[di]!.disconnect().catch(() => undefined);
    });
    await this.driver.close();
    this.self.stop();
    const counters = this.driver.counters?.() ?? {};
    // The ledger goes up before `done`, in messages of bounded size; `done` says how many.
    const chunks = this.track ? ledgerChunks(this.owedIds(), this.arrived) : [];
    for (const c of chunks) this.o.emit({ type: 'ledger', ...c });
    return {
      ledgerChunks: chunks.length,
      latency: encodeHistogram(this.latency.total),
      catchupLatency: encodeHistogram(this.catchupLatency.total),
      campaignReach: encodeHistogram(this.campaignReach.total),
      sendLag: encodeHistogram(this.sendLag.total),
      connectTime: encodeHistogram(this.connectTime.total),
      driverCounters: counters,
      expected: this.expectedTotal,
      receivedTotal: this.receivedTotal,
      pending: this.pending.size,
    };
  }

  /** Stops the load at once (abort): devices are dropped, nothing more is reported. */
  async abort(): Promise<void> {
    this.phase = 'stopped';
    clearTimeout(this.timer);
    for (let di = 0; di < this.devices.length; di++) if (this.devState[di] !== Dev.Down) this.devices[di]!.drop();
    await this.driver.close().catch(() => undefined);
    this.self.stop();
  }
}
