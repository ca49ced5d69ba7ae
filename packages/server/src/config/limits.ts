import { DEFAULT_MAX_FRAME_BYTES, HARD_MAX_FRAME_BYTES } from '@gravitas/protocol';
import { budgetShares } from '../infra/rate.js';
import type { ConfigCheck } from './check.js';

/** Per-session and per-account limits (docs/security.md, "Limits"). */
export interface Limits {
  maxFrameBytes: number;
  maxConnectionsPerCell: number;
  handshakeTimeoutMs: number;
  maxHandshakesInFlight: number;
  /** Above this many handshakes per second on a cell, clients must first echo a cookie. */
  cookieThresholdPerSec: number;
  idleTimeoutMs: number;
  /** Messages a session may send (token bucket). */
  msgRatePerSec: number;
  msgBurst: number;
  /** Deliveries a session's messages may cause: a message costs its target devices (1:1) or its group's members. */
  fanoutRatePerSec: number;
  fanoutBurst: number;
  /** Read receipts a session may send. */
  readRatePerSec: number;
  readBurst: number;
  /** Requests (`req`) a session may make. */
  requestRatePerSec: number;
  requestBurst: number;
  /** Pings and presence changes a session may send. */
  controlRatePerSec: number;
  controlBurst: number;
  /** The same per account, all its devices together, cluster-wide (leased budgets, cell/budgets.ts). */
  accountMsgRatePerSec: number;
  accountFanoutRatePerSec: number;
  accountReadRatePerSec: number;
  accountRequestRatePerSec: number;
  maxInFlightPerSession: number;
  custodyWindowMs: number;
  /** Messages a cell holds under custody at most: past it, new sends are refused with BUSY (the SDK backs off). */
  maxPendingPerCell: number;
  /** A cell whose event loop runs this late refuses new sends with BUSY until it catches up. */
  maxLagMs: number;
  maxOutboundBytes: number;
  maxInboxDepth: number;
  maxDevicesPerUser: number;
  maxGroupSize: number;
}

export const DEFAULT_LIMITS: Limits = {
  maxFrameBytes: DEFAULT_MAX_FRAME_BYTES,
  maxConnectionsPerCell: 15_000,
  handshakeTimeoutMs: 10_000,
  maxHandshakesInFlight: 512,
  cookieThresholdPerSec: 5_000,
  idleTimeoutMs: 120_000,
  msgRatePerSec: 200,
  msgBurst: 400,
  fanoutRatePerSec: 2_000,
  fanoutBurst: 4_096,
  readRatePerSec: 50,
  readBurst: 200,
  requestRatePerSec: 20,
  requestBurst: 100,
  controlRatePerSec: 10,
  controlBurst: 100,
  accountMsgRatePerSec: 400,
  accountFanoutRatePerSec: 4_000,
  accountReadRatePerSec: 100,
  accountRequestRatePerSec: 40,
  maxInFlightPerSession: 1024,
  custodyWindowMs: 3_000,
  maxPendingPerCell: 50_000,
  maxLagMs: 500,
  maxOutboundBytes: 4 * 1024 * 1024,
  maxInboxDepth: 256,
  maxDevicesPerUser: 8,
  maxGroupSize: 1024,
};

