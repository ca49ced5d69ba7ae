import type { Socket } from 'node:net';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { ErrorCode, RETRYABLE_SEND_CODES, TICKET_REFUSED_CODES, verifyHint, type ConnectHint, type KeyPair, type Move, type ResumptionState, type ServerMessage } from '@gravitas/protocol';
import {
  epochNow, GrowBytes, MergeableHistogram, messageId, messageText, mulberry32, parseMessageId, parseText, ST,
  type ConnectResult, type GenRequest, type GenUser, type ProgressResult, type RecvReport, type RunCmd, type RunSummary, type SendReport, type SetupCmd, type StepReport, type Who,
} from './custody-types.js';
import { nativeKeyPair } from './procs.js';
import { cachingSuite, handshake, newHandshake, parseTarget, sealedWriter, type HandshakeOutcome, type SealedWriter, type Target } from './rawclient.js';

/*
 * Load-generator process of the custody benchmark (started by custody-load.ts with an IPC
 * channel). It hosts many users, each one raw protocol session (rawclient.ts: the same
 * handshake and sealed frames as the SDK, without its per-connection machinery), and does what
 * the SDK does for custody: keeps every message until its status, re-sends a retryable failure
 * with the same id after a backoff, acknowledges every `msg` and `rcpt`, and drops re-deliveries
 * of the last 10,000 ids per device before the "application" sees them. It records, per step,
 * the status of every message it sent and every message its users received (custody-types.ts).
 *
 * With `follow` (the gravity benchmark) it also follows `move` hints as the SDK's follow() does:
 * verifies the hint with the welcome's key, opens a session on the hinted cell by resumption
 * (full handshake if the ticket is refused), switches the user to it once registered, re-sends
 * every message still without a status with the same id, then says `bye` on the old session.
 * What still arrives on the old connection is acknowledged there and accounted as usual.
 */

/** Same as the SDK (packages/client/src/client.ts). */
const SEEN_MAX = 10_000;
const RETRY_MAX_MS = 5000;
const DEVICE = 'd';
const MOVE_TIMEOUT_MS = 15_000;
/** A message sent or received this soon after its user started a move counts as "moved" in the latency split. */
const MOVE_RECENT_MS = 5000;

/**
 * Self-check of the accounting (never set in a real run): GRAVITAS_BENCH_GEN_FAULT=drop:N hides
 * every Nth received message from the "application" (acked, not recorded: the parent must report
 * it lost), dup:N records every Nth one twice (must be reported duplicated).
 */
const FAULT = /^(drop|dup):(\d+)$/.exec(process.env['GRAVITAS_BENCH_GEN_FAULT'] ?? '');
const FAULT_KIND = FAULT?.[1];
const FAULT_EVERY = Number(FAULT?.[2] ?? 0);
let faultCount = 0;

interface Out {
  id: string;
  step: number;
  seq: number;
  /** Intended send time, performance.now() ms. */
  intended: number;
  rec: boolean;
  frame: { t: 'send'; id: string; to: string; text: string };
  attempts: number;
  retry: NodeJS.Timeout | undefined;
}

/** One connection of a user; after a move the old one lingers until it closes. */
interface Conn {
  socket: Socket | undefined;
  write: SealedWriter | undefined;
  /** Left by a move: its close and its SESSION_REPLACED are expected. */
  left: boolean;
}

interface User {
  i: number;
  name: string;
  target: Target;
  contacts: number[];
  keys: KeyPair;
  socket: Socket | undefined;
  write: SealedWriter | undefined;
  /** The connection `socket`/`write` belong to. */
  conn: Conn | undefined;
  /** From the latest welcome: the cell, the hint key, the resumption ticket (single use). */
  cell: string | undefined;
  hk: Uint8Array | undefined;
  ticket: ResumptionState | undefined;
  /** A move is under way: the new session opening, and a `move` that came on it before the switch. */
  moving: boolean;
  pending: Conn | undefined;
  deferred: Move | undefined;
  /** performance.now() when the user last started a move (-Infinity: never). */
  movedAt: number;
  /** Closed by us (disconnect command): not counted as a disconnect. */
  leaving: boolean;
  out: Map<string, Out>;
  seen: Map<string, true>;
}

