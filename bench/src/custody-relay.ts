import { randomBytes } from 'node:crypto';
import { createServer, type Socket } from 'node:net';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import {
  checkFinish, decodeClientHandshake, decodeClientMessage, encodeFrame, ErrorCode, FrameDecoder, fromBase64Url, nativeSuite, pack, readHello, readResume,
  unpack, writeWelcome, type SecureChannel, type ServerHandshakeContext, type ServerMessage,
} from '@gravitas/protocol';

/*
 * The no-custody baseline of the custody benchmark: a child process that speaks the Gravitas
 * client protocol (same handshake, same sealed frames, so the SDK and the raw generator connect
 * to it unchanged) and relays 1:1 messages the way the cluster did before custody — and nothing
 * else:
 *
 *   send → (same relay: call | other relay: one core-NATS publish to the recipient's subject)
 *        → `msg` to the recipient → its `ack` → (call | one publish back) → `status delivered`
 *
 * No accounts, blocks or directory look-ups (a relay subscribes one subject per connected user:
 * NATS routing is the directory), no pending table beyond "who gets the status", no custody
 * window, no mailbox. A recipient that is not connected anywhere gets nothing (the sender's
 * status fails UNDELIVERABLE after 3 s). This is the lower bound of what the cells' live path costs, so
 * custody / relay is the price of custody on the online path.
 *
 * argv: --nats <url> --id <relayId> --prefix <subject prefix> --server-key <base64url secret>
 * Prints `ready <port>`; exits when stdin closes or on SIGTERM.
 */

function arg(name: string): string {
  const i = process.argv.indexOf(`--${name}`);
  const v = i >= 0 ? process.argv[i + 1] : undefined;
  if (v === undefined) throw new Error(`custody-relay: --${name} is required`);
  return v;
}

const natsUrl = arg('nats');
const relayId = arg('id');
const prefix = arg('prefix');
const ctx: ServerHandshakeContext = {
  staticKey: nativeSuite.fromSecret(fromBase64Url(arg('server-key'), 32)),
  ticketKeys: { current: { id: 1, key: randomBytes(32) } },
  ticketLifetimeMs: 3600_000,
  suite: nativeSuite,
  now: Date.now,
};
const TIMEOUT_MS = 3000;
const userSubject = (user: string): string => `${prefix}.u.${user}`;
const relaySubject = (id: string): string => `${prefix}.r.${id}`;

interface Item { id: string; from: string; fd: string; to: string; text: string; ts: number }
type Envelope = { k: 'dlv'; m: Item; oc: string } | { k: 'ack'; id: string; from: string; fd: string } | { k: 'nh'; id: string; from: string; fd: string };

/** Sender sessions waiting for a status, by `from/fd/id`; insertion order is deadline order. */
const pending = new Map<string, { s: RelaySession; id: string; deadline: number }>();
/** Open sessions by user (one device per user in the benchmark). */
const sessions = new Map<string, RelaySession>();
let nc: NatsConnection;
let seq = 0;

class RelaySession {
  private state: 'handshake' | 'confirming' | 'open' | 'closed' = 'handshake';
  private readonly decoder = new FrameDecoder();
  private channel: SecureChannel | undefined;
  private expected: Uint8Array | undefined;
  user = '';
  device = '';
  /** Delivered, not yet acknowledged: `from/id` → origin relay (undefined: this one) and sending device. */
  private readonly unacked = new Map<string, { origin: string | undefined; fd: string }>();
  private sub: ReturnType<NatsConnection['subscribe']> | undefined;

  constructor(private readonly socket: Socket) {
    socket.setNoDelay(true);
    socket.on('data', (chunk) => {
      try {
        this.decoder.push(chunk, (body) => this.onFrame(body));
      } catch {
        this.close();
      }
    });
    socket.on('error', () => this.close());
    socket.on('close', () => this.close());
    socket.on('end', () => this.close());
  }

