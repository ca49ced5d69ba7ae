import { mkdtemp } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { check, freePort, isExecutable } from '@gravitas/testkit';
import { HarnessError } from './errors.js';
import { LocalProcess, removeTempDir, trackTempDir } from './local-proc.js';

/*
 * The Socket.IO peer for one run or test: Debian's redis-server on a free loopback port
 * (`--save '' --appendonly no`: nothing on disk, as a pub/sub bus is run), and `processes` Socket.IO
 * server processes (bench/src/peers/socketio-server.ts) sharing it through the Redis adapter, each
 * on its own free port. Ready = Redis answers PING and every server printed that it listens.
 * stop() = SIGTERM, then SIGKILL, for every process; the temp dir goes.
 */

export const SOCKETIO_SERVER_BIN = fileURLToPath(new URL('../../dist/peers/socketio-server.js', import.meta.url));
const HOST = '127.0.0.1';
const INSTALL_HINT = 'apt-get install --no-install-recommends redis-server (Debian/Ubuntu), or point REDIS_SERVER at the executable';

export interface LocalSocketIo extends AsyncDisposable {
  /** One http://127.0.0.1:port per server process. */
  readonly urls: string[];
  /** Server processes and redis, by name, sampled for CPU and memory. */
  pids(): Record<string, number>;
  stop(): Promise<void>;
}

function findRedis(): string {
  const bin = process.env['REDIS_SERVER'] ?? '/usr/bin/redis-server';
  if (!isExecutable(bin)) throw new HarnessError('TARGET_UNAVAILABLE', `redis-server is not installed: ${bin} is not an executable file; ${INSTALL_HINT}`);
  return bin;
}

/** Whether a Redis answers PING on `port`. */
function redisPong(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host: HOST, port });
    let got = '';
    const done = (ok: boolean): void => {
      s.destroy();
      resolve(ok);
    };
    s.setTimeout(1000, () => done(false));
    s.once('connect', () => s.write('PING\r\n'));
    s.on('data', (d: Buffer) => {
      got += d.toString();
      if (got.includes('\r\n')) done(got.startsWith('+PONG'));
    });
    s.once('error', () => done(false));
  });
}

class SocketIoPeer implements LocalSocketIo {
  redis: LocalProcess | undefined;
  readonly servers: LocalProcess[] = [];
  urls: string[] = [];
  private stopped = false;
  constructor(readonly dir: string) {}

  pids(): Record<string, number> {
    const out: Record<string, number> = {};
    this.servers.forEach((p, i) => (out[`socketio${i + 1}`] = p.pid));
    if (this.redis) out['redis'] = this.redis.pid;
    return out;
  }

  async start(processes: number, timeoutMs: number): Promise<void> {
    const redisPort = await freePort(HOST);
    const redis = (this.redis = new LocalProcess('redis', findRedis(), ['--port', String(redisPort), '--bind', HOST, '--save', '', '--appendonly', 'no', '--dir', this.dir, '--maxclients', '10000'], { cwd: this.dir }));
    await this.until('redis-server', redis, () => redisPong(redisPort), timeoutMs);
    for (let i = 0; i < processes; i++) {
      const port = await freePort(HOST);
      const p = new LocalProcess(`socketio${i + 1}`, process.execPath, [SOCKETIO_SERVER_BIN, '--port', String(port), '--host', HOST, '--redis', `redis://${HOST}:${redisPort}`], { cwd: this.dir });
      this.servers.push(p);
      this.urls.push(`http://${HOST}:${port}`);
    }
    await Promise.all(this.servers.map((p) => this.until(p.name, p, async () => p.tail(OUT_LINES).includes('socketio ready'), timeoutMs)));
  }

  private async until(what: string, p: LocalProcess, ok: () => Promise<boolean>, timeoutMs: number): Promise<void> {
    let r: boolean | 'exited';
    try {
      r = await check<boolean | 'exited' | undefined>(`${what} ready`, async () => (p.exit ? 'exited' : (await ok()) || undefined), { timeout: timeoutMs, interval: 50 });
    } catch (e) {
      throw new HarnessError('TARGET_UNAVAILABLE', `${what} did not start within ${timeoutMs} ms\n${p.tail()}`, { cause: e });
    }
    if (r === 'exited') {
      const why = p.exit?.error && (p.exit.error as NodeJS.ErrnoException).code === 'ENOENT' ? `not installed; ${INSTALL_HINT}` : `exited during start-up (code ${p.exit?.code})`;
      throw new HarnessError('TARGET_UNAVAILABLE', `${what} ${why}\n${p.tail()}`);
    }
  }

  async stop(): Promise<void> {
    await Promise.all(this.servers.map((p) => p.stop(5000)));
    await this.redis?.stop(5000);
    if (this.stopped) return;
    this.stopped = true;
    await removeTempDir(this.dir);
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.stop();
  }
}

const OUT_LINES = 40;

/** Starts Redis and `processes` Socket.IO servers on it; throws TARGET_UNAVAILABLE if any does not come up. */
export async function startSocketIo(opts: { processes?: number; startTimeoutMs?: number } = {}): Promise<LocalSocketIo> {
  const dir = await mkdtemp(join(tmpdir(), 'gravitas-socketio-'));
  trackTempDir(dir);
  const peer = new SocketIoPeer(dir);
  try {
    await peer.start(Math.max(1, opts.processes ?? 2), opts.startTimeoutMs ?? 20_000);
    return peer;
  } catch (e) {
    await peer.stop();
    throw e;
  }
}
