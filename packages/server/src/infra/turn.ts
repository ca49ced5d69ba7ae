/*
 * Work that is cheaper done once per event-loop turn than once per event: a
 * connection's frames become one socket write, a cell's envelopes to one
 * destination one NATS publish. Whoever has such work marks itself here (once
 * per turn: it keeps its own flag) and is flushed after the turn's I/O
 * callbacks and the promise continuations they started (setImmediate), so
 * everything the turn produced is in the batch. One callback per turn, not one
 * per message.
 */

export interface Flushable {
  flush(): void;
}

export class TurnFlusher {
  private marked: Flushable[] = [];
  private scheduled = false;

  constructor(private readonly onError: (err: unknown) => void) {}

  /** Flushes `x` at the end of this turn. The caller marks each of its batches once. */
  mark(x: Flushable): void {
    this.marked.push(x);
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(this.run);
  }

  private readonly run = (): void => {
    this.scheduled = false;
    const list = this.marked;
    this.marked = [];
    for (const x of list) {
      try {
        x.flush();
      } catch (err) {
        this.onError(err);
      }
    }
  };
}
