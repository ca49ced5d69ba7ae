import type { ProcSample } from './result.js';

/*
 * What the runner reads from a Gravitas cluster's /metrics endpoints each interval:
 * - locality: of the live 1:1 deliveries in the interval, the share that stayed on the sender's
 *   cell (`gravitas_deliveries_total{path="local"}` against `{path="cross_cell"}`, summed over
 *   nodes). Mailbox deliveries and group fan-out are not in it: they are not a placement question.
 * - for remote nodes (no /proc to read), CPU and resident memory from the node's own process
 *   metrics (`gravitas_node_process_cpu_seconds_total`, `gravitas_node_process_resident_memory_bytes`).
 */

/** Prometheus text format → `name{labels}` → value (labels as written; our exporters sort them). */
export function parsePrometheus(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    // The value follows the last space outside the label set (label values may hold spaces).
    const close = line.lastIndexOf('}');
    const sp = line.indexOf(' ', close < 0 ? 0 : close);
    if (sp < 0) continue;
    const v = Number(line.slice(sp + 1).trim().split(' ')[0]);
    if (Number.isFinite(v)) out.set(line.slice(0, sp), v);
  }
  return out;
}

/** Sum of every series of `name` whose labels include `label="value"` (or all series when no label is given). */
export function sumSeries(m: Map<string, number>, name: string, label?: string): number {
  let sum = 0;
  for (const [k, v] of m) {
    if (k !== name && !k.startsWith(`${name}{`)) continue;
    if (label !== undefined && !k.includes(label)) continue;
    sum += v;
  }
  return sum;
}

interface NodeReading {
  local: number;
  cross: number;
  cpuSeconds: number;
  rssBytes: number;
  at: number;
}

export class MetricsSampler {
  private last = new Map<string, NodeReading>();

  /** `urls`: the nodes' /metrics; `procs`: also report each node's CPU and memory (remote targets). */
  constructor(
    private readonly urls: readonly string[],
    private readonly procs: boolean,
  ) {}

  /** Readings since the previous call; a node that does not answer is left out of this interval. */
  async sample(): Promise<{ locality: number | null; servers: Record<string, ProcSample> }> {
    let local = 0;
    let cross = 0;
    const servers: Record<string, ProcSample> = {};
    await Promise.all(
      this.urls.map(async (url) => {
        let m: Map<string, number>;
        try {
          const res = await fetch(url, { signal: AbortSignal.timeout(2000) });
          if (!res.ok) return;
          m = parsePrometheus(await res.text());
        } catch {
          return;
        }
        const now: NodeReading = {
          local: sumSeries(m, 'gravitas_deliveries_total', 'path="local"'),
          cross: sumSeries(m, 'gravitas_deliveries_total', 'path="cross_cell"'),
          cpuSeconds: sumSeries(m, 'gravitas_node_process_cpu_seconds_total'),
          rssBytes: sumSeries(m, 'gravitas_node_process_resident_memory_bytes'),
          at: performance.now(),
        };
        const prev = this.last.get(url);
        this.last.set(url, now);
        if (!prev) return;
        local += Math.max(0, now.local - prev.local);
        cross += Math.max(0, now.cross - prev.cross);
        const s = (now.at - prev.at) / 1000;
        if (this.procs && s > 0) servers[new URL(url).host] = { cpu: ((now.cpuSeconds - prev.cpuSeconds) / s) * 100, rssMiB: now.rssBytes / 2 ** 20 };
      }),
    );
    return { locality: local + cross > 0 ? local / (local + cross) : null, servers };
  }
}
