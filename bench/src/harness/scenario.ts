import { readFile } from 'node:fs/promises';
import { extname } from 'node:path';
import { parseDocument } from 'yaml';
import { ScenarioError } from './errors.js';

/*
 * Scenario files: what a load run does, as data. `loadScenario` reads YAML or JSON, and
 * `validateScenario` turns the raw value into a fully defaulted `Scenario` or throws one
 * ScenarioError listing every problem with its path. Durations are seconds (a number) or a string
 * with a unit ("500ms", "30s", "10m", "2h"); inside `Scenario` they are milliseconds.
 * The format is documented, with an annotated example, in docs/benchmarking.md.
 */

export const METRICS = ['throughput', 'latency', 'connections', 'locality', 'servers', 'generators'] as const;
export type Metric = (typeof METRICS)[number];

/** A truncated power law x^-exponent on [min, max]. */
export interface PowerLaw {
  min: number;
  max: number;
  exponent: number;
}

export interface Diurnal {
  /** Relative activity over one day, equally spaced and cyclic, scaled so that its maximum is 1. */
  curve: number[];
  /** Wall time over which the whole day is played (time compression). */
  dayLengthMs: number;
  /** Hour of the day (0–24) at which the run starts. */
  startHour: number;
}

export interface ReconnectStorm {
  /** From the start of the run (ramp-up included). */
  atMs: number;
  /** Share of the connected devices that drop at once... */
  share: number;
  /** ...and reconnect spread over this time. */
  overMs: number;
}

export interface Campaign {
  atMs: number;
  /** Share of users who receive it. */
  audience: number;
  /** Messages per second while it is sent. */
  ratePerSec: number;
}

/**
 * A step sweep of offered rates (issue 17's comparison): after the ramp-up, each rate in turn for
 * `warmupMs + holdMs` (only the hold is measured), then optionally a closed-loop step of the same
 * length in which every connected user keeps `inFlight` messages on their way (the next leaves
 * when one arrives). It replaces perUserPerMinute and the diurnal curve.
 */
export interface Steps {
  /** Offered msgs/s of the whole population, one per step. */
  rates: number[];
  warmupMs: number;
  holdMs: number;
  closedLoop?: { inFlight: number };
}

export interface Behaviours {
  messages: {
    /** Messages a user sends per minute at the curve's peak. */
    perUserPerMinute: number;
    bodyBytes: number;
    diurnal: Diurnal;
    steps?: Steps;
  };
  groups: {
    /** Share of messages sent to a group rather than to one contact. */
    share: number;
    count: number;
    size: PowerLaw;
  };
  presence: { changesPerUserPerMinute: number };
  reconnectStorms: ReconnectStorm[];
  offline: {
    /** Share of users offline at any moment (their messages wait in custody). */
    share: number;
    meanDurationMs: number;
  };
  campaigns: Campaign[];
}

export interface GravitasLocalTarget {
  driver: 'gravitas';
  /**
   * Start a private cluster: a nats-server and `nodes` gravitas node processes. `config` is node
   * configuration laid over the harness's (top-level keys replace, `limits` merge), checked by the
   * node itself when it starts (docs/operations.md), e.g. `{ gravity: { intervalMs: 1000 } }`.
   */
  local: { nodes: number; cellsPerNode: number; config?: Record<string, unknown> };
}

export interface GravitasRemoteTarget {
  driver: 'gravitas';
  /** An already running cluster: client addresses (host:port) and the server's static public key. */
  remote: {
    addresses: string[];
    serverPublicKey: string;
    /** Admin API of one node and its token: needed for campaigns. */
    admin?: { url: string; token: string };
    /** The nodes' /metrics URLs: locality and server CPU/memory for the report. */
    metrics: string[];
  };
}

export interface XmppTarget {
  driver: 'xmpp';
  /**
   * Start a private server for the run (Debian's prosody, or an ejabberd of `nodes` BEAM nodes
   * in one cluster); host, port and domain are then its own.
   */
  local?: { server: 'prosody' } | { server: 'ejabberd'; nodes: number };
  host: string;
  port: number;
  domain: string;
  /** The multi-user chat service that holds the groups' rooms. */
  muc: string;
  /** Create accounts by in-band registration (XEP-0077) while provisioning; else they must exist. */
  register: boolean;
}

/** The Socket.IO peer: `processes` Socket.IO servers on one Redis, started for the run. */
export interface SocketIoTarget {
  driver: 'socketio';
  local: { processes: number };
}

export type Target = GravitasLocalTarget | GravitasRemoteTarget | XmppTarget | SocketIoTarget;

