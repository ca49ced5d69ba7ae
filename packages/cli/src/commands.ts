import { createInterface } from 'node:readline';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { generateKeyPair, hintKeyPair, random, toBase64Url, fromBase64Url, keyPairFromSecret, type Msg } from '@gravitas/protocol';
import { loadConfig, readyLine, startNode, stopOnSignals, validateConfig } from '@gravitas/server';
import { GravitasClient } from '@gravitas/client';
import { NatsServer } from '@gravitas/testkit';
import { KeyStore } from './keystore.js';

export class UsageError extends Error {
  override name = 'UsageError';
}

type Flags = Record<string, string | boolean | undefined>;
const log = (m: string): void => void process.stderr.write(`${m}\n`);

function need(flags: Flags, name: string): string {
  const v = flags[name];
  if (typeof v !== 'string' || v === '') throw new UsageError(`--${name} is required`);
  return v;
}

function intFlag(flags: Flags, name: string, def: number): number {
  const v = flags[name];
  if (v === undefined) return def;
  if (typeof v !== 'string' || !/^\d+$/.test(v)) throw new UsageError(`--${name} must be a non-negative integer`);
  return Number(v);
}

/**
 * `gravitas keygen [--ticket-id N]`: a config fragment (server key, ticket key) on
 * stdout, ready to merge into a node config; the public keys clients need on stderr.
 */
