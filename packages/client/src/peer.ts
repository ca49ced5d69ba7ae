import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { EventEmitter } from 'node:events';
import { connect as netConnect, createServer, type Server, type Socket } from 'node:net';
import {
  encodeFrame, ErrorCode, FrameDecoder, isErrorCode, isName, pack, ProtocolError, RemoteError, SeenWakes, unpack, verifyWake, WakeError, type VerifiedWake,
} from '@gravitas/protocol';
import { splitHostPort, type GravitasClient } from './client.js';

/*
 * The SDK's peer link (docs/relay.md, Node only): a small TCP listener that LAN
 * peers hand wake tokens to, a probe that learns which devices this one reaches
 * directly, reports of those to the server (`reach.report`), and the forwarding of
 * the server's `relay` requests to them. Discovery: an explicit addPeer(addr), and
 * optionally UDP beacons that announce this device's peer port.
 *
 * Wire: the protocol's framing (4-byte length + msgpack), plaintext, at most
 * MAX_PEER_FRAME bytes a frame and MAX_FRAMES_PER_CONN frames a connection.
 *   → { t: "hi", v: 1, u, d }     ← { t: "hi", v: 1, u, d }            probe
 *   → { t: "wake", w: token }     ← { t: "ok" } | { t: "no", code }     wake-up
 * Anything else gets { t: "no", code } and the connection closes. Nothing on this
 * link is trusted: a token counts only if it verifies (signature, target, expiry,
 * single use), and a peer's name only decides where a token is handed.
 */

export const PEER_PROTOCOL_VERSION = 1;
/** A wake token (≤ 768 bytes) plus its envelope fits; anything larger is refused before it is read. */
export const MAX_PEER_FRAME = 1024;
const MAX_FRAMES_PER_CONN = 4;
const MAX_BEACON_BYTES = 256;

export interface PeerLinkOptions {
  /** Listen address of the peer listener (default 0.0.0.0; tests use 127.0.0.1). */
  host?: string;
  /** Listen port (default 0: the OS picks one; beacons announce it). */
  port?: number;
  /** Devices kept in the peer table (default 64). */
  maxPeers?: number;
  /** Inbound connections at once (default 16); more are closed at accept. */
  maxConnections?: number;
  /** Timeout of one peer connection, inbound or outbound (default 5 s). */
  timeoutMs?: number;
  /** How often peers are probed again and reported (default 60 s). */
  reportEveryMs?: number;
  /** How long the server may rely on a report (default 3 × reportEveryMs); a peer not re-probed within it is dropped. */
  reportTtlMs?: number;
  /** Token ids remembered for the single-use check (default 1024). */
  maxSeenTokens?: number;
  /** UDP beacons: listen on `port` (0: any) and announce to `to` (host:port, e.g. "255.255.255.255:47400") every `intervalMs`. */
  beacon?: { port: number; to: string; intervalMs?: number; host?: string };
}

/** A device this one reached with a probe. */
export interface Peer { user: string; device: string; addr: string; verifiedAt: number; reportedUntil: number }

export interface PeerLinkEvents {
  /** A probe reached a device (new, or at a new address). */
  peer: [{ user: string; device: string; addr: string }];
  /** A valid wake token arrived and the client connected (or already was). */
  woken: [{ cell: string; addr: string; result: 'connected' | 'reconnecting' }];
  /** A wake token was refused (WAKE_INVALID / WAKE_EXPIRED / WAKE_REPLAYED), or following it failed. */
  wakeIgnored: [Error];
  /** A relay request was handed to the peer (`ok`), or not (`error`). */
  relayed: [{ user: string; device: string; ok: boolean; error?: Error }];
  /** Reported to the server: how many peers, for how long. */
  reported: [{ peers: number; ttlMs: number }];
  error: [Error];
}

export class PeerError extends ProtocolError {
  override name = 'PeerError';
}

