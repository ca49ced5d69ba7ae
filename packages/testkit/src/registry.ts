import type { ChildProcess } from 'node:child_process';
import { rmSync } from 'node:fs';

// Every nats-server we spawn, and every temp dir not yet handed back, so that a crashing test
// process never leaves orphan servers or store dirs behind.
const children = new Set<ChildProcess>();
const dirs = new Set<string>();
let installed = false;

function reap(): void {
  for (const child of children) child.kill('SIGKILL');
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
}

function install(): void {
  if (installed) return;
  installed = true;
  process.on('exit', reap);
  // 'exit' does not run on a fatal signal (tap sends SIGALRM on timeout, then SIGKILL): reap first,
  // step aside, and re-raise only if nobody else handles the signal, so its default still happens.
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGALRM'] as const) {
    const onSignal = (): void => {
      reap();
      process.removeListener(sig, onSignal);
      if (process.listenerCount(sig) === 0) process.kill(process.pid, sig);
    };
    process.prependListener(sig, onSignal);
  }
}

export function trackChild(child: ChildProcess): void {
  install();
  children.add(child);
  child.once('exit', () => children.delete(child));
}

export function trackDir(dir: string): void {
  install();
  dirs.add(dir);
}

export function untrackDir(dir: string): void {
  dirs.delete(dir);
}
