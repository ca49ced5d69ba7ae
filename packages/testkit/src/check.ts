import { setTimeout as sleep } from 'node:timers/promises';
import { CheckTimeoutError } from './errors.js';

export interface CheckOptions {
  /** Total time to keep polling, in ms (default 10000). */
  timeout?: number;
  /** Pause between attempts, in ms (default 50). */
  interval?: number;
}

/**
 * Polls `fn` until it returns a truthy value and returns that value. A throw counts as "not yet";
 * the last one is reported if the check times out. Use instead of sleeps in tests.
 */
export async function check<T>(
  name: string,
  fn: () => T | Promise<T>,
  { timeout = 10_000, interval = 50 }: CheckOptions = {},
): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeout;
  let lastError: unknown;
  for (;;) {
    let timer: NodeJS.Timeout | undefined;
    try {
      // Race each attempt against the deadline so a hung fn cannot outlive the timeout.
      const value = await Promise.race([
        (async () => fn())(),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error('attempt still pending')), Math.max(0, deadline - Date.now()));
        }),
      ]);
      if (value) return value as NonNullable<T>;
    } catch (err) {
      lastError = err;
    } finally {
      clearTimeout(timer);
    }
    const wait = Math.min(interval, deadline - Date.now());
    if (wait <= 0) break;
    await sleep(wait);
  }
  const detail = lastError === undefined ? '' : `: ${lastError instanceof Error ? lastError.message : String(lastError)}`;
  throw new CheckTimeoutError(`check "${name}" timed out after ${timeout}ms${detail}`, { cause: lastError });
}
