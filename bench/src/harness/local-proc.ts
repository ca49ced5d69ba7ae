import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { rmSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import type { Socket } from 'node:net';
import { createInterface } from 'node:readline';
import { trackChild } from '@gravitas/testkit';

/*
 * One server process the harness starts for a peer (ejabberd's BEAM node and its epmd, redis,
 * a Socket.IO server): spawned, tracked by testkit's trackChild (killed if the run or test dies
 * without stopping it, on SIGINT too), the last lines of its output kept for error messages, and
 * stopped with SIGTERM, then SIGKILL after a grace period. Temp dirs the peers write go through
 * `trackTempDir`, so a run that dies without stop() leaves none behind.
 */

export type Exit = { code: number | null; signal: NodeJS.Signals | null; error?: Error };

const OUTPUT_LINES = 40;

export class LocalProcess {
  readonly proc: ChildProcess;
  exit: Exit | undefined;
  readonly exited: Promise<Exit>;
  private readonly output: string[] = [];

  constructor(
    readonly name: string,
    cmd: string,
    args: readonly string[],
    opts: SpawnOptions = {},
  ) {
    const proc = spawn(cmd, args, { ...opts, stdio: ['ignore', 'pipe', 'pipe'] });
    this.proc = proc;
    trackChild(proc);
    this.exited = new Promise((resolve) => {
      // 'close' comes after stdout/stderr are drained: the output tail is complete.
      proc.once('close', (code, signal) => resolve((this.exit ??= { code, signal })));
      proc.once('error', (error) => resolve((this.exit ??= { code: null, signal: null, error })));
    });
    for (const stream of [proc.stdout!, proc.stderr!]) {
      createInterface({ input: stream }).on('line', (line) => {
        if (line.trim() === '') return;
        this.output.push(line);
        if (this.output.length > OUTPUT_LINES) this.output.shift();
      });
      (stream as Socket).unref();
    }
    // A run or test that forgets stop() still ends; trackChild kills the process at exit.
    proc.unref();
  }

  get pid(): number {
    return this.proc.pid ?? -1;
  }

  get running(): boolean {
    return this.proc.pid !== undefined && this.exit === undefined;
  }

  tail(lines = 20): string {
    return this.output.slice(-lines).join('\n');
  }

  /** SIGTERM, SIGKILL after `graceMs`; resolves once it has exited. Safe to call twice. */
  async stop(graceMs = 5000): Promise<void> {
    if (!this.running) return;
    this.proc.ref();
    this.proc.kill('SIGTERM');
    const timer = setTimeout(() => this.proc.kill('SIGKILL'), graceMs);
    await this.exited;
    clearTimeout(timer);
  }
}

const liveDirs = new Set<string>();
let exitHook = false;

/** A temp dir removed at process exit unless `removeTempDir` removed it first. */
export function trackTempDir(dir: string): void {
  liveDirs.add(dir);
  if (exitHook) return;
  exitHook = true;
  process.on('exit', () => {
    for (const d of liveDirs) rmSync(d, { recursive: true, force: true });
  });
}

export async function removeTempDir(dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true });
  liveDirs.delete(dir);
}
