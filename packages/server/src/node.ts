import { mkdirSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import type { NodeConfig } from './config/index.js';
import { startAdmin, type AdminServer } from './admin/admin.js';
import { Supervisor } from './supervisor/supervisor.js';
import { fitFdBudget } from './supervisor/fd-budget.js';

export interface RunningNode {
  config: NodeConfig;
  supervisor: Supervisor;
  /** Client addresses of the cells (host:port). */
  clientAddresses: string[];
  /** Web listener addresses of the cells (host:port; WebSocket and chunked HTTP); empty when off. */
  webAddresses: string[];
  adminUrl: string;
  /** Graceful stop: drain every cell, close admin. */
  stop(): Promise<void>;
}

/**
 * Starts a node: its cells and its admin HTTP server. Resolves once every cell listens.
 * Connection caps left at their defaults may be lowered to fit the fd limit (supervisor/fd-budget.ts);
 * explicit ones that do not fit make it throw ServerError FD_LIMIT before anything starts.
 */
export async function startNode(config: NodeConfig, log: (msg: string) => void = (m) => process.stderr.write(`${m}\n`)): Promise<RunningNode> {
  fitFdBudget(config, log);
  mkdirSync(config.dataDir, { recursive: true });
  const warning = registrationWarning(config);
  if (warning) log(warning);
  const supervisor = new Supervisor(config, log);
  await supervisor.start();
  let admin: AdminServer;
  try {
    admin = await startAdmin(config, supervisor, log);
  } catch (err) {
    await supervisor.stop();
    throw err;
  }
  const port = (admin.server.address() as AddressInfo).port;
  let stopping: Promise<void> | undefined;
  return {
    config,
    supervisor,
    clientAddresses: supervisor.addresses(),
    webAddresses: supervisor.webAddresses(),
    adminUrl: `http://${config.admin.host}:${port}`,
    stop() {
      stopping ??= (async () => {
        await supervisor.stop();
        await admin.close();
      })();
      return stopping;
    },
  };
}

/** Said loudly at start-up when devices can join accounts without an operator's credential. */
export function registrationWarning(config: NodeConfig): string | undefined {
  const { mode } = config.registration;
  if (mode === 'credential') return undefined;
  const what = mode === 'open'
    ? 'ANYONE can register any device under any user name'
    : 'the shared registration token, which every client app must ship, lets anyone who extracts it create accounts';
  return `WARNING: registration.mode is "${mode}": ${what}. This is for development and tests only; production clusters use "credential" (docs/security.md).`;
}

/** The `ready` line printed by `gravitas node` and `gravitas dev`: scripts wait for it. `web=` only when web listeners run. */
export function readyLine(node: RunningNode): string {
  const web = node.webAddresses.length > 0 ? ` web=${node.webAddresses.join(',')}` : '';
  return `ready client=${node.clientAddresses.join(',')} admin=${node.adminUrl}${web}`;
}

/** Runs until SIGTERM/SIGINT, then drains and exits 0. */
export function stopOnSignals(stop: () => Promise<void>, log: (msg: string) => void): void {
  let signalled = false;
  const onSignal = (sig: NodeJS.Signals): void => {
    if (signalled) return;
    signalled = true;
    log(`${sig}: draining`);
    stop().then(
      () => process.exit(0),
      (err: Error) => {
        log(`shutdown failed: ${err.message}`);
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
}
