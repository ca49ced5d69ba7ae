import { randomBytes } from 'node:crypto';
import { Manager, type Socket } from 'socket.io-client';
import {
  admitToOutbox, DriverError, RecentIds,
  type DeviceEvents, type DeviceRef, type Driver, type DriverCapabilities, type DriverDevice,
} from './driver.js';

/*
 * The Socket.IO driver (the peer of issue 17: bench/src/peers/socketio-server.ts behind the Redis
 * adapter). One Manager per device (its own WebSocket: no multiplexing of users over one
 * connection), the WebSocket transport only, no reconnection of its own (the generator decides),
 * the user in the handshake's `auth`. User i connects to server i mod n, as the peer's users are
 * spread over its processes.
 *
 * - connect: resolves on the server's `ready` (the socket joined its room `user:<id>`: the server
 *   can deliver to it).
 * - send: `m`(to, id, body). Socket.IO has no acknowledgement to the sender, so the outcome is the
 *   write (ok once handed to the socket); a message that waits in the outbox while disconnected is
 *   written on the next connection. What the server never delivered shows as missing by id.
 * - receive: `m`(from, id, body); a repeat of (from, id) is dropped (there are none by design).
 * - capabilities: no acceptance, no own-device copies, no offline delivery, no groups (not measured).
 */

const ID_PREFIX = /^[A-Za-z0-9_-]{1,40}$/;

export interface SocketIoDriverOptions {
  /** One URL per server process (http://host:port). */
  urls: string[];
  idPrefix?: string;
  connectTimeoutMs?: number;
}

interface Out {
  ref: number;
  id: string;
  to: string;
  body: string;
}

class SocketIoDevice implements DriverDevice {
  private manager: Manager | undefined;
  private socket: Socket | undefined;
  private up = false;
  private connecting: Promise<void> | undefined;
  private readonly out = new Map<string, Out>();
  private recent: RecentIds | undefined;
  /** The socket ended by disconnect() or drop(): no `lost` for it. */
  private intended = false;

  constructor(
    private readonly drv: SocketIoDriver,
    private readonly ref: DeviceRef,
    private readonly ev: DeviceEvents,
  ) {}

  get connected(): boolean {
    return this.up;
  }

  connect(): Promise<void> {
    if (this.up) return Promise.resolve();
    if (this.connecting) return this.connecting;
    if (this.drv.closed) return Promise.reject(new DriverError('CLOSED', 'the driver is closed'));
    this.intended = false;
    const m = new Manager(this.drv.urlOf(this.ref), { transports: ['websocket'], reconnection: false, autoConnect: false, timeout: this.drv.connectTimeoutMs });
    const s = m.socket('/', { auth: { user: this.ref.user } });
    this.manager = m;
    this.socket = s;
    const p = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => fail(new DriverError('TIMEOUT', `${this.ref.user}: no session within ${this.drv.connectTimeoutMs} ms`)), this.drv.connectTimeoutMs);
      const fail = (e: Error): void => {
        clearTimeout(timer);
        if (this.socket === s) this.teardown();
        reject(e);
      };
      s.once('connect_error', (e: Error) => fail(new DriverError((e as { type?: string }).type ?? 'connect_error', `${this.ref.user}: ${e.message}`, { cause: e })));
      s.once('ready', () => {
        clearTimeout(timer);
        this.up = true;
        this.flush();
        resolve();
      });
    });
    s.on('m', (from: string, id: string, body: string) => {
      this.recent ??= new RecentIds(this.drv.dedupWindow);
      if (this.recent.seenBefore(from, id)) return void this.drv.redeliveries++;
      this.ev.message({ from, body });
    });
    s.on('disconnect', (reason: string) => {
      const was = this.up;
      this.up = false;
      if (this.socket !== s) return;
      this.teardown();
      if (was && !this.intended) {
        this.drv.lost++;
        this.ev.lost(reason.replace(/\s+/g, '_'));
      }
    });
    s.connect();
    this.connecting = p.finally(() => (this.connecting = undefined));
    return this.connecting;
  }

  private teardown(): void {
    this.up = false;
    this.socket?.removeAllListeners();
    this.socket?.disconnect();
    this.manager?.engine?.close();
    this.socket = undefined;
    this.manager = undefined;
  }

  private flush(): void {
    const s = this.socket;
    if (!s) return;
    for (const o of this.out.values()) this.write(s, o);
  }

  private write(s: Socket, o: Out): void {
    s.emit('m', o.to, o.id, o.body);
    this.out.delete(o.id);
    queueMicrotask(() => this.ev.outcome(o.ref, true));
  }

  send(ref: number, to: string, body: string): void {
    const id = admitToOutbox(this.out, this.drv.idPrefix, ref, this.ev);
    if (id === undefined) return;
    const o = { ref, id, to, body };
    if (this.up && this.socket) this.write(this.socket, o);
    else this.out.set(id, o);
  }

  sendToGroup(ref: number, _group: string, _body: string): void {
    queueMicrotask(() => this.ev.outcome(ref, false, 'UNSUPPORTED'));
  }

  setPresence(): void {
    // Presence is not part of the peer's workload.
  }

  async ping(): Promise<void> {
    const s = this.socket;
    if (!this.up || !s) throw new DriverError('NOT_CONNECTED', `${this.ref.user}: not connected`);
    await s.timeout(this.drv.connectTimeoutMs).emitWithAck('p');
  }

  async disconnect(): Promise<void> {
    this.intended = true;
    const s = this.socket;
    if (!s) return;
    this.teardown();
  }

  drop(): void {
    this.intended = true;
    this.teardown();
  }
}

