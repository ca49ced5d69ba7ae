#!/usr/bin/env node
import { parseArgs } from 'node:util';
import { ConfigError, ServerError } from '@gravitas/server';
import { chat, dev, keygen, node, recv, send, UsageError } from './commands.js';

const USAGE = `gravitas — a horizontally scaled chat cluster

usage:
  gravitas dev [--cells 2] [--port 7400] [--admin-port 7300]   local nats-server + one node
  gravitas node [--config FILE] [--nats URLS] [--cells N] [--port P] [--admin-port P] ...
  gravitas keygen [--ticket-id N]                            server key + ticket key (JSON config fragment)
  gravitas chat --server H:P --as NAME [--device D]          interactive: "@bob hello"
  gravitas send --server H:P --as NAME --to USER --text TEXT [--json]
  gravitas recv --server H:P --as NAME [--count N] [--json] [--timeout S]

client commands also take --server-key KEY (pinned server public key) and
--registration-token TOKEN. See docs/operations.md for every node setting.`;

const STRING_FLAGS = ['config', 'nats', 'prefix', 'cells', 'host', 'port', 'advertise', 'admin-host', 'admin-port', 'data-dir', 'server-key', 'ticket-keys', 'registration', 'registration-token', 'node-id', 'server', 'as', 'device', 'to', 'text', 'count', 'timeout', 'ticket-id'];

async function main(argv: string[]): Promise<void> {
  const [command, ...rest] = argv;
  if (!command || command === '--help' || command === '-h' || command === 'help') {
    process.stdout.write(`${USAGE}\n`);
    return;
  }
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({
      args: rest,
      options: { ...Object.fromEntries(STRING_FLAGS.map((f) => [f, { type: 'string' as const }])), json: { type: 'boolean' } },
      allowPositionals: false,
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
    default:
      throw new UsageError(`unknown command "${command}"`);
  }
}

main(process.argv.slice(2)).catch((err: unknown) => {
  if (err instanceof UsageError) process.stderr.write(`gravitas: ${err.message}\n\n${USAGE}\n`);
  else if (err instanceof ConfigError || err instanceof ServerError) process.stderr.write(`gravitas: ${err.message}\n`);
  else {
    const e = err as Error & { code?: string };
    process.stderr.write(`gravitas: ${e.code ? `${e.code}: ` : ''}${e.message}\n`);
  }
  process.exit(err instanceof UsageError ? 2 : 1);
});