export function keygen(flags: Flags): void {
  const id = intFlag(flags, 'ticket-id', 1);
  if (id > 255) throw new UsageError('--ticket-id must be 0..255');
  const server = generateKeyPair();
  const out = { serverKey: toBase64Url(server.secretKey), ticketKeys: [{ id, key: toBase64Url(random(32)) }] };
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
 * `gravitas dev`: a nats-server child with JetStream in a temporary store, and one
 * node with 2 cells and open registration. Ctrl-C stops both and removes the
 * temporary files. The dev server key is pinned in the local key store so that
 * `gravitas send/recv/chat` trust it.
 */
export async function dev(flags: Flags): Promise<void> {
  const cells = intFlag(flags, 'cells', 2);
  const basePort = intFlag(flags, 'port', 7400);
  const adminPort = intFlag(flags, 'admin-port', 7300);
  log('gravitas dev: starting nats-server with JetStream (temporary store)…');
  const nats = await NatsServer.start({ jetstream: true });
  const dataDir = await mkdtemp(join(tmpdir(), 'gravitas-dev-'));
  const server = generateKeyPair();
  const store = new KeyStore();
  let running: Awaited<ReturnType<typeof startNode>> | undefined;
  const stop = async (): Promise<void> => {
    await running?.stop();
    if (running) store.unpinServers(running.clientAddresses);
    await nats.stop();
    await rm(dataDir, { recursive: true, force: true });
  };
  stopOnSignals(stop, log);
  try {
    const config = validateConfig({
      nodeId: 'dev',
      nats: { servers: [nats.url] },
      cells,
      listen: { host: '127.0.0.1', basePort },
      admin: { host: '127.0.0.1', port: adminPort },
      dataDir,
      serverKey: toBase64Url(server.secretKey),
      ticketKeys: [{ id: 1, key: toBase64Url(random(32)) }],
      registration: { mode: 'open' },
    });
    log(`gravitas dev: starting node with ${cells} cells…`);
    running = await startNode(config, log);
  } catch (err) {
    await stop();
    throw err;
  }
  store.pinServers(running.clientAddresses, server.publicKey);
  process.stdout.write(`${readyLine(running)}\n`);
  log(`server public key: ${toBase64Url(server.publicKey)} (pinned in ${store.dir})`);
}

/** Builds a connected SDK client for --server/--as. */
async function client(flags: Flags, defaultDevice: string): Promise<{ c: GravitasClient; user: string }> {
  const servers = need(flags, 'server').split(',');
  const user = need(flags, 'as');
  const device = typeof flags.device === 'string' ? flags.device : defaultDevice;
  const store = new KeyStore();
  const keyText = typeof flags['server-key'] === 'string' ? flags['server-key'] : process.env.GRAVITAS_SERVER_PUBLIC_KEY;
  const serverPublicKey = keyText ? fromBase64Url(keyText, 32) : store.serverKey(servers[0]!);
  if (!serverPublicKey) throw new UsageError(`no known public key for ${servers[0]}: pass --server-key (printed by the node operator's \`gravitas keygen\`) or start it with \`gravitas dev\``);
  const id = store.identity(user, device);
  const token = typeof flags['registration-token'] === 'string' ? flags['registration-token'] : (process.env.GRAVITAS_REGISTRATION_TOKEN ?? '');
  const c = new GravitasClient({
    servers,
    serverPublicKey,
    identity: keyPairFromSecret(id.keyPair.secretKey),
    user,
    device,
    registration: token,
    ...(id.resumption && { resumption: id.resumption }),
    onResumption: (r) => store.saveResumption(user, device, r),
  });
  await c.connect();
  return { c, user };
}

/** `gravitas send --to bob --text hi`: exits 0 once delivered, 1 with the error code otherwise. */
export async function send(flags: Flags): Promise<void> {
  const to = need(flags, 'to');
  const text = need(flags, 'text');
  const { c } = await client(flags, 'cli-send');
  try {
    const r = await c.send(to, text);
    process.stdout.write(flags.json ? `${JSON.stringify(r)}\n` : `${r.status} ${r.id}\n`);
  } finally {
    await c.close();
  }
}

function print(m: Msg, json: boolean): void {
  process.stdout.write(json ? `${JSON.stringify({ id: m.id, from: m.from, to: m.to, text: m.text, ts: m.ts })}\n` : `[${new Date(m.ts).toISOString()}] ${m.from}: ${m.text}\n`);
}

/** `gravitas recv --count N [--json]`: prints N messages, then exits. */
export async function recv(flags: Flags): Promise<void> {
  const count = intFlag(flags, 'count', 1);
  const timeoutSec = intFlag(flags, 'timeout', 0);
  const { c } = await client(flags, 'cli');
  process.stderr.write(`receiving as ${c.options.user} on ${c.server}\n`);
  await new Promise<void>((resolve, reject) => {
    let n = 0;
    if (count === 0) return resolve();
    const t = timeoutSec > 0 ? setTimeout(() => reject(new Error(`timed out after ${timeoutSec}s with ${n} of ${count} messages`)), timeoutSec * 1000) : undefined;
    c.on('message', (m) => {
      print(m, flags.json === true);
      if (++n >= count) {
        clearTimeout(t);
        resolve();
      }
    });
  }).finally(() => c.close());
}

/** `gravitas chat`: `@bob hello` sends; incoming messages print. */
export async function chat(flags: Flags): Promise<void> {
  const { c, user } = await client(flags, 'cli');
  process.stdout.write(`connected as ${user} to ${c.server}. Type "@name message" to send, Ctrl-D to quit.\n`);
  c.on('message', (m) => print(m, false));
  c.on('disconnected', () => process.stdout.write('(disconnected, reconnecting…)\n'));
  c.on('connected', (w) => process.stdout.write(`(connected to ${w.cell})\n`));
  c.on('error', (e) => process.stdout.write(`(error: ${e.message})\n`));
  const rl = createInterface({ input: process.stdin });
  for await (const line of rl) {
    const m = /^@([A-Za-z0-9_-]+)\s+(.+)$/.exec(line.trim());
    if (!m) {
      if (line.trim()) process.stdout.write('usage: @name message\n');
      continue;
    }
    c.send(m[1]!, m[2]!).then(
      (r) => process.stdout.write(`(${r.status} to ${m[1]})\n`),
      (e: Error & { code?: string }) => process.stdout.write(`(not delivered to ${m[1]}: ${e.code ?? e.message})\n`),
    );
  }
  await c.close();
}
