import { parentPort, workerData } from 'node:worker_threads';
import { Cell } from './cell.js';
import { connectNats } from '../infra/nats.js';
import type { CellInit, FromCell, ToCell } from '../supervisor/messages.js';

/* Entry point of a cell's worker thread. */

const init = workerData as CellInit;
const port = parentPort!;
const post = (m: FromCell): void => port.postMessage(m);
const log = (msg: string, err?: unknown): void => {
  const detail = err instanceof Error ? `: ${err.message}` : err === undefined ? '' : `: ${String(err)}`;
  process.stderr.write(`[${init.cellId}] ${msg}${detail}\n`);
};

let natsUp = false;

async function main(): Promise<void> {
  const nc = await connectNats(init.config.nats, `gravitas ${init.cellId}`);
  natsUp = true;
  const cell = new Cell(init.config, init.cellId, init.index, nc, log, init.port, init.webPort);
  void (async () => {
    for await (const s of nc.status()) {
      if (s.type === 'disconnect') natsUp = false;
      else if (s.type === 'reconnect') {
        natsUp = true;
        cell.natsReconnected();
      }
    }
  })();
  await cell.start();
  const status = () => ({ ...cell.status(), natsConnected: natsUp && cell.status().natsConnected });
  post({ type: 'ready', status: status() });
  const timer = setInterval(() => post({ type: 'status', status: status() }), 500);
  timer.unref();

  port.on('message', (m: ToCell) => {
    switch (m.type) {
      case 'metrics':
        cell.sampleGauges();
        void cell.metrics.registry.getMetricsAsJSON().then((metrics) => post({ type: 'metrics', req: m.req, metrics }));
        return;
      case 'drain':
        void (async () => {
          clearInterval(timer);
          await cell.drain();
          await nc.drain().catch(() => undefined);
          post({ type: 'drained' });
          // Ends this worker thread only; pending timers must not keep it alive.
          process.exit(0);
        })();
        return;
      case 'crash':
        // Test hook: an uncaught exception, exactly what a bug would do.
        setImmediate(() => {
          throw new Error(`test hook: crash of ${init.cellId}`);
        });
        return;
    }
  });
}

main().catch((err: unknown) => {
  post({ type: 'fatal', message: err instanceof Error ? err.message : String(err), ...(typeof (err as { code?: unknown }).code === 'string' && { code: (err as { code: string }).code }) });
  process.exit(1);
});
