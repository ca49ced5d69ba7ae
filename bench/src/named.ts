import * as ceilings from './ceilings.js';
import * as custody from './custody.js';
import * as gravity from './gravity.js';
import * as groups from './groups.js';
import * as pingpong from './pingpong.js';
import * as reach from './reach.js';
import * as social from './social.js';
import * as revocation from './revocation.js';
import * as placement from './placement.js';
import * as tracking from './tracking.js';
import { UsageError, report, type Benchmark } from './report.js';
import { RUN_USAGE } from './harness/run-cli.js';

/* The named benchmarks (`npm run bench -- <name>`), loaded by main.ts only when one is asked for. */

/** Registry: add a benchmark by importing its module and listing it here. */
const BENCHMARKS: readonly Benchmark[] = [ceilings, pingpong, custody, groups, placement, gravity, tracking, reach, social, revocation];

const DEFAULT_DURATION_S = 2;

interface Cli {
  help: boolean;
  name?: string;
  json?: string;
  /** Unset: the benchmark's own default (defaultDurationS), else DEFAULT_DURATION_S. */
  durationMs?: number;
  flags: Record<string, string | true>;
}

function usage(): string {
  const w = Math.max(...BENCHMARKS.map((b) => b.name.length));
  const list = BENCHMARKS.map((b) => {
    const dflt = b.defaultDurationS === undefined ? [] : [`\n${' '.repeat(w + 6)}--duration defaults to ${b.defaultDurationS} s`];
    const flags = [...dflt, ...Object.entries(b.flags ?? {}).map(([f, h]) => `\n${' '.repeat(w + 6)}--${f}  ${h}`)];
    return `  ${b.name.padEnd(w)}    ${b.description}${flags.join('')}`;
  });
  return [
    'usage: npm run bench -- <name> [--json out.json] [--duration S] [--<flag> [value]]...',
    '',
    'options:',
    '  --json <file>     also write the full result as JSON (parent dirs are created)',
    `  --duration <s>    measurement time per metric in seconds (default ${DEFAULT_DURATION_S} unless the benchmark says otherwise)`,
    '  --help            show this help',
    '',
    'benchmarks:',
    ...list,
    '',
    'scenario runs (docs/benchmarking.md):',
    RUN_USAGE.replace(/^/gm, '  '),
  ].join('\n');
}

/** Accepts `--k v`, `--k=v` and bare `--k` (→ true); the first positional is the benchmark name. */
function parseArgs(argv: readonly string[]): Cli {
  const cli: Cli = { help: false, flags: {} };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] ?? '';
    if (arg === '--help' || arg === '-h') {
      cli.help = true;
      continue;
    }
    if (!arg.startsWith('--')) {
      if (cli.name !== undefined) throw new UsageError(`unexpected argument: ${arg}`);
      cli.name = arg;
      continue;
    }
    const eq = arg.indexOf('=');
    const key = arg.slice(2, eq < 0 ? undefined : eq);
    if (key === '') throw new UsageError(`bad flag: ${arg}`);
    let value: string | true = true;
    if (eq >= 0) value = arg.slice(eq + 1);
    else if (i + 1 < argv.length && !argv[i + 1]?.startsWith('--')) value = argv[++i] ?? '';
    if (key === 'json') {
      if (value === true || value === '') throw new UsageError('--json needs a file path');
      cli.json = value;
    } else if (key === 'duration') {
      const s = value === true ? NaN : Number(value);
      if (!(s > 0) || !Number.isFinite(s)) throw new UsageError(`--duration needs a positive number of seconds, got ${String(value)}`);
      cli.durationMs = s * 1000;
    } else {
      cli.flags[key] = value;
    }
  }
  return cli;
}

export async function namedMain(argv: readonly string[]): Promise<number> {
  let cli: Cli;
  let bench: Benchmark | undefined;
  try {
    cli = parseArgs(argv);
    if (cli.help) {
      process.stdout.write(usage() + '\n');
      return 0;
    }
    if (cli.name === undefined) throw new UsageError('missing benchmark name');
    bench = BENCHMARKS.find((b) => b.name === cli.name);
    if (!bench) throw new UsageError(`unknown benchmark: ${cli.name}`);
    const allowed = bench.flags ?? {};
    const bad = Object.keys(cli.flags).filter((f) => !(f in allowed));
    if (bad.length > 0) throw new UsageError(`unknown flag(s) for ${bench.name}: ${bad.map((f) => `--${f}`).join(', ')}`);
    const durationMs = cli.durationMs ?? (bench.defaultDurationS ?? DEFAULT_DURATION_S) * 1000;
    process.stderr.write(`running ${bench.name} (${durationMs / 1000}s per metric)\n`);
    const result = await bench.run({ durationMs, flags: cli.flags });
    await report(result, cli.json);
    return 0;
  } catch (e) {
    // Benchmarks may also throw UsageError (e.g. from numFlag) for bad flag values.
    if (e instanceof UsageError) {
      process.stderr.write(`error: ${e.message}\n\n${usage()}\n`);
      return 2;
    }
    process.stderr.write(`${bench?.name ?? 'bench'} failed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    return 1;
  }
}