type PeerFrame = { t: 'hi'; v: number; u: string; d: string } | { t: 'wake'; w: Uint8Array } | { t: 'ok' } | { t: 'no'; code: string };

function decodePeerFrame(body: Uint8Array): PeerFrame {
  const o = unpack(body) as Record<string, unknown>;
  if (typeof o !== 'object' || o === null) throw new PeerError(ErrorCode.BAD_MESSAGE, 'peer frame must be a map');
  switch (o.t) {
    case 'hi':
      if (typeof o.u === 'string' && isName(o.u) && typeof o.d === 'string' && isName(o.d, 32) && typeof o.v === 'number') return { t: 'hi', v: o.v, u: o.u, d: o.d };
      break;
    case 'wake':
      if (o.w instanceof Uint8Array) return { t: 'wake', w: o.w };
      break;
    case 'ok':
      return { t: 'ok' };
    case 'no':
      return { t: 'no', code: typeof o.code === 'string' ? o.code.slice(0, 64) : ErrorCode.BAD_MESSAGE };
    default:
      throw new PeerError(ErrorCode.UNKNOWN_TYPE, 'unknown peer frame');
  }
  throw new PeerError(ErrorCode.BAD_MESSAGE, `malformed peer frame ${String(o.t).slice(0, 16)}`);
}

/** One request, one answer, over a fresh connection that is closed after. */
function ask(addr: string, m: PeerFrame, timeoutMs: number): Promise<PeerFrame> {
  const [host, port] = splitHostPort(addr);
  return new Promise((resolve, reject) => {
    const socket = netConnect({ host, port: Number(port) });
    const decoder = new FrameDecoder(MAX_PEER_FRAME);
    let done = false;
    const finish = (err: Error | undefined, r?: PeerFrame): void => {
      if (done) return;
      done = true;
      socket.destroy();
      if (err) reject(err);
      else resolve(r!);
    };
    socket.setTimeout(timeoutMs, () => finish(new PeerError(ErrorCode.BUSY, `peer ${addr} did not answer in time`)));
    socket.on('connect', () => socket.write(encodeFrame(pack(m))));
    socket.on('data', (chunk) => {
      try {
        decoder.push(chunk, (body) => finish(undefined, decodePeerFrame(body)));
      } catch (err) {
        finish(err as Error);
      }
    });
    socket.on('error', (err) => finish(err));
    socket.on('close', () => finish(new PeerError(ErrorCode.FRAME_TRUNCATED, `peer ${addr} closed without an answer`)));
  });
}

/**
 * Attaches a peer link to a client: `await link.start()`, then `addPeer()` or
 * beacons. The link works while the client is closed (that is its point: a
 * sleeping device is woken through it); `close()` stops it.
 */
export class PeerLink extends EventEmitter<PeerLinkEvents> {
  private server: Server | undefined;
  private udp: UdpSocket | undefined;
  private readonly inbound = new Set<Socket>();
  private readonly table = new Map<string, Peer>();
  /** Addresses being probed now (bounded by maxPeers). */
  private readonly probing = new Set<string>();
  private readonly seen: SeenWakes;
  private timer: NodeJS.Timeout | undefined;
  private beaconTimer: NodeJS.Timeout | undefined;
  private reportTimer: NodeJS.Timeout | undefined;
  private closed = false;
  private readonly o: Required<Omit<PeerLinkOptions, 'beacon'>> & Pick<PeerLinkOptions, 'beacon'>;
  /** host:port of the peer listener once started. */
  address = '';
  /** UDP port of the beacon listener once started (0 without beacons). */
  beaconPort = 0;
  private readonly onRelay = (r: { u: string; d: string; w: Uint8Array }): void => void this.forward(r.u, r.d, r.w);
  private readonly onConnected = (): void => this.scheduleReport(0);

