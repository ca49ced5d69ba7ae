/** nats-server binary could not be located. */
export class NatsServerNotFoundError extends Error {
  override readonly name = 'NatsServerNotFoundError';
  readonly code = 'ERR_NATS_SERVER_NOT_FOUND';
  constructor(detail = 'nats-server not found on PATH, /usr/sbin or /usr/local/bin') {
    super(
      `${detail}. Install it with \`apt-get install nats-server\` (Debian/Ubuntu) or from ` +
        'https://github.com/nats-io/nats-server/releases, or set NATS_SERVER_BIN to the binary.',
    );
  }
}

/** nats-server exited or never became ready during start-up; `log` holds its last output lines. */
export class NatsServerStartError extends Error {
  override readonly name = 'NatsServerStartError';
  readonly code = 'ERR_NATS_SERVER_START';
  constructor(
    message: string,
    readonly log: readonly string[],
    options?: ErrorOptions,
  ) {
    super(`${message}\n--- last nats-server output ---\n${log.join('\n') || '(none)'}`, options);
  }
}

/** A cluster did not agree on a JetStream meta leader in time. */
export class NatsClusterError extends Error {
  override readonly name = 'NatsClusterError';
  readonly code = 'ERR_NATS_CLUSTER_NO_LEADER';
}

/** A check() poll did not succeed before its timeout. */
export class CheckTimeoutError extends Error {
  override readonly name = 'CheckTimeoutError';
  readonly code = 'ERR_CHECK_TIMEOUT';
}
