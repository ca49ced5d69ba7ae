import type { Socket } from 'node:net';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { ackFor, RetryQueue, seenKey, statusVerdict } from '@gravitas/client/internal';
import { ErrorCode, TICKET_REFUSED_CODES, verifyHint, type ConnectHint, type Move, type ResumptionState, type ServerMessage } from '@gravitas/protocol';
import {
  closedLoop, count, newUser, openLoop, RESEND, recvReport, RecvStep, sendReport, SendStep, sleep, type Conn, type Out, type User,
} from './custody-gen-state.js';
import {
  epochNow, GrowBytes, messageId, messageText, mulberry32, parseMessageId,
  type ConnectResult, type GenRequest, type GenUser, type ProgressResult, type RunCmd, type RunSummary, type SetupCmd, type StepReport, type Who,
} from './custody-types.js';
import { nativeKeyPair } from './procs.js';
import { cachingSuite, handshake, newHandshake, parseTarget, type HandshakeOutcome, type SealedWriter, type Target } from './rawclient.js';

/*
 * Load-generator process of the custody benchmark (started by custody-load.ts with an IPC
 * channel). It hosts many users, each one raw protocol session (rawclient.ts: the same
 * handshake and sealed frames as the SDK, without its per-connection machinery), and follows the
 * SDK's custody rules, from the same code (@gravitas/client/internal, custody.ts): keeps every
 * message until its status, re-sends a retryable failure with the same id after a backoff (one
 * RetryQueue, one timer, for every user), acknowledges every `msg` and `rcpt` (ackFor), and drops
 * re-deliveries of the last SEEN_MAX ids per device (SeenWindow) before the "application" sees
 * them. It records, per step, the status of every message it sent and every message its users
 * received (custody-gen-state.ts, custody-types.ts).
 *
 * With `follow` (the gravity benchmark) it also follows `move` hints as the SDK's follow() does:
 * verifies the hint with the welcome's key, opens a session on the hinted cell by resumption
 * (full handshake if the ticket is refused), switches the user to it once registered, re-sends
 * every message still without a status with the same id, then says `bye` on the old session.
 * What still arrives on the old connection is acknowledged there and accounted as usual.
 */

const DEVICE = 'd';
const MOVE_TIMEOUT_MS = 15_000;
/** A message sent or received this soon after its user started a move counts as "moved" in the latency split. */
const MOVE_RECENT_MS = 5000;

class Generator {
  private readonly users = new Map<number, User>();
  private readonly sendSteps = new Map<number, SendStep>();
  private readonly recvSteps = new Map<number, RecvStep>();
  private readonly receipts: Record<string, number> = {};
  private readonly errors: Record<string, number> = {};
  private readonly moves: Record<string, number> = {};
  private readonly suite = cachingSuite();
  /** Every send waiting out a retry backoff, of every user. */
  private readonly retries = new RetryQueue<User, Out>(RESEND);
  private rand: () => number = Math.random;
  private unexpectedCloses = 0;
  /** Steps already collected for good: their late arrivals are not recorded. */
  private readonly dropped = new Set<number>();

  constructor(private readonly cfg: SetupCmd) {
    this.rand = mulberry32(cfg.seed);
    for (const u of cfg.users) this.addUser(u);
  }

  private addUser(g: GenUser): void {
    this.users.set(g.i, newUser(g, this.name(g.i), parseTarget(g.addr), nativeKeyPair()));
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
            for (const out of u.out.values()) if (out.due === 0) write(out.frame);
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
    const write = o.write; // the session's one writer: batches what a callback writes
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
      for (const out of u.out.values()) out.due = 0;
      return;
    }
    u.conn = undefined;
    u.socket = undefined;
    u.write = undefined;
    for (const out of u.out.values()) out.due = 0;
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
        if (!out) return;
        const v = statusVerdict(m.s, m.code);
        if (v !== 'retry') return this.settle(u, out, v, m.code);
        if (!RetryQueue.waiting(out)) this.retryLater(u, out, m.code!);
        return;
      }
      case 'msg':
        this.received(u, m.id, m.from, m.text);
        write(ackFor(m)!);
        return;
      case 'rcpt':
        count(this.receipts, m.s);
        write(ackFor(m)!);
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
    if (!u.seen.markSeen(seenKey(from, id))) return;
    r.received(p.sender, p.seq, text, now, this.cfg.follow === true && performance.now() - u.movedAt < MOVE_RECENT_MS, this.cfg.follow === true);
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
    for (const out of u.out.values()) if (out.due === 0) write(out.frame);
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
    u.out.set(id, { id, step: st.step, seq, intended, rec, frame, attempts: 0, due: 0 });
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
    this.retries.schedule(u, out, this.rand());
  }

  private settle(u: User, out: Out, s: 'delivered' | 'stored' | 'failed', code: string | undefined): void {
    u.out.delete(out.id);
    out.due = 0;
    const st = this.sendSteps.get(out.step);
    if (!st) return;
    st.settled(u.i, out, s, code);
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
      const send = (u: User, s: SendStep, intended: number, rec: boolean): void => this.send(u, s, intended, rec);
      if (c.mode === 'closed') await closedLoop(st, senders, c.window, t0, end, send);
      else await openLoop(st, senders, c.rate, t0, end, send);
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
      const recv = recvReport(s, r, this.cfg.follow === true);
      return { send: st && sendReport(st), recv };
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