  private onFrame(body: Buffer): void {
    if (this.state === 'closed') return;
    if (this.state === 'handshake') {
      const hello = decodeClientHandshake(unpack(body));
      const p = hello.t === 'hello' ? readHello(hello, ctx) : readResume(hello, ctx);
      const w = writeWelcome(p, { session: `${relayId}-${++seq}`, cell: relayId, node: relayId }, ctx);
      this.user = p.user;
      this.device = p.device;
      this.channel = w.channel;
      this.expected = w.expectedFinish;
      this.state = 'confirming';
      this.socket.write(encodeFrame(pack(w.welcome)));
      return;
    }
    const m = decodeClientMessage(unpack(this.channel!.open(body)));
    if (this.state === 'confirming') {
      if (m.t !== 'finish') throw new Error('expected finish');
      checkFinish(this.expected!, m.h);
      this.state = 'open';
      sessions.get(this.user)?.close();
      sessions.set(this.user, this);
      const user = this.user;
      this.sub = nc.subscribe(userSubject(user), { callback: (err, msg) => void (err || onEnvelope(msg.data)) });
      return;
    }
    switch (m.t) {
      case 'send': {
        if (m.to === undefined) return this.send({ t: 'status', id: m.id, s: 'failed', code: ErrorCode.UNDELIVERABLE });
        const item: Item = { id: m.id, from: this.user, fd: this.device, to: m.to, text: m.text, ts: Date.now() };
        const key = `${item.from}/${item.fd}/${item.id}`;
        if (pending.has(key)) return;
        pending.set(key, { s: this, id: m.id, deadline: Date.now() + TIMEOUT_MS });
        const local = sessions.get(m.to);
        if (local) local.deliver(item, undefined);
        else nc.publish(userSubject(m.to), pack({ k: 'dlv', m: item, oc: relayId } satisfies Envelope));
        return;
      }
      case 'ack': {
        const from = m.from ?? '';
        const d = this.unacked.get(`${from}/${m.id}`);
        if (!d) return;
        this.unacked.delete(`${from}/${m.id}`);
        if (d.origin === undefined) settled(`${from}/${d.fd}/${m.id}`);
        else nc.publish(relaySubject(d.origin), pack({ k: 'ack', id: m.id, from, fd: d.fd } satisfies Envelope));
        return;
      }
      case 'ping':
        return this.send({ t: 'pong', n: m.n });
      case 'bye':
        return this.close();
      default:
        return; // read, typing, presence, req: not part of the baseline
    }
  }

  deliver(item: Item, origin: string | undefined): void {
    this.unacked.set(`${item.from}/${item.id}`, { origin, fd: item.fd });
    this.send({ t: 'msg', id: item.id, from: item.from, fd: item.fd, to: item.to, text: item.text, ts: item.ts });
  }

  send(m: ServerMessage): void {
    if (this.state !== 'open') return;
    this.socket.write(encodeFrame(this.channel!.seal(pack(m))));
  }

  close(): void {
    if (this.state === 'closed') return;
    this.state = 'closed';
    if (sessions.get(this.user) === this) sessions.delete(this.user);
    this.sub?.unsubscribe();
    this.socket.end();
    setTimeout(() => this.socket.destroy(), 1000).unref();
  }
}

function settled(key: string): void {
  const p = pending.get(key);
  if (!p) return;
  pending.delete(key);
  p.s.send({ t: 'status', id: p.id, s: 'delivered' });
}

function onEnvelope(data: Uint8Array): void {
  const e = unpack(data) as Envelope;
  switch (e.k) {
    case 'dlv': {
      const s = sessions.get(e.m.to);
      if (s) s.deliver(e.m, e.oc);
      else nc.publish(relaySubject(e.oc), pack({ k: 'nh', id: e.m.id, from: e.m.from, fd: e.m.fd } satisfies Envelope));
      return;
    }
    case 'ack':
      return settled(`${e.from}/${e.fd}/${e.id}`);
    case 'nh': {
      const key = `${e.from}/${e.fd}/${e.id}`;
      const p = pending.get(key);
      if (!p) return;
      pending.delete(key);
      p.s.send({ t: 'status', id: p.id, s: 'failed', code: ErrorCode.UNDELIVERABLE });
    }
  }
}

nc = await connect({ servers: natsUrl, maxReconnectAttempts: -1 });
nc.subscribe(relaySubject(relayId), { callback: (err, msg) => void (err || onEnvelope(msg.data)) });
await nc.flush();

setInterval(() => {
  const now = Date.now();
  for (const [key, p] of pending) {
    if (p.deadline > now) break;
    pending.delete(key);
    p.s.send({ t: 'status', id: p.id, s: 'failed', code: ErrorCode.UNDELIVERABLE });
  }
}, 100).unref();

const server = createServer({ noDelay: true }, (socket) => void new RelaySession(socket));
server.listen(0, '127.0.0.1', () => {
  const a = server.address();
  process.stdout.write(`ready ${typeof a === 'object' && a ? a.port : 0}\n`);
});

const stop = (): void => {
  server.close();
  for (const s of sessions.values()) s.close();
  void nc.drain().finally(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
};
process.stdin.on('end', stop);
process.stdin.on('close', stop);
process.stdin.resume();
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
