import { randomBytes } from 'node:crypto';
import type { Socket } from 'node:net';
// @ts-expect-error -- @xmpp/client 0.14 ships no type declarations; the part used is typed below (XmppClient, XElement).
import { client as xmppClientUntyped, xml as xmlUntyped } from '@xmpp/client';
import {
  admitToOutbox, DriverError, OUTBOX_MAX, RecentIds,
  type DeviceEvents, type DeviceRef, type Driver, type DriverCapabilities, type DriverDevice,
} from './driver.js';
import { installFastScram } from './scram.js';

/*
 * The XMPP driver: one c2s connection per device, through xmpp.js (@xmpp/client: stream
 * negotiation, SASL, resource binding, XEP-0198 stream management with resumption), so the same
 * scenario measures ejabberd, MongooseIM or Prosody. JID = <user>@<domain>/<device>; the password
 * is the account's, the same for all its devices (xmppPassword: base64url of DeviceRef.userSecret).
 *
 * How the contract maps onto XMPP:
 * - provision: in-band registration (XEP-0077; an existing account is fine), a login to prove the
 *   password, then `subscribe` to every contact (the server adds each to the roster, RFC 6121
 *   §3.1.2) and an approval of every subscription request waiting for this user. Devices approve
 *   requests while connected too, so once both sides have been online the subscription is mutual.
 *   Provisioning sends its presence with priority -1, so it does not take offline messages.
 * - createGroup: the creator joins room `<creator>.<name>@<muc>` (lower case), which creates it,
 *   submits the room configuration (persistent: an instant room for servers that lock new rooms)
 *   and leaves. The id returned, and expected by sendToGroup and device(), is the room's localpart
 *   (a bare room JID is accepted too). Rooms are open: members are not made affiliates.
 * - connect: SASL (PLAIN by default, see `mechanism`), resumption of the previous stream-management
 *   session if there is one (after drop() or a loss: the server kept the session, its rooms and
 *   the stanzas it could not deliver), else resource binding, stream management, initial presence
 *   and a join of every group's room with no history. Resolves once all rooms confirmed the join.
 * - send: `<message type='chat' to='<to>@<domain>' id='<idPrefix><ref base 36>'>`; groups: type
 *   groupchat to the room. With stream management the outcome is the server's ack (`<a h>`), else
 *   the write. Unacked messages are resent (same id) after a reconnect, by the resumption or by us.
 * - receive: chat → message({from: localpart}); groupchat → message({from: the user in the nick,
 *   group: room localpart}), without the echo of this device's own messages, room history or
 *   subjects. Nicks are `<user>/<device>` (a localpart cannot contain '/'), so each device is its
 *   own occupant and the echo is recognised by the nick. Re-deliveries (resumption, a resend after
 *   a loss) are dropped by (sender, id) in a small ring per device.
 * - capabilities: no acceptance (an ack says the server read the stanza, not that it will deliver
 *   it: a bounce may follow), no own-device copies (carbons are not enabled), offline delivery for
 *   1:1 messages (mod_offline: only when none of the user's devices is online) but not for rooms.
 *
 * Cost: an @xmpp/client instance per *connected* device (made at its first connect, kept while
 * a resumption may follow, released by disconnect()). Nothing runs per idle device: the periodic
 * `<r/>` of xmpp.js is off, and one driver-wide sweep does keepalive. xmpp.js still makes a few
 * promises and objects per stanza (its middleware): measured at about 17 KiB of heap and 45–50 KiB
 * of RSS per connected device.
 *
 * xmpp.js's SCRAM-SHA-1 runs PBKDF2 as thousands of async WebCrypto calls: ~0.25 s of CPU per
 * login at Prosody's 10,000 iterations, which would make the generator the bottleneck of a
 * reconnect storm. PLAIN (over loopback or a trusted network; the server still hashes) is the
 * default; `mechanism: 'SCRAM-SHA-1'` is there for servers that refuse PLAIN without TLS and for
 * ejabberd with SCRAM storage (PLAIN would make it run PBKDF2 in every session process): it runs
 * with node:crypto's PBKDF2 and the salted password kept per account (scram.ts).
 */

// ---------- the part of xmpp.js used here ----------

interface XElement {
  name: string;
  attrs: Record<string, string | undefined>;
  getChild(name: string, xmlns?: string): XElement | undefined;
  getChildText(name: string, xmlns?: string): string | null;
  getChildElements(): XElement[];
  is(name: string, xmlns?: string): boolean;
  remove(name: string, xmlns?: string): XElement;
}
type XChild = XElement | string | undefined;
type Xml = (name: string, attrs?: Record<string, string | undefined> | null, ...children: XChild[]) => XElement;

interface Emitter {
  on(event: string, listener: (...args: never[]) => void): unknown;
  prependListener(event: string, listener: (...args: never[]) => void): unknown;
  removeListener(event: string, listener: (...args: never[]) => void): unknown;
  emit(event: string, ...args: unknown[]): boolean;
}

interface StreamManagement extends Emitter {
  enabled: boolean;
  id: string;
  /** ms between unsolicited `<r/>`; 0 = never (we keep alive with one sweep for all devices). */
  requestAckInterval: number;
  requestAckDebounce: number;
  /** ms without anything from the server after an `<r/>` before xmpp.js gives up the connection. */
  timeout: number;
}

