/*
 * `npm run bench -- …` and `gravitas bench …`: scenario runs (run, a scenario file, report,
 * generator) or a named benchmark. The named benchmarks' modules are loaded only when one is
 * asked for, so a load run or a generator process carries none of them.
 */

/** A scenario file given where a benchmark name would be: `npm run bench -- bench/scenarios/small.yaml`. */
const isScenarioFile = (arg: string | undefined): boolean => arg !== undefined && /\.(ya?ml|json)$/i.test(arg);

async function main(argv: readonly string[]): Promise<number> {
  const [first, ...rest] = argv;
  if (first === 'run') return (await import('./harness/run-cli.js')).runCommand(rest);
  if (first === 'report') return (await import('./harness/run-cli.js')).reportCommand(rest);
  if (first === 'generator') return (await import('./harness/generator.js')).generatorMain(rest);
  if (isScenarioFile(first)) return (await import('./harness/run-cli.js')).runCommand(argv);
  return (await import('./named.js')).namedMain(argv);
}

process.exitCode = await main(process.argv.slice(2));
