import { mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { fromBase64Url, generateKeyPair, isName, toBase64Url, type KeyPair, type ResumptionState } from '@gravitas/protocol';

/** The key store's directory: GRAVITAS_HOME, default ~/.gravitas. */
export const keyStoreDir = (): string => process.env.GRAVITAS_HOME || join(homedir(), '.gravitas');

/**
 * An admin URL as the key store keys it: its origin (scheme, lower-case host, port; no
 * path or trailing slash), so `http://127.0.0.1:7300/` and `http://127.0.0.1:7300` are one.
 */
export function adminOrigin(adminUrl: string): string {
  return new URL(adminUrl).origin;
}

/**
 * Where the admin token pinned for `adminUrl` lives: one file per admin origin under
 * `admin-tokens/`, so dev clusters on different ports never share (or race on) a file.
 */
export function adminTokenPath(adminUrl: string, dir = keyStoreDir()): string {
  const name = adminOrigin(adminUrl).replace(/^([a-z]+):\/\//, '$1-').replace(/[^A-Za-z0-9.-]/g, '_');
  return join(dir, 'admin-tokens', `${name}.json`);
}

/**
 * The admin token `gravitas dev` pinned for `adminUrl`, if any. Reads only: creates no
 * directory (the admin commands call it against production URLs too). A file that names
 * another origin (two origins mapped to one file name) does not count.
 */
export function pinnedAdminToken(adminUrl: string, dir = keyStoreDir()): { token: string; path: string } | undefined {
  const path = adminTokenPath(adminUrl, dir);
  let o: { adminUrl?: unknown; token?: unknown };
  try {
    o = JSON.parse(readFileSync(path, 'utf8')) as typeof o;
  } catch {
    return undefined;
  }
  return o.adminUrl === adminOrigin(adminUrl) && typeof o.token === 'string' && o.token !== '' ? { token: o.token, path } : undefined;
}

/**
 * The CLI's local key store (GRAVITAS_HOME, default ~/.gravitas): one identity file
 * per user/device holding its secret key and latest resumption ticket, the pinned
 * public keys of known servers, and the admin tokens of running dev clusters.
 * Every file is written 0600 and atomically.
 */
export class KeyStore {
  readonly dir: string;
  constructor(dir = keyStoreDir()) {
    this.dir = dir;
    mkdirSync(join(dir, 'identities'), { recursive: true, mode: 0o700 });
  }

  private write(path: string, data: unknown): void {
    const tmp = `${path}.${randomBytes(4).toString('hex')}.tmp`;
    writeFileSync(tmp, JSON.stringify(data, null, 2), { mode: 0o600 });
    renameSync(tmp, path); // atomic: a crash never leaves half a key file
  }

  private read(path: string): Record<string, unknown> | undefined {
    try {
      return JSON.parse(readFileSync(path, 'utf8')) as Record<string, unknown>;
    } catch {
      return undefined;
    }
  }

  /** The identity of `user` on `device`, created on first use. */
  identity(user: string, device: string): { keyPair: KeyPair; resumption: ResumptionState | undefined; created: boolean } {
    if (!isName(user) || !isName(device, 32)) throw new Error(`"${user}"/"${device}": names may only contain A-Z a-z 0-9 _ -`);
    const path = join(this.dir, 'identities', `${user}.${device}.json`);
    const o = this.read(path);
    if (o && typeof o.secretKey === 'string' && typeof o.publicKey === 'string') {
      const r = o.resumption as { ticket: string; secret: string; expiresAt: number } | undefined;
      return {
        keyPair: { secretKey: fromBase64Url(o.secretKey, 32), publicKey: fromBase64Url(o.publicKey, 32) },
        resumption: r ? { ticket: fromBase64Url(r.ticket), secret: fromBase64Url(r.secret, 32), expiresAt: r.expiresAt } : undefined,
        created: false,
      };
    }
    const keyPair = generateKeyPair();
    this.write(path, { user, device, secretKey: toBase64Url(keyPair.secretKey), publicKey: toBase64Url(keyPair.publicKey) });
    return { keyPair, resumption: undefined, created: true };
  }

  saveResumption(user: string, device: string, r: ResumptionState | undefined): void {
    const path = join(this.dir, 'identities', `${user}.${device}.json`);
    const o = this.read(path);
    if (!o) return;
    this.write(path, { ...o, resumption: r && { ticket: toBase64Url(r.ticket), secret: toBase64Url(r.secret), expiresAt: r.expiresAt } });
  }

  private get knownPath(): string {
    return join(this.dir, 'known_servers.json');
  }

  serverKey(address: string): Uint8Array | undefined {
    const k = this.read(this.knownPath)?.[address];
    return typeof k === 'string' ? fromBase64Url(k, 32) : undefined;
  }

  pinServers(addresses: string[], publicKey: Uint8Array): void {
    const o = this.read(this.knownPath) ?? {};
    for (const a of addresses) o[a] = toBase64Url(publicKey);
    this.write(this.knownPath, o);
  }

  unpinServers(addresses: string[]): void {
    const o = this.read(this.knownPath);
    if (!o) return;
    for (const a of addresses) delete o[a];
    this.write(this.knownPath, o);
  }

  /**
   * Pins the admin token of the dev cluster whose admin API is `adminUrl`, so that the
   * admin commands use it by default against that URL. Returns the file.
   */
  pinAdminToken(adminUrl: string, token: string): string {
    const path = adminTokenPath(adminUrl, this.dir);
    mkdirSync(join(this.dir, 'admin-tokens'), { recursive: true, mode: 0o700 });
    this.write(path, { adminUrl: adminOrigin(adminUrl), token });
    return path;
  }

  /** Removes the pin of `adminUrl` if it still holds `token` (a newer dev cluster's pin stays). */
  unpinAdminToken(adminUrl: string, token: string): void {
    const pinned = pinnedAdminToken(adminUrl, this.dir);
    if (pinned?.token === token) rmSync(pinned.path, { force: true });
  }
}
