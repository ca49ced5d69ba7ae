import { pack, type SecureChannel, type ServerMessage } from '@gravitas/protocol';
import type { Transport } from '../core/transport.js';
import type { Flushable, TurnFlusher } from '../infra/turn.js';

/**
 * A session's frames out. Each message is packed when sent; at the end of the
 * event-loop turn (the cell's TurnFlusher) the turn's messages are sealed in
 * order and handed to the transport together: one write, one system call, per
 * connection per turn instead of one per frame. The limit on unsent bytes
 * counts only what the connection has not taken: a burst within one turn is
 * written early rather than mistaken for a reader that stopped.
 */
export class FrameWriter implements Flushable {
  private parts: Buffer[] = [];
  private bytes = 0;
  private queued = false;
  /** Set once the handshake gave the session its keys. */
  channel: SecureChannel | undefined;

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
    const frames = parts.map((p) => channel.seal(p));
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