class SendStep {
  readonly status = new Map<number, GrowBytes>();
  private readonly seqs = new Map<number, number>();
  sent = 0;
  outstanding = 0;
  delivered = 0;
  stored = 0;
  acceptedInWindow = 0;
  failed: Record<string, number> = {};
  skipped = 0;
  retries = 0;
  retryCodes: Record<string, number> = {};
  windowStart = Infinity;
  windowEnd = -Infinity;
  readonly lat = new MergeableHistogram();
  readonly latDelivered = new MergeableHistogram();
  readonly latStored = new MergeableHistogram();
  readonly sched = new MergeableHistogram();
  /** Closed loop: called when a message of this step is settled. */
  onSettled: ((u: User) => void) | undefined;

  constructor(readonly step: number) {}

  nextSeq(sender: number): number {
    const s = this.seqs.get(sender) ?? 0;
    this.seqs.set(sender, s + 1);
    let st = this.status.get(sender);
    if (!st) this.status.set(sender, (st = new GrowBytes()));
    st.set(s, ST.none);
    return s;
  }
}

class RecvStep {
  readonly app = new Map<number, GrowBytes>();
  readonly wire = new Map<number, GrowBytes>();
  readonly lat = new MergeableHistogram();
  readonly latMoved = new MergeableHistogram();
  readonly latStill = new MergeableHistogram();
  unique = 0;
  firstAt = Infinity;
  lastAt = -Infinity;

  constructor(readonly step: number) {}
}

const count = (r: Record<string, number>, k: string): void => void (r[k] = (r[k] ?? 0) + 1);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

class Generator {
  private readonly users = new Map<number, User>();
  private readonly sendSteps = new Map<number, SendStep>();
  private readonly recvSteps = new Map<number, RecvStep>();
  private readonly receipts: Record<string, number> = {};
  private readonly errors: Record<string, number> = {};
  private readonly moves: Record<string, number> = {};
  private readonly suite = cachingSuite();
  private rand: () => number = Math.random;
  private unexpectedCloses = 0;
  /** Steps already collected for good: their late arrivals are not recorded. */
  private readonly dropped = new Set<number>();

  constructor(private readonly cfg: SetupCmd) {
    this.rand = mulberry32(cfg.seed);
    for (const u of cfg.users) this.addUser(u);
  }

  private addUser(g: GenUser): void {
    this.users.set(g.i, {
      i: g.i,
      name: this.name(g.i),
      target: parseTarget(g.addr),
      contacts: g.contacts,
      keys: nativeKeyPair(),
      socket: undefined,
      write: undefined,
      conn: undefined,
      cell: undefined,
      hk: undefined,
      ticket: undefined,
      moving: false,
      pending: undefined,
      deferred: undefined,
      movedAt: Number.NEGATIVE_INFINITY,
      leaving: false,
      out: new Map(),
      seen: new Map(),
    });
  }

  private name(i: number): string {
    return this.cfg.prefix + i.toString(36);
  }

  private select(who: Who): User[] {
    if (who === 'all') return [...this.users.values()];
    const out: User[] = [];
    for (const i of who) {
      const u = this.users.get(i);
      if (u) out.push(u);
    }
    return out;
  }

  private sendStep(step: number): SendStep {
    let s = this.sendSteps.get(step);
    if (!s) this.sendSteps.set(step, (s = new SendStep(step)));
    return s;
  }

  private recvStep(step: number): RecvStep {
    let s = this.recvSteps.get(step);
    if (!s) this.recvSteps.set(step, (s = new RecvStep(step)));
    return s;
  }

  // ---- sessions ----

  async connect(who: Who, concurrency: number): Promise<ConnectResult> {
    const list = this.select(who).filter((u) => !u.socket);
    const errors: Record<string, number> = {};
    const startedAt = epochNow();
    const t0 = performance.now();
    let connected = 0;
    let next = 0;
    await Promise.all(
      Array.from({ length: Math.min(concurrency, list.length) }, async () => {
        while (next < list.length) {
          const u = list[next++]!;
          const conn: Conn = { socket: undefined, write: undefined, left: false };
          const o = await this.open(u, u.target, conn, undefined, 60_000);
          if (o.ok && o.socket) {
            const write = this.use(u, conn, o.socket, o);
            u.leaving = false;
            connected++;
            // Messages still without a status go out again with the same id, as the SDK does.
            for (const out of u.out.values()) if (out.retry === undefined) write(out.frame);
          } else if (!o.ok) count(errors, o.code);
        }
      }),
    );
    return { connected, errors, ms: performance.now() - t0, startedAt };
  }

