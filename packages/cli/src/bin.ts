#!/usr/bin/env node
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { ConfigError, ServerError } from '@gravitas/server';
import { campaign, profile, publisher, report } from './commands/admin.js';
import { approve, chat, deviceKey, recv, send } from './commands/client.js';
import { UsageError } from './commands/flags.js';
import { dev, keygen, node } from './commands/node.js';

const USAGE = `gravitas — a horizontally scaled chat cluster

usage:
  gravitas dev [--cells 2] [--port 7400] [--admin-port 7300]   local nats-server + one node,
               [--web-port 7600] [--demo-port 7380]          its web listeners and the demo chat page;
               [--admin-token T]                             its admin token (default: random) is pinned
                                                             in $GRAVITAS_HOME/admin-tokens/ while it runs
  gravitas node [--config FILE] [--nats URLS] [--cells N] [--port P] [--admin-port P] ...
  gravitas keygen [--ticket-id N] [--vapid [--subject S]]   server key + ticket key (+ push keys) as a JSON config fragment
  gravitas chat --server H:P --as NAME [--device D]          interactive: "@bob hello"
  gravitas send --server H:P --as NAME --to USER --text TEXT [--json]
  gravitas recv --server H:P --as NAME [--count N] [--json] [--timeout S]
  gravitas device-key --as NAME [--device D]                 this device's public key (to be approved)
  gravitas approve --server H:P --as NAME --new-device D --key KEY   from a device of the account: an approval
                                                             for the new device, which connects with --link

admin API (--admin URL or GRAVITAS_ADMIN_URL, default http://127.0.0.1:7300;
--token T or GRAVITAS_ADMIN_TOKEN: the admin token or a publisher API key; without
either, the token a running \`gravitas dev\` pinned for that admin URL):
  gravitas campaign create --file campaign.json
  gravitas campaign create --name N --text T --users a,b,c [--rate R] [--push] [--publisher P]
                          [--start-at MS|ISO-DATE]
  gravitas campaign start|pause|resume|status ID      gravitas campaign list
  gravitas publisher create --name N --roles campaigns,reports [--sender S]
  gravitas publisher list
  gravitas profile set USER name=value ...              (null removes; "…" forces a string)
  gravitas profile get USER [--version N]
  gravitas report user ID [--profiles]                  campaigns the user took part in
  gravitas report campaign ID [--bucket MS]             funnel sent → … → converted over time

load tests (docs/benchmarking.md; needs the repository's bench/ built):
  gravitas bench run SCENARIO.yaml [--json F] [--html F] [--control URL] [--external-generators]
  gravitas bench generator --control nats://HOST:PORT   a load generator serving runners
  gravitas bench NAME [...]                               a named benchmark (gravitas bench --help)
  They print the answer as JSON. Exit codes: 0 ok, 1 refused by the API (its
  code on stderr), 2 usage, 3 admin API unreachable.

client commands also take --server-key KEY (pinned server public key), and to register a new
device one of --credential JWT (GRAVITAS_CREDENTIAL; from your auth service), --link APPROVAL
(from \`gravitas approve\`) or --registration-token TOKEN (development clusters). See
docs/security.md, and docs/operations.md for every node setting.`;

/** Commands that take positional arguments (sub-command, ids, name=value pairs). */
const WITH_POSITIONALS = new Set(['campaign', 'publisher', 'profile', 'report']);

const STRING_FLAGS = [
  'config', 'nats', 'prefix', 'cells', 'host', 'port', 'advertise', 'admin-host', 'admin-port', 'data-dir', 'server-key', 'ticket-keys', 'registration', 'registration-token', 'node-id', 'server', 'as', 'device', 'to', 'text', 'count', 'timeout', 'ticket-id',
  'credential', 'link', 'new-device', 'key',
  'admin', 'token', 'admin-token', 'file', 'name', 'users', 'rate', 'publisher', 'roles', 'sender', 'version', 'start-at', 'bucket', 'subject', 'web-port', 'demo-port',
];

/**
 * `--flag value` as `--flag=value` for every string flag: keys, approvals and texts are
 * base64url or free text and may start with "-", which parseArgs would otherwise refuse
 * as an ambiguous option argument (one approval in 64 did).
 */
function attachValues(args: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (a.startsWith('--') && !a.includes('=') && STRING_SET.has(a.slice(2)) && i + 1 < args.length) out.push(`${a}=${args[++i]}`);
    else out.push(a);
  }
  return out;
}
const STRING_SET = new Set(STRING_FLAGS);

async function main(argv: string[]): Promise<void> {
  const [command, ...rest] = argv;
  if (!command || command === '--help' || command === '-h' || command === 'help') {
    process.stdout.write(`${USAGE}\n`);
    return;
  }
  if (command === 'bench') return bench(rest);
  let values: Record<string, string | boolean | undefined>;
  let positionals: string[];
  try {
    ({ values, positionals } = parseArgs({
      args: attachValues(rest),
      options: { ...Object.fromEntries(STRING_FLAGS.map((f) => [f, { type: 'string' as const }])), json: { type: 'boolean' }, push: { type: 'boolean' }, profiles: { type: 'boolean' }, vapid: { type: 'boolean' } },
      allowPositionals: WITH_POSITIONALS.has(command),
      strict: true,
    }));
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  switch (command) {
    case 'keygen':
      return keygen(values);
    case 'dev':
      return dev(values);
    case 'node':
      return node(values);
    case 'send':
      return send(values);
    case 'recv':
      return recv(values);
    case 'chat':
      return chat(values);
    case 'device-key':
      return deviceKey(values);
    case 'approve':
      return approve(values);
    case 'campaign':
      return campaign(values, positionals);
    case 'publisher':
      return publisher(values, positionals);
    case 'profile':
      return profile(values, positionals);
    case 'report':
      return report(values, positionals);
    default:
      throw new UsageError(`unknown command "${command}"`);
  }
}

/**
 * The load harness lives in the bench workspace, which is built after (and depends on) this
 * package: run its entry point as a child with our stdio, and end with its exit code.
 */
async function bench(args: string[]): Promise<void> {
  const entry = fileURLToPath(new URL('../../../bench/dist/main.js', import.meta.url));
  if (!existsSync(entry)) throw Object.assign(new Error(`the load harness is not built (${entry}): run npm run build in the repository`), { exitCode: 2 });
  const child = spawn(process.execPath, [entry, ...args], { stdio: 'inherit' });
  // Ctrl-C reaches the child through the terminal's process group; a plain SIGTERM is passed on.
  process.on('SIGTERM', () => child.kill('SIGTERM'));
  const code = await new Promise<number>((r) => child.once('exit', (c, sig) => r(c ?? (sig === 'SIGINT' ? 130 : 1))));
  process.exit(code);
}

main(process.argv.slice(2)).catch((err: unknown) => {
  if (err instanceof UsageError) process.stderr.write(`gravitas: ${err.message}\n\n${USAGE}\n`);
  else if (err instanceof ConfigError || err instanceof ServerError) process.stderr.write(`gravitas: ${err.message}\n`);
  else {
    const e = err as Error & { code?: string };
    process.stderr.write(`gravitas: ${e.code ? `${e.code}: ` : ''}${e.message}\n`);
  }
  const exitCode = (err as { exitCode?: unknown }).exitCode;
  process.exit(err instanceof UsageError ? 2 : typeof exitCode === 'number' ? exitCode : 1);
});
