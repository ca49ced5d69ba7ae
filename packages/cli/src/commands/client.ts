import { createInterface } from 'node:readline';
import { toBase64Url, fromBase64Url, keyPairFromSecret, type Msg, type Registration } from '@gravitas/protocol';
import { GravitasClient } from '@gravitas/client';
import { KeyStore } from '../keystore.js';
import { intFlag, log, need, UsageError, type Flags } from './flags.js';

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
