import type { ProgressStream } from '../../bench/src/harness/progress.js';

/** A progress stream that keeps what a run printed, for the harness tests to read. */
export class Capture implements ProgressStream {
  text = '';
  isTTY = false;
  write(s: string): boolean {
    this.text += s;
    return true;
  }
}