/** A target's short name (`--targets`, the comparison table): gravitas, ejabberd, prosody, xmpp, socketio. */
export function targetName(t: Target): string {
  if (t.driver === 'xmpp') return t.local?.server ?? 'xmpp';
  return t.driver;
}

export interface Scenario {
  name: string;
  description: string;
  seed: number;
  users: number;
  /** Mean devices per user (≥ 1; a fraction means some users have one more). */
  devicesPerUser: number;
  graph: {
    /** Share of each user's contacts outside its community. */
    mu: number;
    communities: PowerLaw;
    degree: PowerLaw;
    /**
     * Instead of the LFR-like graph (mu, communities, degree): communities of `community`
     * consecutive ids, each user with `inside` distinct contacts from its own community and
     * `outside` drawn uniformly from everyone (the workload of issue 17's comparison).
     */
    consecutive?: { community: number; inside: number; outside: number };
  };
  behaviours: Behaviours;
  /** Users connect spread over this time at the start; messaging starts as they connect. */
  rampUpMs: number;
  /** Steady state after the ramp-up. */
  durationMs: number;
  /** Length of one reported interval. */
  intervalMs: number;
  metrics: Metric[];
  generators: {
    count: number;
    /** Connections one generator process may hold (below the 20,000 file descriptors of a process here). */
    maxConnections: number;
    /** A generator over either threshold in an interval is flagged saturated. */
    saturation: { cpu: number; loopLagMs: number };
  };
  /** The first of `targets` (a scenario names one target, or a list of them). */
  target: Target;
  /** Every target the scenario runs against, in turn (`target` alone: just it). */
  targets: Target[];
  /** Servers under `taskset -c 0`, generators under `taskset -c 1` (the CLI's --pin sets it too). */
  pin: boolean;
}

/** Node settings a local target's harness owns: a scenario's `target.local.config` may not set them. */
const HARNESS_NODE_KEYS = ['nodeId', 'nats', 'cells', 'listen', 'admin', 'dataDir', 'serverKey', 'ticketKeys', 'registration'] as const;

/** Highest `generators.maxConnections`: the per-process fd limit (20,000) minus room for NATS, stdio and files. */
export const MAX_CONNECTIONS_PER_GENERATOR = 19_000;

export const DIURNAL_PRESETS: Readonly<Record<string, readonly number[]>> = {
  flat: [1],
  // Hourly, from midnight: quiet night, a working-day plateau, the evening peak around 20–21 h.
  chat: [0.15, 0.08, 0.05, 0.04, 0.04, 0.06, 0.15, 0.35, 0.55, 0.65, 0.7, 0.75, 0.8, 0.75, 0.7, 0.7, 0.72, 0.75, 0.8, 0.9, 1, 0.95, 0.7, 0.35],
};

// ---------- loading ----------

/** Reads and validates a scenario file (.json as JSON, anything else as YAML, which includes JSON). */
export async function loadScenario(file: string): Promise<Scenario> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (e) {
    throw new ScenarioError('SCENARIO_READ', file, [`cannot read: ${(e as Error).message}`], { cause: e });
  }
  return parseScenario(text, extname(file).toLowerCase() === '.json' ? 'json' : 'yaml', file);
}

export function parseScenario(text: string, format: 'json' | 'yaml', file?: string): Scenario {
  let raw: unknown;
  if (format === 'json') {
    try {
      raw = JSON.parse(text);
    } catch (e) {
      throw new ScenarioError('SCENARIO_PARSE', file, [`not valid JSON: ${(e as Error).message}`], { cause: e });
    }
  } else {
    const doc = parseDocument(text, { prettyErrors: true, uniqueKeys: true });
    if (doc.errors.length > 0) throw new ScenarioError('SCENARIO_PARSE', file, doc.errors.map((e) => `not valid YAML: ${e.message.split('\n')[0] ?? ''}`));
    raw = doc.toJS();
  }
  return validateScenario(raw, file);
}

// ---------- validation ----------

type Obj = Record<string, unknown>;

const show = (v: unknown): string => (v === undefined ? 'nothing' : typeof v === 'string' ? JSON.stringify(v) : Array.isArray(v) ? 'a list' : v === null ? 'null' : typeof v === 'object' ? 'an object' : String(v));

const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

interface NumRule {
  int?: boolean;
  min?: number;
  max?: number;
  /** Exclusive lower bound. */
  gt?: number;
}

