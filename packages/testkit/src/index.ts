export { check, type CheckOptions } from './check.js';
export { NatsCluster, type NatsClusterOptions } from './cluster.js';
export { CheckTimeoutError, NatsClusterError, NatsServerNotFoundError, NatsServerStartError } from './errors.js';
export {
  findNatsServer,
  mergeConfig,
  NatsServer,
  type Jsz,
  type NatsConfig,
  type NatsServerOptions,
  type StopOptions,
} from './server.js';
export { freePort, isExecutable, tempDir, type TempDir } from './util.js';

/** Kill a spawned child with SIGKILL if the test process exits or is signalled first. */
export { trackChild } from './registry.js';
