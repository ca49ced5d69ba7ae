import type { ChildProcess } from 'node:child_process';
import { rmSync } from 'node:fs';

// Every nats-server we spawn, and every temp dir not yet handed back, so that a crashing test
// process never leaves orphan servers or store dirs behind.
const children = new Set<ChildProcess>();
/** Children the process stops itself on a signal (a graceful drain needs them up meanwhile): reaped at exit only. */
const exitOnly = new Set<ChildProcess>();
const dirs = new Set<string>();
let installed = false;

function reap(): void {
  for (const child of [...children, ...exitOnly]) child.kill('SIGKILL');
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
}

/** On a signal: the children that do not wait for the process's own shutdown. */
function reapOnSignal(): void {
  for (const child of children) child.kill('SIGKILL');
}

function install(): void {
  if (installed) return;
  installed = true;
  process.on('exit', reap);
  // 'exit' does not run on a fatal signal (tap sends SIGALRM on timeout, then SIGKILL): reap first,
  // step aside, and re-raise only if nobody else handles the signal, so its default still happens.
  // Children that wait for the process's own graceful stop (trackChild's `untilExit`) stay up
  // while another handler runs; the 'exit' hook takes them.
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGALRM'] as const) {
    const onSignal = (): void => {
      // Nobody else handles it (the process dies now), or nothing waits for a graceful stop: everything goes.
      if (process.listenerCount(sig) === 1 || exitOnly.size === 0) reap();
      else reapOnSignal(); // the rest, and the temp dirs, at exit
      process.removeListener(sig, onSignal);
      if (process.listenerCount(sig) === 0) process.kill(process.pid, sig);
    };
    process.prependListener(sig, onSignal);
  }
}

/** `untilExit`: the process stops this child itself on SIGINT/SIGTERM (it drains first); it is killed at exit only. */
export function trackChild(child: ChildProcess, untilExit = false): void {
  install();
  const set = untilExit ? exitOnly : children;
  set.add(child);
  child.once('exit', () => set.delete(child));
}

export function trackDir(dir: string): void {
  install();
  dirs.add(dir);
}

export function untrackDir(dir: string): void {
  dirs.delete(dir);
}