  /** One handshake for `u` (resuming with `ticket` if given) whose frames are handled as `conn`'s. */
  private open(u: User, target: Target, conn: Conn, ticket: ResumptionState | undefined, timeoutMs: number): Promise<HandshakeOutcome> {
    return handshake(target, newHandshake(this.cfg.serverPublicKey, { user: u.name, device: DEVICE, keys: u.keys }, this.suite, ticket), true, timeoutMs, {
      onMessage: (m, write) => this.onMessage(u, m, write, conn),
      onClose: () => this.onClose(u, conn),
    });
  }

  /** Makes `conn` (just opened, `o`) the user's connection. */
  private use(u: User, conn: Conn, socket: Socket, o: Extract<HandshakeOutcome, { ok: true }>): SealedWriter {
    const write = sealedWriter(socket, o.channel);
    conn.socket = socket;
    conn.write = write;
    u.conn = conn;
    u.socket = socket;
    u.write = write;
    u.cell = o.welcome.cell;
    u.hk = o.welcome.hk ?? u.hk;
    u.ticket = o.resumption;
    return write;
  }

  async disconnect(who: Who): Promise<void> {
    await Promise.all(
      this.select(who).map(async (u) => {
        const s = u.socket;
        if (!s) return;
        u.leaving = true;
        try {
          u.write?.({ t: 'bye' });
        } catch {
          // gone already
        }
        await new Promise<void>((r) => {
          const t = setTimeout(() => (s.destroy(), r()), 2000);
          s.once('close', () => (clearTimeout(t), r()));
          s.end();
        });
      }),
    );
  }

  private onClose(u: User, conn: Conn): void {
    if (conn.left || conn !== u.conn) return; // a connection left by a move: expected
    if (u.moving && !u.leaving) {
      // Replaced by the session the move is opening (its registration kicked this one) before
      // the switch: messages written meanwhile have no status and are re-sent at the switch.
      for (const out of u.out.values()) {
        clearTimeout(out.retry);
        out.retry = undefined;
      }
      return;
    }
    u.conn = undefined;
    u.socket = undefined;
    u.write = undefined;
    for (const out of u.out.values()) {
      clearTimeout(out.retry);
      out.retry = undefined;
    }
    if (!u.leaving) {
      count(this.errors, 'DISCONNECTED');
      this.unexpectedCloses++;
    }
  }

  // ---- receiving ----

  private onMessage(u: User, m: ServerMessage, write: SealedWriter, conn: Conn): void {
    switch (m.t) {
      case 'status': {
        const out = u.out.get(m.id);
        if (!out || out.retry !== undefined) return;
        if (m.s === 'failed' && m.code !== undefined && RETRYABLE_SEND_CODES.has(m.code)) return this.retryLater(u, out, m.code);
        return this.settle(u, out, m.s, m.code);
      }
      case 'msg': {
        this.received(u, m.id, m.from, m.text);
        write({ t: 'ack', id: m.id, from: m.from });
        return;
      }
      case 'rcpt':
        count(this.receipts, m.s);
        write({ t: 'ack', id: m.id, from: m.by });
        return;
      case 'error': {
        count(this.errors, m.code);
        const out = m.ref !== undefined ? u.out.get(m.ref) : undefined;
        if (out) this.settle(u, out, 'failed', m.code);
        return;
      }
      case 'bye':
        // The session a move left (or is leaving) was replaced by the new one: expected.
        if (m.code === ErrorCode.SESSION_REPLACED && (conn.left || conn !== u.conn || u.moving)) return;
        count(this.errors, `bye:${m.code ?? ''}`);
        return;
      case 'move':
        if (this.cfg.follow) void this.follow(u, m, conn);
        return;
      default:
        return; // pong, pres, typing, res
    }
  }

