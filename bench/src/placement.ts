import { mkdir, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { generateGraph, SHAPE, type SocialGraph } from './placement-graph.js';
import { hashPartition, offlinePartition, plantedPartition, randomPartition, weightLocality } from './placement-offline.js';
import { Simulation, type Baseline, type RoundStats, type SimParams, type SimResult } from './placement-sim.js';
import { log } from './procs.js';
import { makeResult, numFlag, posInt, posNum, UsageError, type BenchOptions, type BenchResult, type Row } from './report.js';

export const name = 'placement';
export const description = 'gravitation simulator: the @gravitas/placement policy on a synthetic social graph (no sockets), against random, hash and offline-partition placements';
export const flags = {
  users: 'users in the graph (default 200000)',
  cells: 'cells (default 100)',
  days: 'simulated days (default 2; the steady state is the last 24 h of a run of 36 h or more, else the last half)',
  interval: 'exchange interval = one round, simulated seconds (default 600)',
  mu: 'share of each user\'s edges leaving its community (default 0.1)',
  seed: 'PRNG seed for graph, churn and messages (default 1)',
  epsilon: 'load tolerance: no cell above (1 + epsilon) × mean sessions (default 0.1)',
  capacity: 'sketch capacity per cell, (session, cell) keys (default 8192, as the server)',
  'half-life': 'traffic half-life in the sketches, minutes (default 60)',
  'max-moves': 'sessions moved by one exchange, both ways (default 64, as the server)',
  'min-gain': 'decayed messages a move must gain (default 2)',
  'move-rate': 'migrations per second a cell may start, sustained; burst = max-moves (default 50, as the server)',
  dwell: 'seconds a session stays where it registered before it may be moved (default 30, as the server)',
  cooldown: 'two cells trade at most once per this many rounds (default 6, the server\'s 30 s / 5 s)',
  online: 'mean online share, ±25% over the day; 1 = all online, no churn (default 0.3)',
  session: 'mean online session length, minutes (default 60)',
  'msg-rate': 'messages per online user-hour, on average (default 10)',
  passes: 'offline partition: label-propagation passes after the greedy stream (default 8)',
  svg: 'write a plot of locality and balance over time to this file (default none)',
} as const;

/** Targets from the issue (10M users, 1,000 cells). */
const TARGET = { locality: 0.8, vsOffline: 0.9, balance: 1.1, migrationsPerUserDay: 2 };

interface Options {
  users: number;
  mu: number;
  seed: number;
  sim: SimParams;
  passes: number;
  svg?: string;
}

function options(opts: BenchOptions): Options {
  const users = posInt(opts, 'users', 200_000, 50_000_000);
  const cells = posInt(opts, 'cells', 100, 65_535);
  const intervalS = posNum(opts, 'interval', 600);
  const days = posNum(opts, 'days', 2);
  const mu = numFlag(opts, 'mu', 0.1);
  if (!(mu >= 0 && mu < 1)) throw new UsageError(`--mu must be in [0, 1), got ${mu}`);
  const online = posNum(opts, 'online', 0.3);
  if (online > 1) throw new UsageError(`--online must be in (0, 1], got ${online}`);
  const maxMoves = posInt(opts, 'max-moves', 64, 100_000);
  const svg = opts.flags['svg'];
  if (svg === true || svg === '') throw new UsageError('--svg needs a file path');
  const seed = posInt(opts, 'seed', 1, 2 ** 31);
  return {
    users, mu, seed, svg, passes: posInt(opts, 'passes', 8, 100),
    sim: {
      cells, intervalS, rounds: Math.max(2, Math.round((days * 86_400) / intervalS)),
      epsilon: posNum(opts, 'epsilon', 0.1),
      capacity: posInt(opts, 'capacity', 8192, 10_000_000),
      halfLifeS: posNum(opts, 'half-life', 60) * 60,
      maxMoves, minGain: posNum(opts, 'min-gain', 2),
      moveRate: posNum(opts, 'move-rate', 50), moveBurst: maxMoves,
      dwellS: nonNegative(opts, 'dwell', 30),
      cooldownS: nonNegative(opts, 'cooldown', 6) * intervalS,
      online, sessionS: posNum(opts, 'session', 60) * 60, msgRate: posNum(opts, 'msg-rate', 10), seed,
    },
  };
}

function nonNegative(opts: BenchOptions, flag: string, dflt: number): number {
  const v = numFlag(opts, flag, dflt);
  if (v < 0) throw new UsageError(`--${flag} must be ≥ 0, got ${v}`);
  return v;
}

const seconds = (t0: number): number => (performance.now() - t0) / 1000;

function buildBaselines(g: SocialGraph, o: Options): { baselines: Baseline[]; offlineWeightLocality: number; plantedWeightLocality: number } {
  const { cells, epsilon } = o.sim;
  let t0 = performance.now();
  const offline = offlinePartition(g, cells, epsilon, o.seed, o.passes);
  const offlineWeightLocality = weightLocality(g, offline);
  log(`offline partition (greedy + ${o.passes} passes): ${seconds(t0).toFixed(1)} s, weight locality ${offlineWeightLocality.toFixed(3)}`);
  t0 = performance.now();
  const planted = plantedPartition(g, cells);
  const plantedWeightLocality = weightLocality(g, planted);
  log(`planted communities packed: ${seconds(t0).toFixed(1)} s, weight locality ${plantedWeightLocality.toFixed(3)}`);
  const baselines = [
    { name: 'random', part: randomPartition(g.users, cells, o.seed + 1) },
    { name: 'hash', part: hashPartition(g.users, cells) },
    { name: 'offline', part: offline },
    { name: 'planted', part: planted },
  ];
  return { baselines, offlineWeightLocality, plantedWeightLocality };
}

/** Steady state: the last simulated day (a whole diurnal cycle) once 12 h of transient are behind, else the last half. */
function steadyWindow(rounds: readonly RoundStats[]): RoundStats[] {
  const end = rounds[rounds.length - 1]?.hours ?? 0;
  const from = end >= 36 ? end - 24 : end / 2;
  return rounds.filter((r) => r.hours > from);
}

/** Locality over a set of rounds, weighted by deliveries. */
function meanLocality(rounds: readonly RoundStats[], of: (r: RoundStats) => number): number {
  let local = 0;
  let total = 0;
  for (const r of rounds) {
    local += of(r) * r.deliveries;
    total += r.deliveries;
  }
  return local / Math.max(1, total);
}

/** Hours until the locality, averaged over the trailing hour, first reaches 95% of the steady-state plateau. */
function convergenceHours(rounds: readonly RoundStats[], plateau: number, intervalS: number): number {
  const span = Math.max(1, Math.round(3600 / intervalS));
  for (let i = 0; i < rounds.length; i++) {
    const recent = rounds.slice(Math.max(0, i - span + 1), i + 1);
    if (meanLocality(recent, (r) => r.locality) >= 0.95 * plateau) return rounds[i]!.hours;
  }
  return Number.NaN;
}

interface Summary {
  /** Simulated hour where the steady-state window starts. */
  steadyFromH: number;
  locality: number;
  balanceMean: number;
  balanceMax: number;
  migrationsPerUserDay: number;
  convergenceH: number;
  baselines: Array<{ name: string; locality: number; balanceMean: number; balanceMax: number }>;
}

function summarize(res: SimResult, baselines: readonly Baseline[], users: number, intervalS: number): Summary {
  const steady = steadyWindow(res.rounds);
  const locality = meanLocality(steady, (r) => r.locality);
  const days = (steady.length * intervalS) / 86_400;
  const mean = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);
  return {
    steadyFromH: (steady[0]?.hours ?? 0) - intervalS / 3600,
    locality,
    balanceMean: mean(steady.map((r) => r.balance)),
    balanceMax: Math.max(...steady.map((r) => r.balance)),
    migrationsPerUserDay: steady.reduce((a, r) => a + r.migrations, 0) / users / days,
    convergenceH: convergenceHours(res.rounds, locality, intervalS),
    baselines: baselines.map((b, i) => ({
      name: b.name,
      locality: meanLocality(steady, (r) => r.baselineLocality[i]!),
      balanceMean: mean(steady.map((r) => r.baselineBalance[i]!)),
      balanceMax: Math.max(...steady.map((r) => r.baselineBalance[i]!)),
    })),
  };
}

