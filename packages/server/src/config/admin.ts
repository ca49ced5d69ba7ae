import { hostName, type ConfigCheck } from './check.js';

/** The admin HTTP server (admin/admin.ts). */
export interface AdminConfig {
  host: string;
  port: number;
  token?: string;
  /** Open connections at most (beyond: closed at accept), and per client address. */
  maxConnections: number;
  maxConnectionsPerSource: number;
  /** A request head must be complete this long after the connection opened or the previous answer (408). */
  headerTimeoutMs: number;
  /** A whole request, body included, must arrive within this (408). */
  requestTimeoutMs: number;
  /** An idle kept-alive connection is closed after this. */
  keepAliveTimeoutMs: number;
}

export const DEFAULT_ADMIN: Omit<AdminConfig, 'token'> = {
  host: '127.0.0.1',
  port: 7300,
  maxConnections: 64,
  maxConnectionsPerSource: 16,
  headerTimeoutMs: 5_000,
  requestTimeoutMs: 15_000,
  keepAliveTimeoutMs: 5_000,
};

/** The admin section but its token (validate.ts reads that with the other secrets). */
export function validateAdmin(c: ConfigCheck): AdminConfig {
  const A = DEFAULT_ADMIN;
  const admin: AdminConfig = {
    host: c.string('admin.host', A.host, hostName)!,
    port: c.int('admin.port', A.port, 0, 65535),
    maxConnections: c.int('admin.maxConnections', A.maxConnections, 1, 100_000),
    maxConnectionsPerSource: c.int('admin.maxConnectionsPerSource', A.maxConnectionsPerSource, 1, 100_000),
    headerTimeoutMs: c.int('admin.headerTimeoutMs', A.headerTimeoutMs, 100, 120_000),
    requestTimeoutMs: c.int('admin.requestTimeoutMs', A.requestTimeoutMs, 100, 600_000),
    keepAliveTimeoutMs: c.int('admin.keepAliveTimeoutMs', A.keepAliveTimeoutMs, 100, 600_000),
  };
  if (admin.maxConnectionsPerSource > admin.maxConnections) c.fail('admin.maxConnectionsPerSource', `must not exceed admin.maxConnections (${admin.maxConnections})`);
  if (admin.requestTimeoutMs < admin.headerTimeoutMs) c.fail('admin.requestTimeoutMs', `must be at least admin.headerTimeoutMs (${admin.headerTimeoutMs}): the head is part of the request`);
  return admin;
}
