/* Parsed command-line flags (bin.ts) and the small checks every command uses. */

export class UsageError extends Error {
  override name = 'UsageError';
}

export type Flags = Record<string, string | boolean | undefined>;
export const log = (m: string): void => void process.stderr.write(`${m}\n`);

export function need(flags: Flags, name: string): string {
  const v = flags[name];
  if (typeof v !== 'string' || v === '') throw new UsageError(`--${name} is required`);
  return v;
}

export function intFlag(flags: Flags, name: string, def: number): number {
  const v = flags[name];
  if (v === undefined) return def;
  if (typeof v !== 'string' || !/^\d+$/.test(v)) throw new UsageError(`--${name} must be a non-negative integer`);
  return Number(v);
}
