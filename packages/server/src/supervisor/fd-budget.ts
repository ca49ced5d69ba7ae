import { readFileSync } from 'node:fs';
import { isExplicit, type NodeConfig } from '../config/index.js';
import { ServerError, ServerErrorCode } from '../infra/errors.js';
import { REFUSAL_SLACK } from '../transport/source-limits.js';


/*
 * The connection caps are promises only if the kernel can keep them: every
 * connection is a file descriptor, and the process (all cells and the admin
 * server share it) may open at most its soft RLIMIT_NOFILE. At start the node
 * adds up what its caps allow and compares (docs/operations.md, "File
 * descriptors"):
 *
 *   cells × (limits.maxConnectionsPerCell + web.maxConnections + a refusal slack per listener)
 *   + admin.maxConnections + a reserve (NATS, LMDB, worker threads, push, stdio)
 *
 * Caps given explicitly that do not fit: the node refuses to start (FD_LIMIT),
 * naming the numbers and the settings. Caps left at their defaults are lowered
 * to fit, with one log line. Node has no getrlimit: the soft limit is read from
 * /proc/self/limits; where that cannot be read, the check is skipped (logged).
 */

/** Descriptors the process needs besides client connections: stdio, its own NATS connection, LMDB, logs. */
export const RESERVE_BASE = 128;
/** Per cell: its NATS connection, event loop, LMDB handles (measured ~8 here), plus room; push connections come on top. */
export const RESERVE_PER_CELL = 32;
/** Lowered caps below this mean the limit is too low to run a useful node: refuse instead. */
export const MIN_CAP = 16;

/** The soft limit on open files, 'unlimited', or undefined when it cannot be read. */
export function softFileLimit(limitsFile = '/proc/self/limits'): number | 'unlimited' | undefined {
  let text: string;
  try {
    text = readFileSync(limitsFile, 'utf8');
  } catch {
    return undefined;
  }
  const m = /^Max open files\s+(\S+)\s+/m.exec(text);
  if (!m) return undefined;
  if (m[1] === 'unlimited') return 'unlimited';
  const n = Number(m[1]);
  return Number.isSafeInteger(n) && n > 0 ? n : undefined;
}

/** Descriptors the configuration may use at most. */
export function fdNeed(cfg: NodeConfig): { need: number; reserve: number; fixed: number } {
  const reserve = RESERVE_BASE + cfg.cells * (RESERVE_PER_CELL + cfg.push.concurrency);
  const listeners = cfg.web.enabled ? 2 : 1;
  const fixed = reserve + cfg.admin.maxConnections + cfg.cells * listeners * REFUSAL_SLACK;
  const perCell = cfg.limits.maxConnectionsPerCell + (cfg.web.enabled ? cfg.web.maxConnections : 0);
  return { need: fixed + cfg.cells * perCell, reserve, fixed };
}

/**
 * Checks the caps against the soft fd limit; lowers default caps to fit (mutating
 * `cfg`), or throws ServerError FD_LIMIT when explicit caps do not fit.
 */
export function fitFdBudget(cfg: NodeConfig, log: (msg: string) => void, readLimit: () => number | 'unlimited' | undefined = softFileLimit): void {
  const soft = readLimit();
  if (soft === undefined) {
    log('fd budget: cannot read the soft RLIMIT_NOFILE (/proc/self/limits): connection caps not checked against it');
    return;
  }
  if (soft === 'unlimited') return;
  const { need, reserve, fixed } = fdNeed(cfg);
  if (need <= soft) return;
  const L = cfg.limits;
  const W = cfg.web;
  const web = W.enabled;
  const mFixed = isExplicit(cfg, 'limits.maxConnectionsPerCell');
  const wFixed = !web || isExplicit(cfg, 'web.maxConnections');
  const room = Math.floor((soft - fixed) / cfg.cells); // per cell, for TCP + web caps together
  const formula =
    `${cfg.cells} cell(s) × (${L.maxConnectionsPerCell} limits.maxConnectionsPerCell${web ? ` + ${W.maxConnections} web.maxConnections` : ''} + ${(web ? 2 : 1) * REFUSAL_SLACK} refusal slack)` +
    ` + ${cfg.admin.maxConnections} admin.maxConnections + ${reserve} reserve (NATS, LMDB, threads, ${cfg.push.concurrency} push connections per cell)`;
  const refuse = (why: string): never => {
    const settings = ['limits.maxConnectionsPerCell', ...(web ? ['web.maxConnections'] : []), 'admin.maxConnections', 'cells'].join(', ');
    throw new ServerError(
      ServerErrorCode.FD_LIMIT,
      `${ServerErrorCode.FD_LIMIT}: the connection caps need up to ${need} file descriptors — ${formula} — but the soft RLIMIT_NOFILE of this process is ${soft}. ${why} Lower ${settings}, or raise the limit (ulimit -n, systemd LimitNOFILE, the container runtime's nofile).`,
    );
  };
  if (mFixed && wFixed) refuse('The caps were set explicitly, so they are not lowered.');
  let m = L.maxConnectionsPerCell;
  let w = web ? W.maxConnections : 0;
  if (!web) m = room;
  else if (mFixed) w = room - m;
  else if (wFixed) m = room - w;
  else {
    // Both at their defaults: keep the default shape, web = 2 × TCP (a chunked-HTTP session may use two sockets).
    m = Math.floor(room / 3);
    w = room - m;
  }
  if (m < MIN_CAP || (web && w < MIN_CAP)) refuse(`Even lowered, the caps left at their defaults would be below ${MIN_CAP} per cell.`);
  const changed: string[] = [];
  if (m !== L.maxConnectionsPerCell) changed.push(`limits.maxConnectionsPerCell ${L.maxConnectionsPerCell} → ${m}`);
  if (web && w !== W.maxConnections) changed.push(`web.maxConnections ${W.maxConnections} → ${w}`);
  L.maxConnectionsPerCell = m;
  if (web) W.maxConnections = w;
  log(`fd budget: the default connection caps need ${need} file descriptors but the soft RLIMIT_NOFILE is ${soft}; lowered ${changed.join(', ')} (set them, or raise the limit, to choose)`);
}
