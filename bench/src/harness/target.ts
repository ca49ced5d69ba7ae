import { randomBytes } from 'node:crypto';
import { NatsServer } from '@gravitas/testkit';
import { clusterKeys, startGravitasNode, type Resources } from '../procs.js';
import type { DriverSpec } from './control.js';
import { HarnessError } from './errors.js';
import { startEjabberd } from './ejabberd.js';
import { startProsody } from './prosody.js';
import type { Target } from './scenario.js';
import { startSocketIo } from './socketio-peer.js';

/*
 * The system under test of a run: started here for a `local` target (a private nats-server with
 * JetStream and `nodes` gravitas node processes; or a private Prosody), or described for one that
 * already runs. Whatever is started is registered with `Resources`, so it is stopped however the
 * run ends.
 */

export interface StartedTarget {
  /** For the report's header, e.g. "gravitas: 2 local nodes × 1 cell". */
  description: string;
  driver: DriverSpec;
  /** Processes on this host, by name, sampled from /proc each interval (read after afterProvision: a restart changes them). */
  pids: Record<string, number>;
  /** After the accounts are registered, before the run (ejabberd: restart the nodes so registration memory is not counted). */
  afterProvision?: () => Promise<void>;
  /** Gravitas nodes' /metrics: locality (and CPU/memory for remote nodes). */
  metrics: string[];
  /** Remote nodes' CPU and memory come from their /metrics rather than /proc. */
  remoteProcs: boolean;
  /** Admin API and a root token: campaigns. */
  admin?: { url: string; token: string };
}

export async function startTarget(t: Target, res: Resources, log: (m: string) => void): Promise<StartedTarget> {
  if (t.driver === 'socketio') {
    log(`starting redis-server and ${t.local.processes} Socket.IO server process(es)…`);
    const p = await startSocketIo({ processes: t.local.processes });
    res.deferLast(() => p.stop());
    return { description: `socketio: ${t.local.processes} local Socket.IO 4.8 process(es) + redis (redis-adapter)`, driver: { kind: 'socketio', urls: p.urls }, pids: p.pids(), metrics: [], remoteProcs: false };
  }
  if (t.driver === 'xmpp' && t.local?.server === 'ejabberd') {
    const nodes = t.local.nodes;
    log(`starting a private ejabberd of ${nodes} node(s)…`);
    const e = await startEjabberd({ nodes });
    res.deferLast(() => e.stop());
    const started: StartedTarget = {
      description: `xmpp: a local ejabberd 23.01, ${nodes} node(s) (${e.domain})`,
      driver: { kind: 'xmpp', host: e.host, port: e.ports[0]!, ports: e.ports, domain: e.domain, muc: `conference.${e.domain}`, register: true, mechanism: 'SCRAM-SHA-1' },
      pids: e.pids(),
      metrics: [],
      remoteProcs: false,
      afterProvision: async () => {
        log('restarting the ejabberd node(s): registration-time memory is not measured…');
        await e.restart();
        started.pids = e.pids();
      },
    };
    return started;
  }
  if (t.driver === 'xmpp') {
    if (!t.local) {
      return { description: `xmpp: ${t.host}:${t.port} (${t.domain})`, driver: { kind: 'xmpp', host: t.host, port: t.port, domain: t.domain, muc: t.muc, register: t.register }, pids: {}, metrics: [], remoteProcs: false };
    }
    log('starting a private prosody…');
    const p = await startProsody();
    res.deferLast(() => p.stop());
    return {
      description: `xmpp: a local prosody (${p.domain})`,
      driver: { kind: 'xmpp', host: p.host, port: p.port, domain: p.domain, muc: p.muc, register: true },
      pids: { prosody: p.pid },
      metrics: [],
      remoteProcs: false,
    };
  }
  if ('remote' in t) {
    const r = t.remote;
    return {
      description: `gravitas: remote cluster, ${r.addresses.length} cell address(es)`,
      driver: { kind: 'gravitas', addresses: r.addresses, serverPublicKey: r.serverPublicKey, registration: '' },
      pids: {},
      metrics: r.metrics,
      remoteProcs: true,
      ...(r.admin && { admin: r.admin }),
    };
  }
  const { nodes, cellsPerNode } = t.local;
  const config = t.local.config;
  log(`starting nats-server (JetStream) and ${nodes} node(s) × ${cellsPerNode} cell(s)…`);
  let nats: NatsServer;
  try {
    nats = await NatsServer.start({ jetstream: true });
  } catch (e) {
    throw new HarnessError('TARGET_UNAVAILABLE', `cannot start nats-server for the target: ${(e as Error).message}`, { cause: e });
  }
  res.deferLast(() => nats.stop());
  const dir = await res.tempDir('gravitas-bench-run-');
  const keys = clusterKeys();
  const token = randomBytes(24).toString('base64url');
  const started = await Promise.all(
    Array.from({ length: nodes }, (_, i) =>
      startGravitasNode(res, dir, `node${i + 1}`, nats.url, keys, {
        // The default per-source caps unless the scenario sets its own: generators spread their sources (sources.ts).
        config: { network: {}, ...config, cells: cellsPerNode, admin: { host: '127.0.0.1', port: 0, token } },
        readyTimeoutMs: 120_000,
      }).catch((e: Error) => {
        throw new HarnessError('TARGET_UNAVAILABLE', `node${i + 1} did not start: ${e.message}`, { cause: e });
      }),
    ),
  );
  const pids: Record<string, number> = { nats: nats.pid ?? -1 };
  for (const n of started) pids[n.nodeId] = n.pid;
  return {
    description: `gravitas: ${nodes} local node(s) × ${cellsPerNode} cell(s)`,
    driver: { kind: 'gravitas', addresses: started.flatMap((n) => n.addrs), serverPublicKey: Buffer.from(keys.server.publicKey).toString('base64url'), registration: '' },
    pids,
    metrics: started.map((n) => `${n.adminUrl}/metrics`),
    remoteProcs: false,
    admin: { url: started[0]!.adminUrl, token },
  };
}
