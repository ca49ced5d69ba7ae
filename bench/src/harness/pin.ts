import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { HarnessError } from './errors.js';

/*
 * `--pin`: the servers on core 0, the generators (and the runner) on core 1, with `taskset`
 * (util-linux), so that the comparison measures each server on a core of its own. A process is
 * pinned with all its threads (-a) and its descendants (a BEAM node's epmd and helpers, a
 * shell's exec'd child), so threads made later inherit the affinity.
 */

/** The children of every process, from /proc/<pid>/stat. */
function childrenOf(): Map<number, number[]> {
  const out = new Map<number, number[]>();
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      const list = out.get(ppid) ?? [];
      list.push(Number(name));
      out.set(ppid, list);
    } catch {
      // gone meanwhile
    }
  }
  return out;
}

/** Pins each pid, its threads and its descendants to `cpu`. */
export function pinProcesses(pids: readonly number[], cpu: number): void {
  const kids = childrenOf();
  const all = new Set<number>();
  const walk = (p: number): void => {
    if (p <= 0 || all.has(p)) return;
    all.add(p);
    for (const c of kids.get(p) ?? []) walk(c);
  };
  for (const p of pids) walk(p);
  for (const p of all) {
    try {
      execFileSync('taskset', ['-a', '-p', '-c', String(cpu), String(p)], { stdio: 'ignore' });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new HarnessError('TARGET_UNAVAILABLE', 'taskset is not installed (util-linux): --pin needs it', { cause: e });
      // The process exited meanwhile: nothing to pin.
    }
  }
}
