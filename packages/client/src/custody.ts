/*
 * The device side of custody (docs/custody.md), in one place: what a device does with the
 * frames custody sends it and with the sends custody has not answered yet. The SDK
 * (outbox.ts, inbox.ts) and the load generators (bench: custody-gen.ts, the Gravitas driver)
 * all follow these rules; each keeps its own records (a promise per message in the SDK, a
 * step and sequence number in a generator) and asks here what to do.
 *
 *   - a delivered `msg` or `rcpt` is acknowledged on the connection it came by (ackFor);
 *   - a re-delivery is shown once: its (sender, id) key is remembered in a bounded window
 *     (SeenWindow, or a durable store with the same contract);
 *   - a send stays outstanding until its `status`: `delivered` and `stored` settle it,
 *     `failed` with a retryable code sends it again with the same id after a backoff
 *     (RetryQueue), any other failure (or an `error` naming it) settles it as failed;
 *   - after a reconnect every send without an outcome goes again, same id.
 *
 * Nothing here allocates per message except the frames that go on the wire, and there is
 * no timer per message: one RetryQueue (one timer) holds every backoff of its owner.
 */
import { ErrorCode, RETRYABLE_SEND_CODES, type DeliveryState, type ServerMessage } from '@gravitas/protocol';

/** A retried send waits 50 ms doubling to RETRY_MAX_MS (from the 11th attempt on), jittered ×0.5–1. */
export const RETRY_BASE_MS = 50;
export const RETRY_MAX_MS = 5000;
/** Keys of received items a device remembers in memory to show each once (the SDK's memory store). */
export const SEEN_MAX = 10_000;

/** What to do with a send, given its `status`. */
export type SendVerdict = 'delivered' | 'stored' | 'retry' | 'failed';

/** `delivered`/`stored` settle the send; `failed` with a retryable code means send it again later; any other failure settles it. */
export function statusVerdict(s: DeliveryState, code: string | undefined): SendVerdict {
  if (s !== 'failed') return s;
  return code !== undefined && RETRYABLE_SEND_CODES.has(code) ? 'retry' : 'failed';
}

/** The code a failed send is settled with (a `failed` status without one is the server's fault). */
export function failureCode(code: string | undefined): string {
  return code ?? ErrorCode.INTERNAL;
}

/** The backoff before attempt `attempts` + 1 of a send; `random` in [0, 1). */
export function retryDelayMs(attempts: number, random: number): number {
  return Math.min(RETRY_MAX_MS, RETRY_BASE_MS * 2 ** Math.min(10, attempts)) * (0.5 + random / 2);
}

export interface AckFrame { t: 'ack'; id: string; from: string }

/** The acknowledgement custody expects for a delivered `msg` or `rcpt` (a receipt's `from` is its `by`); undefined for anything else. */
export function ackFor(m: ServerMessage): AckFrame | undefined {
  if (m.t === 'msg') return { t: 'ack', id: m.id, from: m.from };
  if (m.t === 'rcpt') return { t: 'ack', id: m.id, from: m.by };
  return undefined;
}

/** The key a received item is shown once by: its sender (a receipt's `by`) and its id. */
export function seenKey(from: string, id: string): string {
  return `${from}/${id}`;
}

export type SendFrame = { t: 'send'; id: string; text: string; to: string } | { t: 'send'; id: string; text: string; g: string };

/** The `send` frame of a message to user `to` or group `g` (exactly one of them). */
export function sendFrame(id: string, to: string | undefined, g: string | undefined, text: string): SendFrame {
  return to !== undefined ? { t: 'send', id, text, to } : { t: 'send', id, text, g: g! };
}

/**
 * The keys of the last `max` received items, oldest dropped first: true from markSeen the
 * first time a key is seen. One insertion-ordered Set, no other allocation.
 */
export class SeenWindow {
  private readonly seen = new Set<string>();

  constructor(private readonly max: number = SEEN_MAX) {}

  markSeen(key: string): boolean {
    if (this.seen.has(key)) return false;
    if (this.seen.size >= this.max) this.seen.delete(this.seen.values().next().value!);
    this.seen.add(key);
    return true;
  }

  get size(): number {
    return this.seen.size;
  }
}

/** A send without an outcome, as the retry queue sees it. `due`: performance.now() of its retry, 0 when none is waiting. */
export interface Retrying {
  attempts: number;
  due: number;
}

/** What the queue asks of the owner of a send (a client, a device, a generated user) when its retry is due. */
export interface RetryHandler<D, O extends Retrying> {
  /** Still waiting for its outcome (not settled meanwhile). */
  holds(owner: D, o: O): boolean;
  /** Sends it again, same id (or leaves it for the next connection when there is none). */
  resend(owner: D, o: O): void;
}

/**
 * Every send waiting out a retry backoff, with one timer for all of them (owners and sends
 * side by side in two arrays). A send is scheduled once per retryable answer: while it
 * waits (`due` ≠ 0) a second retryable answer is ignored. Setting `due` to 0 (it was settled,
 * or re-sent by a reconnect) makes the queue skip it.
 */
export class RetryQueue<D, O extends Retrying> {
  private owners: D[] = [];
  private outs: O[] = [];
  private timer: NodeJS.Timeout | undefined;
  private at = Infinity;

  constructor(private readonly handler: RetryHandler<D, O>) {}

  /** Waits for a retry already (a second retryable answer changes nothing). */
  static waiting(o: Retrying): boolean {
    return o.due !== 0;
  }

  /** Schedules `o`'s re-send after the backoff of its attempts (counted here); `random` in [0, 1) jitters it. */
  schedule(owner: D, o: O, random: number): void {
    o.due = performance.now() + retryDelayMs(o.attempts++, random);
    this.owners.push(owner);
    this.outs.push(o);
    if (o.due < this.at) this.arm(o.due);
  }

  /** Forgets every waiting send (the caller resets their `due` as it re-sends or drops them). */
  clear(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.at = Infinity;
    this.owners = [];
    this.outs = [];
  }

  private arm(at: number): void {
    clearTimeout(this.timer);
    this.at = at;
    this.timer = setTimeout(() => this.run(), Math.max(0, at - performance.now()));
    this.timer.unref();
  }

  private run(): void {
    this.timer = undefined;
    this.at = Infinity;
    const now = performance.now();
    const owners = this.owners;
    const outs = this.outs;
    this.owners = [];
    this.outs = [];
    let next = Infinity;
    for (let i = 0; i < outs.length; i++) {
      const o = outs[i]!;
      const owner = owners[i]!;
      // Settled, re-sent by a reconnect meanwhile, or listed twice: nothing to do.
      if (o.due === 0 || !this.handler.holds(owner, o)) continue;
      if (o.due <= now + 1) {
        o.due = 0;
        this.handler.resend(owner, o);
      } else {
        this.owners.push(owner);
        this.outs.push(o);
        if (o.due < next) next = o.due;
      }
    }
    if (next < this.at) this.arm(next);
  }
}