type Authenticate = (credentials: { username: string; password: string }, mechanism: string) => Promise<void>;

interface XmppClient extends Emitter {
  status: string;
  socket: Socket | null;
  /** ms for stream open/close steps. */
  timeout: number;
  reconnect: { stop(): void };
  streamManagement: StreamManagement;
  iqCaller: { request(el: XElement, timeoutMs?: number): Promise<XElement> };
  connect(service: string): Promise<void>;
  open(o: { domain: string }): Promise<unknown>;
  start(): Promise<unknown>;
  stop(): Promise<unknown>;
  send(el: XElement): Promise<void>;
  /** Socket data → parser → element events; wrapped so that nothing thrown there reaches the socket's callback. */
  _onData(data: Buffer): void;
  /** Wrapped to keep our own handle on every socket (see `raw`). */
  _attachSocket(socket: Socket): void;
}

interface ClientOptions {
  service: string;
  domain: string;
  resource: string;
  credentials: (authenticate: Authenticate, mechanisms: string[]) => Promise<void>;
}

const xmppClient = xmppClientUntyped as (o: ClientOptions) => XmppClient;

/**
 * The last socket of each client. xmpp.js forgets a socket (and removes its 'error' listener)
 * when a close times out, while the socket may still be open: we destroy it through this handle,
 * and every socket keeps an 'error' listener of ours, so a late ECONNRESET never goes unhandled.
 */
const RAW = new WeakMap<XmppClient, Socket>();
const destroy = (x: XmppClient | undefined): void => void (x && RAW.get(x)?.destroy());
const xml = xmlUntyped as Xml;

// ---------- constants ----------

const NS_STREAM = 'http://etherx.jabber.org/streams';
const NS_SM = 'urn:xmpp:sm:3';
const NS_MUC = 'http://jabber.org/protocol/muc';
const NS_MUC_OWNER = 'http://jabber.org/protocol/muc#owner';
const NS_REGISTER = 'jabber:iq:register';
const NS_PING = 'urn:xmpp:ping';
const NS_DELAY = 'urn:xmpp:delay';
const NS_DATA = 'jabber:x:data';

/** A clean close not answered by the server within this is cut. */
const GOODBYE_MS = 2000;
const ID_PREFIX = /^[A-Za-z0-9_-]{1,40}$/;

const DOWN = 0;
const CONNECTING = 1;
const UP = 2;

export interface XmppDriverOptions {
  /** Where the c2s listener is (the server's own host name is `domain`). */
  host: string;
  port: number;
  /**
   * c2s ports of the nodes of a cluster on `host`: user i (DeviceRef.index) connects to
   * ports[i mod n], as users spread over a cluster's nodes (default: [port]).
   */
  ports?: number[];
  /** The XMPP domain: JIDs are <user>@<domain>. */
  domain: string;
  /** The multi-user chat service that holds the groups' rooms (e.g. conference.<domain>). */
  muc: string;
  /** Create accounts by in-band registration while provisioning; else they must exist. */
  register: boolean;
  /** One connect, from TCP to the last room joined, ms (default 10,000). */
  connectTimeoutMs?: number;
  /** A connection silent for this long is pinged, one silent for twice as long is dropped (default 60,000; 0 = off). */
  keepaliveMs?: number;
  /** Message ids are `idPrefix + ref.toString(36)`: unique per generator and run (default: 8 random characters). */
  idPrefix?: string;
  /** SASL mechanism when the server offers it (default PLAIN; see the note at the top of the file). */
  mechanism?: 'PLAIN' | 'SCRAM-SHA-1';
  /** Recent (sender, id) pairs remembered per device to drop re-deliveries (default 64). */
  dedupWindow?: number;
}

/** Totals since the driver was made (`counters()`). */
export interface XmppDriverCounters {
  /** Sessions opened by a full login (bind, presence, joins) and by a stream-management resumption. */
  fullLogins: number;
  resumed: number;
  /** Connect attempts that failed (timeout, refused, not-authorized, a room refusing the join…). */
  connectFailures: number;
  /** Accounts that in-band registration found existing (provisioning is idempotent). */
  accountsExisting: number;
  accountsRegistered: number;
  /** Subscription requests this driver approved (while provisioning and in the run). */
  subscriptionsApproved: number;
  /** Messages sent again (same id) on a new session because the last one ended before the server's ack. */
  resent: number;
  /** Messages received again (resumption, resends) and not reported twice. */
  redeliveriesDropped: number;
  /** Groupchat stanzas ignored: room history (delayed) and subjects. */
  historyDropped: number;
  /** `type='error'` stanzas from the server (bounces of messages already acked). */
  stanzaErrors: number;
  outboxFull: number;
  lost: number;
  keepalivePings: number;
  keepaliveTimeouts: number;
  /** Connections closed because a stanza could not be handled (never the process). */
  clientErrors: number;
}
type CounterName = keyof XmppDriverCounters;

const noop = (): void => undefined;

