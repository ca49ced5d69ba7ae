/*
 * The campaign feedback queue (docs/campaigns.md): events given to track() until the
 * server takes them, sent as `track` requests, oldest first, a few at a time; paused
 * with a backoff after a "not now", resumed by a reconnect. With a durable store an
 * event is written before it is sent, and what an earlier process left is sent again.
 */
import { ErrorCode, RemoteError } from '@gravitas/protocol';
import { ClientError, ClientErrorCode } from './errors.js';
import type { ClientStore } from './store.js';
import type { Emit } from './private.js';
import type { ClientOptions, FeedbackRecord } from './types.js';

/** A `track` answered with one of these is kept and sent again after a backoff; any other error code is final. */
const FEEDBACK_RETRYABLE = new Set<string>([ErrorCode.RETRY_LATER, ErrorCode.BUSY, ErrorCode.STORAGE_UNAVAILABLE, ErrorCode.RATE_LIMITED, ErrorCode.TOO_MANY_IN_FLIGHT, ErrorCode.SHUTTING_DOWN]);
/** `track` requests unanswered at once (the cell takes a session's requests one at a time anyway). */
const FEEDBACK_IN_FLIGHT = 32;
/** An unanswered `track` counts as lost after this long (e.g. its connection was left by a move) and is sent again. */
const FEEDBACK_TIMEOUT_MS = 20_000;
/** The queue pauses after a retryable answer: 100 ms doubling to 30 s, jittered ×0.5–1, reset by success or reconnect. */
const FEEDBACK_RETRY_MAX_MS = 30_000;

/** Queued feedback: `ready` once durable, `inFlight` while a `track` request for it is unanswered. */
interface QueuedFeedback extends FeedbackRecord { ready: boolean; inFlight: boolean }

/** What the queue uses of the client. */
export interface FeedbackPorts {
  readonly emit: Emit;
  emitLater(err: Error): void;
  /** There is a session, and the client is not closed. */
  readonly sending: boolean;
  /** A `track` request on the session. */
  track(r: FeedbackRecord): Promise<unknown>;
  saving(p: Promise<unknown>): void;
}

const noop = (): void => undefined;

export class FeedbackQueue {
  /** Oldest first; persisted like the outbox with a storage path. */
  private readonly queue = new Map<string, QueuedFeedback>();
  private inFlight = 0;
  private attempt = 0;
  /** Set while the queue waits out a backoff. */
  private pauseTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly store: ClientStore,
    private readonly ports: FeedbackPorts,
    private readonly options: ClientOptions,
  ) {
    for (const r of store.loadFeedback()) this.queue.set(r.eid, { ...r, ready: true, inFlight: false });
  }

  /** Queues `rec` (written first with a durable store); resolves with its event id once queued. */
  add(rec: FeedbackRecord): Promise<string> {
    const eventId = rec.eid;
    if (this.queue.has(eventId)) return Promise.reject(new ClientError(ClientErrorCode.DUPLICATE_ID, `event ${eventId} is already queued`));
    if (this.queue.size >= (this.options.maxFeedback ?? 10_000)) return Promise.reject(new ClientError(ClientErrorCode.OUTBOX_FULL, 'too many queued feedback events'));
    const q: QueuedFeedback = { ...rec, ready: false, inFlight: false };
    this.queue.set(eventId, q);
    const saved = this.store.putFeedback(rec);
    if (!saved) {
      q.ready = true;
      this.pump();
      return Promise.resolve(eventId);
    }
    // Write-ahead, as for messages: on disk before the server can have seen it.
    const done = saved.then(
      () => {
        q.ready = true;
        this.pump();
        return eventId;
      },
      (err: unknown) => {
        if (this.queue.get(eventId) === q) this.queue.delete(eventId);
        throw new ClientError(ClientErrorCode.STORAGE_FAILED, `cannot store event ${eventId}: ${(err as Error).message}`, { cause: err });
      },
    );
    this.ports.saving(done.then(noop, noop));
    return done;
  }

  /** Queued feedback, oldest first. */
  pending(): FeedbackRecord[] {
    return [...this.queue.values()].map(({ eid, c, ev, ts, rk }) => ({ eid, c, ev, ts, rk }));
  }

  /** Connected again: the queue goes out now, whatever backoff it was waiting out. */
  resume(): void {
    clearTimeout(this.pauseTimer);
    this.pauseTimer = undefined;
    this.attempt = 0;
    this.pump();
  }

  /** Sends queued events, oldest first, at most FEEDBACK_IN_FLIGHT unanswered. */
  private pump(): void {
    if (!this.ports.sending || this.pauseTimer) return;
    for (const q of this.queue.values()) {
      if (this.inFlight >= FEEDBACK_IN_FLIGHT) return;
      if (q.ready && !q.inFlight) this.send(q);
    }
  }

  private send(q: QueuedFeedback): void {
    q.inFlight = true;
    this.inFlight++;
    let done = false;
    const finish = (err: unknown, data?: unknown): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      q.inFlight = false;
      this.inFlight--;
      if (this.queue.get(q.eid) !== q) return; // settled meanwhile (failed at close)
      if (err === undefined) {
        this.attempt = 0;
        this.settle(q, { dup: (data as { dup?: unknown } | undefined)?.dup === true });
      } else if (err instanceof RemoteError && !FEEDBACK_RETRYABLE.has(err.code)) {
        this.settle(q, { error: err });
      } else {
        // Not now (store full, cell busy) or not answered (connection lost): the whole queue waits.
        this.pause();
        return;
      }
      this.pump();
    };
    const timer = setTimeout(() => finish(new ClientError(ClientErrorCode.NOT_CONNECTED, `no answer to track ${q.eid}`)), FEEDBACK_TIMEOUT_MS);
    timer.unref();
    this.ports.track(q).then(
      (data) => finish(undefined, data),
      (err: unknown) => finish(err ?? new Error('track failed')),
    );
  }

  private pause(): void {
    if (this.pauseTimer) return;
    const n = Math.min(10, this.attempt++);
    const delay = Math.min(FEEDBACK_RETRY_MAX_MS, 100 * 2 ** n) * (0.5 + Math.random() / 2);
    this.pauseTimer = setTimeout(() => {
      this.pauseTimer = undefined;
      this.pump();
    }, delay);
    this.pauseTimer.unref();
  }

  private settle(q: QueuedFeedback, outcome: { dup: boolean } | { error: Error }): void {
    this.queue.delete(q.eid);
    this.store.deleteFeedback(q.eid);
    const rec = { eid: q.eid, c: q.c, ev: q.ev, ts: q.ts, rk: q.rk };
    try {
      if ('error' in outcome) this.ports.emit('trackFailed', { ...rec, error: outcome.error });
      else this.ports.emit('tracked', { ...rec, dup: outcome.dup });
    } catch (err) {
      this.ports.emitLater(err as Error); // a throwing listener must not stop the queue
    }
  }

  /** The client is closing: no backoff keeps it waiting. */
  stop(): void {
    clearTimeout(this.pauseTimer);
    this.pauseTimer = undefined;
  }

  /** Closed for good: without a storage path the queued events are lost, and said to be. */
  fail(): void {
    if (this.store.durable) return; // they stay stored for the next client on this path
    for (const q of [...this.queue.values()]) this.settle(q, { error: new ClientError(ClientErrorCode.CLOSED, `client closed before event ${q.eid} was taken`) });
  }
}