function describe(r: NumRule): string {
  const kind = r.int ? 'an integer' : 'a number';
  if (r.min !== undefined && r.max !== undefined) return `${kind} in [${r.min}, ${r.max}]`;
  if (r.gt !== undefined && r.max !== undefined) return `${kind} in (${r.gt}, ${r.max}]`;
  if (r.min !== undefined) return `${kind} ≥ ${r.min}`;
  if (r.gt !== undefined) return `${kind} > ${r.gt}`;
  if (r.max !== undefined) return `${kind} ≤ ${r.max}`;
  return kind;
}

/** Edit distance, to suggest the key a typo meant. */
function distance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let prev = row[0]!;
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const cur = row[j]!;
      row[j] = Math.min(row[j]! + 1, row[j - 1]! + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = cur;
    }
  }
  return row[b.length]!;
}

const DURATION = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h)$/;
const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** Collects every problem instead of stopping at the first, so one run of a bad file shows them all. */
class Checker {
  readonly issues: string[] = [];

  fail(path: string, msg: string): void {
    this.issues.push(`${path}: ${msg}`);
  }

  /** An object at `path` (absent → {} when optional), with unknown keys reported. */
  obj(v: unknown, path: string, keys: readonly string[], optional = true): Obj {
    if (v === undefined && optional) return {};
    if (!isObj(v)) {
      this.fail(path === '' ? '(top level)' : path, v === undefined ? 'is required (an object)' : `must be an object, got ${show(v)}`);
      return {};
    }
    for (const k of Object.keys(v)) {
      if (keys.includes(k)) continue;
      const near = keys.find((c) => distance(c.toLowerCase(), k.toLowerCase()) <= 2);
      this.fail(join(path, k), `unknown key${near ? ` (did you mean "${near}"?)` : ''}; allowed: ${keys.join(', ')}`);
    }
    return v;
  }

  num(o: Obj, key: string, path: string, rule: NumRule, dflt?: number): number {
    const v = o[key];
    const p = join(path, key);
    if (v === undefined) {
      if (dflt === undefined) this.fail(p, `is required (${describe(rule)})`);
      return dflt ?? NaN;
    }
    const ok =
      typeof v === 'number' &&
      Number.isFinite(v) &&
      (!rule.int || Number.isInteger(v)) &&
      (rule.min === undefined || v >= rule.min) &&
      (rule.max === undefined || v <= rule.max) &&
      (rule.gt === undefined || v > rule.gt);
    if (!ok) {
      this.fail(p, `must be ${describe(rule)}, got ${show(v)}`);
      return dflt ?? NaN;
    }
    return v;
  }

  str(o: Obj, key: string, path: string, dflt?: string, pattern?: RegExp): string {
    const v = o[key];
    const p = join(path, key);
    if (v === undefined && dflt !== undefined) return dflt;
    if (typeof v !== 'string' || v === '' || (pattern && !pattern.test(v))) {
      this.fail(p, v === undefined ? 'is required (a string)' : `must be a ${pattern ? `string matching ${pattern.source}` : 'non-empty string'}, got ${show(v)}`);
      return dflt ?? '';
    }
    return v;
  }

  /** Seconds as a number, or a string with a unit; returns ms. */
  duration(o: Obj, key: string, path: string, dfltMs?: number, allowZero = false): number {
    const v = o[key];
    const p = join(path, key);
    if (v === undefined) {
      if (dfltMs === undefined) this.fail(p, 'is required (a duration: seconds, or e.g. "30s", "10m", "500ms")');
      return dfltMs ?? NaN;
    }
    let ms = NaN;
    if (typeof v === 'number') ms = v * 1000;
    else if (typeof v === 'string') {
      const m = DURATION.exec(v.trim());
      if (m) ms = Number(m[1]) * UNIT_MS[m[2]!]!;
    }
    if (!Number.isFinite(ms) || ms < 0 || (!allowZero && ms === 0)) {
      this.fail(p, `must be a ${allowZero ? '' : 'positive '}duration (seconds, or e.g. "30s", "10m", "500ms"), got ${show(v)}`);
      return dfltMs ?? NaN;
    }
    return ms;
  }

  list(v: unknown, path: string): unknown[] {
    if (v === undefined) return [];
    if (!Array.isArray(v)) {
      this.fail(path, `must be a list, got ${show(v)}`);
      return [];
    }
    return v;
  }

  powerLaw(v: unknown, path: string, dflt: PowerLaw, rule: NumRule): PowerLaw {
    const o = this.obj(v, path, ['min', 'max', 'exponent']);
    const p: PowerLaw = {
      min: this.num(o, 'min', path, rule, dflt.min),
      max: this.num(o, 'max', path, rule, dflt.max),
      // The sampler's inverse CDF divides by (1 − exponent).
      exponent: this.num(o, 'exponent', path, { gt: 1, max: 10 }, dflt.exponent),
    };
    if (p.min > p.max) this.fail(path, `min (${p.min}) must not exceed max (${p.max})`);
    return p;
  }
}