/** The code a DriverError carries for anything xmpp.js or the socket threw. */
function codeOf(e: unknown): string {
  if (e instanceof DriverError) return e.driverCode;
  const o = (typeof e === 'object' && e !== null ? e : {}) as { condition?: unknown; code?: unknown; name?: unknown };
  if (typeof o.condition === 'string' && o.condition !== '') return o.condition; // SASL, stream and stanza errors
  if (typeof o.code === 'string' && o.code !== '') return o.code; // ECONNREFUSED, ECONNRESET…
  if (o.name === 'TimeoutError') return 'TIMEOUT';
  return 'ERROR';
}

const messageOf = (e: unknown): string => (e instanceof Error ? e.message : String(e));

/** The account's password: XMPP has one per account, so it comes from the user's secret, which every process derives (identity.ts). */
export function xmppPassword(d: DeviceRef): string {
  return Buffer.from(d.userSecret).toString('base64url');
}

/** The room localpart of a group: `<creator>.<name>`, lower case, only characters a localpart may hold. */
export function roomId(creator: string, name: string): string {
  return `${creator}.${name}`.toLowerCase().replace(/[^a-z0-9._-]/g, '_');
}

/** A device's nick in every room: unique per device, and its user is what precedes the '/'. */
const nickOf = (d: { user: string; device: string }): string => `${d.user}/${d.device}`;


// ---------- devices ----------

/** A send without an outcome yet. */
interface Out {
  readonly ref: number;
  readonly id: string;
  /** Bare JID: the user's or the room's. */
  readonly to: string;
  readonly type: 'chat' | 'groupchat';
  readonly body: string;
  /** Written on the current (or last) connection and not yet acked; false = waits for the next write. */
  sent: boolean;
  /** Written at least once (a later write is a resend). */
  written: boolean;
}

interface Attempt {
  resolve(): void;
  reject(e: Error): void;
  timer: NodeJS.Timeout;
  /** Rooms whose join is not yet confirmed. */
  joining: Set<string> | undefined;
  /** Bound, waiting for stream management's <enabled/> or <failed/> before the session starts. */
  awaitingSm: boolean;
}

function onConnectTimeout(dev: XmppDevice): void {
  dev.attemptFailed(dev.client, 'TIMEOUT', `no session within ${dev.drv.connectTimeoutMs} ms`);
}

class XmppDevice implements DriverDevice {
  readonly name: string;
  readonly nick: string;
  /** Bare room JIDs of the user's groups. */
  private readonly rooms: string[];
  /** The xmpp.js client of the current or last connection: kept after a loss for the resumption. */
  client: XmppClient | undefined;
  /** A client being closed by disconnect(): its last acks still count. */
  private closing: XmppClient | undefined;
  private state = DOWN;
  private attempt: Attempt | undefined;
  private connecting: Promise<void> | undefined;
  /** connect() came while the last socket was still closing: dial once it has. */
  private dialOnClose = false;
  /** Why the connection ended: the first error seen on it. */
  private endCode: string | undefined;
  /** The last stream features offered stream management. */
  private smOffered = false;
  private out: Map<string, Out> | undefined;
  private pings: Set<{ reject(e: Error): void }> | undefined;
  /** Ring of (sender, id) hash pairs of the messages reported last. */
  /** Re-deliveries to drop (allocated on the first message). */
  private recent: RecentIds | undefined;
  /** Keepalive sweeps since the server last sent anything. */
  quiet = 0;

  constructor(
    readonly drv: XmppDriver,
    private readonly ref: DeviceRef,
    private readonly ev: DeviceEvents,
    groups: readonly string[],
  ) {
    this.name = `${ref.user}/${ref.device}`;
    this.nick = nickOf(ref);
    this.rooms = [...new Set(groups.map((g) => drv.roomJid(g)))];
  }

  get connected(): boolean {
    return this.state === UP;
  }

  // ---- sessions ----

  connect(): Promise<void> {
    if (this.state === UP) return Promise.resolve();
    if (this.connecting) return this.connecting;
    if (this.drv.isClosed) return Promise.reject(new DriverError('CLOSED', 'the driver is closed'));
    const p = new Promise<void>((resolve, reject) => {
      this.attempt = { resolve, reject, timer: setTimeout(onConnectTimeout, this.drv.connectTimeoutMs, this), joining: undefined, awaitingSm: false };
    });
    this.connecting = p.finally(() => (this.connecting = undefined));
    this.state = CONNECTING;
    this.endCode = undefined;
    const x = (this.client ??= this.drv.newClient(this.ref, false, this));
    // The previous socket (a drop() a moment ago) must be gone first: xmpp.js tracks one socket.
    if (x.socket) this.dialOnClose = true;
    else this.dial(x);
    return this.connecting;
  }

  private dial(x: XmppClient): void {
    // The same client again after a loss: its stream management state makes it resume.
    x.connect(this.drv.serviceOf(this.ref))
      .then(() => {
        if (x !== this.client || this.state !== CONNECTING) return;
        x.socket?.setNoDelay(true);
        return x.open({ domain: this.drv.domain });
      })
      .catch((e: unknown) => this.attemptFailed(x, codeOf(e), messageOf(e)));
  }

