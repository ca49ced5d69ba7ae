import type { NodeConfig } from '../config/index.js';
import type { MetricObjectWithValues, MetricValue } from 'prom-client';

/*
 * Messages between the supervisor (main thread) and its cells (worker threads),
 * typed in one place. Discriminated on `type`.
 */

/** Handed to a cell at start (workerData). */
export interface CellInit {
  config: NodeConfig;
  index: number;
  cellId: string;
  /** Incremented each time the supervisor restarts this cell. */
  generation: number;
  /** The port an earlier generation listened on: a restarted cell keeps its address. */
  port?: number;
  /** The same for its web listener. */
  webPort?: number;
}

export type ToCell =
  | { type: 'metrics'; req: number }
  | { type: 'drain'; reason: 'shutdown' }
  | { type: 'crash' };

export interface CellStatus {
  cellId: string;
  address: string;
  /** host:port of the web listener (WebSocket, chunked HTTP), when it has one. */
  web?: string;
  natsConnected: boolean;
  listening: boolean;
  connections: number;
  sessions: number;
}

export type FromCell =
  | { type: 'ready'; status: CellStatus }
  | { type: 'status'; status: CellStatus }
  | { type: 'metrics'; req: number; metrics: MetricObjectWithValues<MetricValue<string>>[] }
  | { type: 'drained' }
  | { type: 'fatal'; message: string; code?: string };
