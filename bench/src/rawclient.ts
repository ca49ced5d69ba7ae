import { connect, type Socket } from 'node:net';
import { ackFor, FrameWriter } from '@gravitas/client/internal';
import {
  Capability, ClientHandshake, decodeServerFrame, decodeServerHandshake, encodeFrame, FrameDecoder, nativeSuite, pack, ProtocolError, unpack,
  type DhKey, type DhSuite, type KeyPair, type ResumptionState, type SecureChannel, type ServerMessage, type WelcomePayload,
} from '@gravitas/protocol';

/*
 * A bare-bones protocol client for load generation: one ClientHandshake over one socket, then
 * `finish` + `ping` in one write, done when the `pong` arrives (which proves the server accepted
 * the key confirmation and registered the session — the ping is queued behind the registration).
 * No SDK machinery: no outbox, no reconnects, no EventEmitter.
 *
 * It speaks the custody protocol: a `msg` or `rcpt` that arrives is acknowledged as the SDK does
 * (ackFor, @gravitas/client/internal), so that the server can let go of it, unless `SessionHooks`
 * take the session over after the pong.
 */

export interface Identity {
  user: string;
  device: string;
  keys: KeyPair;
}

/**
 * nativeSuite with the identity's static key imported once: ClientHandshake calls
 * fromSecret(identity) on every handshake (PKCS8 import + public key export), which is load
 * generator cost, not server cost.
 */
export function cachingSuite(): DhSuite {
  const cache = new Map<string, DhKey>();
  return {
    name: 'native',
    generate: () => nativeSuite.generate(),
    fromSecret(sk) {
      const k = Buffer.from(sk.buffer, sk.byteOffset, sk.length).toString('base64');
      let key = cache.get(k);
      if (!key) cache.set(k, (key = nativeSuite.fromSecret(sk)));
      return key;
    },
  };
}

/** What the raw load clients ask for: what the SDK asks for, the transport cipher and batches. */
export const RAW_CAPABILITIES: readonly string[] = [Capability.AEAD_CHACHA20POLY1305, Capability.BATCH];

export function newHandshake(serverPublicKey: Uint8Array, id: Identity, suite: DhSuite, resume?: ResumptionState): ClientHandshake {
  return new ClientHandshake({ serverPublicKey, identity: id.keys, user: id.user, device: id.device, registration: '', suite, offer: { capabilities: RAW_CAPABILITIES }, ...(resume && { resume }) });
}

export type HandshakeOutcome =
  | { ok: true; ms: number; resumption: ResumptionState | undefined; socket: Socket | undefined; channel: SecureChannel; welcome: WelcomePayload; write: SealedWriter }
  | { ok: false; ms: number; code: string };

export interface Target {
  host: string;
  port: number;
}

/** Writes one sealed message on an open session. */
export type SealedWriter = (m: object) => void;

/** With `batch`, what one callback writes goes out as one frame (the SDK's FrameWriter); else a frame per message. */
export function sealedWriter(socket: Socket, channel: SecureChannel, batch = false): SealedWriter {
  if (!batch) return (m) => void socket.write(encodeFrame(channel.seal(pack(m))));
  const conn = { kind: 'tcp' as const, send: (b: Uint8Array) => void socket.write(encodeFrame(b)), get bufferedBytes() { return socket.writableLength; }, close: () => socket.end(), destroy: () => socket.destroy() };
  const w = new FrameWriter(conn, channel, true);
  return (m) => w.write(m);
}

/**
 * Takes an open session over (with `keepOpen`): every server message after the handshake —
 * including a `msg`/`rcpt`/`pres` that overtook the pong — goes to `onMessage`, which must ack
 * what needs acking; `onClose` runs once when the socket closes after a successful handshake.
 */
export interface SessionHooks {
  onMessage(m: ServerMessage, write: SealedWriter): void;
  onClose?(): void;
}

/** The messages of a sealed frame's plaintext: one, or a batch's (a bad element is a broken client here). */
function messagesOf(plain: Uint8Array, batch: boolean): ServerMessage[] {
  return decodeServerFrame(plain, batch).map((m) => {
    if (m instanceof ProtocolError) throw m;
    return m;
  });
}