  /** The attempt failed: this connection goes, and with it the client (nothing to resume from it). */
  attemptFailed(x: XmppClient | undefined, code: string, why: string): void {
    const a = this.attempt;
    if (!a || x !== this.client || this.state !== CONNECTING) return;
    this.attempt = undefined;
    clearTimeout(a.timer);
    this.state = DOWN;
    this.dialOnClose = false;
    this.drv.count('connectFailures');
    this.discard();
    a.reject(new DriverError(code, `${this.name}: ${why}`));
  }

  /** Forgets the client (its socket is destroyed); what it had written without an ack goes again on the next. */
  private discard(): void {
    const x = this.client;
    this.client = undefined;
    destroy(x);
    if (this.out) for (const o of this.out.values()) o.sent = false;
  }

  // xmpp.js events (bound per client in XmppDriver.newClient); a stale client's are ignored.

  onError(x: XmppClient, e: unknown): void {
    if (x !== this.client) return;
    const code = codeOf(e);
    this.endCode ??= code;
    if (this.state === CONNECTING) this.attemptFailed(x, code, messageOf(e));
  }

  onDisconnect(x: XmppClient): void {
    if (x !== this.client) return;
    const code = this.endCode ?? 'CLOSED';
    this.failPings(code);
    if (this.dialOnClose) {
      this.dialOnClose = false;
      if (this.state === CONNECTING) this.dial(x);
      return;
    }
    if (this.state === CONNECTING) return this.attemptFailed(x, code, `connection closed (${code}) before the session was open`);
    if (this.state !== UP) return; // dropped or disconnected on purpose
    this.state = DOWN;
    this.drv.live.delete(this);
    this.drv.count('lost');
    this.ev.lost(code);
  }

  /** A fresh session is bound (no resumption). */
  onOnline(x: XmppClient): void {
    const a = this.attempt;
    if (x !== this.client || !a || this.state !== CONNECTING) return;
    this.drv.count('fullLogins');
    // xmpp.js asks for stream management right after binding: start once it answered, so that
    // everything the session sends is counted (and acked) by it.
    if (this.smOffered) a.awaitingSm = true;
    else this.startSession(x);
  }

  onResumed(x: XmppClient): void {
    if (x !== this.client || this.state !== CONNECTING) return;
    // The server kept the session (presence, rooms); xmpp.js resent what it had not acked.
    this.drv.count('resumed');
    this.flush(x);
    this.ready();
  }

  /** Every element from the server (after xmpp.js's own handling of it). */
  onElement(x: XmppClient, el: XElement): void {
    if (x !== this.client) return;
    this.quiet = 0;
    try {
      switch (el.name) {
        case 'message':
          return this.onMessage(el);
        case 'presence':
          return this.onPresence(x, el);
        case 'iq':
          return;
        default:
          return this.onNonza(x, el);
      }
    } catch {
      // Our own handling must never take the generator down: count it, keep the connection.
      this.drv.count('clientErrors');
    }
  }

  /** Something thrown inside xmpp.js while it read from the socket: this connection ends. */
  onBroken(x: XmppClient): void {
    this.drv.count('clientErrors');
    if (x !== this.client) return destroy(x);
    this.endCode = 'CLIENT_ERROR';
    if (this.state === CONNECTING) return this.attemptFailed(x, 'CLIENT_ERROR', 'a stanza from the server could not be handled');
    destroy(x);
  }

  onAck(x: XmppClient, stanza: XElement): void {
    if (x !== this.client && x !== this.closing) return;
    const o = this.out?.get(stanza.attrs.id ?? '');
    if (o) this.settle(o);
  }

  /** xmpp.js gave up a stanza it had not got an ack for (resumption refused, or a clean close). */
  onFail(x: XmppClient, stanza: XElement): void {
    if (x !== this.client && x !== this.closing) return;
    const o = this.out?.get(stanza.attrs.id ?? '');
    if (o) o.sent = false;
  }

  private onNonza(x: XmppClient, el: XElement): void {
    if (el.is('features', NS_STREAM)) {
      this.smOffered = el.getChild('sm', NS_SM) !== undefined;
      return;
    }
    const a = this.attempt;
    if (a?.awaitingSm && (el.is('enabled', NS_SM) || el.is('failed', NS_SM))) {
      a.awaitingSm = false;
      // xmpp.js marks stream management enabled a few microtasks after this element.
      setImmediate(() => {
        if (this.attempt === a) this.startSession(x);
      });
    }
  }

  /** Initial presence, the rooms, and whatever waits in the outbox. */
  private startSession(x: XmppClient): void {
    const a = this.attempt;
    if (x !== this.client || !a || this.state !== CONNECTING) return;
    x.send(xml('presence')).catch(noop);
    if (this.rooms.length > 0) {
      a.joining = new Set(this.rooms);
      for (const room of this.rooms) {
        x.send(xml('presence', { to: `${room}/${this.nick}` }, xml('x', { xmlns: NS_MUC }, xml('history', { maxstanzas: '0' })))).catch(noop);
      }
    }
    // After the joins: the server handles a stream in order, so group messages find us in the room.
    this.flush(x);
    if (this.rooms.length === 0) this.ready();
  }

  private ready(): void {
    const a = this.attempt;
    if (!a) return;
    this.attempt = undefined;
    clearTimeout(a.timer);
    this.state = UP;
    this.quiet = 0;
    this.drv.live.add(this);
    a.resolve();
  }

