import { randomBytes } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { dirname, extname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInbox, type NatsConnection } from '@nats-io/transport-node';
import { NatsServer } from '@gravitas/testkit';
import { hostInfo } from '../report.js';
import { Resources, sleep, spawnNode, type Child } from '../procs.js';
import { serveClock } from './clock.js';
import { boundedSubscribe, connectControl, decodeFromGenerator, encodeControl, SUBJECT, type FromGenerator, type GeneratorInterval, type GeneratorTotals, type ToGenerator } from './control.js';
import { HarnessError, ScenarioError } from './errors.js';
import { accountDeliveries } from './ledger.js';
import { renderHtmlReport } from './html.js';
import { NAMESPACE_PATTERN, userName } from './identity.js';
import { mergeEncoded, percentiles } from './latency.js';
import { HostSampler, ProcSampler } from './monitor.js';
import { buildPopulation, type Population } from './population.js';
import { Progress, type ProgressStream } from './progress.js';
import { bottlenecks, capacity, judge, latencyJson, phaseAt, RESULT_FORMAT, tally, type GeneratorInfo, type HostSample, type IntervalSample, type RunResult } from './result.js';
import { parseScenario, scenarioTotalMs, type Scenario } from './scenario.js';
import { MetricsSampler } from './scrape.js';
import { startTarget, type StartedTarget } from './target.js';
import { campaignAudience, tracksDeliveries } from './workload.js';
import { missingAndRepeated } from './ledger.js';
import { pinProcesses } from './pin.js';
import { comparisonTable, stepsTable, summarizeSteps } from './steps.js';
import { targetName, type Target } from './scenario.js';
import { nowMs } from './driver.js';

/*
 * `gravitas bench run FILE`: one load run from a scenario file. The runner starts (or finds) the
 * system under test, a control NATS and the generator processes, walks them through setup
 * (provision accounts, create groups), starts the clock, assembles each interval from every
 * generator's report and its own readings of the servers, fires the campaigns, waits for the last
 * owed deliveries after the end (the drain), and writes the JSON result and the HTML report.
 * Every process it started is stopped however the run ends (Resources).
 */

/** The built generator entry, from bench/src/harness (tests) and bench/dist/harness alike. */
export const GENERATOR_BIN = fileURLToPath(new URL('../../dist/harness/gen-main.js', import.meta.url));
const OUT_DIR = fileURLToPath(new URL('../../out/', import.meta.url));

export interface RunOptions {
  file: string;
  /** Exact output paths; by default bench/out/<name>-<time>.json and .html. */
  json?: string;
  html?: string;
  /** An existing control NATS (for generators on other hosts); by default a private one is started. */
  control?: string;
  /** Do not start generators: recruit `generators.count` of them already waiting on the control NATS. */
  externalGenerators?: boolean;
  /** Accounts and groups are named after it (lower-case letters and digits); default: a fresh one per run. */
  namespace?: string;
  /** After the run, how long to wait for owed deliveries once none arrive any more (default max(30 s, 5 intervals)). */
  drainTimeoutMs?: number;
  /** Run only these of the scenario's targets, by name (targetName), in this order; default all. */
  targets?: string[];
  /** Servers on core 0, generators and runner on core 1 (taskset); the scenario's `pin` sets it too. */
  pin?: boolean;
  /** A generator silent (no beat, no report) this long is taken for dead (default GENERATOR_SILENCE_MS; tests shorten it). */
  generatorSilenceMs?: number;
  progress?: ProgressStream;
  log?: (msg: string) => void;
}

const RECRUIT_TIMEOUT_MS = 60_000;
const READY_TIMEOUT_MS = 120_000;
const DONE_TIMEOUT_MS = 120_000;
/** A generator silent for this long is taken for dead. */
const GENERATOR_SILENCE_MS = 20_000;
/** Longest drain however steadily deliveries still arrive (at least 4 × the stall time). */
const DRAIN_CAP_MS = 600_000;
/** Intervals a generator's report may be late before the interval is built without it (step sweeps: more). */
const LATE_INTERVALS = 3;
const LATE_STEPS = 60;
/** Time between the start command and t0, so that every generator has it before t0. */
const START_LEAD_MS = 1500;

interface Gen {
  id: string;
  index: number;
  host: string;
  pid: number;
  lastBeat: number;
  ready?: Extract<FromGenerator, { type: 'ready' }>;
  provisioned?: Extract<FromGenerator, { type: 'provisioned' }>;
  groups?: Extract<FromGenerator, { type: 'groupsCreated' }>;
  joined?: Extract<FromGenerator, { type: 'groupsJoined' }>;
  done?: GeneratorTotals;
  progress?: { done: number; total: number };
  expected: number;
  receivedTotal: number;
  pending: number;
  /** `ledger` messages received from it (its `done` says how many it sent). */
  ledgerChunks: number;
}

interface RunnerSample {
  servers: Record<string, { cpu: number; rssMiB: number }>;
  host: HostSample;
  locality: number | null;
}


export interface RunOutput {
  result: RunResult;
  json: string;
  html: string;
}

/**
 * Runs the scenario against each of its targets in turn (or those `o.targets` names), each with
 * its own processes stopped before the next starts; with several, the comparison table is
 * printed by the CLI and written next to the results (`<name>-<time>-compare.json` and `.md`).
 */
