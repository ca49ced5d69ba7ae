/** Runs at most `max` tasks at once; refuses work beyond a bounded queue. */
export class Limiter {
  private active = 0;
  private readonly queue: Array<() => void> = [];
  constructor(
    private readonly max: number,
    private readonly maxQueue: number,
    /** Named in the error when the queue is full. */
    private readonly what: string,
  ) {}

  async run<T>(fn: () => Promise<T>): Promise<T> {
    if (this.active >= this.max) {
      if (this.queue.length >= this.maxQueue) throw new Error(`${this.what} work queue is full`);
      await new Promise<void>((resolve) => this.queue.push(resolve));
    } else this.active++;
    try {
      return await fn();
    } finally {
      const next = this.queue.shift();
      if (next) next(); // the slot passes on
      else this.active--;
    }
  }
}