  disconnect(): Promise<void> {
    if (this.state === CONNECTING) {
      this.attemptFailed(this.client, 'ABORTED', 'connect abandoned by disconnect()');
      return Promise.resolve();
    }
    const x = this.client;
    this.dialOnClose = false;
    if (!x) return Promise.resolve();
    this.client = undefined;
    const wasUp = this.state === UP;
    this.state = DOWN;
    this.drv.live.delete(this);
    this.failPings('DISCONNECTED');
    if (!wasUp || !x.socket) {
      destroy(x); // a dropped connection still closing, or nothing
      return Promise.resolve();
    }
    // A clean end: no resumption afterwards. xmpp.js acks what it received, closes the stream,
    // waits for the server's close; the server's last <a/> still settles our sends.
    this.closing = x;
    x.timeout = GOODBYE_MS;
    return x
      .stop()
      .catch(noop)
      .then(() => {
        destroy(x);
        if (this.closing === x) this.closing = undefined;
        // Anything the server did not ack goes again on the next connection (unless one began meanwhile).
        if (this.out && !this.client) for (const o of this.out.values()) o.sent = false;
      });
  }

  drop(): void {
    if (this.state === CONNECTING) return this.attemptFailed(this.client, 'ABORTED', 'connect abandoned by drop()');
    if (this.state !== UP) return;
    this.state = DOWN;
    this.drv.live.delete(this);
    this.failPings('DROPPED');
    // The client stays: its stream-management state resumes the session on the next connect.
    destroy(this.client);
  }

  /** Ends the connection now with `code` (its close reports it as a loss). */
  fail(code: string): void {
    this.endCode = code;
    destroy(this.client);
  }

  /** The keepalive sweep: something the server must answer. */
  keepalive(): void {
    const x = this.client;
    if (!x || this.state !== UP) return;
    const probe = x.streamManagement.enabled ? xml('r', { xmlns: NS_SM }) : xml('iq', { type: 'get', id: 'keepalive', to: this.drv.domain }, xml('ping', { xmlns: NS_PING }));
    x.send(probe).catch(noop);
  }

  // ---- sending ----

  send(ref: number, to: string, body: string): void {
    this.submit(ref, `${to}@${this.drv.domain}`, 'chat', body);
  }

  sendToGroup(ref: number, group: string, body: string): void {
    this.submit(ref, this.drv.roomJid(group), 'groupchat', body);
  }

  private submit(ref: number, to: string, type: 'chat' | 'groupchat', body: string): void {
    const out = (this.out ??= new Map());
    const id = admitToOutbox(out, this.drv.idPrefix, ref, this.ev);
    if (id === undefined) {
      if (out.size >= OUTBOX_MAX) this.drv.count('outboxFull');
      return;
    }
    const o: Out = { ref, id, to, type, body, sent: false, written: false };
    out.set(id, o);
    if (this.state === UP && this.client) this.write(this.client, o);
  }

  /** Every send not written on this connection yet, in order. */
  private flush(x: XmppClient): void {
    if (!this.out) return;
    for (const o of this.out.values()) {
      if (o.sent) continue;
      if (o.written) this.drv.count('resent');
      this.write(x, o);
    }
  }

  private write(x: XmppClient, o: Out): void {
    o.sent = true;
    o.written = true;
    const p = x.send(xml('message', { type: o.type, to: o.to, id: o.id }, xml('body', null, o.body)));
    // With stream management the server's ack settles it (onAck); else the write does.
    if (x.streamManagement.enabled) p.catch(() => this.unsent(o));
    else p.then(() => this.settle(o), () => this.unsent(o));
  }

  private unsent(o: Out): void {
    if (this.out?.get(o.id) === o) o.sent = false;
  }

  private settle(o: Out): void {
    if (this.out?.get(o.id) !== o) return;
    this.out.delete(o.id);
    this.ev.outcome(o.ref, true);
  }

  setPresence(state: 'online' | 'away'): void {
    const x = this.client;
    if (this.state !== UP || !x) return;
    x.send(state === 'away' ? xml('presence', null, xml('show', null, 'away')) : xml('presence')).catch(noop);
  }

  ping(): Promise<void> {
    const x = this.client;
    if (this.state !== UP || !x) return Promise.reject(new DriverError('NOT_CONNECTED', `${this.name}: not connected`));
    return new Promise<void>((resolve, reject) => {
      const w = { reject };
      (this.pings ??= new Set()).add(w);
      x.iqCaller.request(xml('iq', { type: 'get', to: this.drv.domain }, xml('ping', { xmlns: NS_PING })), this.drv.connectTimeoutMs).then(
        () => {
          this.pings?.delete(w);
          resolve();
        },
        (e: unknown) => {
          this.pings?.delete(w);
          reject(new DriverError(codeOf(e), `${this.name}: ping: ${messageOf(e)}`));
        },
      );
    });
  }

  private failPings(code: string): void {
    const p = this.pings;
    if (!p) return;
    this.pings = undefined;
    for (const w of p) w.reject(new DriverError('NOT_CONNECTED', `${this.name}: connection ended (${code}) before the pong`));
  }

