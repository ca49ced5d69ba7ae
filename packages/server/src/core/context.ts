import type { NatsConnection } from '@nats-io/transport-node';
import type { NodeConfig } from '../config/index.js';
import type { CellMetrics } from '../infra/metrics.js';
import type { Names } from '../infra/subjects.js';
import type { TurnFlusher } from '../infra/turn.js';
import type { Envelope, Invalidation } from './envelope.js';
import type { DeviceSession } from './session.js';

/*
 * What every feature of a cell may know about the cell it runs in: who it is,
 * its configuration, log and metrics, how to reach other cells, and which
 * sessions it hosts. Features receive this and the narrow ports of the features
 * they work with (ports.ts), never the Cell itself.
 */

export type Log = (msg: string, err?: unknown) => void;

/** Sends to cells: one NATS publish to a cell's inbox, or to every cell of the cluster. */
export interface Bus {
  /** One envelope to cell `cell`'s inbox (this cell included). */
  publish(cell: string, e: Envelope): void;
  /** Tells every cell of the cluster (this one included) that a cached record changed. */
  invalidate(i: Invalidation): void;
}

/** The sessions this cell hosts, by device and by user (registered sessions only). */
export interface Hub {
  session(user: string, device: string): DeviceSession | undefined;
  sessionsOf(user: string): Iterable<DeviceSession>;
  readonly count: number;
}

export interface CellContext {
  readonly cellId: string;
  /** The cell's index within its node (0 runs the node-wide chores). */
  readonly index: number;
  readonly config: NodeConfig;
  readonly nc: NatsConnection;
  readonly names: Names;
  readonly metrics: CellMetrics;
  readonly log: Log;
  readonly bus: Bus;
  readonly hub: Hub;
  /** Batches flushed once at the end of this event-loop turn (a connection's frames, envelopes to a cell). */
  readonly turn: Pick<TurnFlusher, 'mark'>;
}
