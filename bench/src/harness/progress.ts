/*
 * Live progress of a run on stderr. On a terminal one line is redrawn in place (carriage return,
 * erase to end of line) at every update; anywhere else (CI logs, files, pipes) control characters
 * would be noise, so a plain line is printed at most every `plainEveryMs`, plus the final one.
 */

/** The part of a stream this needs; tests pass a fake. */
export interface ProgressStream {
  isTTY?: boolean;
  columns?: number;
  write(s: string): unknown;
}

export interface ProgressStats {
  elapsedMs: number;
  totalMs: number;
  connected: number;
  msgsPerSec: number;
  /** ms; null before any message arrived. */
  p99: number | null;
  /** A generator reported itself saturated in the last interval. */
  saturated?: boolean;
}

const BAR = 20;

function clock(ms: number): string {
  const s = Math.floor(ms / 1000);
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}`;
}

function num(v: number): string {
  return v >= 10_000 ? `${(v / 1000).toFixed(1)}k` : v.toFixed(0);
}

export function formatProgress(p: ProgressStats): string {
  const share = p.totalMs > 0 ? Math.min(1, Math.max(0, p.elapsedMs / p.totalMs)) : 0;
  const p99 = p.p99 === null ? '–' : p.p99 >= 100 ? `${p.p99.toFixed(0)} ms` : `${p.p99.toFixed(1)} ms`;
  return `${clock(p.elapsedMs)}/${clock(p.totalMs)} ${String(Math.round(share * 100)).padStart(3)}%  connected ${num(p.connected)}  ${num(p.msgsPerSec)} msgs/s  p99 ${p99}${p.saturated ? '  GENERATOR SATURATED' : ''}`;
}

export class Progress {
  private lastPlainAt = -Infinity;
  private drawn = false;

  constructor(
    private readonly out: ProgressStream,
    private readonly plainEveryMs = 10_000,
  ) {}

  get tty(): boolean {
    return this.out.isTTY === true;
  }

  update(p: ProgressStats): void {
    const line = formatProgress(p);
    if (this.tty) {
      const share = p.totalMs > 0 ? Math.min(1, p.elapsedMs / p.totalMs) : 0;
      const fill = Math.round(share * BAR);
      const full = `[${'#'.repeat(fill)}${'-'.repeat(BAR - fill)}] ${line}`;
      // Never wrap: a wrapped line cannot be redrawn with \r.
      const cols = this.out.columns ?? 0;
      this.out.write(`\r${cols > 1 ? full.slice(0, cols - 1) : full}\x1b[K`);
      this.drawn = true;
    } else if (p.elapsedMs - this.lastPlainAt >= this.plainEveryMs) {
      this.out.write(`${line}\n`);
      this.lastPlainAt = p.elapsedMs;
    }
  }

  /** The final state, always printed, ending the redrawn line on a terminal. */
  done(p: ProgressStats): void {
    if (this.tty) {
      this.update(p);
      this.out.write('\n');
      this.drawn = false;
    } else if (this.lastPlainAt !== p.elapsedMs) {
      this.out.write(`${formatProgress(p)}\n`);
      this.lastPlainAt = p.elapsedMs;
    }
  }

  /** Before printing something else on a terminal: ends the redrawn line so the message starts clean. */
  interrupt(): void {
    if (this.tty && this.drawn) {
      this.out.write('\n');
      this.drawn = false;
    }
  }
}