  // ---- receiving ----

  private onMessage(el: XElement): void {
    const from = el.attrs.from;
    if (from === undefined) return;
    const type = el.attrs.type;
    if (type === 'error') return this.drv.count('stanzaErrors');
    const body = el.getChildText('body');
    if (body === null) return; // chat states, receipts, room notices
    const at = from.indexOf('@');
    if (at <= 0) return; // from the server itself
    const slash = from.indexOf('/', at);
    const domain = slash < 0 ? from.slice(at + 1) : from.slice(at + 1, slash);
    if (type === 'groupchat') {
      if (domain !== this.drv.muc || slash < 0) return; // the room itself
      const nick = from.slice(slash + 1);
      if (nick === this.nick) return; // our own message, reflected
      if (el.getChild('subject') !== undefined || el.getChild('delay', NS_DELAY) !== undefined) return this.drv.count('historyDropped');
      if (this.seenBefore(from, el.attrs.id)) return this.drv.count('redeliveriesDropped');
      const u = nick.indexOf('/');
      this.ev.message({ from: u < 0 ? nick : nick.slice(0, u), group: from.slice(0, at), body });
      return;
    }
    if (domain !== this.drv.domain) return; // e.g. a private message through a room
    const user = from.slice(0, at);
    if (this.seenBefore(user, el.attrs.id)) return this.drv.count('redeliveriesDropped');
    this.ev.message({ from: user, body });
  }

  private onPresence(x: XmppClient, el: XElement): void {
    const from = el.attrs.from;
    if (from === undefined) return;
    const type = el.attrs.type;
    const at = from.indexOf('@');
    const slash = from.indexOf('/', at + 1);
    const bare = slash < 0 ? from : from.slice(0, slash);
    const domain = bare.slice(at + 1);
    if (domain === this.drv.muc) return this.onRoomPresence(x, el, bare, slash < 0 ? '' : from.slice(slash + 1), type);
    if (at <= 0 || domain !== this.drv.domain) return;
    if (type === 'subscribe') {
      this.drv.count('subscriptionsApproved');
      x.send(xml('presence', { to: bare, type: 'subscribed' })).catch(noop);
      return;
    }
    const user = bare.slice(0, at);
    if (user === this.ref.user) return; // our other devices
    if (type === undefined || type === 'unavailable') this.ev.presence(user);
  }

  private onRoomPresence(x: XmppClient, el: XElement, room: string, nick: string, type: string | undefined): void {
    const a = this.attempt;
    if (!a?.joining?.has(room)) return;
    if (type === 'error') {
      const cond = el.getChild('error')?.getChildElements()[0]?.name ?? 'error';
      return this.attemptFailed(x, `muc-${cond}`, `room ${room} refused the join (${cond})`);
    }
    if (nick !== this.nick || type === 'unavailable') return;
    a.joining.delete(room);
    if (a.joining.size === 0) this.ready();
  }

  /** Whether (from, id) was reported already; records it if not (never, without an id or a window). */
  private seenBefore(from: string, id: string | undefined): boolean {
    const w = this.drv.dedupWindow;
    if (id === undefined || id === '' || w === 0) return false;
    return (this.recent ??= new RecentIds(w)).seenBefore(from, id);
  }
}

// ---------- the driver ----------

export class XmppDriver implements Driver {
  readonly name = 'xmpp';
  readonly capabilities: DriverCapabilities = { acceptance: false, ownDeviceCopies: false, offlineDelivery: { direct: true, groups: false } };
  readonly service: string;
  private readonly services: string[];
  readonly domain: string;
  readonly muc: string;
  readonly idPrefix: string;
  readonly connectTimeoutMs: number;
  readonly dedupWindow: number;
  private readonly mechanism: string;
  /** Connected devices: the keepalive sweep's list. */
  readonly live = new Set<XmppDevice>();
  private readonly devices = new Set<XmppDevice>();
  /** Provisioning and group-creation sessions in progress. */
  private readonly temps = new Set<XmppClient>();
  private readonly c: XmppDriverCounters = {
    fullLogins: 0, resumed: 0, connectFailures: 0, accountsExisting: 0, accountsRegistered: 0, subscriptionsApproved: 0, resent: 0,
    redeliveriesDropped: 0, historyDropped: 0, stanzaErrors: 0, outboxFull: 0, lost: 0, keepalivePings: 0, keepaliveTimeouts: 0, clientErrors: 0,
  };
  private readonly sweeper: NodeJS.Timeout | undefined;
  private closed = false;