const join = (path: string, key: string | number): string => (typeof key === 'number' ? `${path}[${key}]` : path === '' ? key : `${path}.${key}`);

/** Turns a parsed file into a Scenario with every default filled in, or throws ScenarioError (SCENARIO_INVALID). */
export function validateScenario(raw: unknown, file?: string): Scenario {
  const c = new Checker();
  const top = c.obj(raw, '', ['name', 'description', 'seed', 'users', 'devicesPerUser', 'graph', 'behaviours', 'rampUp', 'duration', 'interval', 'metrics', 'generators', 'target', 'targets', 'pin'], false);
  if (!isObj(raw)) throw new ScenarioError('SCENARIO_INVALID', file, [`the file must hold an object (a mapping of keys), got ${show(raw)}`]);

  const users = c.num(top, 'users', '', { int: true, min: 2, max: 10_000_000 });
  const rampUpMs = c.duration(top, 'rampUp', '', 0, true);
  const b = c.obj(top['behaviours'], 'behaviours', ['messages', 'groups', 'presence', 'reconnectStorms', 'offline', 'campaigns']);
  const m = c.obj(b['messages'], 'behaviours.messages', ['perUserPerMinute', 'bodyBytes', 'diurnal', 'steps']);
  const steps = m['steps'] === undefined ? undefined : stepsOf(c, m, top);
  // With steps, the duration is theirs: given, it must match.
  const durationMs = steps ? c.duration(top, 'duration', '', stepsTotalMs(steps)) : c.duration(top, 'duration', '');
  if (steps && Number.isFinite(durationMs) && durationMs !== stepsTotalMs(steps)) c.fail('duration', `must be the steps' total (${stepsTotalMs(steps) / 1000} s: ${steps.rates.length + (steps.closedLoop ? 1 : 0)} steps × (warmup + hold)) or left out, got ${durationMs / 1000} s`);
  const totalMs = rampUpMs + durationMs;

  const g = c.obj(top['graph'], 'graph', ['mu', 'communities', 'degree', 'consecutive']);
  const graph: Scenario['graph'] = {
    mu: c.num(g, 'mu', 'graph', { min: 0, max: 0.99 }, 0.2),
    communities: c.powerLaw(g['communities'], 'graph.communities', { min: 10, max: 2000, exponent: 2 }, { int: true, min: 2 }),
    degree: c.powerLaw(g['degree'], 'graph.degree', { min: 4, max: 1000, exponent: 2.5 }, { int: true, min: 1 }),
  };
  if (g['consecutive'] !== undefined) {
    const p = 'graph.consecutive';
    const o = c.obj(g['consecutive'], p, ['community', 'inside', 'outside'], false);
    const cons = { community: c.num(o, 'community', p, { int: true, min: 2 }), inside: c.num(o, 'inside', p, { int: true, min: 0 }), outside: c.num(o, 'outside', p, { int: true, min: 0 }) };
    if (cons.inside >= cons.community) c.fail(join(p, 'inside'), `must be below community (${cons.community}: contacts are distinct and never the user), got ${cons.inside}`);
    if (Number.isFinite(users) && cons.community > users) c.fail(join(p, 'community'), `must not exceed users (${users}), got ${cons.community}`);
    if (cons.inside + cons.outside === 0) c.fail(p, 'must give each user at least one contact (inside + outside ≥ 1)');
    for (const k of ['mu', 'communities', 'degree']) if (g[k] !== undefined) c.fail(join('graph', k), 'is not used with graph.consecutive: leave it out');
    graph.consecutive = cons;
  }

  const gr = c.obj(b['groups'], 'behaviours.groups', ['share', 'count', 'size']);
  const pr = c.obj(b['presence'], 'behaviours.presence', ['changesPerUserPerMinute']);
  const off = c.obj(b['offline'], 'behaviours.offline', ['share', 'meanDuration']);
  const within = (atMs: number, path: string): void => {
    if (Number.isFinite(atMs) && Number.isFinite(totalMs) && atMs >= totalMs) c.fail(path, `must be before the end of the run (rampUp + duration = ${totalMs / 1000} s), got ${atMs / 1000} s`);
  };
  const behaviours: Behaviours = {
    messages: {
      perUserPerMinute: c.num(m, 'perUserPerMinute', 'behaviours.messages', { min: 0, max: 60_000 }, 1),
      bodyBytes: c.num(m, 'bodyBytes', 'behaviours.messages', { int: true, min: 0, max: 60_000 }, 100),
      diurnal: diurnal(c, m['diurnal'], 'behaviours.messages.diurnal', totalMs),
      ...(steps && { steps }),
    },
    groups: {
      share: c.num(gr, 'share', 'behaviours.groups', { min: 0, max: 1 }, 0),
      count: c.num(gr, 'count', 'behaviours.groups', { int: true, min: 0 }, 0),
      size: c.powerLaw(gr['size'], 'behaviours.groups.size', { min: 3, max: 100, exponent: 2 }, { int: true, min: 2 }),
    },
    presence: { changesPerUserPerMinute: c.num(pr, 'changesPerUserPerMinute', 'behaviours.presence', { min: 0, max: 600 }, 0) },
    reconnectStorms: c.list(b['reconnectStorms'], 'behaviours.reconnectStorms').map((v, i) => {
      const p = join('behaviours.reconnectStorms', i);
      const o = c.obj(v, p, ['at', 'share', 'over'], false);
      const storm = { atMs: c.duration(o, 'at', p, undefined, true), share: c.num(o, 'share', p, { gt: 0, max: 1 }), overMs: c.duration(o, 'over', p, 1000) };
      within(storm.atMs, join(p, 'at'));
      return storm;
    }),
    offline: {
      share: c.num(off, 'share', 'behaviours.offline', { min: 0, max: 0.99 }, 0),
      meanDurationMs: c.duration(off, 'meanDuration', 'behaviours.offline', 30_000),
    },
    campaigns: c.list(b['campaigns'], 'behaviours.campaigns').map((v, i) => {
      const p = join('behaviours.campaigns', i);
      const o = c.obj(v, p, ['at', 'audience', 'ratePerSec'], false);
      const camp = { atMs: c.duration(o, 'at', p, undefined, true), audience: c.num(o, 'audience', p, { gt: 0, max: 1 }), ratePerSec: c.num(o, 'ratePerSec', p, { gt: 0 }, 1000) };
      within(camp.atMs, join(p, 'at'));
      return camp;
    }),
  };
  const gs = behaviours.groups;
  if (gs.share > 0 && gs.count === 0) c.fail('behaviours.groups.count', `must be ≥ 1 when behaviours.groups.share is ${gs.share}`);
  if (gs.count > 0 && Number.isFinite(users) && gs.size.max > users) c.fail('behaviours.groups.size.max', `must not exceed users (${users}), got ${gs.size.max}`);

  const metricsRaw = top['metrics'] === undefined ? [...METRICS] : c.list(top['metrics'], 'metrics');
  const metrics: Metric[] = [];
  metricsRaw.forEach((v, i) => {
    if (!(METRICS as readonly unknown[]).includes(v)) c.fail(join('metrics', i), `must be one of ${METRICS.join(', ')}, got ${show(v)}`);
    else if (metrics.includes(v as Metric)) c.fail(join('metrics', i), `${show(v)} is listed twice`);
    else metrics.push(v as Metric);
  });

  const ge = c.obj(top['generators'], 'generators', ['count', 'maxConnections', 'saturation']);
  const sat = c.obj(ge['saturation'], 'generators.saturation', ['cpu', 'loopLag']);
  const generators: Scenario['generators'] = {
    count: c.num(ge, 'count', 'generators', { int: true, min: 1, max: 256 }, 1),
    maxConnections: c.num(ge, 'maxConnections', 'generators', { int: true, min: 1, max: MAX_CONNECTIONS_PER_GENERATOR }, 15_000),
    saturation: { cpu: c.num(sat, 'cpu', 'generators.saturation', { gt: 0, max: 1 }, 0.8), loopLagMs: c.duration(sat, 'loopLag', 'generators.saturation', 50) },
  };
  const devicesPerUser = c.num(top, 'devicesPerUser', '', { min: 1, max: 16 }, 1);
  const devices = Math.ceil(users * devicesPerUser);
  if (Number.isFinite(devices) && generators.count * generators.maxConnections < devices) {
    c.fail('generators', `${generators.count} generator(s) × ${generators.maxConnections} connections cannot hold ${devices} devices (users × devicesPerUser): raise generators.count to ≥ ${Math.ceil(devices / generators.maxConnections)}`);
  }

  const scenario: Scenario = {
    name: c.str(top, 'name', '', undefined, /^[A-Za-z0-9][A-Za-z0-9._-]*$/),
    description: c.str(top, 'description', '', ''),
    seed: c.num(top, 'seed', '', { int: true, min: 0, max: 2 ** 32 - 1 }, 1),
    users,
    devicesPerUser,
    graph,
    behaviours,
    rampUpMs,
    durationMs,
    intervalMs: c.duration(top, 'interval', '', 1000),
    metrics,
    generators,
    ...targets(c, top),
    pin: pinOf(c, top['pin']),
  };
  if (steps?.closedLoop && generators.count !== 1) c.fail('behaviours.messages.steps.closedLoop', `needs generators.count 1 (a message's arrival frees its sender's slot, so sender and recipient must share a generator), got ${generators.count}`);
  for (const t of scenario.targets) {
    if (behaviours.campaigns.length > 0) {
      if (t.driver !== 'gravitas') c.fail('behaviours.campaigns', `need driver "gravitas" (campaigns are a Gravitas feature), got driver "${t.driver}"`);
      else if ('remote' in t && t.remote.admin === undefined) c.fail('behaviours.campaigns', 'need target.remote.admin (url and token) to create campaigns on a remote cluster');
    }
    if (t.driver === 'socketio' && behaviours.groups.share > 0) c.fail('behaviours.groups.share', 'must be 0 with driver "socketio" (the Socket.IO peer has no groups)');
  }
  if (scenario.intervalMs > durationMs) c.fail('interval', `must not exceed duration (${durationMs / 1000} s), got ${scenario.intervalMs / 1000} s`);
  if (c.issues.length > 0) throw new ScenarioError('SCENARIO_INVALID', file, c.issues);
  return scenario;
}

