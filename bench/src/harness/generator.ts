import { randomBytes } from 'node:crypto';
import { cpus, hostname } from 'node:os';
import type { NatsConnection, Subscription } from '@nats-io/transport-node';
import { estimateClock } from './clock.js';
import { boundedSubscribe, connectControl, decodeToGenerator, encodeControl, SUBJECT, TOKEN, type FromGenerator, type ToGenerator } from './control.js';
import { makeDriver } from './drivers.js';
import { HarnessError } from './errors.js';
import { LoadSession } from './load-session.js';
import { buildPopulation } from './population.js';
import { parseScenario } from './scenario.js';

/*
 * A load-generator process. It connects to the control NATS and waits to be recruited by a
 * runner (`gbench.recruit`); once assigned it takes the runner's commands on its own subject —
 * setup, provision, createGroups, groups, start, finish, abort — and plays its share of the
 * scenario (load-session.ts). Bound to one run (`--run`, how the runner starts local generators)
 * it exits when that run ends; unbound (`gravitas bench generator --control URL` on other hosts or
 * as pods) it goes back to waiting for the next runner.
 *
 * It stops its load by itself when the runner falls silent for RUNNER_SILENCE_MS: a crashed
 * runner must not leave generators hammering a cluster.
 */

const BEAT_MS = 1000;
const RUNNER_SILENCE_MS = 15_000;

export interface GeneratorOptions {
  control: string;
  /** Serve only this run, then exit. */
  run?: string;
  log?: (msg: string) => void;
}

interface Bound {
  run: string;
  index: number;
  count: number;
  session?: LoadSession;
  beatSub?: Subscription;
  lastRunnerBeat: number;
}

export class GeneratorProcess {
  readonly id: string;
  private nc!: NatsConnection;
  private bound: Bound | undefined;
  private beat: NodeJS.Timeout | undefined;
  private watchdog: NodeJS.Timeout | undefined;
  private readonly log: (msg: string) => void;
  private ended!: () => void;
  /** Resolves when a run-bound generator is done (or the process should stop). */
  readonly done = new Promise<void>((r) => (this.ended = r));

  constructor(private readonly o: GeneratorOptions) {
    if (o.run !== undefined && !TOKEN.test(o.run)) throw new HarnessError('CONTROL_MESSAGE_INVALID', `--run must be a subject token, got ${JSON.stringify(o.run)}`);
    this.id = `${hostname().replace(/[^A-Za-z0-9_-]/g, '_').slice(0, 32)}-${process.pid}-${randomBytes(3).toString('hex')}`;
    this.log = o.log ?? ((m) => void process.stderr.write(`[gen ${this.id}] ${m}\n`));
  }

  async start(): Promise<void> {
    this.nc = await connectControl(this.o.control, `gravitas-bench-generator ${this.id}`);
    const onError = (e: unknown): void => this.log(`control: ${(e as Error).message}`);
    boundedSubscribe(this.nc, SUBJECT.recruit, (data, reply) => this.onRecruit(data, reply), onError, 16);
    boundedSubscribe(this.nc, SUBJECT.gen(this.id), (data) => this.onCommand(decodeToGenerator(data)), onError, 64);
    await this.nc.flush();
    this.log(`waiting for a runner on ${this.o.control}${this.o.run ? ` (run ${this.o.run})` : ''}`);
  }

  private onRecruit(data: Uint8Array, reply: string | undefined): void {
    if (!reply || this.bound) return;
    let run: unknown;
    try {
      run = (JSON.parse(new TextDecoder().decode(data)) as { run?: unknown }).run;
    } catch {
      return;
    }
    if (typeof run !== 'string' || (this.o.run !== undefined && run !== this.o.run)) return;
    this.nc.publish(reply, encodeControl({ type: 'hello', gen: this.id, host: hostname(), pid: process.pid, cpus: cpus().length } satisfies FromGenerator));
  }

  private up(m: Record<string, unknown> & { type: string }): void {
    if (!this.bound) return;
    this.nc.publish(SUBJECT.up(this.bound.run), encodeControl({ ...m, gen: this.id }));
  }