  constructor(private readonly o: XmppDriverOptions) {
    if (!o.domain || !o.muc) throw new RangeError('XmppDriver needs a domain and a muc service');
    const host = o.host.includes(':') && !o.host.startsWith('[') ? `[${o.host}]` : o.host;
    this.service = `xmpp://${host}:${o.port}`;
    this.services = (o.ports && o.ports.length > 0 ? o.ports : [o.port]).map((p) => `xmpp://${host}:${p}`);
    this.domain = o.domain;
    this.muc = o.muc;
    this.idPrefix = o.idPrefix ?? randomBytes(6).toString('base64url');
    if (!ID_PREFIX.test(this.idPrefix)) throw new RangeError(`idPrefix must match ${String(ID_PREFIX)}, got ${JSON.stringify(this.idPrefix)}`);
    this.connectTimeoutMs = o.connectTimeoutMs ?? 10_000;
    this.dedupWindow = Math.max(0, Math.floor(o.dedupWindow ?? 64));
    this.mechanism = o.mechanism ?? 'PLAIN';
    if (this.mechanism === 'SCRAM-SHA-1') installFastScram();
    const keepalive = o.keepaliveMs ?? 60_000;
    if (keepalive > 0) {
      this.sweeper = setInterval(() => this.sweep(), keepalive / 2);
      this.sweeper.unref();
    }
  }

  get isClosed(): boolean {
    return this.closed;
  }

  count(k: CounterName): void {
    this.c[k]++;
  }

  counters(): Record<CounterName, number> {
    return { ...this.c };
  }

  /** The bare JID of a group id (a room localpart, or already a bare room JID). */
  roomJid(group: string): string {
    return group.includes('@') ? group : `${group}@${this.muc}`;
  }

  /** The service (node) of `d`'s user: by its index when the driver knows several nodes. */
  serviceOf(d: DeviceRef): string {
    return d.index === undefined ? this.service : this.services[d.index % this.services.length]!;
  }

  /** An xmpp.js client for `d` (no reconnect of its own, no periodic <r/>), wired to `dev` if it is a device's. */
  newClient(d: DeviceRef, register: boolean, dev: XmppDevice | undefined): XmppClient {
    const password = xmppPassword(d);
    const x = xmppClient({
      service: this.serviceOf(d),
      domain: this.domain,
      resource: d.device,
      credentials: async (authenticate, mechanisms) => {
        if (register) await this.register(x, d.user, password);
        const mech = mechanisms.includes(this.mechanism) ? this.mechanism : mechanisms[0];
        if (mech === undefined) throw new DriverError('no-mechanism', `${d.user}: the server offers no SASL mechanism xmpp.js supports`);
        await authenticate({ username: d.user, password }, mech);
      },
    });
    x.reconnect.stop(); // the generator decides when to reconnect
    x.timeout = this.connectTimeoutMs;
    const sm = x.streamManagement;
    sm.requestAckInterval = 0;
    const attach = x._attachSocket.bind(x);
    x._attachSocket = (socket: Socket): void => {
      socket.on('error', noop);
      RAW.set(x, socket);
      attach(socket);
    };
    const read = x._onData.bind(x);
    x._onData = (data: Buffer): void => {
      try {
        read(data);
      } catch {
        if (dev) dev.onBroken(x);
        else {
          this.count('clientErrors');
          destroy(x);
        }
      }
    };
    if (dev) {
      x.on('error', (e: unknown) => dev.onError(x, e));
      x.on('disconnect', () => dev.onDisconnect(x));
      x.on('online', () => dev.onOnline(x));
      x.on('element', (el: XElement) => dev.onElement(x, el));
      sm.on('resumed', () => dev.onResumed(x));
      sm.on('ack', (s: XElement) => dev.onAck(x, s));
      sm.on('fail', (s: XElement) => dev.onFail(x, s));
    } else {
      x.on('error', noop); // a temporary session's errors reach start() or its request
      // No stream management for set-up sessions: they need no acks, and xmpp.js resets its
      // inbound count when <enabled/> is handled, a few microtasks late: stanzas that arrived in
      // the same read are then acked twice and Prosody ends the stream ("acknowledged less
      // stanzas than already acknowledged"). Devices start nothing before that point.
      x.prependListener('element', (el: XElement) => {
        if (el.is('features', NS_STREAM)) el.remove('sm', NS_SM);
      });
    }
    return x;
  }

  /** XEP-0077 before SASL: an existing account (conflict) is fine. */
  private async register(x: XmppClient, user: string, password: string): Promise<void> {
    const q = xml('query', { xmlns: NS_REGISTER }, xml('username', null, user), xml('password', null, password));
    try {
      await x.iqCaller.request(xml('iq', { type: 'set' }, q), this.connectTimeoutMs);
      this.count('accountsRegistered');
    } catch (e) {
      if (codeOf(e) === 'conflict') return void this.count('accountsExisting');
      throw new DriverError(codeOf(e), `${user}: in-band registration refused: ${messageOf(e)}`, { cause: e });
    }
  }