export function parseTarget(addr: string): Target {
  const i = addr.lastIndexOf(':');
  return { host: addr.slice(0, i), port: Number(addr.slice(i + 1)) };
}

/**
 * Runs one handshake. With `keepOpen` the socket stays connected and is returned; frames the
 * server sends later go to `hooks` if given, else `msg`/`rcpt` are acknowledged and the rest
 * ignored (an idle session). Without `keepOpen` it is ended right after the pong.
 */
export function handshake(target: Target, hs: ClientHandshake, keepOpen = false, timeoutMs = 15_000, hooks?: SessionHooks): Promise<HandshakeOutcome> {
  const t0 = performance.now();
  return new Promise((resolve) => {
    const socket = connect({ host: target.host, port: target.port, noDelay: true });
    const decoder = new FrameDecoder();
    let channel: SecureChannel | undefined;
    let write: SealedWriter | undefined;
    let batch = false;
    let resumption: ResumptionState | undefined;
    let welcome: WelcomePayload | undefined;
    let done = false;
    let ok = false;
    const finish = (o: HandshakeOutcome): void => {
      if (done) return;
      done = true;
      ok = o.ok;
      clearTimeout(timer);
      if (!o.ok || !keepOpen) socket.end();
      if (!o.ok) setTimeout(() => socket.destroy(), 1000).unref();
      resolve(o);
    };
    const fail = (code: string): void => finish({ ok: false, ms: performance.now() - t0, code });
    /** A server message that is not the pong: the session's business (before or after the pong). */
    const other = (m: ServerMessage): void => {
      if (hooks) return hooks.onMessage(m, write!);
      const ack = ackFor(m);
      if (ack) write!(ack);
    };
    const timer = setTimeout(() => fail('TIMEOUT'), timeoutMs);
    socket.once('connect', () => socket.write(encodeFrame(pack(hs.hello()))));
    socket.on('error', (e: NodeJS.ErrnoException) => fail(e.code ?? 'SOCKET_ERROR'));
    socket.on('close', () => {
      if (done && ok && keepOpen) hooks?.onClose?.();
      fail('CLOSED');
    });
    socket.on('data', (chunk) => {
      if (done && !(ok && keepOpen)) return;
      try {
        decoder.push(chunk, (body) => {
          if (done) {
            // An open session kept by the caller.
            if (ok && keepOpen && channel) for (const m of messagesOf(channel.open(body), batch)) other(m);
            return;
          }
          if (!channel) {
            const m = decodeServerHandshake(unpack(body));
            if (m.t === 'error') return fail(m.code);
            if (m.t === 'cookie') return void socket.write(encodeFrame(pack(hs.hello(m.c))));
            const r = hs.complete(m);
            channel = r.channel;
            batch = r.negotiated.caps.has(Capability.BATCH);
            write = sealedWriter(socket, channel, batch);
            resumption = r.resumption;
            welcome = r.welcome;
            socket.write(Buffer.concat([encodeFrame(channel.seal(pack(r.finish))), encodeFrame(channel.seal(pack({ t: 'ping', n: 1 })))]));
            return;
          }
          for (const m of messagesOf(channel.open(body), batch)) {
            if (done) {
              if (ok && keepOpen) other(m); // after the pong, in the same batched frame
              continue;
            }
            if (m.t === 'pong') finish({ ok: true, ms: performance.now() - t0, resumption, socket: keepOpen ? socket : undefined, channel, welcome: welcome!, write: write! });
            else if (m.t === 'error' || m.t === 'bye') fail(m.code ?? m.t);
            // Registered already (the ping queues behind the registration): a mailbox drain, a
            // receipt or a presence update may overtake the pong.
            else other(m);
          }
        });
      } catch (e) {
        if (!done) return fail((e as { code?: string }).code ?? 'CLIENT_ERROR');
        // A broken frame on a kept session: the channel is unusable now.
        socket.destroy();
      }
    });
  });
}
