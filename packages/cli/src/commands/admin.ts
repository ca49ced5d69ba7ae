import { readFile } from 'node:fs/promises';
import { api } from './admin-api.js';
import { intFlag, log, need, UsageError, type Flags } from './flags.js';

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
