import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, fstatSync, mkdirSync, openSync, readSync, rmSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { createInterface } from 'node:readline';
import { check, freePort, isExecutable, trackChild } from '@gravitas/testkit';
import { HarnessError } from './errors.js';

/*
 * A private Prosody (Debian's prosody 0.12) for one benchmark run or one test, on the model of
 * testkit's NatsServer: a config file written into a fresh temp dir that also holds the data,
 * the log and the pid file; c2s on a free loopback port; ready once the port answers an XMPP
 * stream header with stream features (not after a sleep); `stop()` (or `await using`) sends
 * SIGTERM, SIGKILL after a grace period, and removes the dir.
 *
 * The config is what a load test of the server itself needs, every choice checked against the
 * 0.12.3 modules in /usr/lib/prosody/modules:
 * no TLS (c2s_require_encryption = false, allow_unencrypted_plain_auth = true, mod_tls not
 * loaded), open in-band registration (0.12 throttles registrations only when
 * `min_seconds_between_registrations` or `registration_throttle_max` is set, and allow-lists
 * 127.0.0.1 anyway), no mod_limits (so no c2s rate limit), no s2s, roster, ping, offline storage
 * (auto-loaded), stream management (mod_smacks ships with 0.12), a MUC component where anyone may
 * create rooms, persistent by default and not locked on creation, with a room cache large enough
 * that busy rooms are not swapped to disk and back, Nagle off (latency is what is measured), and
 * the built-in file storage.
 */

export interface ProsodyOptions {
  /** The prosody executable: default $PROSODY_BIN, else `prosody` on PATH or in /usr/bin, /usr/sbin, /usr/local/bin. */
  bin?: string;
  /** The XMPP domain (default `localhost`); the MUC service is `conference.<domain>`. */
  domain?: string;
  /** c2s port on 127.0.0.1 (default: a free one, with a retry on another if it was taken meanwhile). */
  port?: number;
  /** `internal` (files in the temp dir; default) or `memory` (nothing on disk: faster, lost on stop). */
  storage?: 'internal' | 'memory';
  /** Log level of the log file (default `info`; `debug` logs every stanza and slows the server down). */
  logLevel?: 'debug' | 'info' | 'warn' | 'error';
  /** Rooms kept in memory before the least recently used is saved to disk and evicted (default 100,000; Prosody's own default is 100). */
  mucRoomCacheSize?: number;
  /** Lua appended to the global section of the config (e.g. `smacks_hibernation_time = 60`). */
  extraConfig?: string;
  /** How long to wait for the port to answer, ms (default 20,000). */
  startTimeoutMs?: number;
}

export interface LocalProsody extends AsyncDisposable {
  /** Where c2s listens: always 127.0.0.1. */
  readonly host: string;
  readonly port: number;
  readonly domain: string;
  /** The MUC service (`conference.<domain>`). */
  readonly muc: string;
  /** The prosody process (the pid sampled for CPU and memory). */
  readonly pid: number;
  /** The temp dir: config, data, log, pid file. */
  readonly dir: string;
  readonly configFile: string;
  /** False once the process has exited (stopped, killed or crashed). */
  readonly running: boolean;
  /** SIGTERM, SIGKILL after `graceMs` (default 5,000), then removes the temp dir. Safe to call twice or after a crash. */
  stop(opts?: { graceMs?: number }): Promise<void>;
  /** The last lines of Prosody's log file and of its stdout/stderr, for error messages. */
  logTail(lines?: number): string;
}

const HOST = '127.0.0.1';
const INSTALL_HINT = 'apt-get install prosody (Debian/Ubuntu), or point PROSODY_BIN / the `bin` option at the executable';
const OUTPUT_LINES = 40;
const PORT_ATTEMPTS = 4;

// Temp dirs not yet removed: a test or run that dies without stop() leaves none behind
// (the process itself is killed by testkit's trackChild).
const liveDirs = new Set<string>();
let exitHook = false;
function trackDir(dir: string): void {
  liveDirs.add(dir);
  if (exitHook) return;
  exitHook = true;
  process.on('exit', () => {
    for (const d of liveDirs) rmSync(d, { recursive: true, force: true });
  });
}


