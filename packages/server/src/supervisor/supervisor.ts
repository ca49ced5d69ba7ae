import { randomBytes } from 'node:crypto';
import { Worker } from 'node:worker_threads';
import { AggregatorRegistry, collectDefaultMetrics, Counter, Gauge, Registry, type MetricObjectWithValues, type MetricValue } from 'prom-client';
import type { NodeConfig } from '../config/index.js';
import { ServerError, ServerErrorCode } from '../infra/errors.js';
import type { CellInit, CellStatus, FromCell, ToCell } from './messages.js';

const RESTART_BACKOFF_MIN_MS = 100;
const RESTART_BACKOFF_MAX_MS = 5000;
/** A cell that stayed up this long is healthy again: its backoff resets. */
const STABLE_AFTER_MS = 30_000;
const METRICS_TIMEOUT_MS = 2000;
const DRAIN_TIMEOUT_MS = 10_000;

interface CellHandle {
  index: number;
  cellId: string;
  worker: Worker | undefined;
  status: CellStatus | undefined;
  ready: boolean;
  generation: number;
  startedAt: number;
  backoff: number;
}

type MetricsJson = MetricObjectWithValues<MetricValue<string>>[];

/**
 * The main thread of a node: starts one worker per cell, restarts a cell that
 * dies (with backoff), merges the cells' metrics, and drains them on shutdown.
 */
export class Supervisor {
  private readonly cells: CellHandle[] = [];
  private stopping = false;
  private req = 0;
  private readonly waiting = new Map<number, (m: MetricsJson) => void>();
  readonly registry = new Registry();
  private readonly restarts = new Counter({ name: 'gravitas_cell_restarts_total', help: 'Cells restarted after a crash', registers: [this.registry] });
  private readonly cellsUp: Gauge = new Gauge({
    name: 'gravitas_cells_ready',
    help: 'Cells that are listening and connected to NATS',
    registers: [this.registry],
    collect: (): void => this.cellsUp.set(this.cells.filter((c) => this.isCellReady(c)).length),
  });

  constructor(readonly config: NodeConfig, private readonly log: (msg: string) => void) {
    collectDefaultMetrics({ register: this.registry, prefix: 'gravitas_node_' });
  }

  /** Starts every cell; rejects (after stopping the others) if any cell fails to start. */
  async start(): Promise<void> {
    for (let index = 0; index < this.config.cells; index++) {
      this.cells.push({ index, cellId: `${this.config.nodeId}-${index}`, worker: undefined, status: undefined, ready: false, generation: 0, startedAt: 0, backoff: RESTART_BACKOFF_MIN_MS });
    }
    try {
      await Promise.all(this.cells.map((c) => this.spawn(c)));
    } catch (err) {
      await this.stop();
      throw err;
    }
  }

  private spawn(c: CellHandle): Promise<void> {
    const portOf = (a: string | undefined): number | undefined => (a ? Number(a.slice(a.lastIndexOf(':') + 1)) : undefined);
    const port = portOf(c.status?.address);
    const webPort = portOf(c.status?.web);
    // Each incarnation gets a fresh id: directory entries of a crashed incarnation then
    // point at a cell that stopped heartbeating, and stop counting after the timeout.
    c.cellId = `${this.config.nodeId}-${c.index}-${randomBytes(3).toString('hex')}`;
    const init: CellInit = { config: this.config, index: c.index, cellId: c.cellId, generation: c.generation, ...(port && { port }), ...(webPort && { webPort }) };
    const worker = new Worker(new URL('../cell/worker.js', import.meta.url), { workerData: init, stdout: false, stderr: false });
    c.worker = worker;
    c.ready = false;
    c.startedAt = Date.now();
    return new Promise((resolve, reject) => {
      let settled = false;
      worker.on('message', (m: FromCell) => {
        switch (m.type) {
          case 'ready':
            c.status = m.status;
            c.ready = true;
            settled = true;
            resolve();
            return;
          case 'status':
            c.status = m.status;
            return;
          case 'metrics':
            this.waiting.get(m.req)?.(m.metrics);
            return;
          case 'fatal':
            if (!settled) {
              settled = true;
              reject(new ServerError(m.code === ServerErrorCode.NATS_UNAVAILABLE ? ServerErrorCode.NATS_UNAVAILABLE : ServerErrorCode.CELL_START_FAILED, `cell ${c.cellId} failed to start: ${m.message}`));
            }
            return;
          case 'drained':
            return;
        }
      });
      worker.on('error', (err) => this.log(`cell ${c.cellId} crashed: ${err.stack ?? err.message}`));
      worker.on('exit', (code) => {
        if (c.worker !== worker) return;
        c.worker = undefined;
        c.ready = false;
        if (!settled) {
          settled = true;
          reject(new ServerError(ServerErrorCode.CELL_START_FAILED, `cell ${c.cellId} exited during start-up (code ${code})`));
          return;
        }
        if (this.stopping) return;
        this.restart(c, code);
      });
    });
  }