  private received(u: User, id: string, from: string, text: string): void {
    const p = parseMessageId(id);
    if (!p || this.dropped.has(p.step)) return;
    const now = epochNow();
    const r = this.recvStep(p.step);
    let wire = r.wire.get(p.sender);
    if (!wire) r.wire.set(p.sender, (wire = new GrowBytes()));
    wire.inc(p.seq);
    // The SDK's de-duplication: a bounded window of (sender, id) per device.
    const key = `${from}/${id}`;
    if (u.seen.has(key)) return;
    if (u.seen.size >= SEEN_MAX) u.seen.delete(u.seen.keys().next().value!);
    u.seen.set(key, true);
    let app = r.app.get(p.sender);
    if (!app) r.app.set(p.sender, (app = new GrowBytes()));
    if (FAULT_EVERY > 0 && ++faultCount % FAULT_EVERY === 0) {
      if (FAULT_KIND === 'drop') return;
      app.inc(p.seq);
    }
    if (app.inc(p.seq) === 1) {
      r.unique++;
      if (now < r.firstAt) r.firstAt = now;
      if (now > r.lastAt) r.lastAt = now;
      const t = parseText(text);
      if (t?.record) {
        const ms = now - t.intendedEpochMs;
        r.lat.recordMs(ms);
        if (this.cfg.follow) (t.moved || performance.now() - u.movedAt < MOVE_RECENT_MS ? r.latMoved : r.latStill).recordMs(ms);
      }
    }
  }

  // ---- moving (gravitation) ----

  /**
   * Follows a `move` as the SDK's follow() does: the hint is verified exactly like the SDK
   * (welcome's `hk`, this user and device, now), the new session is opened by resumption and is
   * registered when its pong arrives (the ping queues behind the registration), then the user
   * switches to it, re-sends what has no status (same ids: custody de-duplicates) and ends the
   * old session with `bye`. If the hinted cell cannot be reached, the user stays.
   */
  private async follow(u: User, m: Move, conn: Conn): Promise<void> {
    // The new session asked to move on before we switched to it (an associate hint when its
    // mailbox drain starts): the SDK has switched at its welcome already, so this waits for the switch.
    if (conn === u.pending) return void (u.deferred = m);
    if (conn !== u.conn || conn.left || u.leaving) return; // a hint on a connection we left
    if (u.moving) return count(this.moves, 'busy');
    let h: ConnectHint;
    try {
      if (!u.hk) throw Object.assign(new Error('no hint key'), { code: ErrorCode.HINT_INVALID });
      h = verifyHint(m.h, u.hk, { user: u.name, device: DEVICE }, Date.now());
    } catch (err) {
      return count(this.moves, `rejected:${(err as { code?: string }).code ?? 'ERROR'}`);
    }
    if (h.cell === u.cell) return count(this.moves, 'same-cell');
    u.moving = true;
    u.movedAt = performance.now();
    const next: Conn = { socket: undefined, write: undefined, left: false };
    u.pending = next;
    u.deferred = undefined;
    const target = parseTarget(h.addr);
    const ticket = u.ticket && u.ticket.expiresAt > Date.now() ? u.ticket : undefined;
    u.ticket = undefined; // single use from the moment it is sent
    let o: HandshakeOutcome;
    try {
      o = await this.open(u, target, next, ticket, MOVE_TIMEOUT_MS);
      if (!o.ok && ticket && TICKET_REFUSED_CODES.has(o.code)) {
        count(this.moves, 'resume-fallback');
        o = await this.open(u, target, next, undefined, MOVE_TIMEOUT_MS);
      }
    } finally {
      u.moving = false;
      u.pending = undefined;
    }
    const old = u.conn;
    if (!o.ok || !o.socket || u.leaving || old !== conn) {
      if (o.ok) {
        // Disconnected by the parent meanwhile: this new session is not wanted either.
        next.left = true;
        o.socket?.end();
      } else count(this.moves, `failed:${o.code}`);
      // The old session may have been replaced while we tried: without a connection now.
      if (old === conn && conn.socket && (conn.socket.destroyed || conn.socket.readyState !== 'open') && !u.leaving) this.onClose(u, conn);
      return;
    }
    conn.left = true;
    const write = this.use(u, next, o.socket, o);
    // Messages still without a status go out again on the new session, with the same ids.
    for (const out of u.out.values()) if (out.retry === undefined) write(out.frame);
    try {
      conn.write?.({ t: 'bye' });
    } catch {
      // gone already
    }
    const s = conn.socket;
    if (s) {
      s.end();
      setTimeout(() => s.destroy(), 1000).unref();
    }
    count(this.moves, `followed:${m.why}`);
    const again = u.deferred;
    u.deferred = undefined;
    if (again) void this.follow(u, again, next);
  }

  // ---- sending ----