export function validateLimits(c: ConfigCheck): Limits {
  const L = DEFAULT_LIMITS;
  return {
    maxFrameBytes: c.int('limits.maxFrameBytes', L.maxFrameBytes, 1024, HARD_MAX_FRAME_BYTES),
    maxConnectionsPerCell: c.int('limits.maxConnectionsPerCell', L.maxConnectionsPerCell, 1, 1_000_000),
    handshakeTimeoutMs: c.int('limits.handshakeTimeoutMs', L.handshakeTimeoutMs, 100, 120_000),
    maxHandshakesInFlight: c.int('limits.maxHandshakesInFlight', L.maxHandshakesInFlight, 1, 100_000),
    cookieThresholdPerSec: c.int('limits.cookieThresholdPerSec', L.cookieThresholdPerSec, 0, 1_000_000),
    idleTimeoutMs: c.int('limits.idleTimeoutMs', L.idleTimeoutMs, 1000, 3_600_000),
    msgRatePerSec: c.int('limits.msgRatePerSec', L.msgRatePerSec, 1, 1_000_000),
    msgBurst: c.int('limits.msgBurst', L.msgBurst, 1, 1_000_000),
    fanoutRatePerSec: c.int('limits.fanoutRatePerSec', L.fanoutRatePerSec, 1, 10_000_000),
    fanoutBurst: c.int('limits.fanoutBurst', L.fanoutBurst, 1, 10_000_000),
    readRatePerSec: c.int('limits.readRatePerSec', L.readRatePerSec, 1, 1_000_000),
    readBurst: c.int('limits.readBurst', L.readBurst, 1, 1_000_000),
    requestRatePerSec: c.int('limits.requestRatePerSec', L.requestRatePerSec, 1, 1_000_000),
    requestBurst: c.int('limits.requestBurst', L.requestBurst, 1, 1_000_000),
    controlRatePerSec: c.int('limits.controlRatePerSec', L.controlRatePerSec, 1, 1_000_000),
    controlBurst: c.int('limits.controlBurst', L.controlBurst, 1, 1_000_000),
    accountMsgRatePerSec: c.int('limits.accountMsgRatePerSec', L.accountMsgRatePerSec, 1, 10_000_000),
    accountFanoutRatePerSec: c.int('limits.accountFanoutRatePerSec', L.accountFanoutRatePerSec, 1, 100_000_000),
    accountReadRatePerSec: c.int('limits.accountReadRatePerSec', L.accountReadRatePerSec, 1, 10_000_000),
    accountRequestRatePerSec: c.int('limits.accountRequestRatePerSec', L.accountRequestRatePerSec, 1, 10_000_000),
    maxInFlightPerSession: c.int('limits.maxInFlightPerSession', L.maxInFlightPerSession, 1, 100_000),
    custodyWindowMs: c.int('limits.custodyWindowMs', L.custodyWindowMs, 100, 600_000),
    maxPendingPerCell: c.int('limits.maxPendingPerCell', L.maxPendingPerCell, 1, 10_000_000),
    maxLagMs: c.int('limits.maxLagMs', L.maxLagMs, 10, 60_000),
    maxOutboundBytes: c.int('limits.maxOutboundBytes', L.maxOutboundBytes, 64 * 1024, 1024 ** 3),
    maxInboxDepth: c.int('limits.maxInboxDepth', L.maxInboxDepth, 1, 100_000),
    maxDevicesPerUser: c.int('limits.maxDevicesPerUser', L.maxDevicesPerUser, 1, 64),
    maxGroupSize: c.int('limits.maxGroupSize', L.maxGroupSize, 2, 100_000),
  };
}

/** What one message may cost must fit what a session and a cell may spend (checked once the whole config is read). */
export function checkLimitBudgets(c: ConfigCheck, limits: Limits): void {
  // A message costs at most a full group (or every device of two accounts): one must always fit the burst.
  const biggest = Math.max(limits.maxGroupSize, 2 * limits.maxDevicesPerUser);
  if (limits.fanoutBurst < biggest) c.fail('limits.fanoutBurst', `must be at least ${biggest} (limits.maxGroupSize, or two accounts' devices): one message must be able to pass`);
  // Likewise what one cell may spend of an account's budget in a window (infra/rate.ts, session/budgets.ts).
  const { oneCell } = budgetShares(limits.accountFanoutRatePerSec, limits.maxDevicesPerUser);
  if (oneCell < biggest) c.fail('limits.accountFanoutRatePerSec', `is too low: one cell may spend ${oneCell} of an account's budget in a window, less than one message to ${biggest} devices (limits.maxGroupSize) costs`);
}