function rows(s: Summary, reconnects: SimResult['reconnects'], timing: Record<string, number>): Row[] {
  const offline = s.baselines.find((b) => b.name === 'offline')!;
  const planted = s.baselines.find((b) => b.name === 'planted')!;
  const out: Row[] = [
    { metric: 'gravitation.locality', value: s.locality, unit: 'share', ceiling: 'offline.locality', ratio: s.locality / offline.locality, note: `target ≥ ${TARGET.locality} and ratio ≥ ${TARGET.vsOffline}` },
    { metric: 'gravitation.locality', value: s.locality, unit: 'share', ceiling: 'planted.locality', ratio: s.locality / planted.locality },
    { metric: 'gravitation.balance', value: s.balanceMean, unit: 'max/mean', note: `mean over steady rounds; target ≤ ${TARGET.balance}` },
    { metric: 'gravitation.balance_worst', value: s.balanceMax, unit: 'max/mean', note: 'worst steady round' },
    { metric: 'gravitation.migrations', value: s.migrationsPerUserDay, unit: '/user/day', note: `steady state; target < ${TARGET.migrationsPerUserDay}` },
    { metric: 'gravitation.convergence', value: s.convergenceH, unit: 'h', note: 'hourly locality first ≥ 95% of the plateau' },
  ];
  for (const b of s.baselines) {
    out.push({ metric: `${b.name}.locality`, value: b.locality, unit: 'share' });
    out.push({ metric: `${b.name}.balance`, value: b.balanceMean, unit: 'max/mean', note: `worst ${b.balanceMax.toFixed(3)}` });
  }
  const hinted = reconnects.total - reconnects.noHint;
  out.push(
    { metric: 'reconnects.hinted', value: hinted / Math.max(1, reconnects.total), unit: 'share', note: `had a preferred cell (sender's, else previous), of ${reconnects.total} reconnects` },
    { metric: 'reconnects.to_preferred', value: reconnects.preferred / Math.max(1, hinted), unit: 'share', note: `to another associate cell ${(reconnects.associate / Math.max(1, hinted)).toFixed(3)}, all full ${(reconnects.full / Math.max(1, hinted)).toFixed(3)}` },
  );
  for (const [k, v] of Object.entries(timing)) out.push({ metric: `run.${k}`, value: v, unit: k === 'peak_rss' ? 'MiB' : 's' });
  return out;
}

