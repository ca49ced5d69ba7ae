import { scenarioTotalMs, type Metric } from './scenario.js';
import { SATURATED_SHARE, type IntervalSample, type RunResult } from './result.js';

/*
 * The HTML report: one self-contained file (inline CSS and SVG drawn here, no script, no CDN) so
 * it opens offline, attaches to an issue and survives being archived. Each plot is a <figure
 * class="plot" id="plot-…"> holding one <svg> with one <path class="series"> per series; the
 * ramp-up and the intervals in which a generator was saturated are shaded on every plot, so a
 * reader sees at once which part of a curve measures the generators rather than the target.
 * The result JSON is embedded (<script type="application/json">, data only) for re-use.
 */

const W = 880;
const H = 240;
const M = { l: 64, r: 16, t: 14, b: 34 };
const PALETTE = ['#2563eb', '#dc2626', '#16a34a', '#9333ea', '#ea580c', '#0891b2', '#4d7c0f', '#be185d', '#57534e', '#ca8a04'];

/** Which of the scenario's `metrics` each plot belongs to: a plot whose metric was not asked for is left out. */
const PLOT_METRIC: Readonly<Record<string, Metric>> = {
  throughput: 'throughput',
  presence: 'throughput',
  latency: 'latency',
  connections: 'connections',
  'connect-rate': 'connections',
  'connect-time': 'connections',
  locality: 'locality',
  'host-cpu': 'servers',
  'server-cpu': 'servers',
  'server-memory': 'servers',
  'generator-cpu': 'generators',
  'generator-lag': 'generators',
};

interface Series {
  name: string;
  points: Array<[number, number | null]>;
  color?: string;
}

interface PlotSpec {
  id: string;
  title: string;
  /** Unit of the y axis, shown in its label. */
  unit: string;
  series: Series[];
  log?: boolean;
  /** Fixed y range (e.g. 0–100 for a share); otherwise 0 (or the smallest value, log) to the largest. */
  yMax?: number;
  /** Horizontal reference lines, e.g. a target. */
  refs?: Array<{ y: number; label: string }>;
  /** Shown instead of an empty plot when no series has a value. */
  empty: string;
}

interface Context {
  xMax: number;
  rampUpS: number;
  /** End of the run: after it, the drain. */
  endS: number;
  /** [from, to] seconds of intervals in which any generator was saturated. */
  saturated: Array<[number, number]>;
  events: Array<{ x: number; label: string }>;
}