  private send(u: User, st: SendStep, intended: number, rec: boolean): void {
    if (u.out.size >= this.cfg.maxOutstanding || !u.write) {
      st.skipped++;
      return;
    }
    const seq = st.nextSeq(u.i);
    const id = messageId(st.step, u.i, seq);
    const to = u.contacts[Math.floor(this.rand() * u.contacts.length)]!;
    const moved = this.cfg.follow === true && performance.now() - u.movedAt < MOVE_RECENT_MS;
    const frame = { t: 'send' as const, id, to: this.name(to), text: messageText(performance.timeOrigin + intended, rec, this.cfg.textBytes, moved) };
    u.out.set(id, { id, step: st.step, seq, intended, rec, frame, attempts: 0, retry: undefined });
    st.sent++;
    st.outstanding++;
    u.write(frame);
  }

  /** The server could not take custody now: the same id again after a backoff, as the SDK does. */
  private retryLater(u: User, out: Out, code: string): void {
    const st = this.sendSteps.get(out.step);
    if (st) {
      st.retries++;
      count(st.retryCodes, code);
    }
    const n = Math.min(10, out.attempts++);
    const delay = Math.min(RETRY_MAX_MS, 50 * 2 ** n) * (0.5 + this.rand() / 2);
    out.retry = setTimeout(() => {
      out.retry = undefined;
      if (u.out.get(out.id) === out) u.write?.(out.frame);
    }, delay);
  }

  private settle(u: User, out: Out, s: 'delivered' | 'stored' | 'failed', code: string | undefined): void {
    u.out.delete(out.id);
    clearTimeout(out.retry);
    const st = this.sendSteps.get(out.step);
    if (!st) return;
    st.outstanding--;
    const now = performance.now();
    const status = st.status.get(u.i);
    if (s === 'failed') {
      status?.set(out.seq, ST.failed);
      count(st.failed, code ?? 'UNKNOWN');
    } else {
      status?.set(out.seq, s === 'delivered' ? ST.delivered : ST.stored);
      if (s === 'delivered') st.delivered++;
      else st.stored++;
      if (now >= st.windowStart && now <= st.windowEnd) st.acceptedInWindow++;
      if (out.rec) {
        const ms = now - out.intended;
        st.lat.recordMs(ms);
        (s === 'delivered' ? st.latDelivered : st.latStored).recordMs(ms);
      }
    }
    st.onSettled?.(u);
  }

  async run(c: RunCmd): Promise<RunSummary> {
    const st = this.sendStep(c.step);
    const closes0 = this.unexpectedCloses;
    const loop = monitorEventLoopDelay({ resolution: 5 });
    loop.enable();
    const senders = this.select(c.senders).filter((u) => u.contacts.length > 0);
    const t0 = performance.now() + 5;
    st.windowStart = t0 + c.warmupMs;
    st.windowEnd = st.windowStart + c.durationMs;
    const end = st.windowEnd;
    if (senders.length > 0) {
      if (c.mode === 'closed') await this.closedLoop(st, senders, c.window, t0, end);
      else await this.openLoop(st, senders, c.rate, t0, end);
    }
    // The last statuses (retries included).
    const settleEnd = performance.now() + c.settleMs;
    while (st.outstanding > 0 && performance.now() < settleEnd) await sleep(20);
    st.onSettled = undefined;
    loop.disable();
    return {
      step: c.step,
      sent: st.sent,
      accepted: st.delivered + st.stored,
      acceptedInWindow: st.acceptedInWindow,
      windowMs: c.durationMs,
      outstanding: st.outstanding,
      disconnects: this.unexpectedCloses - closes0,
      loopDelay: { p99: loop.percentile(99) / 1e6, max: loop.max / 1e6 },
    };
  }

  private sendReport(st: SendStep): SendReport {
    return {
      step: st.step,
      status: [...st.status.entries()].map(([k, v]) => [k, v.bytes()]),
      sent: st.sent,
      delivered: st.delivered,
      stored: st.stored,
      failed: st.failed,
      unconfirmed: st.outstanding,
      skipped: st.skipped,
      retries: st.retries,
      retryCodes: st.retryCodes,
      statusLatency: st.lat.encode(),
      statusLatencyDelivered: st.latDelivered.encode(),
      statusLatencyStored: st.latStored.encode(),
      schedLag: st.sched.encode(),
    };
  }