/** Columns of the per-round series for the JSON. */
function series(res: SimResult, baselines: readonly Baseline[]): Record<string, number[]> {
  const col = (f: (r: RoundStats) => number): number[] => res.rounds.map(f);
  const round4 = (x: number): number => Math.round(x * 1e4) / 1e4;
  return {
    hours: col((r) => round4(r.hours)),
    locality: col((r) => round4(r.locality)),
    balance: col((r) => round4(r.balance)),
    migrations: col((r) => r.migrations),
    online: col((r) => r.online),
    deliveries: col((r) => r.deliveries),
    exchanges: col((r) => r.exchanges),
    declined: col((r) => r.declined),
    rateLimited: col((r) => r.rateLimited),
    ...Object.fromEntries(baselines.map((b, i) => [`${b.name}Locality`, col((r) => round4(r.baselineLocality[i]!))])),
  };
}

export async function run(opts: BenchOptions): Promise<BenchResult> {
  const startedAt = new Date();
  const o = options(opts);
  const timing: Record<string, number> = {};
  let t0 = performance.now();
  log(`graph: ${o.users} users, mu ${o.mu}, seed ${o.seed}`);
  const g = generateGraph({ users: o.users, mu: o.mu, seed: o.seed });
  timing['graph'] = seconds(t0);
  log(`  ${g.adj.length} edge endpoints, ${g.communities} communities, cross-community edges ${g.crossEdges.toFixed(3)} (weight ${g.crossWeight.toFixed(3)}), ${timing['graph'].toFixed(1)} s`);

  t0 = performance.now();
  const { baselines, offlineWeightLocality, plantedWeightLocality } = buildBaselines(g, o);
  timing['baselines'] = seconds(t0);

  t0 = performance.now();
  const sim = new Simulation(g, o.sim, baselines);
  const every = Math.max(1, Math.round(3 * 3600 / o.sim.intervalS));
  log(`simulating ${o.sim.rounds} rounds of ${o.sim.intervalS} s on ${o.sim.cells} cells (sketch capacity ${o.sim.capacity})`);
  const res = sim.run((r) => {
    const i = Math.round((r.hours * 3600) / o.sim.intervalS);
    if (i % every === 0) log(`  ${r.hours.toFixed(1)} h: locality ${r.locality.toFixed(3)} balance ${r.balance.toFixed(3)} migrations ${r.migrations} exchanges ${r.exchanges} declined ${r.declined} online ${r.online} (${seconds(t0).toFixed(0)} s)`);
  });
  timing['simulation'] = seconds(t0);
  timing['peak_rss'] = Math.round(process.resourceUsage().maxRSS / 1024);

  const s = summarize(res, baselines, o.users, o.sim.intervalS);
  if (o.svg !== undefined) {
    await mkdir(dirname(o.svg), { recursive: true });
    await writeFile(o.svg, svgPlot(res, s, o));
    log(`wrote ${o.svg}`);
  }
  const params = { users: o.users, mu: o.mu, offlinePasses: o.passes, ...o.sim, shape: SHAPE };
  const extra = {
    graph: { endpoints: g.adj.length, communities: g.communities, crossEdges: g.crossEdges, crossWeight: g.crossWeight, offlineWeightLocality, plantedWeightLocality },
    summary: s,
    reconnects: res.reconnects,
    series: series(res, baselines),
  };
  return makeResult(name, startedAt, params, rows(s, res.reconnects, timing), extra);
}