  /** A set-up session as `d` (its own resource), for `work`; closed afterwards whatever happens. */
  private async session<T>(d: DeviceRef, register: boolean, work: (x: XmppClient) => Promise<T>): Promise<T> {
    if (this.closed) throw new DriverError('CLOSED', 'the driver is closed');
    const x = this.newClient(d, register, undefined);
    this.temps.add(x);
    let timer: NodeJS.Timeout | undefined;
    try {
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new DriverError('TIMEOUT', `${d.user}/${d.device}: no session within ${this.connectTimeoutMs} ms`)), this.connectTimeoutMs);
      });
      await Promise.race([
        x.start().then(
          () => x.socket?.setNoDelay(true),
          (e: unknown) => {
            throw e instanceof DriverError ? e : new DriverError(codeOf(e), `${d.user}/${d.device}: ${messageOf(e)}`, { cause: e });
          },
        ),
        timeout,
      ]);
      clearTimeout(timer);
      return await work(x);
    } finally {
      clearTimeout(timer);
      this.temps.delete(x);
      x.timeout = GOODBYE_MS;
      if (x.status !== 'offline') await x.stop().catch(noop);
      destroy(x);
    }
  }

  /** A round trip: everything written before it has been handled by the server. */
  private async roundTrip(x: XmppClient, what: string): Promise<void> {
    try {
      await x.iqCaller.request(xml('iq', { type: 'get', to: this.domain }, xml('ping', { xmlns: NS_PING })), this.connectTimeoutMs);
    } catch (e) {
      throw new DriverError(codeOf(e), `${what}: ${messageOf(e)}`, { cause: e });
    }
  }

  async provision(d: DeviceRef, contacts: readonly string[]): Promise<void> {
    await this.session(d, this.o.register, async (x) => {
      const list = [...new Set(contacts)].filter((u) => u !== d.user);
      if (list.length === 0) return;
      // Subscription requests waiting for this user arrive after its initial presence: approve them.
      x.on('stanza', (el: XElement) => {
        if (el.name !== 'presence' || el.attrs.type !== 'subscribe' || el.attrs.from === undefined) return;
        this.count('subscriptionsApproved');
        x.send(xml('presence', { to: el.attrs.from.split('/')[0], type: 'subscribed' })).catch(noop);
      });
      // Priority -1: available for presence, but no offline messages and no 1:1 messages for it.
      await x.send(xml('presence', null, xml('priority', null, '-1')));
      for (const u of list) await x.send(xml('presence', { to: `${u}@${this.domain}`, type: 'subscribe' }));
      // The server answered the ping after the requests it sent us; our approvals are on the wire
      // before the stream's close, which the server handles after them.
      await this.roundTrip(x, `${d.user}: provisioning contacts`);
    });
  }

  async createGroup(creator: DeviceRef, name: string, _members: readonly string[]): Promise<string> {
    const room = roomId(creator.user, name);
    const jid = `${room}@${this.muc}`;
    const nick = nickOf(creator);
    await this.session(creator, false, async (x) => {
      const joined = new Promise<boolean>((resolve, reject) => {
        x.on('stanza', (el: XElement) => {
          if (el.name !== 'presence' || !el.attrs.from?.startsWith(`${jid}/`)) return;
          if (el.attrs.type === 'error') {
            const cond = el.getChild('error')?.getChildElements()[0]?.name ?? 'error';
            reject(new DriverError(`muc-${cond}`, `${creator.user}: cannot create room ${jid} (${cond})`));
          } else if (el.attrs.from === `${jid}/${nick}`) {
            const codes = el.getChild('x', `${NS_MUC}#user`);
            // 201: the room was created by this join.
            resolve(codes !== undefined && codes.getChildElements().some((c) => c.name === 'status' && c.attrs.code === '201'));
          }
        });
      });
      await x.send(xml('presence', { to: `${jid}/${nick}` }, xml('x', { xmlns: NS_MUC }, xml('history', { maxstanzas: '0' }))));
      const created = await joined;
      // Persistent, and unlocked where the server locks new rooms until configured (an instant room).
      const form = xml(
        'x',
        { xmlns: NS_DATA, type: 'submit' },
        xml('field', { var: 'FORM_TYPE' }, xml('value', null, `${NS_MUC}#roomconfig`)),
        xml('field', { var: 'muc#roomconfig_persistentroom' }, xml('value', null, '1')),
      );
      try {
        await x.iqCaller.request(xml('iq', { type: 'set', to: jid }, xml('query', { xmlns: NS_MUC_OWNER }, form)), this.connectTimeoutMs);
      } catch (e) {
        // An existing room someone else configured is usable as it is.
        if (created) throw new DriverError(codeOf(e), `${creator.user}: cannot configure room ${jid}: ${messageOf(e)}`, { cause: e });
      }
      await x.send(xml('presence', { to: `${jid}/${nick}`, type: 'unavailable' }));
      await this.roundTrip(x, `${creator.user}: creating room ${jid}`);
    });
    return room;
  }

  device(d: DeviceRef, events: DeviceEvents, groups: readonly string[]): DriverDevice {
    if (this.closed) throw new DriverError('CLOSED', 'the driver is closed');
    const dev = new XmppDevice(this, d, events, groups);
    this.devices.add(dev);
    return dev;
  }

  /**
   * Every keepaliveMs / 2: a connection that has not heard from the server for a keepalive period
   * is probed (`<r/>`, or a ping without stream management); one silent for two is cut.
   */
  private sweep(): void {
    for (const dev of this.live) {
      dev.quiet++;
      if (dev.quiet >= 4) {
        this.count('keepaliveTimeouts');
        dev.fail('KEEPALIVE_TIMEOUT');
      } else if (dev.quiet >= 2) {
        this.count('keepalivePings');
        dev.keepalive();
      }
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.sweeper);
    const all = [...this.devices];
    this.devices.clear();
    for (const x of this.temps) destroy(x);
    await Promise.allSettled(all.map((d) => d.disconnect()));
  }
}
