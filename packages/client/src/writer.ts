/*
 * What the SDK sends on one session: with the `batch` capability every message written in one
 * callback (acks above all: a read of many deliveries is answered by as many acks) goes out in
 * one sealed frame and one socket write; without it, one frame per message as before.
 */
import { batchFull, pack, packBatch, type SecureChannel } from '@gravitas/protocol';
import type { FrameConnection } from './transport.js';

/**
 * Plaintext of one batched frame, at most: well inside the default frame limit (64 KiB), and
 * inside any server limit of 8 KiB or more (docs/protocol.md 6.1). A message that does not fit
 * with the others opens the next frame; one alone may be larger.
 */
export const BATCH_TARGET_BYTES = 8 * 1024;

/*
 * The frame goes out in a microtask: after the callback that wrote (a read of many frames is one
 * callback, so all the acks it caused go together; so do sends made in one loop). A setImmediate
 * would also gather across the I/O callbacks of a turn, but costs a macrotask per frame, which at
 * a handful of messages per connection and turn cost more than it saved (bench pingpong).
 */
const later = queueMicrotask;

export class FrameWriter {
  private parts: Uint8Array[] = [];
  private bytes = 0;
  private scheduled = false;

  constructor(
    private readonly socket: FrameConnection,
    private readonly channel: SecureChannel,
    /** The session negotiated `batch`. */
    readonly batch: boolean,
  ) {}

  write(m: object): void {
    const p = pack(m);
    if (!this.batch) return this.socket.send(this.channel.seal(p));
    if (batchFull(this.parts.length, this.bytes, p.length, BATCH_TARGET_BYTES)) this.flush();
    this.parts.push(p);
    this.bytes += p.length;
    if (this.scheduled) return;
    this.scheduled = true;
    later(() => {
      this.scheduled = false;
      this.flush();
    });
  }

  /** Sends what this turn wrote, now (before a goodbye, or when the session is replaced). */
  flush(): void {
    if (this.parts.length === 0) return;
    const plain = packBatch(this.parts);
    this.parts = [];
    this.bytes = 0;
    this.socket.send(this.channel.seal(plain));
  }

  /** The session is gone: what waited is dropped (the outbox re-sends what needs it). */
  drop(): void {
    this.parts = [];
    this.bytes = 0;
  }
}