export function esc(s: string): string {
  return s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** 1, 2 or 5 × a power of ten, giving about `n` steps over `span`. */
function niceStep(span: number, n: number): number {
  const raw = span / n;
  const p = 10 ** Math.floor(Math.log10(raw));
  const f = raw / p;
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * p;
}

export function fmt(v: number): string {
  const a = Math.abs(v);
  if (a >= 1e6) return `${+(v / 1e6).toFixed(a >= 1e7 ? 0 : 1)}M`;
  if (a >= 1e4) return `${+(v / 1e3).toFixed(a >= 1e5 ? 0 : 1)}k`;
  if (a >= 100 || a === 0) return v.toFixed(0);
  if (a >= 1) return `${+v.toFixed(2)}`;
  return `${+v.toPrecision(2)}`;
}

function plot(spec: PlotSpec, ctx: Context): string {
  const values = spec.series.flatMap((s) => s.points.map((p) => p[1]).filter((v): v is number => v !== null && Number.isFinite(v)));
  const head = `<figure class="plot" id="plot-${spec.id}"><figcaption>${esc(spec.title)}</figcaption>`;
  if (values.length === 0) return `${head}<p class="empty">${esc(spec.empty)}</p></figure>`;
  const pw = W - M.l - M.r;
  const ph = H - M.t - M.b;
  const xMax = Math.max(ctx.xMax, 1e-9);
  const X = (x: number): number => M.l + (x / xMax) * pw;

  let Y: (v: number) => number;
  const yTicks: number[] = [];
  if (spec.log) {
    const lo = 10 ** Math.floor(Math.log10(Math.max(1e-3, Math.min(...values.filter((v) => v > 0), 1))));
    const hi = 10 ** Math.ceil(Math.log10(Math.max(lo * 10, ...values)));
    const L = (v: number): number => Math.log10(Math.min(hi, Math.max(lo, v)));
    Y = (v) => M.t + ph - ((L(v) - L(lo)) / (L(hi) - L(lo))) * ph;
    for (let d = lo; d <= hi * 1.0001; d *= 10) yTicks.push(d);
  } else {
    const top = spec.yMax ?? Math.max(...values, ...(spec.refs ?? []).map((r) => r.y)) * 1.08;
    const step = niceStep(top || 1, 4);
    const hi = spec.yMax ?? Math.ceil((top || 1) / step) * step;
    Y = (v) => M.t + ph - (Math.min(hi, Math.max(0, v)) / hi) * ph;
    for (let v = 0; v <= hi * 1.0001; v += step) yTicks.push(v);
  }

  const parts: string[] = [];
  // Shading first, so lines draw over it.
  if (ctx.rampUpS > 0) parts.push(`<rect class="rampup" x="${X(0)}" y="${M.t}" width="${X(Math.min(ctx.rampUpS, xMax)) - X(0)}" height="${ph}"><title>ramp-up</title></rect>`);
  if (xMax > ctx.endS) parts.push(`<rect class="drain" x="${X(ctx.endS)}" y="${M.t}" width="${X(xMax) - X(ctx.endS)}" height="${ph}"><title>drain: no new sends, waiting for owed deliveries</title></rect>`);
  for (const [a, b] of ctx.saturated) parts.push(`<rect class="saturated" x="${X(a)}" y="${M.t}" width="${Math.max(1, X(b) - X(a))}" height="${ph}"><title>a generator was saturated or starved of CPU</title></rect>`);
  for (const v of yTicks) parts.push(`<line class="grid" x1="${M.l}" x2="${W - M.r}" y1="${Y(v)}" y2="${Y(v)}"/><text class="tick" x="${M.l - 6}" y="${Y(v) + 4}" text-anchor="end">${fmt(v)}</text>`);
  const xStep = niceStep(xMax, 8);
  for (let x = 0; x <= xMax + 1e-9; x += xStep) parts.push(`<text class="tick" x="${X(x)}" y="${H - M.b + 16}" text-anchor="middle">${fmt(x)}</text>`);
  parts.push(`<text class="axis" x="${M.l + pw / 2}" y="${H - 4}" text-anchor="middle">seconds since start</text>`);
  parts.push(`<text class="axis" transform="translate(14 ${M.t + ph / 2}) rotate(-90)" text-anchor="middle">${esc(spec.unit)}</text>`);
  parts.push(`<rect class="frame" x="${M.l}" y="${M.t}" width="${pw}" height="${ph}"/>`);
  // Labels of events close together go on successive rows rather than over each other.
  const rowEnds: number[] = [];
  for (const e of [...ctx.events].sort((a, b) => a.x - b.x)) {
    const x = X(e.x);
    let row = rowEnds.findIndex((end) => end < x);
    if (row < 0) row = rowEnds.length;
    rowEnds[row] = x + 7 * e.label.length;
    parts.push(`<line class="event" x1="${x}" x2="${x}" y1="${M.t}" y2="${M.t + ph}"><title>${esc(e.label)}</title></line><text class="event-label" x="${x + 3}" y="${M.t + 10 + 11 * row}">${esc(e.label)}</text>`);
  }
  for (const r of spec.refs ?? []) parts.push(`<line class="ref" x1="${M.l}" x2="${W - M.r}" y1="${Y(r.y)}" y2="${Y(r.y)}"/><text class="ref-label" x="${W - M.r - 4}" y="${Y(r.y) - 4}" text-anchor="end">${esc(r.label)}</text>`);

  const legend: string[] = [];
  spec.series.forEach((s, i) => {
    const color = s.color ?? PALETTE[i % PALETTE.length]!;
    // A null (no samples in that interval) breaks the line rather than drawing through it.
    let d = '';
    let pen = false;
    const dots: string[] = [];
    for (const [x, v] of s.points) {
      if (v === null || !Number.isFinite(v)) {
        pen = false;
        continue;
      }
      d += `${pen ? 'L' : 'M'}${X(x).toFixed(1)} ${Y(v).toFixed(1)}`;
      pen = true;
      dots.push(`<circle cx="${X(x).toFixed(1)}" cy="${Y(v).toFixed(1)}" r="1.8"/>`);
    }
    parts.push(`<g class="series-group" fill="${color}"><path class="series" data-series="${esc(s.name)}" d="${d}" stroke="${color}"><title>${esc(s.name)}</title></path>${s.points.length <= 120 ? dots.join('') : ''}</g>`);
    legend.push(`<span class="key"><i style="background:${color}"></i>${esc(s.name)}</span>`);
  });
  return `${head}<svg viewBox="0 0 ${W} ${H}" width="${W}" height="${H}" role="img" aria-label="${esc(spec.title)}">${parts.join('')}</svg><div class="legend">${legend.join('')}</div></figure>`;
}

/** Intervals in which any generator was saturated, merged into runs, as [from, to] seconds. */
function saturatedSpans(intervals: readonly IntervalSample[], intervalS: number): Array<[number, number]> {
  const spans: Array<[number, number]> = [];
  for (const iv of intervals) {
    if (!Object.values(iv.generators).some((g) => g.saturated)) continue;
    const from = Math.max(0, iv.t - intervalS);
    const last = spans[spans.length - 1];
    if (last && Math.abs(last[1] - from) < 1e-6) last[1] = iv.t;
    else spans.push([from, iv.t]);
  }
  return spans;
}

const names = (ivs: readonly IntervalSample[], pick: (iv: IntervalSample) => Record<string, unknown>): string[] => [...new Set(ivs.flatMap((iv) => Object.keys(pick(iv))))].sort();

export function renderHtmlReport(r: RunResult): string {
  const s = r.scenario;
  const ivs = r.intervals;
  const intervalS = s.intervalMs / 1000;
  const ctx: Context = {
    xMax: Math.max(scenarioTotalMs(s) / 1000, ...ivs.map((iv) => iv.t)),
    rampUpS: s.rampUpMs / 1000,
    endS: scenarioTotalMs(s) / 1000,
    saturated: saturatedSpans(ivs, intervalS),
    events: [
      ...s.behaviours.reconnectStorms.map((x) => ({ x: x.atMs / 1000, label: `storm ${Math.round(x.share * 100)} %` })),
      ...s.behaviours.campaigns.map((x) => ({ x: x.atMs / 1000, label: `campaign ${Math.round(x.audience * 100)} %` })),
    ],
  };
  const series = (name: string, f: (iv: IntervalSample) => number | null | undefined, color?: string): Series => ({ name, points: ivs.map((iv) => [iv.t, f(iv) ?? null]), ...(color && { color }) });
  const servers = names(ivs, (iv) => iv.servers);
  const gens = names(ivs, (iv) => iv.generators);
  const sat = s.generators.saturation;
  const hosts = names(ivs, (iv) => iv.hosts);
  const plots: PlotSpec[] = [
    {
      id: 'throughput',
      title: 'Throughput',
      unit: 'messages / s',
      series: [
        series('sent', (iv) => iv.sentPerSec),
        series('accepted', (iv) => iv.acceptedPerSec),
        series('received live', (iv) => iv.receivedPerSec),
        series('received catch-up', (iv) => iv.catchupPerSec),
        ...(s.behaviours.campaigns.length > 0 ? [series('campaign', (iv) => iv.campaignPerSec)] : []),
      ],
      empty: 'no messages',
    },
    {
      id: 'presence',
      title: 'Presence updates delivered to devices (a connect receives its contacts’ presence and announces its own)',
      unit: 'updates / s',
      series: [series('presence updates', (iv) => iv.presencePerSec, '#0891b2')],
      empty: 'no presence update',
    },
    {
      id: 'latency',
      title: 'Latency from intended send time (log scale)',
      unit: 'ms',
      log: true,
      // Cool to hot as the percentile rises, max in grey: the order reads without the legend.
      series: [
        series('p50', (iv) => iv.latency.p50, '#2563eb'),
        series('p90', (iv) => iv.latency.p90, '#16a34a'),
        series('p99', (iv) => iv.latency.p99, '#ea580c'),
        series('p99.9', (iv) => iv.latency.p999, '#dc2626'),
        series('max', (iv) => iv.latency.max, '#78716c'),
        series('generator send lag p99', (iv) => iv.sendLagP99, '#a855f7'),
      ],
      empty: 'no message was received',
    },
    { id: 'connections', title: 'Connected devices', unit: 'devices', series: [series('connected', (iv) => iv.connected)], empty: 'no connection' },
    {
      id: 'connect-rate',
      title: 'Session set-ups per second',
      unit: 'connects / s',
      series: [series('connected', (iv) => iv.connectsPerSec, '#0891b2'), series('failed', (iv) => iv.connectFailedPerSec, '#dc2626')],
      empty: 'no connect in the run',
    },
    {
      id: 'connect-time',
      title: 'Session set-up time (log scale)',
      unit: 'ms',
      log: true,
      series: [series('p50', (iv) => iv.connectTime.p50, '#16a34a'), series('p99', (iv) => iv.connectTime.p99, '#ea580c')],
      empty: 'no connect in the run',
    },
    { id: 'locality', title: 'Locality: messages delivered without leaving the sender’s cell', unit: '%', yMax: 100, series: [series('locality', (iv) => (iv.locality === null ? null : iv.locality * 100))], empty: 'not reported by this target' },
    {
      id: 'host-cpu',
      title: 'Hosts: CPU of the whole machine',
      unit: '% of one core',
      series: hosts.map((n) => series(n, (iv) => iv.hosts[n]?.cpu)),
      refs: hosts.map((n) => ({ y: 100 * (ivs.find((iv) => iv.hosts[n])?.hosts[n]?.cores ?? 1), label: `${n}: all cores` })),
      empty: 'no host was sampled',
    },
    { id: 'server-cpu', title: 'Server processes: CPU', unit: '% of one core', series: servers.map((n) => series(n, (iv) => iv.servers[n]?.cpu)), empty: 'no server process was sampled' },
    { id: 'server-memory', title: 'Server processes: resident memory', unit: 'MiB', series: servers.map((n) => series(n, (iv) => iv.servers[n]?.rssMiB)), empty: 'no server process was sampled' },
    {
      id: 'generator-cpu',
      title: 'Load generators: CPU',
      unit: '% of one core',
      series: gens.map((n) => series(n, (iv) => iv.generators[n]?.cpu)),
      refs: [{ y: sat.cpu * 100, label: 'saturated' }, { y: 50, label: 'target ≤ 50 %' }],
      empty: 'no generator reported',
    },
    { id: 'generator-lag', title: 'Load generators: event-loop lag p99', unit: 'ms', series: gens.map((n) => series(n, (iv) => iv.generators[n]?.loopLagP99Ms)), refs: [{ y: sat.loopLagMs, label: 'saturated' }], empty: 'no generator reported' },
  ];

  const v = r.verdict;
  const banner = v.generatorBound
    ? `<div class="flag bad" id="verdict"><strong>Generator-bound run.</strong> The load generators were saturated: the numbers below measure them, not the target. Add generators (or hosts) and run again.<ul>${v.reasons.map((x) => `<li>${esc(x)}</li>`).join('')}</ul></div>`
    : v.hostBound
      ? `<div class="flag warn" id="verdict"><strong>Host-bound run.</strong> The generators lagged while the host they share with the target was out of CPU: the host was the limit. Latency in the red intervals includes the generators’ own delay (see the send lag).<ul>${v.reasons.map((x) => `<li>${esc(x)}</li>`).join('')}</ul></div>`
      : `<div class="flag good" id="verdict"><strong>Generators kept up.</strong> No generator was saturated in ${Math.round(100 * SATURATED_SHARE)} % or more of the steady-state intervals (peak CPU ${v.generatorPeakCpu.toFixed(0)} %).</div>`;
  const warnings = v.warnings.length > 0 ? `<div class="flag warn">${v.warnings.map((w) => `<div>${esc(w)}</div>`).join('')}</div>` : '';
  const lat = r.totals.latency;
  const ms = (x: number | null): string => (x === null ? '–' : `${fmt(x)} ms`);
  const peak = (f: (iv: IntervalSample) => number): number => Math.max(0, ...ivs.map(f));
  const errors = Object.entries(r.totals.errors);
  const d = r.totals.delivery;
  const cap = r.capacity;
  const n = (x: number): string => x.toLocaleString('en-US');
  const summary: Array<[string, string]> = [
    ['sent / accepted / failed', `${n(r.totals.sent)} / ${n(r.totals.accepted)} / ${n(r.totals.failed)}`],
    ['received live / catch-up', `${n(r.totals.received)} / ${n(r.totals.catchup)}`],
    ['deliveries owed / missing', d.tracked ? `${n(d.expected)} / ${n(d.missing)}${d.complete ? ` (all in, ${(d.drainMs / 1000).toFixed(1)} s after the end)` : ` after a ${(d.drainMs / 1000).toFixed(0)} s drain`}` : 'not tracked: the driver cannot tell what the server accepted'],
    ['peak received', `${fmt(peak((iv) => iv.receivedPerSec))} msgs/s`],
    ['latency p50 / p90 / p99', `${ms(lat.p50)} / ${ms(lat.p90)} / ${ms(lat.p99)}`],
    ['latency p99.9 / max', `${ms(lat.p999)} / ${ms(lat.max)}`],
    ['catch-up latency p50 / max', `${ms(r.totals.catchupLatency.p50)} / ${ms(r.totals.catchupLatency.max)} (messages that waited for their device)`],
    ['generator send lag p99 / max', `${ms(r.totals.sendLag.p99)} / ${ms(r.totals.sendLag.max)}`],
    [
      'highest sustained rate',
      cap
        ? `${fmt(cap.sentPerSec)} msgs/s sent (${cap.notSustainedPerSec !== null ? `a limit: ${fmt(cap.notSustainedPerSec)} msgs/s and more were not sustained` : 'no higher rate was offered long enough to call it a limit: the capacity is at least this'}; ${cap.sustainedIntervals} of ${cap.steadyIntervals} steady intervals sustained), busiest generator ${cap.generatorCpu.toFixed(0)} % CPU there`
        : 'no steady interval was sustained',
    ],
    ['peak connected', fmt(peak((iv) => iv.connected))],
    ['connect time p50 / p99', `${ms(r.totals.connectTime.p50)} / ${ms(r.totals.connectTime.p99)}`],
    ...(s.behaviours.campaigns.length > 0 ? [['campaign deliveries', `${n(r.totals.campaigns.received)} of ${n(r.totals.campaigns.expected)} owed, reach p50 ${ms(r.totals.campaignReach.p50)}, last ${ms(r.totals.campaignReach.max)}`] as [string, string]] : []),
    ['setup', `provisioned in ${(r.setup.provisionMs / 1000).toFixed(1)} s, ${r.setup.groupsCreated} groups in ${(r.setup.groupsMs / 1000).toFixed(1)} s${r.setup.groupsFailed > 0 ? ` (${r.setup.groupsFailed} failed)` : ''}`],
    ['sends dropped behind schedule', n(r.totals.skipped)],
    ['errors', errors.length === 0 ? 'none' : errors.map(([k, c]) => `${esc(k)} × ${c}`).join(', ')],
  ];
  const limit = `<h2>Where the limit was</h2><ul id="bottlenecks">${r.bottlenecks.map((b) => `<li>${esc(b)}</li>`).join('')}</ul>`;
  const genTable = `<table class="gens"><tr><th>generator</th><th>host</th><th>users</th><th>devices</th><th>clock offset</th></tr>${r.generators
    .map((g) => `<tr><td>${esc(g.name)}</td><td>${esc(g.host)}</td><td>${n(g.users)}</td><td>${n(g.devices)}</td><td>${g.clockOffsetMs.toFixed(2)} ± ${g.clockErrorMs.toFixed(2)} ms</td></tr>`)
    .join('')}</table>`;
  const json = JSON.stringify(r).replace(/</g, '\\u003c');
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>${esc(s.name)} — gravitas bench report</title>
<style>
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1c1917;background:#fafaf9;margin:0 auto;max-width:${W + 40}px;padding:16px 20px 40px}
h1{font-size:22px;margin:8px 0 2px}.sub{color:#57534e;margin:0 0 12px}
.flag{border-radius:6px;padding:10px 14px;margin:10px 0}.flag ul{margin:6px 0 0;padding-left:20px}
.bad{background:#fee2e2;border:1px solid #dc2626}.good{background:#dcfce7;border:1px solid #16a34a}.warn{background:#fef9c3;border:1px solid #ca8a04}
table{border-collapse:collapse;margin:8px 0 16px}td,th{padding:3px 14px 3px 0;vertical-align:top;text-align:left}td:first-child{color:#57534e}h2{font-size:17px;margin:18px 0 6px}
.plot{margin:18px 0 8px;background:#fff;border:1px solid #e7e5e4;border-radius:6px;padding:8px}
figcaption{font-weight:600;margin:0 0 4px}svg{display:block;max-width:100%;height:auto}
.grid{stroke:#e7e5e4}.frame{fill:none;stroke:#a8a29e}.tick,.axis{font-size:11px;fill:#57534e}
.series{fill:none;stroke-width:1.8;stroke-linejoin:round}
.rampup{fill:#f5f5f4}.drain{fill:#eff6ff}.saturated{fill:#fecaca;opacity:.7}
.event{stroke:#7c3aed;stroke-dasharray:4 3}.event-label{font-size:10px;fill:#7c3aed}
.ref{stroke:#78716c;stroke-dasharray:2 3}.ref-label{font-size:10px;fill:#78716c}
.legend{display:flex;flex-wrap:wrap;gap:4px 14px;font-size:12px;margin:4px 0 0 ${M.l}px}.key i{display:inline-block;width:12px;height:3px;margin:0 5px 3px 0;vertical-align:middle}
.shading{font-size:12px;color:#57534e}.shading i{display:inline-block;width:12px;height:10px;margin:0 4px 0 10px;vertical-align:middle}
.empty{color:#78716c;font-style:italic}
</style></head><body>
<h1>${esc(s.name)}</h1>
<p class="sub">${esc(s.description)}${s.description ? ' · ' : ''}${esc(r.startedAt)} · ${esc(r.target)} · namespace ${esc(r.namespace)} · ${s.users.toLocaleString('en-US')} users · ramp-up ${s.rampUpMs / 1000} s + ${s.durationMs / 1000} s · ${s.generators.count} generator(s) · ${r.host.cpus}× ${esc(r.host.cpuModel)}, node ${esc(r.host.node)}</p>
${banner}${warnings}
<table>${summary.map(([k, x]) => `<tr><td>${esc(k)}</td><td>${k === 'errors' ? x : esc(x)}</td></tr>`).join('')}</table>
${limit}
<div class="shading">shading:<i style="background:#f5f5f4;border:1px solid #d6d3d1"></i>ramp-up<i style="background:#fecaca"></i>a generator was saturated or starved of CPU (those points include its own delay)<i style="background:#eff6ff;border:1px solid #bfdbfe"></i>drain (after the run)</div>
${plots.filter((p) => s.metrics.includes(PLOT_METRIC[p.id] ?? 'throughput')).map((p) => plot(p, ctx)).join('\n')}
<h2>Generators</h2>${genTable}
${r.notes.length > 0 ? `<h2>Notes</h2><ul>${r.notes.map((n) => `<li>${esc(n)}</li>`).join('')}</ul>` : ''}
<script type="application/json" id="result">${json}</script>
</body></html>
`;
}