export async function runScenario(o: RunOptions): Promise<RunOutput & { runs: RunOutput[]; comparison?: { table: string; json: string; md: string } }> {
  const { scenario, text, format } = await readScenario(o);
  let targets: Target[] = scenario.targets;
  if (o.targets) {
    const byName = new Map(scenario.targets.map((t) => [targetName(t), t]));
    const unknown = o.targets.filter((n) => !byName.has(n));
    if (unknown.length > 0) throw new ScenarioError('SCENARIO_INVALID', o.file, [`--targets: ${unknown.join(', ')} not among the scenario's targets (${[...byName.keys()].join(', ')})`]);
    targets = o.targets.map((n) => byName.get(n)!);
  }
  const runs: RunOutput[] = [];
  const failed: Array<{ target: string; error: string }> = [];
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  for (const t of targets) {
    const one = targets.length > 1;
    const name = targetName(t);
    const json = o.json !== undefined ? (one ? o.json.replace(/(\.json)?$/, `-${name}.json`) : o.json) : join(OUT_DIR, `${scenario.name}-${stamp}${one ? `-${name}` : ''}.json`);
    const html = o.html !== undefined ? (one ? o.html.replace(/(\.html)?$/, `-${name}.html`) : o.html) : undefined;
    const go = runOne({ ...scenario, target: t, targets: [t] }, { text, format }, { ...o, json, ...(html !== undefined && { html }) });
    if (!one) {
      runs.push(await go);
      continue;
    }
    // One target failing (a generator that died, a server that would not start) does not lose the others' results.
    try {
      runs.push(await go);
    } catch (e) {
      if (e instanceof ScenarioError) throw e;
      const msg = `${e instanceof HarnessError ? `${e.code}: ` : ''}${(e as Error).message.split('\n')[0]}`;
      (o.log ?? ((m: string) => void process.stderr.write(`${m}\n`)))(`${name}: the run failed (${msg}); going on with the next target`);
      failed.push({ target: name, error: msg });
    }
  }
  if (runs.length === 0) throw new HarnessError('GENERATOR_FAILED', `every target failed: ${failed.map((f) => `${f.target}: ${f.error}`).join('; ')}`);
  const first = runs[0]!;
  if (targets.length < 2) return { ...first, runs };
  const rows: Array<{ target: string; description: string; steps: RunResult['steps']; error?: string }> = runs.map((r) => ({ target: targetName(r.result.scenario.target), description: r.result.target, steps: r.result.steps }));
  for (const f of failed) rows.push({ target: f.target, description: `failed: ${f.error}`, steps: undefined, error: f.error });
  const tableText = comparisonTable(rows);
  const base = (o.json ?? join(OUT_DIR, `${scenario.name}-${stamp}.json`)).replace(/\.json$/, '');
  const cj = `${base}-compare.json`;
  const md = `${base}-compare.md`;
  await writeFile(cj, JSON.stringify({ scenario: scenario.name, startedAt: first.result.startedAt, pinned: o.pin === true || scenario.pin, runs: rows.map((r, i) => ({ ...r, json: runs[i]?.json })) }, null, 2));
  await writeFile(md, `# ${scenario.name}: comparison${o.pin === true || scenario.pin ? ' (pinned)' : ''}\n\n${tableText}\n${rows.map((r) => `## ${r.target} — ${r.description}\n\n${r.steps ? stepsTable(r.steps) : r.error ? `the run failed: ${r.error}\n` : 'no steps\n'}`).join('\n')}`);
  return { ...first, runs, comparison: { table: tableText, json: cj, md } };
}

async function readScenario(o: RunOptions): Promise<{ scenario: Scenario; text: string; format: 'json' | 'yaml' }> {
  let text: string;
  try {
    text = await readFile(o.file, 'utf8');
  } catch (e) {
    throw new ScenarioError('SCENARIO_READ', o.file, [`cannot read: ${(e as Error).message}`], { cause: e });
  }
  const format = extname(o.file).toLowerCase() === '.json' ? 'json' : 'yaml';
  const scenario = parseScenario(text, format, o.file);
  return { scenario, text, format };
}

async function runOne(scenario: Scenario, source: { text: string; format: 'json' | 'yaml' }, o: RunOptions): Promise<RunOutput> {
  const { text, format } = source;
  const log = o.log ?? ((m: string) => void process.stderr.write(`${m}\n`));
  if (o.namespace !== undefined && !NAMESPACE_PATTERN.test(o.namespace)) throw new HarnessError('SCENARIO_INVALID', `--namespace must match ${NAMESPACE_PATTERN.source}, got ${JSON.stringify(o.namespace)}`);
  const res = new Resources();
  const run = new Run(scenario, { text, format }, o, res, log);
  try {
    return await run.go();
  } catch (e) {
    // Generators on other hosts would otherwise load the target until their watchdog fires.
    run.stopGenerators(e);
    throw e;
  } finally {
    await res.close();
  }
}

class Run {
  private readonly run = randomBytes(5).toString('hex').replace(/^\d/, 'r');
  private readonly namespace: string;
  private readonly gens = new Map<string, Gen>();
  private readonly intervals = new Map<number, Map<string, GeneratorInterval>>();
  private readonly runnerSamples = new Map<number, RunnerSample>();
  private readonly samples: IntervalSample[] = [];
  private readonly errors: Record<string, number> = {};
  private readonly totals = { sent: 0, accepted: 0, failed: 0, received: 0, catchup: 0, campaign: 0, presence: 0, stray: 0, skipped: 0 };
  /** Every generator's delivery ledger (ledger.ts): ids owed by accepted sends, ids that arrived. */
  private readonly owedIds: number[] = [];
  private readonly arrivedIds: number[] = [];
  private readonly notes: string[] = [];
  /** Step sweeps: each interval's latency histograms, and each generator's last send ref per interval. */
  private readonly stepHists = new Map<number, string[]>();
  private readonly lastRefs = new Map<number, number[]>();
  private lost: { missing: number[]; repeated: number[] } | null = null;
  private nc!: NatsConnection;
  private target!: StartedTarget;
  private pop!: Population;
  private failure: HarnessError | undefined;
  private wake: (() => void) | undefined;
  private readonly children: Child[] = [];
  private campaignsExpected = 0;
  /** The generators' messages to the runner: a bounded queue whose drops the result reports. */
  private upstream: { dropped(): number } | undefined;
  private t0 = 0;
  private assembled = 0;
  /** The run's intervals are all in: a generator exiting now is no failure. */
  private finished = false;

  constructor(
    private readonly s: Scenario,
    private readonly source: { text: string; format: 'json' | 'yaml' },
    private readonly o: RunOptions,
    private readonly res: Resources,
    private readonly log: (msg: string) => void,
  ) {
    this.namespace = o.namespace ?? this.run.replace(/[^a-z0-9]/g, '').slice(0, 10);
  }

  async go(): Promise<{ result: RunResult; json: string; html: string }> {
    const s = this.s;
    const startedAt = new Date().toISOString();
    this.log(`run ${this.run}: scenario ${s.name}, ${s.users.toLocaleString('en-US')} users, namespace ${this.namespace}`);
    const controlUrl = await this.control();
    this.target = await startTarget(s.target, this.res, this.log);
    this.log(`target: ${this.target.description}`);
    this.pinServers();
    this.pop = buildPopulation(s);
    await this.recruit(controlUrl);

    const setupT = performance.now();
    this.broadcast({ type: 'setup', source: this.source, namespace: this.namespace, runTag: this.run, driver: this.target.driver });
    await this.until('every generator ready', () => this.all((g) => g.ready !== undefined), READY_TIMEOUT_MS);
    for (const g of this.gens.values()) this.log(`  gen${g.index} (pid ${g.pid}) on ${g.host}: ${g.ready!.users} users, ${g.ready!.devices} devices, clock offset ${g.ready!.clock.offsetMs.toFixed(2)} ms ± ${(g.ready!.clock.rttMs / 2).toFixed(2)}`);

    this.log('provisioning accounts…');
    const provisionT = performance.now();
    this.broadcast({ type: 'provision' });
    let lastLog = 0;
    await this.until('every generator provisioned', () => {
      if (performance.now() - lastLog > 5000) {
        lastLog = performance.now();
        const done = [...this.gens.values()].reduce((a, g) => a + (g.provisioned ? (g.ready?.devices ?? 0) : (g.progress?.done ?? 0)), 0);
        this.log(`  provisioned ${done.toLocaleString('en-US')} of ${this.deviceCount().toLocaleString('en-US')} devices`);
      }
      return this.all((g) => g.provisioned !== undefined);
    });
    const provisionMs = performance.now() - provisionT;
    if (this.target.afterProvision) {
      await this.target.afterProvision();
      this.pinServers();
    }
    const setupErrors: Record<string, number> = {};
    for (const g of this.gens.values()) for (const [k, n] of Object.entries(g.provisioned!.errors)) tally(setupErrors, `provision:${k}`, n);
    const unprovisioned = Object.values(setupErrors).reduce((a, b) => a + b, 0);
    if (unprovisioned > 0) {
      // Accounts that do not exist make every number after this wrong (sends refused, groups short of members).
      const e = new HarnessError('PROVISION_FAILED', `${unprovisioned} of ${this.deviceCount()} devices could not be provisioned: ${Object.entries(setupErrors).map(([k, n]) => `${k} × ${n}`).join(', ')}`);
      this.abort(e);
      throw e;
    }

    const groupsT = performance.now();
    const ids = await this.createGroups(setupErrors);
    const createMs = performance.now() - groupsT;
    const joinT = performance.now();
    await this.joinGroups(ids, setupErrors);
    const joinMs = performance.now() - joinT;
    const groupsMs = performance.now() - groupsT;
    const publisher = s.behaviours.campaigns.length > 0 ? await this.createPublisher() : undefined;
    this.log(`setup done in ${((performance.now() - setupT) / 1000).toFixed(1)} s (provision ${(provisionMs / 1000).toFixed(1)} s, groups ${(groupsMs / 1000).toFixed(1)} s: created in ${(createMs / 1000).toFixed(1)} s, joined in ${(joinMs / 1000).toFixed(1)} s)`);

    const result = await this.play(publisher);
    result.startedAt = startedAt;
    result.setup = { provisionMs, groupsMs, groupsCreated: ids.filter((x) => x !== '').length, groupsFailed: ids.filter((x) => x === '').length, errors: setupErrors };
    const json = this.o.json ?? join(OUT_DIR, `${s.name}-${startedAt.replace(/[:.]/g, '-')}.json`);
    const html = this.o.html ?? json.replace(/\.json$/, '') + '.html';
    await mkdir(dirname(resolve(json)), { recursive: true });
    await mkdir(dirname(resolve(html)), { recursive: true });
    await writeFile(json, JSON.stringify(result, null, 2));
    await writeFile(html, renderHtmlReport(result));
    return { result, json, html };
  }

  private get pinned(): boolean {
    return this.o.pin === true || this.s.pin;
  }

  /** --pin: the target's processes on core 0, this runner (and what it starts later) on core 1. */
  private pinServers(): void {
    if (!this.pinned) return;
    pinProcesses(Object.values(this.target.pids), 0);
    pinProcesses([process.pid], 1);
    this.log('pinned: servers on cpu 0, runner and generators on cpu 1');
  }

  // ---------- control plane ----------

  private async control(): Promise<string> {
    let url = this.o.control;
    if (url === undefined) {
      const ns = await NatsServer.start({ jetstream: false });
      this.res.deferLast(() => ns.stop());
      url = ns.url;
    }
    this.nc = await connectControl(url, `gravitas-bench-runner ${this.run}`);
    this.res.deferLast(() => this.nc.drain().catch(() => undefined));
    const clock = serveClock(this.nc, SUBJECT.clock(this.run));
    const beat = setInterval(() => this.nc.publish(SUBJECT.beat(this.run)), 1000);
    const watch = setInterval(() => this.watch(), 1000);
    this.res.defer(async () => {
      clearInterval(beat);
      clearInterval(watch);
      clock.stop();
    });
    this.upstream = boundedSubscribe(this.nc, SUBJECT.up(this.run), (data) => this.onUp(decodeFromGenerator(data)), (e) => this.log(`control: ${(e as Error).message}`), 4096);
    await this.nc.flush();
    return url;
  }

  private send(g: Gen, m: ToGenerator): void {
    this.nc.publish(SUBJECT.gen(g.id), encodeControl(m));
  }

  private broadcast(m: ToGenerator): void {
    for (const g of this.gens.values()) this.send(g, m);
  }

  private onUp(m: FromGenerator): void {
    const g = this.gens.get(m.gen);
    if (!g) return; // not (or no longer) ours
    g.lastBeat = performance.now();
    switch (m.type) {
      case 'assigned':
        if (!m.ok) this.abort(new HarnessError('GENERATOR_FAILED', `gen${g.index} (${g.id}) refused the assignment: ${m.reason ?? 'busy'}`));
        break;
      case 'ready':
        g.ready = m;
        break;
      case 'progress':
        g.progress = { done: m.done, total: m.total };
        break;
      case 'provisioned':
        g.provisioned = m;
        break;
      case 'groupsCreated':
        g.groups = m;
        break;
      case 'groupsJoined':
        g.joined = m;
        break;
      case 'interval': {
        g.expected = m.expected;
        g.receivedTotal = m.receivedTotal;
        g.pending = m.pending;
        if (m.k <= this.assembled) {
          // Its interval was built without it: the counts still belong in the totals.
          this.addCounts(m);
          this.totals.skipped += m.self.skipped;
          for (const [code, n] of Object.entries(m.errors)) tally(this.errors, code, n);
          this.notes.push(`gen${g.index}'s report of interval ${m.k} came after the interval was built: counted in the totals only`);
          break;
        }
        let k = this.intervals.get(m.k);
        if (!k) this.intervals.set(m.k, (k = new Map()));
        k.set(g.id, m);
        break;
      }
      case 'ledger':
        g.ledgerChunks++;
        for (const id of m.owed) this.owedIds.push(id);
        for (const id of m.received) this.arrivedIds.push(id);
        break;
      case 'done':
        g.done = m;
        g.expected = m.expected;
        g.receivedTotal = m.receivedTotal;
        g.pending = m.pending;
        break;
      case 'failed':
        this.abort(new HarnessError('GENERATOR_FAILED', `gen${g.index} on ${g.host} failed (${m.code}): ${m.message}`));
        break;
      case 'beat': // counted above (lastBeat)
      case 'hello': // only while generators are gathered (gather())
        break;
    }
    this.wake?.();
  }

  private watch(): void {
    for (const g of this.gens.values()) {
      const silence = this.o.generatorSilenceMs ?? GENERATOR_SILENCE_MS;
      if (g.done || performance.now() - g.lastBeat < silence) continue;
      this.abort(new HarnessError('GENERATOR_FAILED', `gen${g.index} on ${g.host} (${g.id}) fell silent for ${silence / 1000} s`));
    }
    this.wake?.();
  }

  /** Tells every generator to stop, whatever ended the run. */
  stopGenerators(e: unknown): void {
    if (this.failure || this.gens.size === 0) return;
    this.abort(e instanceof HarnessError ? e : new HarnessError('GENERATOR_FAILED', `the run failed: ${(e as Error).message}`, { cause: e }));
  }

  private abort(e: HarnessError): void {
    if (this.failure) return;
    this.failure = e;
    this.log(`aborting: ${e.message}`);
    this.broadcast({ type: 'abort', reason: e.message });
    this.wake?.();
  }

  /** Waits until `ok()` (re-checked on every generator message and every second) or the run failed. */
  private async until(what: string, ok: () => boolean, timeoutMs = Infinity): Promise<void> {
    const end = performance.now() + timeoutMs;
    while (!ok()) {
      if (this.failure) throw this.failure;
      if (performance.now() > end) throw new HarnessError('GENERATOR_FAILED', `timed out waiting for ${what}`);
      await new Promise<void>((r) => {
        this.wake = r;
        setTimeout(r, 1000);
      });
      this.wake = undefined;
    }
    if (this.failure) throw this.failure;
  }

  private all(f: (g: Gen) => boolean): boolean {
    return this.gens.size > 0 && [...this.gens.values()].every(f);
  }

  private deviceCount(): number {
    return [...this.gens.values()].reduce((a, g) => a + (g.ready?.devices ?? 0), 0);
  }

  /** Starts the local generators (unless external), then recruits `count` of them and assigns indices. */
  private async recruit(controlUrl: string): Promise<void> {
    const want = this.s.generators.count;
    if (!this.o.externalGenerators) {
      for (let i = 0; i < want; i++) {
        const { child, ready } = spawnNode(`gen${i}`, [GENERATOR_BIN, '--control', controlUrl, '--run', this.run], /^generator ready (\S+)$/m, 30_000);
        this.res.add(child);
        this.children.push(child);
        child.proc.once('exit', (code, sig) => {
          // A clean exit was asked for (a signal to the process group, the end of the run); a silent generator is caught by watch().
          if (code === 0 || sig === 'SIGTERM' || sig === 'SIGINT') return;
          if (!this.failure && !this.finished) this.abort(new HarnessError('GENERATOR_FAILED', `generator process gen${i} exited (${code ?? sig}):\n${child.tail()}`));
        });
        await ready;
        if (this.pinned) pinProcesses([child.pid], 1);
      }
    } else this.log(`waiting for ${want} generator(s) on ${controlUrl} (start them with: gravitas bench generator --control ${controlUrl})`);
    const hellos = new Map<string, Extract<FromGenerator, { type: 'hello' }>>();
    const inbox = createInbox();
    const sub = this.nc.subscribe(inbox, {
      callback: (err, msg) => {
        if (err) return;
        try {
          const m = decodeFromGenerator(msg.data);
          if (m.type === 'hello' && hellos.size < want) hellos.set(m.gen, m);
        } catch {
          // not a generator
        }
      },
    });
    const end = performance.now() + RECRUIT_TIMEOUT_MS;
    while (hellos.size < want) {
      if (performance.now() > end) {
        sub.unsubscribe();
        throw new HarnessError('GENERATOR_FAILED', `only ${hellos.size} of ${want} generator(s) answered on the control NATS within ${RECRUIT_TIMEOUT_MS / 1000} s`);
      }
      this.nc.publish(SUBJECT.recruit, encodeControl({ run: this.run }), { reply: inbox });
      await sleep(hellos.size === 0 ? 300 : 1000);
    }
    sub.unsubscribe();
    let index = 0;
    for (const h of hellos.values()) {
      const g: Gen = { id: h.gen, index: index++, host: h.host, pid: h.pid, lastBeat: performance.now(), expected: 0, receivedTotal: 0, pending: 0, ledgerChunks: 0 };
      this.gens.set(g.id, g);
      this.send(g, { type: 'assign', run: this.run, index: g.index, count: want });
    }
  }

  // ---------- setup ----------

  private async createGroups(errors: Record<string, number>): Promise<string[]> {
    const n = this.pop.groups.length;
    const ids: string[] = new Array<string>(n).fill('');
    if (n === 0) return ids;
    this.log(`creating ${n} group(s)…`);
    const byGen = new Map<number, number[]>();
    this.pop.groups.forEach((members, gi) => {
      const owner = members[0]! % this.s.generators.count;
      byGen.set(owner, [...(byGen.get(owner) ?? []), gi]);
    });
    for (const g of this.gens.values()) this.send(g, { type: 'createGroups', groups: byGen.get(g.index) ?? [] });
    await this.until('the groups', () => this.all((g) => g.groups !== undefined));
    for (const g of this.gens.values()) {
      for (const [gi, id] of Object.entries(g.groups!.ids)) ids[Number(gi)] = id;
      for (const [k, c] of Object.entries(g.groups!.errors)) tally(errors, `group:${k}`, c);
    }
    const failed = ids.filter((x) => x === '').length;
    if (failed > 0) this.notes.push(`${failed} of ${n} groups could not be created; their members send 1:1 instead (errors under setup).`);
    return ids;
  }

  /**
   * Every generator learns the groups' ids and (drivers where membership is by consent) its users
   * accept their invitations. A membership that could not be joined fails the run, as an account
   * that could not be provisioned does: its member's expected messages would count as lost.
   */
  private async joinGroups(ids: string[], errors: Record<string, number>): Promise<void> {
    this.broadcast({ type: 'groups', ids });
    let lastLog = performance.now();
    await this.until('every generator joined its groups', () => {
      if (performance.now() - lastLog > 5000) {
        lastLog = performance.now();
        this.log(`  ${[...this.gens.values()].filter((g) => g.joined).length} of ${this.gens.size} generators joined their groups`);
      }
      return this.all((g) => g.joined !== undefined);
    });
    let failed = 0;
    for (const g of this.gens.values()) {
      for (const [k, n] of Object.entries(g.joined!.errors)) {
        tally(errors, `join:${k}`, n);
        failed += n;
      }
    }
    if (failed > 0) {
      const e = new HarnessError('PROVISION_FAILED', `${failed} group memberships could not be joined: ${Object.entries(errors).filter(([k]) => k.startsWith('join:')).map(([k, n]) => `${k} × ${n}`).join(', ')}`);
      this.abort(e);
      throw e;
    }
  }

  private async admin(path: string, body: unknown): Promise<Record<string, unknown>> {
    const a = this.target.admin!;
    const res = await fetch(`${a.url}${path}`, { method: 'POST', headers: { authorization: `Bearer ${a.token}`, 'content-type': 'application/json' }, body: JSON.stringify(body) });
    const out = (await res.json()) as Record<string, unknown>;
    if (!res.ok) throw new HarnessError('TARGET_UNAVAILABLE', `admin API ${path}: ${res.status} ${JSON.stringify(out['error'] ?? out)}`);
    return out;
  }

  private async createPublisher(): Promise<string> {
    const p = await this.admin('/admin/publishers', { name: `bench ${this.run}`, roles: ['campaigns', 'reports'] });
    return p['id'] as string;
  }

  /** Campaign `i`: its audience as a list of users, its text carrying the start time (latency = reach time). */
  private async startCampaign(i: number, publisher: string, at: number): Promise<void> {
    const c = this.s.behaviours.campaigns[i]!;
    const audience = campaignAudience(this.s, i);
    let devices = 0;
    for (const u of audience) devices += this.pop.devices[u]!;
    this.campaignsExpected += devices;
    try {
      const created = await this.admin('/admin/campaigns', {
        name: `bench ${this.run} #${i}`,
        audience: { users: Array.from(audience, (u) => userName(this.namespace, u)) },
        content: { text: `${at.toFixed(3)} ${this.run}.c${i} campaign` },
        ratePerSec: Math.max(1, Math.round(c.ratePerSec)),
        publisher,
      });
      const id = (created['campaign'] as { id: string }).id;
      await this.admin(`/admin/campaigns/${id}/start`, {});
      this.log(`campaign ${i} started: ${audience.length.toLocaleString('en-US')} users at ${c.ratePerSec}/s`);
    } catch (e) {
      this.campaignsExpected -= devices;
      tally(this.errors, 'campaign:failed');
      this.notes.push(`campaign ${i} could not be started: ${(e as Error).message}`);
    }
  }

  // ---------- the run ----------

  private async play(publisher: string | undefined): Promise<RunResult> {
    const s = this.s;
    const total = scenarioTotalMs(s);
    this.t0 = nowMs() + START_LEAD_MS;
    this.broadcast({ type: 'start', t0: this.t0 });
    const progress = new Progress(this.o.progress ?? process.stderr);
    // Readings the scenario's `metrics` leave out are not taken at all.
    const want = new Set(s.metrics);
    const procs = new ProcSampler(want.has('servers') ? this.target.pids : {});
    const host = new HostSampler();
    const scrape = want.has('locality') || (want.has('servers') && this.target.remoteProcs);
    const metrics = new MetricsSampler(scrape ? this.target.metrics : [], want.has('servers') && this.target.remoteProcs);
    // The runner's own readings at each boundary, on the same clock as the generators'.
    let k = 0;
    let sampling = true;
    const sampleLoop = (async () => {
      while (sampling) {
        const at = this.t0 + (k + 1) * s.intervalMs;
        await sleep(Math.max(0, at - nowMs()));
        if (!sampling) break;
        k++;
        const m = await metrics.sample();
        this.runnerSamples.set(k, { servers: { ...procs.sample(), ...m.servers }, host: host.sample(), locality: want.has('locality') ? m.locality : null });
      }
    })();
    s.behaviours.campaigns.forEach((c, i) => {
      const timer = setTimeout(() => void this.startCampaign(i, publisher!, this.t0 + c.atMs), Math.max(0, this.t0 + c.atMs - nowMs()));
      this.res.defer(async () => clearTimeout(timer));
    });

    // The drain ends when everything owed arrived, or when nothing more arrived for `stall`: an
    // overloaded target may take minutes to work off its backlog, and until it stops delivering
    // nothing it owes is "missing" yet. A hard cap keeps a trickle from holding the run forever.
    const stall = this.o.drainTimeoutMs ?? Math.max(30_000, 5 * s.intervalMs);
    const cap = Math.max(DRAIN_CAP_MS, 4 * stall);
    const tracked = this.tracked();
    let drainStart = Infinity;
    let drainMs = 0;
    let lastProgress = 0;
    let lastReceived = -1;
    let complete = !tracked;
    try {
      for (;;) {
        await this.until('the next interval', () => this.assembleReady());
        const iv = this.assemble();
        this.samples.push(iv);
        progress.update({ elapsedMs: Math.min(iv.t * 1000, total), totalMs: total, connected: iv.connected, msgsPerSec: iv.receivedPerSec, p99: iv.latency.p99, saturated: Object.values(iv.generators).some((g) => g.saturated) });
        if (iv.t * 1000 < total) continue;
        if (drainStart === Infinity) drainStart = this.t0 + total;
        drainMs = nowMs() - drainStart;
        const owed = this.owed();
        // Complete when no send still awaits its outcome (its deliveries would not be owed yet) and everything owed arrived.
        if (tracked && owed.pending === 0 && owed.received >= owed.expected && owed.campaignReceived >= this.campaignsExpected) {
          complete = true;
          break;
        }
        // Untracked drivers: give in-flight messages two intervals.
        if (!tracked && iv.t * 1000 >= total + 2 * s.intervalMs) break;
        const arrived = owed.received + owed.campaignReceived;
        if (arrived !== lastReceived) {
          lastReceived = arrived;
          lastProgress = drainMs;
        }
        if (drainMs - lastProgress >= stall || drainMs >= cap) break;
      }
    } finally {
      sampling = false;
      this.finished = true;
    }
    progress.done({ elapsedMs: total, totalMs: total, connected: this.samples.at(-1)?.connected ?? 0, msgsPerSec: this.samples.at(-1)?.receivedPerSec ?? 0, p99: this.samples.at(-1)?.latency.p99 ?? null });
    this.broadcast({ type: 'finish' });
    await this.until('every generator done', () => this.all((g) => g.done !== undefined), DONE_TIMEOUT_MS);
    await sampleLoop;
    return this.result(drainMs, complete);
  }

  /** Whether lost deliveries can be counted: every generator's driver says what the server accepted and keeps. */
  private tracked(): boolean {
    return this.all((g) => g.ready !== undefined && tracksDeliveries(g.ready.capabilities, this.s));
  }

  private owed(): { expected: number; received: number; pending: number; campaignReceived: number } {
    let expected = 0;
    let received = 0;
    let pending = 0;
    for (const g of this.gens.values()) {
      expected += g.expected;
      received += g.receivedTotal;
      pending += g.pending;
    }
    return { expected, received, pending, campaignReceived: this.totals.campaign };
  }

  /**
   * Loss by delivery id: the ids accepted sends owe that never arrived (harness/ledger.ts). With a
   * generator's ledger incomplete (a `ledger` message lost) nothing can be said by id: the run is
   * not complete, and the note says why.
   */
  private delivery(tracked: boolean, drainMs: number, complete: boolean): RunResult['totals']['delivery'] {
    if (!tracked) return { tracked, expected: 0, received: 0, missing: 0, unexpected: 0, repeats: 0, drainMs, complete };
    const lost = [...this.gens.values()].filter((g) => g.ledgerChunks !== g.done?.ledgerChunks);
    if (lost.length > 0) {
      this.notes.push(`The delivery ledgers of ${lost.map((g) => `gen${g.index}`).join(', ')} did not all arrive: loss cannot be counted by id; the counts shown are owed − received.`);
      const owed = this.owed();
      return { tracked, expected: owed.expected, received: owed.received, missing: Math.max(0, owed.expected - owed.received), unexpected: 0, repeats: 0, drainMs, complete: false };
    }
    const a = accountDeliveries(this.owedIds, this.arrivedIds);
    if (this.s.behaviours.messages.steps) this.lost = missingAndRepeated(this.owedIds, this.arrivedIds);
    return { tracked, expected: a.expected, received: a.received, missing: a.missing, unexpected: a.unexpected, repeats: a.repeats, drainMs, complete: complete && a.missing === 0 };
  }

  /** Interval `assembled + 1` can be built: every generator reported it, or the laggards are 3 intervals late (60 in a step sweep). */
  private assembleReady(): boolean {
    const k = this.assembled + 1;
    if (!this.runnerSamples.has(k)) return false;
    const got = this.intervals.get(k)?.size ?? 0;
    if (got >= this.gens.size) return true;
    // Step sweeps summarise each step from its intervals: wait longer for a lagging generator's
    // report (its counts would otherwise go to the totals only and the step would look idle).
    return nowMs() > this.t0 + (k + (this.s.behaviours.messages.steps ? LATE_STEPS : LATE_INTERVALS)) * this.s.intervalMs;
  }

  private assemble(): IntervalSample {
    const k = ++this.assembled;
    const s = this.s;
    const per = this.intervals.get(k) ?? new Map<string, GeneratorInterval>();
    this.intervals.delete(k);
    const runner = this.runnerSamples.get(k)!;
    this.runnerSamples.delete(k);
    if (per.size < this.gens.size) this.notes.push(`interval ${k}: ${this.gens.size - per.size} generator report(s) missing (late or lost)`);
    const secs = s.intervalMs / 1000;
    const sum = (f: (g: GeneratorInterval) => number): number => [...per.values()].reduce((a, g) => a + f(g), 0);
    const generators: IntervalSample['generators'] = {};
    const hosts: IntervalSample['hosts'] = {};
    for (const [id, g] of per) {
      const gen = this.gens.get(id)!;
      generators[`gen${gen.index}`] = g.self;
      hosts[g.host.name] ??= g.host.sample;
      for (const [code, n] of Object.entries(g.errors)) tally(this.errors, code, n);
      this.totals.skipped += g.self.skipped;
    }
    hosts[hostname()] = runner.host;
    const add = { sent: sum((g) => g.sent), accepted: sum((g) => g.accepted), failed: sum((g) => g.failed), received: sum((g) => g.received), catchup: sum((g) => g.catchup), campaign: sum((g) => g.campaign), presence: sum((g) => g.presence), stray: sum((g) => g.stray) };
    this.addCounts(add);
    const latency = latencyJson(percentiles(mergeEncoded([...per.values()].map((g) => g.latency))));
    if (s.behaviours.messages.steps) {
      this.stepHists.set(k, [...per.values()].map((g) => g.latency));
      for (const [id, g] of per) {
        const idx = this.gens.get(id)!.index;
        const marks = this.lastRefs.get(idx) ?? [];
        // A missing report: the ref stays where it was.
        while (marks.length < k - 1) marks.push(marks.at(-1) ?? 0);
        marks[k - 1] = g.lastRef ?? marks.at(-1) ?? 0;
        this.lastRefs.set(idx, marks);
      }
    }
    const lag = percentiles(mergeEncoded([...per.values()].map((g) => g.sendLag)));
    const ct = percentiles(mergeEncoded([...per.values()].map((g) => g.connectTime)));
    const t = +((k * s.intervalMs) / 1000).toFixed(3);
    return {
      t,
      phase: phaseAt(s, t),
      sentPerSec: add.sent / secs,
      acceptedPerSec: add.accepted / secs,
      failedPerSec: add.failed / secs,
      receivedPerSec: add.received / secs,
      catchupPerSec: add.catchup / secs,
      campaignPerSec: add.campaign / secs,
      presencePerSec: add.presence / secs,
      latency,
      sendLagP99: lag.count > 0 ? lag.p99 : null,
      connected: sum((g) => g.connected),
      connectsPerSec: sum((g) => g.connects) / secs,
      connectFailedPerSec: sum((g) => g.connectFailed) / secs,
      connectTime: ct.count > 0 ? { p50: ct.p50, p99: ct.p99 } : { p50: null, p99: null },
      locality: runner.locality,
      servers: runner.servers,
      generators,
      hosts,
    };
  }

  private stepsResult(generators: number): { steps?: RunResult['steps'] } {
    const devices = this.pop.devices.reduce((a, b) => a + b, 0);
    const steps = summarizeSteps(this.s, this.samples, { hists: this.stepHists, lastRefs: this.lastRefs, lost: this.lost, generators, devices });
    if (steps && this.target.driver.kind === 'socketio') this.notes.push('Socket.IO delivers at most once with no acknowledgement to the sender: two frames per message (send, delivery) where Gravitas moves four (message, ack, status, delivery) and encrypts them.');
    return steps ? { steps } : {};
  }

  private addCounts(c: Pick<GeneratorInterval, 'sent' | 'accepted' | 'failed' | 'received' | 'catchup' | 'campaign' | 'presence' | 'stray'>): void {
    const t = this.totals;
    t.sent += c.sent;
    t.accepted += c.accepted;
    t.failed += c.failed;
    t.received += c.received;
    t.catchup += c.catchup;
    t.campaign += c.campaign;
    t.presence += c.presence;
    t.stray += c.stray;
  }

  private result(drainMs: number, complete: boolean): RunResult {
    const gens = [...this.gens.values()].sort((a, b) => a.index - b.index);
    const merged = (f: (t: GeneratorTotals) => string) => latencyJson(percentiles(mergeEncoded(gens.map((g) => f(g.done!)))));
    const driver: Record<string, number> = {};
    for (const g of gens) for (const [k, n] of Object.entries(g.done!.driverCounters)) tally(driver, k, n);
    const owed = this.owed();
    const tracked = this.tracked();
    const generators: GeneratorInfo[] = gens.map((g) => ({
      name: `gen${g.index}`,
      host: g.host,
      pid: g.pid,
      users: g.ready!.users,
      devices: g.ready!.devices,
      clockOffsetMs: g.ready!.clock.offsetMs,
      clockErrorMs: g.ready!.clock.rttMs / 2,
    }));
    const verdict = judge(this.samples, this.s, Object.fromEntries(generators.map((g) => [g.name, g.host])));
    const partial = {
      intervals: this.samples,
      verdict,
      totals: {
        ...this.totals,
        latency: merged((t) => t.latency),
        catchupLatency: merged((t) => t.catchupLatency),
        campaignReach: merged((t) => t.campaignReach),
        sendLag: merged((t) => t.sendLag),
        connectTime: merged((t) => t.connectTime),
        errors: this.errors,
        delivery: this.delivery(tracked, drainMs, complete),
        campaigns: { expected: this.campaignsExpected, received: this.totals.campaign },
        driver,
      },
    };
    const dropped = this.upstream?.dropped() ?? 0;
    if (dropped > 0) this.notes.push(`${dropped} generator messages were dropped by the runner's bounded control queue (it fell behind): some intervals may lack a generator's report.`);
    if (tracked && owed.pending > 0) this.notes.push(`${owed.pending} sends never got an outcome from the server (neither accepted nor refused) by the end of the drain.`);
    if (!tracked) this.notes.push(`The ${this.target.driver.kind} driver cannot tell what the server accepted, so lost messages are not counted; received / sent is shown as it is.`);
    if (Math.max(...generators.map((g) => g.clockErrorMs)) > 1) this.notes.push(`Generator clocks are aligned to within ±${Math.max(...generators.map((g) => g.clockErrorMs)).toFixed(1)} ms: latencies below that are not meaningful.`);
    return {
      format: RESULT_FORMAT,
      scenario: this.s,
      startedAt: '',
      host: hostInfo(),
      target: this.target.description,
      namespace: this.namespace,
      generators,
      setup: { provisionMs: 0, groupsMs: 0, groupsCreated: 0, groupsFailed: 0, errors: {} },
      ...partial,
      capacity: capacity(this.samples),
      bottlenecks: bottlenecks(partial),
      ...this.stepsResult(generators.length),
      notes: this.notes,
    };
  }
}
