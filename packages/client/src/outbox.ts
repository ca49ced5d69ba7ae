/*
 * The outbox: every message given to send() until the server reports its fate, re-sent
 * with the same id after a reconnect and, after a retryable failure, after a backoff
 * (custody.ts). With a durable store a message is written before it may go on the wire
 * (write-ahead), and what an earlier process left is restored and sent again.
 */
import { ErrorCode, RemoteError, type Status } from '@gravitas/protocol';
import { failureCode, RetryQueue, sendFrame, statusVerdict, type RetryHandler } from './custody.js';
import { ClientError, ClientErrorCode, DeliveryError } from './errors.js';
import type { ClientStore } from './store.js';
import type { Emit } from './private.js';
import type { ClientOptions, OutboxRecord, SendResult, Settled, Target } from './types.js';

/**
 * A message in the outbox. `ready`: its record is durable (at once without a storage
 * path), so it may go on the wire. `due`: when its retry is due (0: none waiting).
 * Restored messages have no promise.
 */
interface Outgoing extends OutboxRecord { attempts: number; due: number; ready: boolean; resolve: (r: SendResult) => void; reject: (e: Error) => void }

/** What the outbox uses of the client. */
export interface OutboxPorts {
  readonly emit: Emit;
  /** 'error' outside any promise chain. */
  emitLater(err: Error): void;
  /** There is a session to write on. */
  readonly online: boolean;
  /** Writes on the session (throws NOT_CONNECTED without one). */
  write(m: object): void;
  /** Neither closed nor with its store closed. */
  readonly open: boolean;
  /** Records a write under way, for flush(). */
  saving(p: Promise<unknown>): void;
}

const noop = (): void => undefined;

function frameOf(o: Outgoing): object {
  return 'to' in o.target ? sendFrame(o.id, o.target.to, undefined, o.text) : sendFrame(o.id, undefined, o.target.g, o.text);
}

const retrying: RetryHandler<Outbox, Outgoing> = {
  holds: (box, o) => box.holds(o),
  resend: (box, o) => box.resend(o),
};

export class Outbox {
  private readonly out = new Map<string, Outgoing>();
  private readonly retries = new RetryQueue<Outbox, Outgoing>(retrying);

  constructor(
    private readonly store: ClientStore,
    private readonly ports: OutboxPorts,
    private readonly options: ClientOptions,
  ) {
    // Left unconfirmed by an earlier process: re-sent, same ids, once connected.
    for (const r of store.loadOutbox()) this.out.set(r.id, { ...r, attempts: 0, due: 0, ready: true, resolve: noop, reject: noop });
  }

  submit(target: Target, text: string, id: string): Promise<SendResult> {
    if (this.out.has(id)) return Promise.reject(new ClientError(ClientErrorCode.DUPLICATE_ID, `message ${id} is already in the outbox`));
    if (this.out.size >= (this.options.maxOutbox ?? 1024)) return Promise.reject(new ClientError(ClientErrorCode.OUTBOX_FULL, 'too many unconfirmed messages'));
    return new Promise((resolve, reject) => {
      const out: Outgoing = { id, target, text, createdAt: Date.now(), attempts: 0, due: 0, ready: false, resolve, reject };
      this.out.set(id, out);
      const saved = this.store.putOutbox({ id, target, text, createdAt: out.createdAt });
      if (!saved) {
        out.ready = true;
        // Not connected: it stays in the outbox and goes out after the reconnect.
        if (this.ports.online) this.ports.write(frameOf(out));
        return;
      }
      // Write-ahead: the record is on disk before the message may reach the server,
      // so whatever the server may have seen is found again after a crash. The
      // writes of one event turn share one transaction and one flush.
      this.ports.saving(
        saved.then(
          () => {
            if (this.out.get(id) !== out) return;
            out.ready = true;
            try {
              if (this.ports.online && this.ports.open) this.ports.write(frameOf(out));
            } catch (err) {
              this.ports.emitLater(err as Error); // it stays in the outbox and goes out after the reconnect
            }
          },
          (err: unknown) => {
            if (this.out.get(id) !== out) return;
            this.out.delete(id);
            try {
              this.settle(out, { id, error: new ClientError(ClientErrorCode.STORAGE_FAILED, `cannot store message ${id}: ${(err as Error).message}`, { cause: err }) });
            } catch (e) {
              this.ports.emitLater(e as Error); // a throwing 'settled' listener
            }
          },
        ),
      );
    });
  }

  /** The server's `status` for a message we sent. */
  status(m: Status): void {
    const out = this.out.get(m.id);
    if (!out) return;
    const v = statusVerdict(m.s, m.code);
    if (v === 'retry') {
      // The server could not take custody now: send it again after a backoff (reset by a reconnect).
      if (!RetryQueue.waiting(out)) this.retries.schedule(this, out, Math.random());
      return;
    }
    this.out.delete(m.id);
    if (v === 'failed') this.settle(out, { id: m.id, error: new DeliveryError(failureCode(m.code) as ErrorCode, m.id) });
    else this.settle(out, { id: m.id, status: v });
  }

  /** An `error` naming `ref`: true if it is a message of ours, now settled with it. */
  refused(ref: string, err: RemoteError): boolean {
    const out = this.out.get(ref);
    if (!out) return false;
    this.out.delete(out.id);
    this.settle(out, { id: out.id, error: err });
    return true;
  }

  holds(o: Outgoing): boolean {
    return this.out.get(o.id) === o;
  }

  resend(o: Outgoing): void {
    if (this.ports.online) this.ports.write(frameOf(o));
  }

  /** A new session: every message without an outcome goes again, same id. */
  sendAll(): void {
    for (const o of this.out.values()) if (o.ready) this.ports.write(frameOf(o));
  }

  /** The session was lost: no retry goes out until the next one. */
  pause(): void {
    this.retries.clear();
    for (const o of this.out.values()) o.due = 0;
  }

  /** An outbox message is finished: its record goes, its promise and the 'settled' event tell the outcome. */
  private settle(out: Outgoing, result: Settled): void {
    this.store.deleteOutbox(out.id);
    if ('error' in result) out.reject(result.error);
    else out.resolve(result);
    this.ports.emit('settled', result);
  }

  /** Closed for good: without a storage path every message fails with CLOSED; with one only the promises end. */
  fail(): void {
    if (this.store.durable) {
      // Not settled: the records stay, and this client after a connect() or the next
      // one on this storage path sends them again. Only the promises end here.
      for (const o of this.out.values()) {
        o.reject(new ClientError(ClientErrorCode.CLOSED, `client closed before message ${o.id} was confirmed; it stays in the outbox at ${this.options.storagePath}`));
        o.resolve = o.reject = noop;
      }
      return;
    }
    const all = [...this.out.values()];
    this.out.clear();
    for (const o of all) this.settle(o, { id: o.id, error: new ClientError(ClientErrorCode.CLOSED, 'client closed before the message was confirmed') });
  }

  /** The unconfirmed messages, oldest first. */
  pending(): OutboxRecord[] {
    return [...this.out.values()].map(({ id, target, text, createdAt }) => ({ id, target, text, createdAt }));
  }
}