  private async onCommand(m: ToGenerator): Promise<void> {
    if (m.type === 'assign') return this.assign(m);
    const b = this.bound;
    if (!b) return;
    b.lastRunnerBeat = performance.now();
    try {
      switch (m.type) {
        case 'setup': {
          const scenario = parseScenario(m.source.text, m.source.format);
          const population = buildPopulation(scenario);
          const clock = await estimateClock(this.nc, SUBJECT.clock(b.run));
          const driver = makeDriver(m.driver, `${m.runTag}-${b.index.toString(36)}-`, b.index);
          b.session = new LoadSession({
            scenario,
            population,
            index: b.index,
            count: b.count,
            namespace: m.namespace,
            runTag: m.runTag,
            driver,
            clockOffsetMs: clock.offsetMs,
            emit: (x) => this.up(x),
            log: this.log,
          });
          this.up({ type: 'ready', users: b.session.userCount, devices: b.session.deviceCount, clock, capabilities: driver.capabilities });
          return;
        }
        case 'provision': {
          // Not awaited: commands (abort above all) must still be taken while it runs.
          const s = this.session(b);
          void s.provision().then(
            (r) => this.up({ type: 'provisioned', ...r }),
            (e: Error) => this.fail('PROVISION_FAILED', e),
          );
          return;
        }
        case 'createGroups': {
          const s = this.session(b);
          void s.createGroups(m.groups).then(
            (r) => this.up({ type: 'groupsCreated', ...r }),
            (e: Error) => this.fail('PROVISION_FAILED', e),
          );
          return;
        }
        case 'groups': {
          const s = this.session(b);
          void s.joinGroups(m.ids).then(
            (r) => {
              s.setGroups(m.ids);
              this.up({ type: 'groupsJoined', ...r });
            },
            (e: Error) => this.fail('PROVISION_FAILED', e),
          );
          return;
        }
        case 'start':
          return this.session(b).start(m.t0);
        case 'finish': {
          const totals = await this.session(b).finish();
          this.up({ type: 'done', ...totals });
          return await this.release();
        }
        case 'abort':
          this.log(`aborted by the runner: ${m.reason}`);
          await b.session?.abort();
          return await this.release();
      }
    } catch (e) {
      this.fail(e instanceof HarnessError ? e.code : 'GENERATOR_FAILED', e as Error);
    }
  }

  private session(b: Bound): LoadSession {
    if (!b.session) throw new HarnessError('GENERATOR_FAILED', 'no setup received before this command');
    return b.session;
  }

  private async assign(m: Extract<ToGenerator, { type: 'assign' }>): Promise<void> {
    if (this.bound || (this.o.run !== undefined && m.run !== this.o.run)) {
      // Taken by another runner meanwhile: say so on that runner's subject.
      this.nc.publish(SUBJECT.up(m.run), encodeControl({ type: 'assigned', gen: this.id, ok: false, reason: 'busy' } satisfies FromGenerator));
      return;
    }
    const b: Bound = { run: m.run, index: m.index, count: m.count, lastRunnerBeat: performance.now() };
    this.bound = b;
    b.beatSub = this.nc.subscribe(SUBJECT.beat(m.run), { callback: () => void (b.lastRunnerBeat = performance.now()) });
    this.beat = setInterval(() => this.up({ type: 'beat' }), BEAT_MS);
    this.watchdog = setInterval(() => {
      if (performance.now() - b.lastRunnerBeat < RUNNER_SILENCE_MS) return;
      this.log(`the runner of ${b.run} fell silent for ${RUNNER_SILENCE_MS / 1000} s: stopping the load`);
      // release() settles (its flush is caught); the abort's own failure is the session's to report.
      void b.session?.abort().catch(() => undefined).then(() => this.release());
    }, BEAT_MS);
    this.up({ type: 'assigned', ok: true });
    this.log(`assigned to run ${m.run} as generator ${m.index + 1} of ${m.count}`);
  }

  private fail(code: string, e: Error): void {
    this.log(`${code}: ${e.stack ?? e.message}`);
    this.up({ type: 'failed', code, message: e.message });
  }

  private async release(): Promise<void> {
    const b = this.bound;
    if (!b) return;
    clearInterval(this.beat);
    clearInterval(this.watchdog);
    b.beatSub?.unsubscribe();
    await this.nc.flush().catch(() => undefined);
    this.bound = undefined;
    if (this.o.run !== undefined) this.ended();
    else this.log('run over; waiting for the next runner');
  }

  async close(): Promise<void> {
    await this.bound?.session?.abort();
    await this.release();
    await this.nc.drain().catch(() => undefined);
  }
}

/** Entry point of a generator process: `--control URL [--run ID]`. */
export async function generatorMain(argv: readonly string[]): Promise<number> {
  const arg = (name: string): string | undefined => {
    const i = argv.indexOf(`--${name}`);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  const control = arg('control');
  if (!control) {
    process.stderr.write('usage: gravitas bench generator --control nats://HOST:PORT [--run RUN_ID]\n');
    return 2;
  }
  const run = arg('run');
  const g = new GeneratorProcess({ control, ...(run !== undefined && { run }) });
  const stop = (): void => void g.close().finally(() => process.exit(0));
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
  await g.start();
  // The runner that spawned this process waits for this line.
  process.stdout.write(`generator ready ${g.id}\n`);
  if (run === undefined) await new Promise(() => undefined); // serves runners until killed
  await g.done;
  await g.close();
  return 0;
}