function diurnal(c: Checker, v: unknown, path: string, totalMs: number): Diurnal {
  const o = c.obj(v, path, ['curve', 'dayLength', 'startHour']);
  let curve: number[] = [1];
  const cv = o['curve'];
  if (typeof cv === 'string') {
    const preset = DIURNAL_PRESETS[cv];
    if (preset) curve = [...preset];
    else c.fail(join(path, 'curve'), `must be a list of numbers or one of ${Object.keys(DIURNAL_PRESETS).join(', ')}, got ${show(cv)}`);
  } else if (cv !== undefined) {
    const list = c.list(cv, join(path, 'curve'));
    if (list.length > 0 && list.every((x) => typeof x === 'number' && Number.isFinite(x) && x >= 0) && list.some((x) => (x as number) > 0)) {
      const max = Math.max(...(list as number[]));
      curve = (list as number[]).map((x) => x / max);
    } else if (Array.isArray(cv)) c.fail(join(path, 'curve'), 'must be a non-empty list of numbers ≥ 0, not all 0');
  }
  // Default: the whole day once over the run, so a short run still sweeps the curve.
  const dflt = Number.isFinite(totalMs) && totalMs > 0 ? totalMs : 86_400_000;
  return { curve, dayLengthMs: c.duration(o, 'dayLength', path, dflt), startHour: c.num(o, 'startHour', path, { min: 0, max: 24 }, 0) };
}

