import type { JsMsg } from '@nats-io/jetstream';
import type { Log } from '../core/context.js';
import { NS_PER_MS } from '../infra/jetstream.js';

/*
 * One job of the campaign runner as JetStream delivered it (runner.ts), and the
 * small things every kind of job uses: how it is answered, when it comes back,
 * and a log that does not flood.
 */

/** In-progress acks while a job runs, well inside the ack wait (runner.ts ACK_WAIT_MS). */
const WORKING_MS = 10_000;
/** How often the jobs of a paused campaign that are due look at its state again. */
export const PAUSED_RETRY_MS = 1_000;
/** Retryable failures: the delay doubles with each delivery of the job, within these bounds. */
const RETRY_MIN_MS = 500;
const RETRY_MAX_MS = 30_000;
/** Warnings of one kind are logged at most this often (a failing batch must not flood the log). */
const WARN_EVERY_MS = 5_000;

/** One delivered job: in-progress acks while it runs, and exactly one final answer. */
export class JobRun {
  private answered = false;
  private readonly timer: NodeJS.Timeout;
  private ended!: () => void;
  readonly finished = new Promise<void>((resolve) => (this.ended = resolve));

  constructor(readonly m: JsMsg) {
    this.timer = setInterval(() => this.answered || m.working(), WORKING_MS);
    this.timer.unref();
  }

  get deliveries(): number {
    return this.m.info.deliveryCount;
  }
  /** Time since the job was enqueued. */
  get ageMs(): number {
    return Date.now() - this.m.info.timestampNanos / NS_PER_MS;
  }

  ack(): void {
    this.answer(() => this.m.ack());
  }
  /** Hands the job back, to be delivered again after `ms` (any cell). */
  nak(ms: number): void {
    this.answer(() => this.m.nak(Math.max(0, Math.round(ms))));
  }
  term(): void {
    this.answer(() => this.m.term());
  }
  /** Neither ack nor nak: another delivery owns the work (a late ack could confirm it unfinished). */
  leave(): void {
    this.answer(() => undefined);
  }

  private answer(f: () => void): void {
    if (this.answered) return;
    this.answered = true;
    clearInterval(this.timer);
    f();
  }

  end(): void {
    clearInterval(this.timer);
    this.ended();
  }
}

/** How a job is answered: acked, dropped, left to another delivery, or handed back for that many ms. */
export type Answer = 'ack' | 'term' | 'leave' | number;

/** Answers the job and returns the result label for the jobs metric. */
export function answer(r: JobRun, how: Answer, result: string): string {
  if (how === 'ack') r.ack();
  else if (how === 'term') r.term();
  else if (how === 'leave') r.leave();
  else r.nak(how);
  return result;
}

export function retryDelay(deliveries: number): number {
  return Math.min(RETRY_MAX_MS, RETRY_MIN_MS * 2 ** Math.min(16, Math.max(0, deliveries - 1)));
}

/** The cell's log, at most one line per kind of warning every WARN_EVERY_MS (the rest are counted into the next). */
export class Warnings {
  private readonly warned = new Map<string, { at: number; suppressed: number }>();

  constructor(private readonly log: Log) {}

  warn(kind: string, msg: string, err: unknown): void {
    const now = Date.now();
    const w = this.warned.get(kind);
    if (w && now - w.at < WARN_EVERY_MS) {
      w.suppressed++;
      return;
    }
    if (this.warned.size > 1_000) this.warned.clear();
    this.warned.set(kind, { at: now, suppressed: 0 });
    this.log(w?.suppressed ? `${msg} (and ${w.suppressed} more like it)` : msg, err);
  }
}