/** The prosody executable, or TARGET_UNAVAILABLE saying how to install it. */
export function findProsody(bin?: string): string {
  const explicit = bin ?? process.env['PROSODY_BIN'];
  if (explicit !== undefined && explicit !== '') {
    if (isExecutable(explicit)) return explicit;
    throw new HarnessError('TARGET_UNAVAILABLE', `prosody is not installed: ${explicit} is not an executable file; ${INSTALL_HINT}`);
  }
  const dirs = [...(process.env['PATH'] ?? '').split(delimiter), '/usr/bin', '/usr/sbin', '/usr/local/bin', '/usr/local/sbin'];
  for (const dir of dirs.filter(Boolean)) {
    const candidate = join(dir, 'prosody');
    if (isExecutable(candidate)) return candidate;
  }
  throw new HarnessError('TARGET_UNAVAILABLE', `prosody is not installed: no prosody executable on PATH; ${INSTALL_HINT}`);
}

/** A Lua string literal. */
const lua = (s: string): string => JSON.stringify(s);

export interface ProsodyConfigInput {
  dir: string;
  domain: string;
  port: number;
  storage: 'internal' | 'memory';
  logLevel: string;
  mucRoomCacheSize: number;
  runAsRoot: boolean;
  extraConfig?: string;
}

/** The config file's text (exported for tests and for the record in docs). */
export function prosodyConfig(c: ProsodyConfigInput): string {
  const muc = `conference.${c.domain}`;
  return `-- A private Prosody for a Gravitas benchmark run or test, written by bench/src/harness/prosody.ts.
${c.runAsRoot ? '-- The harness runs as root here; Prosody refuses (and, in 0.12.3, hangs) without this.\nrun_as_root = true\n' : ''}
pidfile = ${lua(join(c.dir, 'prosody.pid'))}
data_path = ${lua(join(c.dir, 'data'))}
certificates = ${lua(join(c.dir, 'certs'))}
plugin_paths = { }
admins = { }

-- Loopback only: c2s on one port, every other listener off.
interfaces = { ${lua(HOST)} }
local_interfaces = { ${lua(HOST)} }
c2s_interfaces = { ${lua(HOST)} }
c2s_ports = { ${c.port} }
c2s_direct_tls_ports = { }
legacy_ssl_ports = { }
s2s_ports = { }
s2s_direct_tls_ports = { }
component_ports = { }
http_ports = { }
https_ports = { }

-- Latency is what is measured: no Nagle delay on the server's writes.
network_settings = { nagle = false }

log = { { levels = { min = ${lua(c.logLevel)} }, to = "file", filename = ${lua(join(c.dir, 'prosody.log'))} } }

-- Auto-loaded besides: presence, message, iq, offline (mod_offline), c2s, posix.
modules_enabled = {
  "roster";   -- contacts and presence subscriptions
  "saslauth"; -- SASL PLAIN / SCRAM
  "disco";
  "ping";     -- XEP-0199
  "register"; -- XEP-0077 in-band registration
  "smacks";   -- XEP-0198 stream management (acks, resumption)
}
-- No s2s; no mod_tls (nothing to negotiate), no mod_limits (no c2s rate limit).
modules_disabled = { "s2s"; "s2s_auth_certs" }

authentication = "internal_hashed"
storage = ${lua(c.storage)}

c2s_require_encryption = false
allow_unencrypted_plain_auth = true
allow_registration = true

${c.extraConfig ?? ''}

VirtualHost ${lua(c.domain)}

Component ${lua(muc)} "muc"
  restrict_room_creation = false
  muc_room_locking = false
  muc_room_default_persistent = true
  muc_room_cache_size = ${c.mucRoomCacheSize}
`;
}

type Exit = { code: number | null; signal: NodeJS.Signals | null; error?: Error };