function pinOf(c: Checker, v: unknown): boolean {
  if (v !== undefined && typeof v !== 'boolean') c.fail('pin', `must be true or false, got ${show(v)}`);
  return v === true;
}

/** `target` (one) or `targets` (a list, run in turn), not both. */
function targets(c: Checker, top: Obj): { target: Target; targets: Target[] } {
  if (top['targets'] === undefined) {
    const t = target(c, top['target'], 'target');
    return { target: t, targets: [t] };
  }
  if (top['target'] !== undefined) c.fail('targets', 'give either target or targets, not both');
  const list = c.list(top['targets'], 'targets');
  if (list.length === 0 && Array.isArray(top['targets'])) c.fail('targets', 'must list at least one target');
  const ts = list.map((v, i) => target(c, v, join('targets', i)));
  const names = ts.map(targetName);
  names.forEach((n, i) => {
    if (names.indexOf(n) !== i) c.fail(join('targets', i), `${show(n)} is listed twice (targets are told apart by name)`);
  });
  return { target: ts[0] ?? { driver: 'gravitas', local: { nodes: 1, cellsPerNode: 1 } }, targets: ts };
}

function target(c: Checker, v: unknown, at: string): Target {
  const o = c.obj(v, at, ['driver', 'local', 'remote', 'host', 'port', 'domain', 'muc', 'register'], false);
  const driver = o['driver'];
  // Already reported as missing or not an object: no second message about its driver.
  if (!isObj(v)) return { driver: 'gravitas', local: { nodes: 1, cellsPerNode: 1 } };
  if (driver === 'socketio') {
    for (const k of ['remote', 'host', 'port', 'domain', 'muc', 'register']) if (o[k] !== undefined) c.fail(join(at, k), 'is not for driver "socketio" (the harness starts the peer: give local)');
    const l = c.obj(o['local'], join(at, 'local'), ['processes']);
    return { driver, local: { processes: c.num(l, 'processes', join(at, 'local'), { int: true, min: 1, max: 16 }, 2) } };
  }
  if (driver === 'xmpp') {
    if (o['remote'] !== undefined) c.fail(join(at, 'remote'), 'is for driver "gravitas"');
    let local: XmppTarget['local'];
    if (o['local'] !== undefined) {
      const l = c.obj(o['local'], join(at, 'local'), ['server', 'nodes'], false);
      const server = l['server'];
      if (server === 'ejabberd') local = { server, nodes: c.num(l, 'nodes', join(at, 'local'), { int: true, min: 1, max: 8 }, 1) };
      else {
        if (server !== 'prosody') c.fail(join(at, 'local.server'), `must be "prosody" or "ejabberd" (the servers the harness can start), got ${show(server)}`);
        else if (l['nodes'] !== undefined) c.fail(join(at, 'local.nodes'), 'is for server "ejabberd" (the harness starts one prosody)');
        local = { server: 'prosody' };
      }
      for (const k of ['host', 'port', 'domain', 'muc']) if (o[k] !== undefined) c.fail(join(at, k), 'comes from the local server: give either local or host/port/domain');
    }
    const domain = c.str(o, 'domain', at, 'localhost', /^[a-z0-9.-]+$/);
    const register = o['register'] ?? true;
    if (typeof register !== 'boolean') c.fail(`${at}.register`, `must be true or false, got ${show(register)}`);
    return {
      driver,
      ...(local && { local }),
      host: c.str(o, 'host', at, '127.0.0.1'),
      port: c.num(o, 'port', at, { int: true, min: 1, max: 65535 }, 5222),
      domain,
      muc: c.str(o, 'muc', at, `conference.${domain}`, /^[a-z0-9.-]+$/),
      register: register === true,
    };
  }
  if (driver !== 'gravitas') {
    c.fail(`${at}.driver`, `must be "gravitas", "xmpp" or "socketio", got ${show(driver)}`);
    return { driver: 'gravitas', local: { nodes: 1, cellsPerNode: 1 } };
  }
  for (const k of ['host', 'port', 'domain', 'muc', 'register']) if (o[k] !== undefined) c.fail(join(at, k), 'is for driver "xmpp"');
  if (o['remote'] !== undefined) {
    if (o['local'] !== undefined) c.fail(at, 'give either local or remote, not both');
    const r = c.obj(o['remote'], `${at}.remote`, ['addresses', 'serverPublicKey', 'admin', 'metrics'], false);
    const addresses = c.list(r['addresses'], `${at}.remote.addresses`);
    if (addresses.length === 0) c.fail(`${at}.remote.addresses`, 'must list at least one host:port');
    addresses.forEach((a, i) => {
      if (typeof a !== 'string' || !/^[^\s:]+:\d{1,5}$/.test(a)) c.fail(join(`${at}.remote.addresses`, i), `must be "host:port", got ${show(a)}`);
    });
    const metrics = c.list(r['metrics'], `${at}.remote.metrics`);
    metrics.forEach((u, i) => {
      if (typeof u !== 'string' || !/^https?:\/\/\S+$/.test(u)) c.fail(join(`${at}.remote.metrics`, i), `must be an http(s) URL, got ${show(u)}`);
    });
    let admin: GravitasRemoteTarget['remote']['admin'];
    if (r['admin'] !== undefined) {
      const a = c.obj(r['admin'], `${at}.remote.admin`, ['url', 'token'], false);
      admin = { url: c.str(a, 'url', `${at}.remote.admin`, undefined, /^https?:\/\/\S+$/), token: c.str(a, 'token', `${at}.remote.admin`) };
    }
    return {
      driver,
      remote: {
        addresses: addresses as string[],
        serverPublicKey: c.str(r, 'serverPublicKey', `${at}.remote`, undefined, /^[A-Za-z0-9_-]{43}$/),
        ...(admin && { admin }),
        metrics: metrics as string[],
      },
    };
  }
  const l = c.obj(o['local'], `${at}.local`, ['nodes', 'cellsPerNode', 'config']);
  const config = l['config'];
  if (config !== undefined && !isObj(config)) c.fail(`${at}.local.config`, `must be an object of node settings, got ${show(config)}`);
  if (isObj(config)) for (const k of HARNESS_NODE_KEYS) if (k in config) c.fail(join(`${at}.local.config`, k), 'is set by the harness (nodes and cells come from nodes and cellsPerNode)');
  return {
    driver,
    local: {
      nodes: c.num(l, 'nodes', `${at}.local`, { int: true, min: 1, max: 16 }, 2),
      cellsPerNode: c.num(l, 'cellsPerNode', `${at}.local`, { int: true, min: 1, max: 16 }, 1),
      ...(isObj(config) && { config }),
    },
  };
}

