import { createECDH } from 'node:crypto';
import { createInterface } from 'node:readline';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { generateKeyPair, hintKeyPair, random, toBase64Url, fromBase64Url, keyPairFromSecret, type Msg, type Registration } from '@gravitas/protocol';
import { loadConfig, readyLine, startNode, stopOnSignals, validateConfig } from '@gravitas/server';
import { GravitasClient } from '@gravitas/client';
import { NatsServer } from '@gravitas/testkit';
import { startDemoServer, type DemoServer } from './demo.js';
import { adminTokenPath, KeyStore, keyStoreDir, pinnedAdminToken } from './keystore.js';

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
  const c = new GravitasClient({
    servers,
    serverPublicKey,
    identity: keyPairFromSecret(id.keyPair.secretKey),
    user,
    device,
    registration: registrationOf(flags),
    ...(id.resumption && { resumption: id.resumption }),
    onResumption: (r) => store.saveResumption(user, device, r),
  });
  await c.connect();
  return { c, user };
}

/**
 * What registers a new device (docs/security.md): `--credential JWT` (or GRAVITAS_CREDENTIAL) from
 * the operator's auth service, `--link APPROVAL` printed by `gravitas approve` on a device of the
 * account, else a development cluster's `--registration-token` ('' when it is open).
 */
function registrationOf(flags: Flags): Registration {
  const credential = typeof flags.credential === 'string' ? flags.credential : process.env.GRAVITAS_CREDENTIAL;
  if (credential) return { credential };
  if (typeof flags.link === 'string') {
    try {
      return { link: fromBase64Url(flags.link) };
    } catch {
      throw new UsageError('--link must be the approval `gravitas approve` printed (base64url)');
    }
  }
  return typeof flags['registration-token'] === 'string' ? flags['registration-token'] : (process.env.GRAVITAS_REGISTRATION_TOKEN ?? '');
}

/** `gravitas device-key --as alice --device tablet`: this device's public key, for a device of the account to approve. */
export function deviceKey(flags: Flags): void {
  const user = need(flags, 'as');
  const device = typeof flags.device === 'string' ? flags.device : 'cli';
  const id = new KeyStore().identity(user, device);
  process.stdout.write(flags.json ? `${JSON.stringify({ user, device, key: toBase64Url(id.keyPair.publicKey) })}\n` : `${toBase64Url(id.keyPair.publicKey)}\n`);
}

