import { createECDH } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { generateKeyPair, hintKeyPair, random, toBase64Url } from '@gravitas/protocol';
import { loadConfig, readyLine, startNode, stopOnSignals, validateConfig } from '@gravitas/server';
import { NatsServer } from '@gravitas/testkit';
import { startDemoServer, type DemoServer } from '../demo.js';
import { KeyStore } from '../keystore.js';
import { intFlag, log, UsageError, type Flags } from './flags.js';

/**
 * `gravitas keygen [--ticket-id N] [--vapid [--subject S]]`: a config fragment (server key, ticket key, push keys) on
 * stdout, ready to merge into a node config; the public keys clients need on stderr.
 */
export function keygen(flags: Flags): void {
  const id = intFlag(flags, 'ticket-id', 1);
  if (id > 255) throw new UsageError('--ticket-id must be 0..255');
  const server = generateKeyPair();
  const out: Record<string, unknown> = { serverKey: toBase64Url(server.secretKey), ticketKeys: [{ id, key: toBase64Url(random(32)) }] };
  // --vapid: a Web Push (VAPID, P-256) key pair and a webhook signing secret (docs/push.md).
  if (flags.vapid) {
    const ecdh = createECDH('prime256v1');
    ecdh.generateKeys();
    const subject = typeof flags.subject === 'string' ? flags.subject : 'mailto:ops@example.com';
    out.push = { vapidPublicKey: toBase64Url(ecdh.getPublicKey()), vapidPrivateKey: toBase64Url(Buffer.concat([Buffer.alloc(32 - ecdh.getPrivateKey().length), ecdh.getPrivateKey()])), vapidSubject: subject, webhookSecret: toBase64Url(random(32)) };
  }
  process.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
  log(`server public key (clients pin this, e.g. --server-key): ${toBase64Url(server.publicKey)}`);
  log(`connect-hint public key (SDK option hintPublicKey): ${toBase64Url(hintKeyPair(server.secretKey).publicKey)}`);
}

/** `gravitas node`: config from --config file, GRAVITAS_* env and flags. */
export async function node(flags: Flags): Promise<void> {
  const { config: file, ...rest } = flags;
  const nodeFlags: Record<string, string> = {};
  for (const [k, v] of Object.entries(rest)) if (typeof v === 'string') nodeFlags[k] = v;
  const config = loadConfig({ ...(typeof file === 'string' && { file }), env: process.env, flags: nodeFlags });
  const running = await startNode(config, log);
  stopOnSignals(() => running.stop(), log);
  process.stdout.write(`${readyLine(running)}\n`);
}

/**
 * The admin token of `gravitas dev`: --admin-token, else GRAVITAS_ADMIN_TOKEN, else a fresh
 * random one (32 bytes, base64url). An explicit one must be a usable bearer token: visible
 * ASCII without spaces, long enough not to be guessed, and not shaped like a publisher key
 * (`gk_…` is always taken as one, so it could never be the root token).
 */
function devAdminToken(flags: Flags): string {
  const given = typeof flags['admin-token'] === 'string' ? flags['admin-token'] : process.env.GRAVITAS_ADMIN_TOKEN;
  if (given === undefined || given === '') return toBase64Url(random(32));
  if (!/^[\x21-\x7e]{16,512}$/.test(given)) throw new UsageError('--admin-token (or GRAVITAS_ADMIN_TOKEN) must be 16 to 512 visible ASCII characters, no spaces');
  if (given.startsWith('gk_')) throw new UsageError('--admin-token (or GRAVITAS_ADMIN_TOKEN) must not start with "gk_": that is how publisher API keys start');
  return given;
}

/**
 * `gravitas dev`: a nats-server child with JetStream in a temporary store, and one
 * node with 2 cells and open registration. Ctrl-C stops both and removes the
 * temporary files. The dev server key is pinned in the local key store so that
 * `gravitas send/recv/chat` trust it, and the node's admin token (random, or
 * --admin-token / GRAVITAS_ADMIN_TOKEN) is pinned there for its admin URL so that
 * `gravitas publisher/campaign/profile/report` use it; both pins go when it stops.
 * The token itself is never printed. It also serves the demo chat page (demo.ts)
 * and prints `demo url=<url>` after the ready line.
 */
export async function dev(flags: Flags): Promise<void> {
  const cells = intFlag(flags, 'cells', 2);
  const basePort = intFlag(flags, 'port', 7400);
  const adminPort = intFlag(flags, 'admin-port', 7300);
  const webPort = intFlag(flags, 'web-port', 7600);
  const demoPort = intFlag(flags, 'demo-port', 7380);
  const adminToken = devAdminToken(flags);
  log('gravitas dev: starting nats-server with JetStream (temporary store)…');
  // Stopped by us after the node drained (its last KV writes need it), not by the test kit's signal reaper.
  const nats = await NatsServer.start({ jetstream: true, stopsItself: true });
  const dataDir = await mkdtemp(join(tmpdir(), 'gravitas-dev-'));
  const server = generateKeyPair();
  const store = new KeyStore();
  let running: Awaited<ReturnType<typeof startNode>> | undefined;
  let demo: DemoServer | undefined;
  const stop = async (): Promise<void> => {
    try {
      await demo?.close();
      await running?.stop();
    } finally {
      if (running) {
        store.unpinServers(running.clientAddresses);
        store.unpinAdminToken(running.adminUrl, adminToken);
      }
      await nats.stop();
      await rm(dataDir, { recursive: true, force: true });
    }
  };
  stopOnSignals(stop, log);
  let tokenFile: string;
  try {
    const config = validateConfig({
      nodeId: 'dev',
      nats: { servers: [nats.url] },
      cells,
      listen: { host: '127.0.0.1', basePort, webBasePort: webPort },
      admin: { host: '127.0.0.1', port: adminPort, token: adminToken },
      dataDir,
      serverKey: toBase64Url(server.secretKey),
      ticketKeys: [{ id: 1, key: toBase64Url(random(32)) }],
      registration: { mode: 'open' },
    });
    log(`gravitas dev: starting node with ${cells} cells…`);
    running = await startNode(config, log);
    const node = running;
    demo = await startDemoServer({ host: '127.0.0.1', port: demoPort, config: () => ({ web: node.webAddresses, serverPublicKey: toBase64Url(server.publicKey) }) });
    store.pinServers(running.clientAddresses, server.publicKey);
    tokenFile = store.pinAdminToken(running.adminUrl, adminToken);
  } catch (err) {
    await stop();
    throw err;
  }
  process.stdout.write(`${readyLine(running)}\ndemo url=${demo.url}\n`);
  log(`server public key: ${toBase64Url(server.publicKey)} (pinned in ${store.dir})`);
  log(`admin token: in ${tokenFile} (mode 0600, removed on Ctrl-C); gravitas publisher/campaign/profile/report use it against ${running.adminUrl}`);
  log(`gravitas dev: demo chat page at ${demo.url} (open it in two tabs or browsers)`);
}