// ---------- derived quantities ----------

/** The run's total length: ramp-up then steady state. */
export const scenarioTotalMs = (s: Scenario): number => s.rampUpMs + s.durationMs;

/** Activity multiplier (0–1) of the diurnal curve at `tMs` into the run: cyclic linear interpolation. */
export function diurnalFactor(d: Diurnal, tMs: number): number {
  const n = d.curve.length;
  if (n === 1) return d.curve[0]!;
  const day = (((d.startHour / 24 + tMs / d.dayLengthMs) % 1) + 1) % 1;
  const x = day * n;
  const i = Math.floor(x) % n;
  const f = x - Math.floor(x);
  return d.curve[i]! * (1 - f) + d.curve[(i + 1) % n]! * f;
}

/** Messages per second the whole population offers at `tMs` when `connected` users are online. */
export const offeredRate = (s: Scenario, tMs: number, connected: number): number =>
  (connected * s.behaviours.messages.perUserPerMinute * diurnalFactor(s.behaviours.messages.diurnal, tMs)) / 60;

// ---------- step sweeps ----------

/** `behaviours.messages.steps`; perUserPerMinute and diurnal are the open-loop alternative, not combined with it. */
function stepsOf(c: Checker, m: Obj, top: Obj): Steps {
  const path = 'behaviours.messages.steps';
  for (const k of ['perUserPerMinute', 'diurnal']) if (m[k] !== undefined) c.fail(join('behaviours.messages', k), 'is not used with steps (the steps give the offered rates): leave it out');
  const o = c.obj(m['steps'], path, ['rates', 'warmup', 'hold', 'closedLoop'], false);
  const rates = c.list(o['rates'], join(path, 'rates'));
  if (rates.length === 0 && o['closedLoop'] === undefined) c.fail(join(path, 'rates'), 'must list at least one rate (msgs/s), or give closedLoop');
  rates.forEach((r, i) => {
    if (typeof r !== 'number' || !Number.isFinite(r) || r <= 0 || r > 10_000_000) c.fail(join(join(path, 'rates'), i), `must be a number in (0, 10000000] (msgs/s), got ${show(r)}`);
  });
  let closedLoop: Steps['closedLoop'];
  if (o['closedLoop'] !== undefined) {
    const cl = c.obj(o['closedLoop'], join(path, 'closedLoop'), ['inFlight'], false);
    closedLoop = { inFlight: c.num(cl, 'inFlight', join(path, 'closedLoop'), { int: true, min: 1, max: 1000 }, 2) };
  }
  if (top['rampUp'] === undefined) c.fail('rampUp', 'is required with steps (every user connects before the first step)');
  return {
    rates: rates.filter((r): r is number => typeof r === 'number'),
    warmupMs: c.duration(o, 'warmup', path, 3000, true),
    holdMs: c.duration(o, 'hold', path, 20_000),
    ...(closedLoop && { closedLoop }),
  };
}

/** Length of all the steps (the run's duration after the ramp-up). */
export const stepsTotalMs = (st: Steps): number => (st.rates.length + (st.closedLoop ? 1 : 0)) * (st.warmupMs + st.holdMs);

export interface StepAt {
  /** 0-based step; rates.length is the closed-loop step. */
  index: number;
  /** Offered msgs/s of the whole population (0 in the closed-loop step). */
  rate: number;
  closed: boolean;
  /** In the step's hold (measured), not its warmup. */
  measured: boolean;
}

/** The step at `tMs` since t0 (undefined in the ramp-up and after the last step). */
export function stepAt(s: Scenario, tMs: number): StepAt | undefined {
  const st = s.behaviours.messages.steps;
  if (!st) return undefined;
  const x = tMs - s.rampUpMs;
  if (x < 0) return undefined;
  const len = st.warmupMs + st.holdMs;
  const index = Math.floor(x / len);
  const n = st.rates.length + (st.closedLoop ? 1 : 0);
  if (index >= n) return undefined;
  const closed = index >= st.rates.length;
  return { index, rate: closed ? 0 : st.rates[index]!, closed, measured: x - index * len >= st.warmupMs };
}