export class SocketIoDriver implements Driver {
  readonly name = 'socketio';
  readonly capabilities: DriverCapabilities = { acceptance: false, ownDeviceCopies: false, offlineDelivery: { direct: false, groups: false } };
  readonly idPrefix: string;
  readonly connectTimeoutMs: number;
  readonly dedupWindow = 64;
  closed = false;
  lost = 0;
  redeliveries = 0;
  private readonly devices = new Set<SocketIoDevice>();

  constructor(private readonly o: SocketIoDriverOptions) {
    if (o.urls.length === 0) throw new RangeError('SocketIoDriver needs at least one URL');
    this.idPrefix = o.idPrefix ?? randomBytes(6).toString('base64url');
    if (!ID_PREFIX.test(this.idPrefix)) throw new RangeError(`idPrefix must match ${String(ID_PREFIX)}, got ${JSON.stringify(this.idPrefix)}`);
    this.connectTimeoutMs = o.connectTimeoutMs ?? 10_000;
  }

  /** The server of `d`'s user: by its index (i mod n), else by a hash of the name. */
  urlOf(d: DeviceRef): string {
    const n = this.o.urls.length;
    if (d.index !== undefined) return this.o.urls[d.index % n]!;
    let h = 0;
    for (let i = 0; i < d.user.length; i++) h = (Math.imul(h, 31) + d.user.charCodeAt(i)) >>> 0;
    return this.o.urls[h % n]!;
  }

  /** Nothing to register: the peer has no accounts (the user is who the handshake says). */
  async provision(): Promise<void> {
    if (this.closed) throw new DriverError('CLOSED', 'the driver is closed');
  }

  createGroup(): Promise<string> {
    return Promise.reject(new DriverError('UNSUPPORTED', 'the Socket.IO peer has no groups'));
  }

  device(d: DeviceRef, events: DeviceEvents): DriverDevice {
    if (this.closed) throw new DriverError('CLOSED', 'the driver is closed');
    const dev = new SocketIoDevice(this, d, events);
    this.devices.add(dev);
    return dev;
  }

  async close(): Promise<void> {
    this.closed = true;
    await Promise.allSettled([...this.devices].map((d) => d.disconnect()));
    this.devices.clear();
  }

  counters(): Record<string, number> {
    return { lost: this.lost, redeliveriesDropped: this.redeliveries };
  }
}
