import { mkdir, writeFile } from 'node:fs/promises';
import { cpus, platform, totalmem } from 'node:os';
import { dirname } from 'node:path';

export interface HostInfo {
  cpus: number;
  cpuModel: string;
  node: string;
  platform: string;
  totalMemGiB: number;
}

export interface Row {
  metric: string;
  value: number;
  unit: string;
  /** Name of the ceiling metric this row is compared against (e.g. "nats.pubsub"). */
  ceiling?: string;
  /** value / ceiling value. */
  ratio?: number;
  note?: string;
}

export interface BenchResult {
  name: string;
  startedAt: string;
  host: HostInfo;
  params: Record<string, unknown>;
  rows: Row[];
  extra?: unknown;
}

/** Options every benchmark receives; `flags` holds the benchmark-specific `--key [value]` pairs. */
export interface BenchOptions {
  durationMs: number;
  flags: Readonly<Record<string, string | true>>;
}

export interface Benchmark {
  name: string;
  description: string;
  /** Benchmark-specific flags (name → help text); anything else on the command line is rejected. */
  flags?: Readonly<Record<string, string>>;
  /** Default of --duration for this benchmark (main.ts falls back to its global default). */
  defaultDurationS?: number;
  run(opts: BenchOptions): Promise<BenchResult>;
}

/** Thrown for bad command-line input; main.ts maps it to exit code 2. */
export class UsageError extends Error {}

/** Reads a numeric benchmark flag, rejecting junk instead of silently using NaN. */
export function numFlag(opts: BenchOptions, name: string, dflt: number): number {
  const v = opts.flags[name];
  if (v === undefined) return dflt;
  const n = v === true ? NaN : Number(v);
  if (!Number.isFinite(n)) throw new UsageError(`--${name} expects a number, got ${String(v)}`);
  return n;
}

/** A positive integer flag (at most `max`), or a UsageError naming it. */
export function posInt(opts: BenchOptions, flag: string, dflt: number, max = 1_000_000): number {
  const v = numFlag(opts, flag, dflt);
  if (!Number.isInteger(v) || v < 1 || v > max) throw new UsageError(`--${flag} must be an integer in 1..${max}, got ${v}`);
  return v;
}

/** A positive number flag, or a UsageError naming it. */
export function posNum(opts: BenchOptions, flag: string, dflt: number): number {
  const v = numFlag(opts, flag, dflt);
  if (!(v > 0)) throw new UsageError(`--${flag} must be positive, got ${v}`);
  return v;
}

export function hostInfo(): HostInfo {
  const c = cpus();
  return {
    cpus: c.length,
    cpuModel: c[0]?.model.trim() ?? 'unknown',
    node: process.version,
    platform: `${platform()}-${process.arch}`,
    totalMemGiB: Math.round((totalmem() / 2 ** 30) * 10) / 10,
  };
}

/** Fills the boilerplate fields so benchmarks only supply params and rows. */
export function makeResult(name: string, startedAt: Date, params: Record<string, unknown>, rows: Row[], extra?: unknown): BenchResult {
  const r: BenchResult = { name, startedAt: startedAt.toISOString(), host: hostInfo(), params, rows };
  if (extra !== undefined) r.extra = extra;
  return r;
}

function fmtNum(v: number): string {
  if (!Number.isFinite(v)) return String(v);
  const abs = Math.abs(v);
  // Large rates read best as grouped integers; small values (latencies in ms) need decimals.
  const digits = abs >= 1000 ? 0 : abs >= 100 ? 1 : abs >= 1 ? 2 : 3;
  return v.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

export function formatTable(rows: readonly Row[]): string {
  const header = ['metric', 'value', 'unit', 'vs ceiling', 'ratio'];
  const body = rows.map((r) => [
    r.metric,
    fmtNum(r.value),
    r.unit,
    r.ceiling ?? '',
    r.ratio === undefined ? '' : r.ratio.toFixed(3),
    r.note ?? '',
  ]);
  const all = [header, ...body];
  const widths = header.map((_, i) => Math.max(...all.map((cells) => cells[i]?.length ?? 0)));
  const rightAligned = new Set([1, 4]);
  const line = (cells: string[]): string =>
    cells
      .map((c, i) => (i >= header.length ? c : rightAligned.has(i) ? c.padStart(widths[i] ?? 0) : c.padEnd(widths[i] ?? 0)))
      .join('  ')
      .trimEnd();
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...body.map(line)].join('\n');
}

/** Prints the table to stdout and, if requested, writes the full result as JSON. */
export async function report(result: BenchResult, jsonPath?: string): Promise<void> {
  process.stdout.write(`${result.name} @ ${result.startedAt} (${result.host.cpus}x ${result.host.cpuModel}, node ${result.host.node})\n`);
  process.stdout.write(formatTable(result.rows) + '\n');
  if (jsonPath !== undefined) {
    await mkdir(dirname(jsonPath), { recursive: true });
    await writeFile(jsonPath, JSON.stringify(result, null, 2) + '\n');
    process.stdout.write(`wrote ${jsonPath}\n`);
  }
}