/** `gravitas approve --as alice --new-device tablet --key KEY`: from a device of the account, an approval for the new one (printed once). */
export async function approve(flags: Flags): Promise<void> {
  const newDevice = need(flags, 'new-device');
  let key: Uint8Array;
  try {
    key = fromBase64Url(need(flags, 'key'), 32);
  } catch {
    throw new UsageError('--key must be the new device\'s public key, as `gravitas device-key` prints it');
  }
  const { c } = await client(flags, 'cli');
  try {
    const { approval, expiresAt } = await c.approveDevice(newDevice, key);
    process.stdout.write(flags.json ? `${JSON.stringify({ approval: toBase64Url(approval), expiresAt })}\n` : `${toBase64Url(approval)}\n`);
    log(`valid once, until ${new Date(expiresAt).toISOString()}: on the new device, pass it as --link`);
  } finally {
    await c.close();
  }
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
  // A message the system originated (a campaign, a notice about the account) says so.
  process.stdout.write(json ? `${JSON.stringify({ id: m.id, from: m.from, to: m.to, text: m.text, ts: m.ts, ...(m.sys !== undefined && { sys: m.sys }) })}\n` : `[${new Date(m.ts).toISOString()}] ${m.sys !== undefined ? `(${m.sys}) ` : ''}${m.from}: ${m.text}\n`);
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

// ---- admin API clients: campaign, publisher, profile ---------------------------------

/** A refusal of the admin API, with its stable code (exit code 1). */
export class ApiError extends Error {
  override name = 'ApiError';
  readonly exitCode = 1;
  constructor(readonly code: string, message: string, readonly status: number) {
    super(message);
  }
}

/** The admin API could not be reached at all (exit code 3). */
export class ApiUnreachableError extends Error {
  override name = 'ApiUnreachableError';
  readonly exitCode = 3;
}

const API_TIMEOUT_MS = 30_000;

/** No admin token from a flag, the environment or a dev cluster's pin (exit code 2, like a usage error). */
export class MissingTokenError extends Error {
  override name = 'MissingTokenError';
  readonly exitCode = 2;
}

/**
 * The bearer for an admin call: --token, else GRAVITAS_ADMIN_TOKEN, else the token a running
 * `gravitas dev` pinned for exactly this admin URL (a pinned token is never sent elsewhere).
 */
function adminBearer(flags: Flags, base: string): { token: string; pinnedIn?: string } {
  if (typeof flags.token === 'string') {
    if (flags.token === '') throw new UsageError('--token must not be empty');
    return { token: flags.token };
  }
  const env = process.env.GRAVITAS_ADMIN_TOKEN;
  if (env) return { token: env };
  const pinned = pinnedAdminToken(base);
  if (pinned) return { token: pinned.token, pinnedIn: pinned.path };
  throw new MissingTokenError(
    `no admin token for ${base}: pass --token T or set GRAVITAS_ADMIN_TOKEN (the node's admin token or a publisher API key). ` +
      `A running \`gravitas dev\` (npm start) pins its token in ${adminTokenPath(base)} and these commands use it by default: ` +
      `start one, or point --admin (GRAVITAS_ADMIN_URL) at its admin URL, with the same GRAVITAS_HOME (${keyStoreDir()})`,
  );
}

/** One admin API call with --admin (GRAVITAS_ADMIN_URL) and --token (GRAVITAS_ADMIN_TOKEN, or a dev cluster's pinned token); the answer's JSON. */
async function api(flags: Flags, method: string, path: string, body?: unknown): Promise<unknown> {
  const base = (typeof flags.admin === 'string' ? flags.admin : process.env.GRAVITAS_ADMIN_URL) ?? 'http://127.0.0.1:7300';
  if (!/^https?:\/\/[^\s/]+\/?$/.test(base) || !URL.canParse(base)) throw new UsageError(`--admin must be an http(s)://host:port URL, got "${base}"`);
  const { token, pinnedIn } = adminBearer(flags, base);
  const url = `${base.replace(/\/$/, '')}${path}`;
  let res: Response;
  try {
    res = await fetch(url, {
      method,
      headers: { authorization: `Bearer ${token}`, ...(body !== undefined && { 'content-type': 'application/json' }) },
      ...(body !== undefined && { body: typeof body === 'string' ? body : JSON.stringify(body) }),
      signal: AbortSignal.timeout(API_TIMEOUT_MS),
    });
  } catch (err) {
    const cause = (err as Error & { cause?: Error }).cause;
    throw new ApiUnreachableError(`cannot reach the admin API at ${base}: ${cause?.message ?? (err as Error).message}`);
  }
  const text = await res.text();
  let parsed: unknown;
  try {
    parsed = text ? JSON.parse(text) : undefined;
  } catch {
    parsed = undefined;
  }
  if (!res.ok) {
    const e = (parsed as { error?: { code?: unknown; message?: unknown } } | undefined)?.error;
    // A refused pinned token: the dev cluster that wrote it is gone (killed without its Ctrl-C cleanup) and something else answers here.
    const stale = res.status === 401 && pinnedIn ? `; the token came from ${pinnedIn}, pinned by a \`gravitas dev\` that is not the one answering at ${base} (stopped without its Ctrl-C cleanup?): pass --token, or restart \`gravitas dev\`` : '';
    throw new ApiError(typeof e?.code === 'string' ? e.code : `HTTP_${res.status}`, `${typeof e?.message === 'string' ? e.message : text.slice(0, 200)} (HTTP ${res.status})${stale}`, res.status);
  }
  return parsed;
}

const printJson = (v: unknown): void => void process.stdout.write(`${JSON.stringify(v, null, 2)}\n`);

function positional(args: string[], i: number, what: string): string {
  const v = args[i];
  if (!v) throw new UsageError(`${what} is required`);
  return v;
}

function idArg(args: string[], i: number, what: string): string {
  const v = positional(args, i, what);
  if (!/^[A-Za-z0-9_-]{1,64}$/.test(v)) throw new UsageError(`${what} must be an id (A-Z a-z 0-9 _ -), got "${v}"`);
  return v;
}

/** --start-at: epoch milliseconds or an ISO 8601 date. */
function startAtFlag(v: string): number {
  const ms = /^\d+$/.test(v) ? Number(v) : Date.parse(v);
  if (!Number.isSafeInteger(ms)) throw new UsageError(`--start-at must be epoch milliseconds or an ISO date, got "${v}"`);
  return ms;
}

const list = (s: string): string[] => s.split(',').map((x) => x.trim()).filter(Boolean);

/**
 * `gravitas campaign create --file campaign.json | --name N --text T --users a,b,c [--rate R] [--push] [--publisher P] [--start-at T]`,
 * `gravitas campaign start|pause|resume|status ID`, `gravitas campaign list`.
 */
export async function campaign(flags: Flags, args: string[]): Promise<void> {
  const [sub] = args;
  switch (sub) {
    case 'create': {
      let body: unknown;
      if (typeof flags.file === 'string') {
        if (flags.name !== undefined || flags.text !== undefined || flags.users !== undefined) throw new UsageError('give either --file or --name/--text/--users');
        try {
          body = await readFile(flags.file, 'utf8');
        } catch (err) {
          throw new UsageError(`cannot read ${flags.file}: ${(err as Error).message}`);
        }
      } else {
        const users = list(need(flags, 'users'));
        body = {
          name: need(flags, 'name'),
          audience: { users },
          content: { text: need(flags, 'text'), push: flags.push === true },
          ...(flags.rate !== undefined && { ratePerSec: intFlag(flags, 'rate', 0) }),
          ...(typeof flags.publisher === 'string' && { publisher: flags.publisher }),
          ...(typeof flags['start-at'] === 'string' && { startAt: startAtFlag(flags['start-at']) }),
        };
      }
      return printJson(await api(flags, 'POST', '/admin/campaigns', body));
    }
    case 'start':
    case 'pause':
    case 'resume':
      return printJson(await api(flags, 'POST', `/admin/campaigns/${idArg(args, 1, 'the campaign id')}/${sub}`));
    case 'status':
      return printJson(await api(flags, 'GET', `/admin/campaigns/${idArg(args, 1, 'the campaign id')}`));
    case 'list':
      return printJson(await api(flags, 'GET', '/admin/campaigns'));
    default:
      throw new UsageError(`campaign needs create, start, pause, resume, status or list${sub ? `, not "${sub}"` : ''}`);
  }
}

/** `gravitas publisher create --name N --roles campaigns,reports [--sender S]`, `gravitas publisher list`. */
export async function publisher(flags: Flags, args: string[]): Promise<void> {
  const [sub] = args;
  switch (sub) {
    case 'create': {
      const body = { name: need(flags, 'name'), roles: list(need(flags, 'roles')), ...(typeof flags.sender === 'string' && { sender: flags.sender }) };
      const out = await api(flags, 'POST', '/admin/publishers', body);
      printJson(out);
      log('the key is shown only this once: store it now');
      return;
    }
    case 'list':
      return printJson(await api(flags, 'GET', '/admin/publishers'));
    default:
      throw new UsageError(`publisher needs create or list${sub ? `, not "${sub}"` : ''}`);
  }
}

/**
 * A profile value from the command line: `null` removes the attribute, `true`/`false`
 * are booleans, decimal numbers are numbers, `"…"` (quoted) is always a string, anything
 * else is a string.
 */
export function profileValue(v: string): string | number | boolean | null {
  if (v === 'null') return null;
  if (v === 'true' || v === 'false') return v === 'true';
  if (/^-?\d+(\.\d+)?$/.test(v) && Number.isFinite(Number(v))) return Number(v);
  if (v.length >= 2 && v.startsWith('"') && v.endsWith('"')) return v.slice(1, -1);
  return v;
}

/** `gravitas profile set USER k=v ...`, `gravitas profile get USER [--version N]`. */
export async function profile(flags: Flags, args: string[]): Promise<void> {
  const [sub] = args;
  switch (sub) {
    case 'set': {
      const user = idArg(args, 1, 'the user');
      const pairs = args.slice(2);
      if (pairs.length === 0) throw new UsageError('profile set needs at least one name=value');
      const attrs = new Map<string, string | number | boolean | null>();
      for (const p of pairs) {
        const eq = p.indexOf('=');
        if (eq <= 0) throw new UsageError(`"${p}" is not name=value`);
        attrs.set(p.slice(0, eq), profileValue(p.slice(eq + 1)));
      }
      return printJson(await api(flags, 'PUT', `/admin/profiles/${user}`, { attrs: Object.fromEntries(attrs) }));
    }
    case 'get': {
      const user = idArg(args, 1, 'the user');
      const v = flags.version === undefined ? '' : `?version=${intFlag(flags, 'version', 0)}`;
      return printJson(await api(flags, 'GET', `/admin/profiles/${user}${v}`));
    }
    default:
      throw new UsageError(`profile needs set or get${sub ? `, not "${sub}"` : ''}`);
  }
}

/** `gravitas report user ID [--profiles]` and `gravitas report campaign ID [--bucket MS]`. */
export async function report(flags: Flags, args: string[]): Promise<void> {
  const [sub] = args;
  switch (sub) {
    case 'user': {
      const user = idArg(args, 1, 'the user');
      return printJson(await api(flags, 'GET', `/admin/reports/users/${user}/campaigns${flags.profiles === true ? '?profiles=1' : ''}`));
    }
    case 'campaign': {
      const id = idArg(args, 1, 'the campaign id');
      const b = flags.bucket === undefined ? '' : `?bucket=${intFlag(flags, 'bucket', 60_000)}`;
      return printJson(await api(flags, 'GET', `/admin/reports/campaigns/${id}${b}`));
    }
    default:
      throw new UsageError(`report needs user or campaign${sub ? `, not "${sub}"` : ''}`);
  }
}