/** Last `max` bytes of a file, as text ('' if it cannot be read). */
function readTail(file: string, max = 16 * 1024): string {
  let fd: number | undefined;
  try {
    fd = openSync(file, 'r');
    const size = fstatSync(fd).size;
    const len = Math.min(size, max);
    const buf = Buffer.alloc(len);
    readSync(fd, buf, 0, len, size - len);
    return buf.toString('utf8');
  } catch {
    return '';
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

/**
 * Whether `port` answers an XMPP stream header for `domain` with stream features: proves that
 * *this* Prosody listens there (not something else that took the port).
 */
export function answersXmpp(port: number, domain: string, timeoutMs = 2000): Promise<boolean> {
  return new Promise((resolve) => {
    let got = '';
    let done = false;
    const sock: Socket = connect({ host: HOST, port });
    const finish = (ok: boolean): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      sock.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => finish(false), timeoutMs);
    sock.setEncoding('utf8');
    sock.once('connect', () => {
      sock.write(`<?xml version='1.0'?><stream:stream to='${domain}' version='1.0' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>`);
    });
    sock.on('data', (d: string) => {
      got += d;
      if (got.includes('features')) finish(got.includes(`from='${domain}'`) || got.includes(`from="${domain}"`));
      else if (got.length > 64 * 1024) finish(false);
    });
    sock.once('error', () => finish(false));
    sock.once('close', () => finish(false));
  });
}

class ProsodyProcess implements LocalProsody {
  readonly host = HOST;
  readonly muc: string;
  readonly configFile: string;
  port = 0;
  #proc: ChildProcess | undefined;
  #exit: Exit | undefined;
  #exited: Promise<Exit> = Promise.resolve({ code: null, signal: null });
  #output: string[] = [];
  #stopped = false;

  constructor(
    readonly bin: string,
    readonly dir: string,
    readonly domain: string,
  ) {
    this.muc = `conference.${domain}`;
    this.configFile = join(dir, 'prosody.cfg.lua');
  }

  get pid(): number {
    return this.#proc?.pid ?? -1;
  }

  get running(): boolean {
    return this.#proc !== undefined && this.#exit === undefined;
  }

  get logFile(): string {
    return join(this.dir, 'prosody.log');
  }

  logTail(lines = 30): string {
    const log = readTail(this.logFile).split('\n').filter(Boolean).slice(-lines);
    const out = this.#output.slice(-Math.min(lines, OUTPUT_LINES));
    return [...(log.length > 0 ? ['-- prosody.log:', ...log] : []), ...(out.length > 0 ? ['-- stdout/stderr:', ...out] : [])].join('\n');
  }

  async launch(config: string, timeoutMs: number): Promise<'ready' | 'port-taken'> {
    await writeFile(this.configFile, config);
    await rm(this.logFile, { force: true });
    // -F: foreground (0.12 deprecates `daemonize` in the config); --config: our file, not /etc/prosody.
    const proc = spawn(this.bin, ['-F', '--config', this.configFile], { cwd: this.dir, stdio: ['ignore', 'pipe', 'pipe'] });
    trackChild(proc);
    this.#proc = proc;
    this.#exit = undefined;
    this.#exited = new Promise((resolve) => {
      // 'close' comes after stdout/stderr are drained: the output tail is complete.
      proc.once('close', (code, signal) => resolve((this.#exit = { code, signal })));
      proc.once('error', (error) => resolve((this.#exit = { code: null, signal: null, error })));
    });
    for (const stream of [proc.stdout!, proc.stderr!]) {
      // Debian's 0.12 prints a starred banner about the optional lua-unbound at every start: not kept.
      let banner: string[] | undefined;
      createInterface({ input: stream }).on('line', (line) => {
        if (line.trim() === '') return;
        if (/^\*{10,}$/.test(line.trim())) {
          if (!banner) return void (banner = []);
          const lines = banner;
          banner = undefined;
          if (lines.some((l) => l.includes('lua-unbound'))) return;
          for (const l of lines) this.#keep(l);
          return;
        }
        if (banner) banner.push(line);
        else this.#keep(line);
      });
      (stream as Socket).unref();
    }
    // A run or test that forgets stop() still ends; trackChild kills the server at exit.
    proc.unref();

    let outcome: Exit | 'ready' | 'port-taken';
    try {
      outcome = await check<Exit | 'ready' | 'port-taken' | undefined>(
        `prosody ${this.configFile} ready`,
        async () => {
          if (this.#exit) return this.#exit;
          const log = readTail(this.logFile);
          if (/Failed to open server port|Activated service 'c2s' on no ports/.test(log)) return 'port-taken';
          if (/Refusing to run as root/.test(log)) return { code: null, signal: null, error: new Error('prosody refuses to run as root (run_as_root)') };
          return (await answersXmpp(this.port, this.domain)) ? 'ready' : undefined;
        },
        { timeout: timeoutMs, interval: 50 },
      );
    } catch (err) {
      await this.kill();
      throw new HarnessError('TARGET_UNAVAILABLE', `prosody did not answer on ${HOST}:${this.port} within ${timeoutMs} ms\n${this.logTail()}`, { cause: err });
    }
    if (outcome === 'ready') return 'ready';
    await this.kill();
    if (outcome === 'port-taken') return 'port-taken';
    if (outcome.error && (outcome.error as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new HarnessError('TARGET_UNAVAILABLE', `prosody is not installed: cannot run ${this.bin}; ${INSTALL_HINT}`, { cause: outcome.error });
    }
    const why = outcome.error?.message ?? `code ${outcome.code}, signal ${outcome.signal}`;
    throw new HarnessError('TARGET_UNAVAILABLE', `prosody exited during start-up (${why})\n${this.logTail()}`, { cause: outcome.error });
  }

  #keep(line: string): void {
    this.#output.push(line);
    if (this.#output.length > OUTPUT_LINES) this.#output.shift();
  }

  /** Sends `signal` and waits for the exit. */
  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    if (!this.running) return;
    this.#proc!.ref();
    this.#proc!.kill(signal);
    await this.#exited;
  }

  async stop({ graceMs = 5000 }: { graceMs?: number } = {}): Promise<void> {
    if (this.running) {
      const proc = this.#proc!;
      proc.ref(); // we wait on it now
      proc.kill('SIGTERM');
      const timer = setTimeout(() => proc.kill('SIGKILL'), graceMs);
      await this.#exited;
      clearTimeout(timer);
    }
    if (this.#stopped) return;
    this.#stopped = true;
    await rm(this.dir, { recursive: true, force: true });
    liveDirs.delete(this.dir);
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.stop();
  }
}

/**
 * Starts a private Prosody and resolves once its c2s port answers for `domain`. Throws
 * HarnessError('TARGET_UNAVAILABLE') when prosody is not installed or does not come up (with the
 * tail of its log).
 */
export async function startProsody(opts: ProsodyOptions = {}): Promise<LocalProsody> {
  const bin = findProsody(opts.bin);
  const domain = opts.domain ?? 'localhost';
  const dir = await mkdtemp(join(tmpdir(), 'gravitas-prosody-'));
  trackDir(dir);
  mkdirSync(join(dir, 'data'));
  mkdirSync(join(dir, 'certs'));
  const p = new ProsodyProcess(bin, dir, domain);
  try {
    for (let attempt = 1; ; attempt++) {
      p.port = opts.port ?? (await freePort(HOST));
      const config = prosodyConfig({
        dir,
        domain,
        port: p.port,
        storage: opts.storage ?? 'internal',
        logLevel: opts.logLevel ?? 'info',
        mucRoomCacheSize: opts.mucRoomCacheSize ?? 100_000,
        runAsRoot: process.getuid?.() === 0,
        ...(opts.extraConfig !== undefined && { extraConfig: opts.extraConfig }),
      });
      const r = await p.launch(config, opts.startTimeoutMs ?? 20_000);
      if (r === 'ready') return p;
      // Another process took the free port between freePort() and prosody's bind: try another.
      if (opts.port !== undefined || attempt >= PORT_ATTEMPTS) {
        throw new HarnessError('TARGET_UNAVAILABLE', `prosody could not listen on ${HOST}:${p.port} (in use)\n${p.logTail()}`);
      }
    }
  } catch (err) {
    await p.stop();
    throw err;
  }
}
