import { adminTokenPath, keyStoreDir, pinnedAdminToken } from '../keystore.js';
import { UsageError, type Flags } from './flags.js';

/* The admin API's HTTP client, for the campaign, publisher, profile and report commands (admin.ts). */

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
export async function api(flags: Flags, method: string, path: string, body?: unknown): Promise<unknown> {
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
