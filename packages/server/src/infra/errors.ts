/** Errors of the node runtime (not of the wire protocol: those live in @gravitas/protocol). */
export const ServerErrorCode = {
  CONFIG_INVALID: 'CONFIG_INVALID',
  CONFIG_UNREADABLE: 'CONFIG_UNREADABLE',
  NATS_UNAVAILABLE: 'NATS_UNAVAILABLE',
  CELL_START_FAILED: 'CELL_START_FAILED',
  /** The configured connection caps need more file descriptors than the process may open (supervisor/fd-budget.ts). */
  FD_LIMIT: 'FD_LIMIT',
} as const;
export type ServerErrorCode = (typeof ServerErrorCode)[keyof typeof ServerErrorCode];

export class ServerError extends Error {
  override name = 'ServerError';
  constructor(readonly code: ServerErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
  }
}

export interface ConfigIssue { path: string; message: string }

/** Every problem found in a configuration, reported together. */
export class ConfigError extends ServerError {
  override name = 'ConfigError';
  constructor(readonly issues: ConfigIssue[]) {
    super(ServerErrorCode.CONFIG_INVALID, `invalid configuration:\n${issues.map((i) => `  - ${i.path}: ${i.message}`).join('\n')}`);
  }
}
