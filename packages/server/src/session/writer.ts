import { batchRuns, pack, packBatch, type SecureChannel, type ServerMessage } from '@gravitas/protocol';
import type { Transport } from '../core/transport.js';
import type { Flushable, TurnFlusher } from '../infra/turn.js';

/** A batched frame's plaintext stays under this: half the SDK's 64 KiB frame limit, room for the seal. */
const BATCH_MAX_BYTES = 32 * 1024;

/**
 * A session's frames out. Each message is packed when sent; at the end of the
 * event-loop turn (the cell's TurnFlusher) the turn's messages are sealed in
 * order and handed to the transport together: one write, one system call, per
 * connection per turn instead of one per frame. The limit on unsent bytes
 * counts only what the connection has not taken: a burst within one turn is
 * written early rather than mistaken for a reader that stopped. With the `batch`
 * capability the turn's messages share frames (≤ 256 messages, ≤ 32 KiB each): one
 * seal and one frame for many messages.
 */
export class FrameWriter implements Flushable {
  private parts: Buffer[] = [];
  private bytes = 0;
  private queued = false;
  /** Set once the handshake gave the session its keys. */
  channel: SecureChannel | undefined;
  /** The session negotiated `batch`: a frame may carry many messages. */
  batch = false;

  constructor(
    private readonly transport: Transport,
    private readonly turn: Pick<TurnFlusher, 'mark'>,
    /** Told after every write: frames written, and the connection's unsent bytes then. */
    private readonly wrote: (frames: number, buffered: number) => void,
  ) {}

  /** Bytes not yet taken by the kernel, this turn's unwritten ones included. */
  get backlog(): number {
    return this.transport.bufferedBytes + this.bytes;
  }

  /** Queues `m` for this turn's write; false, queuing nothing, when the connection already holds more than `max` unsent bytes. */
  write(m: ServerMessage, max: number): boolean {
    if (this.bytes > 0 && this.transport.bufferedBytes + this.bytes > max) this.flush();
    if (this.transport.bufferedBytes > max) return false;
    const p = pack(m);
    this.parts.push(p);
    this.bytes += p.length;
    if (!this.queued) {
      this.queued = true;
      this.turn.mark(this);
    }
    return true;
  }

  /** Seals what this turn queued, in order, and writes it at once. */
  flush(): void {
    this.queued = false;
    const parts = this.parts;
    const channel = this.channel;
    if (parts.length === 0 || !channel) return;
    this.parts = [];
    this.bytes = 0;
    const frames = this.batch ? sealBatches(channel, parts) : parts.map((p) => channel.seal(p));
    this.transport.sendFrames(frames);
    this.wrote(frames.length, this.transport.bufferedBytes);
  }

  /** The last word to a connection that is being cut: this turn's frames are dropped unsent, `m` goes alone, now. */
  last(m: ServerMessage): void {
    this.parts = [];
    this.bytes = 0;
    if (!this.channel) return;
    this.transport.sendFrame(this.channel.seal(pack(m)));
    this.wrote(1, this.transport.bufferedBytes);
  }
}

/** The turn's messages in as few sealed frames as the batch bounds allow, in order. */
function sealBatches(channel: SecureChannel, parts: readonly Uint8Array[]): Uint8Array[] {
  const frames: Uint8Array[] = [];
  batchRuns(parts, BATCH_MAX_BYTES, (start, end) => frames.push(channel.seal(packBatch(parts, start, end))));
  return frames;
}