  constructor(readonly client: GravitasClient, options: PeerLinkOptions = {}) {
    super();
    const every = options.reportEveryMs ?? 60_000;
    this.o = {
      host: options.host ?? '0.0.0.0',
      port: options.port ?? 0,
      maxPeers: options.maxPeers ?? 64,
      maxConnections: options.maxConnections ?? 16,
      timeoutMs: options.timeoutMs ?? 5000,
      reportEveryMs: every,
      reportTtlMs: options.reportTtlMs ?? 3 * every,
      maxSeenTokens: options.maxSeenTokens ?? 1024,
      ...(options.beacon && { beacon: options.beacon }),
    };
    this.seen = new SeenWakes(this.o.maxSeenTokens);
  }

  private get me(): { user: string; device: string } {
    return { user: this.client.options.user, device: this.client.options.device };
  }

  /** Starts the listener (and beacons); resolves with its host:port. */
  async start(): Promise<string> {
    const server = createServer({ noDelay: true }, (socket) => this.accept(socket));
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.o.port, this.o.host, () => {
        server.off('error', reject);
        server.on('error', (err) => this.emit('error', err));
        resolve();
      });
    });
    const a = server.address();
    const port = typeof a === 'object' && a ? a.port : 0;
    this.address = `${this.o.host.includes(':') ? `[${this.o.host}]` : this.o.host}:${port}`;
    this.client.on('relayRequest', this.onRelay);
    this.client.on('connected', this.onConnected);
    if (this.o.beacon) await this.startBeacons(this.o.beacon, port);
    this.timer = setInterval(() => void this.refresh(), this.o.reportEveryMs);
    this.timer.unref();
    return this.address;
  }

  /** The devices this one reached recently, newest first. */
  peers(): Peer[] {
    return [...this.table.values()].sort((a, b) => b.verifiedAt - a.verifiedAt);
  }

  // ---- listener -------------------------------------------------------------------

  private accept(socket: Socket): void {
    if (this.closed || this.inbound.size >= this.o.maxConnections) {
      socket.destroy();
      return;
    }
    this.inbound.add(socket);
    socket.once('close', () => this.inbound.delete(socket));
    socket.setNoDelay(true);
    socket.setTimeout(this.o.timeoutMs, () => socket.destroy());
    socket.on('error', () => socket.destroy());
    const decoder = new FrameDecoder(MAX_PEER_FRAME);
    let frames = 0;
    const reply = (m: PeerFrame, end = false): void => {
      if (socket.destroyed) return;
      socket.write(encodeFrame(pack(m)));
      if (end) socket.end();
    };
    socket.on('data', (chunk) => {
      try {
        decoder.push(chunk, (body) => {
          if (++frames > MAX_FRAMES_PER_CONN) throw new PeerError(ErrorCode.RATE_LIMITED, 'too many frames on one peer connection');
          const m = decodePeerFrame(body);
          if (m.t === 'hi') return reply({ t: 'hi', v: PEER_PROTOCOL_VERSION, u: this.me.user, d: this.me.device });
          if (m.t === 'wake') return reply(this.onWake(m.w), true);
          throw new PeerError(ErrorCode.UNEXPECTED_MESSAGE, 'unexpected peer frame');
        });
      } catch (err) {
        // Junk, oversized or unexpected: say why, close, change nothing.
        reply({ t: 'no', code: err instanceof ProtocolError ? err.code : ErrorCode.DECODE_FAILED }, true);
        socket.destroySoon();
      }
    });
  }

  /** A token from a peer: verified and admitted once, then the client connects where it says. */
  private onWake(token: Uint8Array): PeerFrame {
    let w: VerifiedWake;
    try {
      const key = this.client.options.hintPublicKey ?? this.client.welcome?.hk;
      if (!key) throw new WakeError(ErrorCode.WAKE_INVALID, 'wake token rejected: no hint key known yet');
      const now = Date.now();
      w = verifyWake(token, key, this.me, now);
      this.seen.admit(w, now);
    } catch (err) {
      const e = err instanceof ProtocolError ? err : new WakeError(ErrorCode.WAKE_INVALID, 'wake token rejected');
      this.emit('wakeIgnored', e);
      return { t: 'no', code: e.code };
    }
    this.client.wakeUp(w.hint).then(
      (result) => {
        if (result === 'ignored') return; // the client reported it ('hintIgnored')
        this.emit('woken', { cell: w.connect.cell, addr: w.connect.addr, result });
      },
      (err: Error) => this.emit('wakeIgnored', err),
    );
    return { t: 'ok' };
  }

  // ---- probing and reporting ----------------------------------------------------------

  /**
   * Probes `addr` (host:port of another device's peer listener): resolves with the
   * device it answers for, now in the peer table, or rejects. A probe proves that
   * this device reaches that address, not who is behind it (docs/relay.md).
   */
  async addPeer(addr: string, expect?: { user: string; device: string }): Promise<{ user: string; device: string }> {
    if (this.closed) throw new PeerError(ErrorCode.SHUTTING_DOWN, 'peer link is closed');
    splitHostPort(addr); // throws TypeError for anything that is not host:port
    if (this.probing.has(addr) || this.probing.size >= this.o.maxPeers) throw new PeerError(ErrorCode.BUSY, `already probing ${addr}, or too many probes`);
    this.probing.add(addr);
    try {
      const r = await ask(addr, { t: 'hi', v: PEER_PROTOCOL_VERSION, u: this.me.user, d: this.me.device }, this.o.timeoutMs);
      if (r.t !== 'hi') throw new PeerError(ErrorCode.UNEXPECTED_MESSAGE, `peer ${addr} did not answer the probe`);
      if (r.u === this.me.user && r.d === this.me.device) throw new PeerError(ErrorCode.NOT_ALLOWED, `${addr} is this device`);
      if (expect && (r.u !== expect.user || r.d !== expect.device)) throw new PeerError(ErrorCode.CONFLICT, `${addr} answers for another device`);
      const key = `${r.u}/${r.d}`;
      const old = this.table.get(key);
      if (!old && this.table.size >= this.o.maxPeers) {
        // Full: the peer verified longest ago makes room.
        const stalest = this.peers().pop();
        if (stalest) this.table.delete(`${stalest.user}/${stalest.device}`);
      }
      this.table.set(key, { user: r.u, device: r.d, addr, verifiedAt: Date.now(), reportedUntil: old?.addr === addr ? old.reportedUntil : 0 });
      if (!old || old.addr !== addr) {
        this.emit('peer', { user: r.u, device: r.d, addr });
        this.scheduleReport(0);
      }
      return { user: r.u, device: r.d };
    } finally {
      this.probing.delete(addr);
    }
  }

  /** Re-probes every peer, drops those not reached within reportTtlMs, and reports the rest. */
  private async refresh(): Promise<void> {
    const now = Date.now();
    await Promise.all(this.peers().map((p) => this.addPeer(p.addr, p).catch(() => undefined)));
    for (const [k, p] of this.table) if (now - p.verifiedAt > this.o.reportTtlMs) this.table.delete(k);
    await this.reportNow().catch(() => undefined);
  }

  private scheduleReport(delayMs: number): void {
    if (this.reportTimer || this.closed) return;
    this.reportTimer = setTimeout(() => {
      this.reportTimer = undefined;
      this.reportNow().catch((err: unknown) => {
        // Too soon after the last one (the server's interval): try once more a little later.
        if (err instanceof RemoteError && err.code === ErrorCode.RATE_LIMITED) this.scheduleReport(1500);
      });
    }, delayMs);
    this.reportTimer.unref();
  }

  /** Tells the server which devices this one reaches (when connected and there are any). */
  async reportNow(): Promise<void> {
    if (!this.client.connected || this.table.size === 0) return;
    const fresh = this.peers().slice(0, 32); // REACH_LIMITS.maxPeers
    const ttlMs = this.o.reportTtlMs;
    const res = (await this.client.request('reach.report', { peers: fresh.map((p) => ({ user: p.user, device: p.device })), ttlMs })) as { ttlMs?: number } | undefined;
    const until = Date.now() + (typeof res?.ttlMs === 'number' ? res.ttlMs : ttlMs);
    for (const p of fresh) p.reportedUntil = until;
    this.emit('reported', { peers: fresh.length, ttlMs });
  }

  // ---- relaying -------------------------------------------------------------------------

  /** The server's relay request: hand the token to that peer if this device reported it; keep nothing. */
  private async forward(user: string, device: string, token: Uint8Array): Promise<void> {
    const p = this.table.get(`${user}/${device}`);
    if (!p || p.reportedUntil <= Date.now()) {
      this.emit('relayed', { user, device, ok: false, error: new PeerError(ErrorCode.NOT_FOUND, `${user}/${device} is not a reported peer`) });
      return;
    }
    try {
      const r = await ask(p.addr, { t: 'wake', w: token }, this.o.timeoutMs);
      if (r.t !== 'ok') throw new PeerError(r.t === 'no' && isErrorCode(r.code) ? r.code : ErrorCode.BAD_MESSAGE, `peer refused the wake token`);
      this.emit('relayed', { user, device, ok: true });
    } catch (err) {
      this.emit('relayed', { user, device, ok: false, error: err as Error });
    }
  }

  // ---- beacons ----------------------------------------------------------------------------

  private async startBeacons(b: NonNullable<PeerLinkOptions['beacon']>, peerPort: number): Promise<void> {
    const [toHost, toPort] = splitHostPort(b.to);
    const udp = createSocket({ type: 'udp4', reuseAddr: true });
    this.udp = udp;
    udp.on('error', (err) => this.emit('error', err));
    udp.on('message', (msg, rinfo) => this.onBeacon(msg, rinfo.address));
    await new Promise<void>((resolve) => udp.bind(b.port, b.host ?? '0.0.0.0', () => resolve()));
    udp.setBroadcast(true);
    this.beaconPort = udp.address().port;
    const beacon = pack({ t: 'gvb', v: PEER_PROTOCOL_VERSION, u: this.me.user, d: this.me.device, p: peerPort });
    const send = (): void => udp.send(beacon, Number(toPort), toHost, () => undefined);
    send();
    this.beaconTimer = setInterval(send, b.intervalMs ?? 15_000);
    this.beaconTimer.unref();
  }

  /** A beacon announces a device and its peer port: probe it (the beacon itself proves nothing). */
  private onBeacon(msg: Buffer, from: string): void {
    if (this.closed || msg.length > MAX_BEACON_BYTES) return;
    let o: Record<string, unknown>;
    try {
      o = unpack(msg) as Record<string, unknown>;
    } catch {
      return;
    }
    if (typeof o !== 'object' || o === null || o.t !== 'gvb' || typeof o.u !== 'string' || !isName(o.u) || typeof o.d !== 'string' || !isName(o.d, 32)) return;
    if (typeof o.p !== 'number' || !Number.isInteger(o.p) || o.p < 1 || o.p > 65535) return;
    if (o.u === this.me.user && o.d === this.me.device) return; // our own
    const addr = `${from.includes(':') ? `[${from}]` : from}:${o.p}`;
    const known = this.table.get(`${o.u}/${o.d}`);
    if (known?.addr === addr && Date.now() - known.verifiedAt < this.o.reportEveryMs) return;
    this.addPeer(addr, { user: o.u, device: o.d }).catch(() => undefined);
  }

  /** Stops listening, beacons and reports; the client is left as it is. */
  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.timer);
    clearInterval(this.beaconTimer);
    clearTimeout(this.reportTimer);
    this.client.off('relayRequest', this.onRelay);
    this.client.off('connected', this.onConnected);
    this.udp?.close();
    for (const s of this.inbound) s.destroy();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }
}