// ---------------------------------------------------------------------------------------------
// SVG plot: locality (top) and balance (bottom) over simulated hours, plain polylines.

const W = 760;
const PAD = { left: 56, right: 150, top: 24 };
const PANEL = { locality: 240, balance: 120, gap: 48 };

function svgPlot(res: SimResult, s: Summary, o: Options): string {
  const hours = res.rounds[res.rounds.length - 1]?.hours ?? 1;
  const plotW = W - PAD.left - PAD.right;
  const x = (h: number): number => PAD.left + (h / hours) * plotW;
  const locTop = PAD.top;
  const balTop = locTop + PANEL.locality + PANEL.gap;
  const balMax = Math.max(1 + 2 * o.sim.epsilon, Math.ceil(Math.max(...res.rounds.map((r) => r.balance)) * 10) / 10);
  const yLoc = (v: number): number => locTop + (1 - v) * PANEL.locality;
  const yBal = (v: number): number => balTop + (1 - (v - 1) / (balMax - 1)) * PANEL.balance;
  const fmt = (v: number): string => v.toFixed(1);
  const line = (pts: Array<[number, number]>, color: string, dash = ''): string =>
    `<polyline fill="none" stroke="${color}" stroke-width="1.5"${dash ? ` stroke-dasharray="${dash}"` : ''} points="${pts.map(([a, b]) => `${fmt(a)},${fmt(b)}`).join(' ')}"/>`;
  const dashed = (y: number, color: string): string => line([[x(0), y], [x(hours), y]], color, '5,4');
  const text = (tx: number, ty: number, t: string, anchor = 'end', color = '#000'): string =>
    `<text x="${fmt(tx)}" y="${fmt(ty)}" text-anchor="${anchor}" fill="${color}">${t}</text>`;
  /** Right-margin labels, nudged apart so close levels (random and hash) stay readable. */
  const labels = (items: Array<{ y: number; t: string; color: string }>): string[] => {
    let prev = Number.NEGATIVE_INFINITY;
    return items.sort((a, b) => a.y - b.y).map((l) => {
      prev = Math.max(l.y + 4, prev + 13);
      return text(x(hours) + 6, prev, l.t, 'start', l.color);
    });
  };

  const colors: Record<string, string> = { offline: '#2a9d3a', planted: '#777', random: '#c0392b', hash: '#e67e22' };
  const parts: string[] = [];
  // The steady-state window, shaded in both panels.
  for (const [top, h] of [[locTop, PANEL.locality], [balTop, PANEL.balance]] as const) {
    parts.push(`<rect x="${fmt(x(s.steadyFromH))}" y="${top}" width="${fmt(x(hours) - x(s.steadyFromH))}" height="${h}" fill="#f4f6fa"/>`);
  }
  // Axes and grid.
  for (const v of [0, 0.2, 0.4, 0.6, 0.8, 1]) parts.push(`<line x1="${PAD.left}" x2="${x(hours)}" y1="${fmt(yLoc(v))}" y2="${fmt(yLoc(v))}" stroke="#e4e4e4"/>`, text(PAD.left - 6, yLoc(v) + 4, v.toFixed(1)));
  for (let v = 1; v <= balMax + 1e-9; v += 0.1) parts.push(`<line x1="${PAD.left}" x2="${x(hours)}" y1="${fmt(yBal(v))}" y2="${fmt(yBal(v))}" stroke="#e4e4e4"/>`, text(PAD.left - 6, yBal(v) + 4, v.toFixed(1)));
  const step = hours > 72 ? 24 : hours > 24 ? 12 : hours > 6 ? 3 : 1;
  for (let h = 0; h <= hours + 1e-9; h += step) parts.push(text(x(h), balTop + PANEL.balance + 16, `${h}`, 'middle'));
  parts.push(
    text(PAD.left + plotW / 2, balTop + PANEL.balance + 34, 'simulated hours (shaded: steady state)', 'middle'),
    text(PAD.left, locTop - 8, `locality (share of deliveries within a cell) — ${o.users.toLocaleString('en-US')} users, ${o.sim.cells} cells, mu ${o.mu}`, 'start'),
    text(PAD.left, balTop - 8, 'balance (max / mean sessions per cell)', 'start'),
  );
  // Baselines as dashed levels (their steady-state means), gravitation as the solid series.
  for (const b of s.baselines) parts.push(dashed(yLoc(b.locality), colors[b.name] ?? '#999'));
  parts.push(line(res.rounds.map((r) => [x(r.hours), yLoc(r.locality)]), '#1f5fbf'));
  parts.push(...labels([
    ...s.baselines.map((b) => ({ y: yLoc(b.locality), t: `${b.name} ${b.locality.toFixed(3)}`, color: colors[b.name] ?? '#999' })),
    { y: yLoc(s.locality), t: `gravitation ${s.locality.toFixed(3)}`, color: '#1f5fbf' },
  ]));
  parts.push(dashed(yBal(1 + o.sim.epsilon), '#c0392b'), ...labels([{ y: yBal(1 + o.sim.epsilon), t: `cap 1+ε = ${1 + o.sim.epsilon}`, color: '#c0392b' }]));
  parts.push(line(res.rounds.map((r) => [x(r.hours), yBal(Math.min(balMax, r.balance))]), '#1f5fbf'));
  const height = balTop + PANEL.balance + 44;
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${height}" viewBox="0 0 ${W} ${height}" font-family="sans-serif" font-size="11">\n<rect width="100%" height="100%" fill="white"/>\n${parts.join('\n')}\n</svg>\n`;
}