  private restart(c: CellHandle, code: number): void {
    if (Date.now() - c.startedAt > STABLE_AFTER_MS) c.backoff = RESTART_BACKOFF_MIN_MS;
    const delay = c.backoff;
    c.backoff = Math.min(c.backoff * 2, RESTART_BACKOFF_MAX_MS);
    this.log(`cell ${c.cellId} exited (code ${code}); restarting in ${delay} ms`);
    this.restarts.inc();
    setTimeout(() => {
      if (this.stopping) return;
      c.generation++;
      this.spawn(c).catch((err: Error) => {
        this.log(`restart of ${c.cellId} failed: ${err.message}`);
        if (!this.stopping && !c.worker) this.restart(c, -1);
      });
    }, delay).unref();
  }

  private isCellReady(c: CellHandle): boolean {
    return c.ready && c.worker !== undefined && c.status !== undefined && c.status.natsConnected && c.status.listening;
  }

  ready(): boolean {
    return !this.stopping && this.cells.length > 0 && this.cells.every((c) => this.isCellReady(c));
  }

  statuses(): Array<{ index: number; cellId: string; ready: boolean; generation: number; status: CellStatus | undefined }> {
    return this.cells.map((c) => ({ index: c.index, cellId: c.cellId, ready: this.isCellReady(c), generation: c.generation, status: c.status }));
  }

  addresses(): string[] {
    return this.cells.map((c) => c.status?.address ?? '').filter(Boolean);
  }

  /** Web listener addresses (host:port) of the cells, in cell order; empty when web is off. */
  webAddresses(): string[] {
    return this.cells.map((c) => c.status?.web ?? '').filter(Boolean);
  }

  send(index: number, m: ToCell): boolean {
    const w = this.cells[index]?.worker;
    if (!w) return false;
    w.postMessage(m);
    return true;
  }

  /** One Prometheus exposition: every cell's registry merged with the node's own. */
  async metrics(): Promise<{ contentType: string; body: string }> {
    const perCell = await Promise.all(
      this.cells.map(
        (c) =>
          new Promise<MetricsJson>((resolve) => {
            if (!c.worker) return resolve([]);
            const req = ++this.req;
            const t = setTimeout(() => {
              this.waiting.delete(req);
              resolve([]);
            }, METRICS_TIMEOUT_MS);
            this.waiting.set(req, (m) => {
              clearTimeout(t);
              this.waiting.delete(req);
              resolve(m);
            });
            c.worker.postMessage({ type: 'metrics', req } satisfies ToCell);
          }),
      ),
    );
    const merged = AggregatorRegistry.aggregate([...perCell, await this.registry.getMetricsAsJSON()]);
    return { contentType: merged.contentType, body: await merged.metrics() };
  }

  /** Drains every cell (stop accepting, close sessions, leave the directory), then ends them. */
  async stop(): Promise<void> {
    this.stopping = true;
    await Promise.all(
      this.cells.map(async (c) => {
        const w = c.worker;
        if (!w) return;
        const exited = new Promise<void>((r) => w.once('exit', () => r()));
        w.postMessage({ type: 'drain', reason: 'shutdown' } satisfies ToCell);
        const t = setTimeout(() => void w.terminate(), DRAIN_TIMEOUT_MS);
        await exited;
        clearTimeout(t);
      }),
    );
  }
}
