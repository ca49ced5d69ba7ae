import { readFile, writeFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import { HarnessError, ScenarioError } from './errors.js';
import { fmt, renderHtmlReport } from './html.js';
import { bottlenecks, capacity, judge, RESULT_FORMAT, type RunResult } from './result.js';
import { runScenario, type RunOptions } from './runner.js';
import { stepsTable } from './steps.js';

/*
 * `gravitas bench run FILE` / `npm run bench -- run FILE` (or just `npm run bench -- FILE`): parses
 * the flags, runs the scenario, prints a summary table on stdout and the paths of the JSON result
 * and the HTML report. Exit codes: 0 the run completed (read the verdict), 1 the run failed,
 * 2 bad usage or a bad scenario file.
 */

export const RUN_USAGE = `usage: gravitas bench run SCENARIO.yaml [options]
       npm run bench -- run SCENARIO.yaml [options]

options:
  --json FILE              where the JSON result goes (default bench/out/<name>-<time>.json)
  --html FILE              where the HTML report goes (default: next to the JSON)
  --control URL            use this NATS for the control plane (default: a private one)
  --external-generators    start no generators: recruit generators.count of those already
                           running (gravitas bench generator --control URL) on other hosts
  --namespace NS           name accounts and groups after NS (a-z0-9, ≤ 16): a re-run with the
                           same NS reuses them on a long-lived cluster (default: fresh per run)
  --drain S                after the run, how long to wait for owed deliveries once none arrive any
                           more (default max(30, 5 intervals); 10 min at most in all, or 4 × S)
  --targets A,B,…          run only these of the scenario's targets (gravitas, ejabberd, prosody,
                           xmpp, socketio), one after the other, with one comparison table
  --pin                    servers under taskset -c 0, generators and runner under taskset -c 1

  gravitas bench generator --control URL    a generator that serves runners until stopped
  gravitas bench report RESULT.json [--html FILE]
                           re-judge a saved result with this version's rules and render its report`;

export async function runCommand(argv: readonly string[], out: NodeJS.WritableStream = process.stdout): Promise<number> {
  let o: RunOptions;
  try {
    const { values, positionals } = parseArgs({
      args: [...argv],
      allowPositionals: true,
      strict: true,
      options: {
        json: { type: 'string' },
        html: { type: 'string' },
        control: { type: 'string' },
        'external-generators': { type: 'boolean' },
        namespace: { type: 'string' },
        drain: { type: 'string' },
        targets: { type: 'string' },
        pin: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
    });
    if (values.help) {
      out.write(`${RUN_USAGE}\n`);
      return 0;
    }
    if (positionals.length !== 1) throw new Error(positionals.length === 0 ? 'missing the scenario file' : `one scenario file at a time, got ${positionals.length}`);
    const drain = values.drain === undefined ? undefined : Number(values.drain);
    if (drain !== undefined && !(drain > 0)) throw new Error(`--drain needs a positive number of seconds, got ${values.drain}`);
    if (values['external-generators'] && !values.control) throw new Error('--external-generators needs --control (the NATS the generators wait on)');
    o = {
      file: positionals[0]!,
      ...(values.json !== undefined && { json: values.json }),
      ...(values.html !== undefined && { html: values.html }),
      ...(values.control !== undefined && { control: values.control }),
      ...(values['external-generators'] && { externalGenerators: true }),
      ...(values.namespace !== undefined && { namespace: values.namespace }),
      ...(drain !== undefined && { drainTimeoutMs: drain * 1000 }),
      ...(values.targets !== undefined && { targets: values.targets.split(',').map((x) => x.trim()).filter(Boolean) }),
      ...(values.pin && { pin: true }),
    };
  } catch (e) {
    process.stderr.write(`error: ${(e as Error).message}\n\n${RUN_USAGE}\n`);
    return 2;
  }
  try {
    const { runs, comparison } = await runScenario(o);
    for (const { result, json, html } of runs) {
      if (runs.length > 1) out.write(`\n== ${result.target} ==\n`);
      out.write(summary(result));
      if (result.steps) out.write(`\nsteps (holds only):\n${stepsTable(result.steps)}`);
      out.write(`\nresult: ${json}\nreport: ${html}\n`);
    }
    if (comparison) out.write(`\n== comparison ==\n${comparison.table}\ncomparison: ${comparison.md}\n`);
    return 0;
  } catch (e) {
    if (e instanceof ScenarioError) {
      process.stderr.write(`${e.code}: ${e.message}\n`);
      return 2;
    }
    const code = e instanceof HarnessError ? `${e.code}: ` : '';
    process.stderr.write(`run failed: ${code}${e instanceof Error ? (e instanceof HarnessError ? e.message : (e.stack ?? e.message)) : String(e)}\n`);
    return 1;
  }
}

/** The run in a plain table (stdout), then the verdict and where the limit was. */
export function summary(r: RunResult): string {
  const t = r.totals;
  const ms = (x: number | null): string => (x === null ? '–' : `${fmt(x)} ms`);
  const steady = r.intervals.filter((iv) => iv.phase === 'steady');
  const peak = (f: (iv: (typeof steady)[number]) => number): number => Math.max(0, ...steady.map(f));
  const rows: Array<[string, string]> = [
    ['scenario', `${r.scenario.name} (${r.target})`],
    ['users / devices', `${r.scenario.users.toLocaleString('en-US')} / ${r.generators.reduce((a, g) => a + g.devices, 0).toLocaleString('en-US')}`],
    ['generators', r.generators.map((g) => `${g.name}@${g.host}`).join(', ')],
    ['setup', `provision ${(r.setup.provisionMs / 1000).toFixed(1)} s, ${r.setup.groupsCreated} groups ${(r.setup.groupsMs / 1000).toFixed(1)} s`],
    ['peak connected', peak((iv) => iv.connected).toLocaleString('en-US')],
    ['sent / accepted / failed', `${t.sent.toLocaleString('en-US')} / ${t.accepted.toLocaleString('en-US')} / ${t.failed.toLocaleString('en-US')}`],
    ['received live / catch-up', `${t.received.toLocaleString('en-US')} / ${t.catchup.toLocaleString('en-US')}`],
    ['peak sent / received (steady)', `${fmt(peak((iv) => iv.sentPerSec))} / ${fmt(peak((iv) => iv.receivedPerSec))} msgs/s`],
    ['latency p50 / p99 / p99.9 / max', `${ms(t.latency.p50)} / ${ms(t.latency.p99)} / ${ms(t.latency.p999)} / ${ms(t.latency.max)}`],
    ['generator send lag p99', ms(t.sendLag.p99)],
    ['connect time p50 / p99', `${ms(t.connectTime.p50)} / ${ms(t.connectTime.p99)}`],
    [
      'deliveries owed / missing',
      t.delivery.tracked ? `${t.delivery.expected.toLocaleString('en-US')} / ${t.delivery.missing.toLocaleString('en-US')} (drain ${(t.delivery.drainMs / 1000).toFixed(1)} s)` : 'not tracked by this driver',
    ],
    ...(r.scenario.behaviours.campaigns.length > 0 ? [['campaign deliveries owed / received', `${t.campaigns.expected} / ${t.campaigns.received} (reach p50 ${ms(t.campaignReach.p50)}, max ${ms(t.campaignReach.max)})`] as [string, string]] : []),
    ['highest sustained rate', r.capacity ? `${fmt(r.capacity.sentPerSec)} msgs/s sent${r.capacity.notSustainedPerSec !== null ? ` (not sustained from ${fmt(r.capacity.notSustainedPerSec)} msgs/s)` : ' (no higher rate was offered long enough to call it a limit)'}, p99 ${ms(r.capacity.latencyP99)}, busiest generator ${r.capacity.generatorCpu.toFixed(0)} % CPU` : 'no steady interval was sustained'],
    ['errors', Object.keys(t.errors).length === 0 ? 'none' : Object.entries(t.errors).map(([k, n]) => `${k} × ${n}`).join(', ')],
  ];
  const w = Math.max(...rows.map(([k]) => k.length));
  const lines = rows.map(([k, v]) => `${k.padEnd(w)}  ${v}`);
  const v = r.verdict;
  lines.push('', v.generatorBound ? `VERDICT: generator-bound — ${v.reasons.join('; ')}` : v.hostBound ? `VERDICT: host-bound — ${v.reasons.join('; ')}` : `VERDICT: generators kept up (peak CPU ${v.generatorPeakCpu.toFixed(0)} %)`);
  for (const w of r.verdict.warnings) lines.push(`warning: ${w}`);
  lines.push('', 'where the limit was:', ...r.bottlenecks.map((b) => `  - ${b}`));
  return `${lines.join('\n')}\n`;
}

/**
 * `gravitas bench report RESULT.json [--html FILE]`: a saved result judged again with this
 * version's rules (verdict, capacity, where the limit was) and rendered; the summary on stdout.
 */
export async function reportCommand(argv: readonly string[], out: NodeJS.WritableStream = process.stdout): Promise<number> {
  let file: string;
  let html: string | undefined;
  try {
    const { values, positionals } = parseArgs({ args: [...argv], allowPositionals: true, strict: true, options: { html: { type: 'string' } } });
    if (positionals.length !== 1) throw new Error('one result file, please');
    file = positionals[0]!;
    html = values.html;
  } catch (e) {
    process.stderr.write(`error: ${(e as Error).message}\n\n${RUN_USAGE}\n`);
    return 2;
  }
  let r: RunResult;
  try {
    r = JSON.parse(await readFile(file, 'utf8')) as RunResult;
    if (r.format !== RESULT_FORMAT || !Array.isArray(r.intervals)) throw new Error(`not a ${RESULT_FORMAT} result`);
  } catch (e) {
    process.stderr.write(`${file}: ${(e as Error).message}\n`);
    return 2;
  }
  r.verdict = judge(r.intervals, r.scenario, Object.fromEntries(r.generators.map((g) => [g.name, g.host])));
  r.capacity = capacity(r.intervals);
  r.bottlenecks = bottlenecks(r);
  const target = html ?? file.replace(/\.json$/, '') + '.html';
  await writeFile(target, renderHtmlReport(r));
  out.write(summary(r));
  out.write(`\nreport: ${target}\n`);
  return 0;
}