  /**
   * Open loop: the generator's messages are spaced evenly at `rate` and dealt to its senders in
   * turn, whatever happened to earlier ones. Latency counts from the intended send time, so a
   * stall (of the system or of this process) shows in the percentiles (no coordinated omission).
   */
  private openLoop(st: SendStep, senders: User[], rate: number, t0: number, end: number): Promise<void> {
    const gap = 1000 / rate;
    let k = 0;
    return new Promise((resolve) => {
      const tick = (): void => {
        const now = performance.now();
        for (let t = t0 + k * gap; t <= now && t < end; t = t0 + k * gap) {
          const rec = t >= st.windowStart;
          if (rec) st.sched.recordMs(now - t);
          this.send(senders[k % senders.length]!, st, t, rec);
          k++;
        }
        const next = t0 + k * gap;
        if (next >= end) return resolve();
        setTimeout(tick, Math.max(0, next - performance.now()));
      };
      setTimeout(tick, Math.max(0, t0 - performance.now()));
    });
  }

  /** Closed loop: every sender keeps `window` messages without a status until the end. */
  private async closedLoop(st: SendStep, senders: User[], window: number, t0: number, end: number): Promise<void> {
    await sleep(Math.max(0, t0 - performance.now()));
    st.onSettled = (u) => {
      const now = performance.now();
      if (now < end) this.send(u, st, now, now >= st.windowStart);
    };
    for (const u of senders) for (let w = 0; w < window; w++) this.send(u, st, performance.now(), false);
    await sleep(Math.max(0, end - performance.now()));
  }

  // ---- reports ----

  progress(steps: number[]): ProgressResult {
    let outstanding = 0;
    for (const u of this.users.values()) outstanding += u.out.size;
    let lastAt = 0;
    const appUnique = steps.map((s) => {
      const r = this.recvSteps.get(s);
      if (r && r.lastAt > lastAt) lastAt = r.lastAt;
      return r?.unique ?? 0;
    });
    return { appUnique, outstanding, receipts: { ...this.receipts }, errors: { ...this.errors }, moves: { ...this.moves }, lastAt };
  }

  /** Accounting of `steps` so far; with `drop` their state is freed (late arrivals are then ignored). */
  collect(steps: number[], drop: boolean): StepReport[] {
    return steps.map((s) => {
      const r = this.recvSteps.get(s);
      const st = this.sendSteps.get(s);
      if (drop) {
        this.recvSteps.delete(s);
        this.sendSteps.delete(s);
        this.dropped.add(s);
      }
      const recv: RecvReport = r
        ? {
            step: s,
            app: [...r.app.entries()].map(([k, v]) => [k, v.bytes()]),
            wire: [...r.wire.entries()].map(([k, v]) => [k, v.bytes()]),
            recvLatency: r.lat.encode(),
            ...(this.cfg.follow && { recvLatencyMoved: r.latMoved.encode(), recvLatencyStill: r.latStill.encode() }),
            firstAt: r.firstAt === Infinity ? 0 : r.firstAt,
            lastAt: r.lastAt === -Infinity ? 0 : r.lastAt,
          }
        : { step: s, app: [], wire: [], recvLatency: '', firstAt: 0, lastAt: 0 };
      return { send: st && this.sendReport(st), recv };
    });
  }
}

// ---- IPC ----

let gen: Generator | undefined;

async function handle(req: GenRequest): Promise<unknown> {
  if (req.k === 'setup') {
    gen = new Generator(req);
    return undefined;
  }
  if (!gen) throw new Error('setup first');
  switch (req.k) {
    case 'connect':
      return gen.connect(req.users, req.concurrency);
    case 'disconnect':
      return gen.disconnect(req.users);
    case 'run':
      return gen.run(req);
    case 'progress':
      return gen.progress(req.steps);
    case 'collect':
      return gen.collect(req.steps, req.drop);
  }
}

process.on('message', (req: GenRequest) => {
  handle(req).then(
    (result) => process.send!({ rid: req.rid, ok: true, result }),
    (err: unknown) => process.send!({ rid: req.rid, ok: false, error: err instanceof Error ? (err.stack ?? err.message) : String(err) }),
  );
});
// The parent is gone (or closed the channel): nothing left to do.
process.on('disconnect', () => process.exit(0));
process.stdout.write('ready\n');
