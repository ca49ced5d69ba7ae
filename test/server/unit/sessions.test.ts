/*
 * The cell's side of a session's life (cell/sessions.ts) on fakes: registration
 * order, a device connecting again on the same cell, a revocation heard while
 * the session was being set up, and cleanup at close. identity.test.ts and
 * cluster.test.ts prove the same through real nodes; these pin the bookkeeping
 * (hub, gravitation's slots, drains) that no client can see directly.
 */
import t, { type Test } from 'tap';
import { ErrorCode } from '@gravitas/protocol';
import { CellSessions, Revocations, SessionHub, type DeviceLocation, type SessionWiring } from '@gravitas/server/internal';
import { fakeCell, FakeSession } from '../../fixtures/fake-cell.js';

/** A session as the cell sees one: the fake, plus the transport and the close that tells the host. */
class Device extends FakeSession {
  readonly transport = {};
  host: CellSessions | undefined;

  override bye(code: string): void {
    const wasOpen = this.isOpen;
    super.bye(code);
    this.host?.closed(this as never, wasOpen);
  }
}

function rig(t: Test) {
  const cell = fakeCell('c0');
  t.teardown(() => cell.metrics.stop());
  const hub = new SessionHub();
  const ctx = { ...cell.ctx, hub };
  const events: string[] = [];
  const entries = new Map<string, DeviceLocation>();
  let epoch = 0;
  const note = (what: string) => (s: { user: string; device: string }) => void events.push(`${what} ${s.user}/${s.device}`);
  const wiring: SessionWiring = {
    hub,
    connections: { handshakeDone: () => void events.push('handshake slot freed') },
    identity: {} as SessionWiring['identity'],
    revocations: new Revocations(ctx, () => ({ standing: async () => undefined })),
    directory: {
      register: async (user, device, cellId, node) => {
        const replaced = entries.get(`${user}/${device}`);
        const loc = { device, cell: cellId, node, epoch: ++epoch };
        entries.set(`${user}/${device}`, loc);
        return { epoch: loc.epoch, ...(replaced && { replaced }) };
      },
      unregister: async (user, device, e) => void events.push(`unregister ${user}/${device} @${e}`),
    },
    placement: { registered: note('placement+'), detached: note('placement-'), hintPublicKey: new Uint8Array(32) },
    drains: { drain: note('drain'), forget: note('forget drain') } as unknown as SessionWiring['drains'],
    routing: { sessionGone: note('gone') } as unknown as SessionWiring['routing'],
    custody: { submit: async () => undefined, read: async () => undefined, shedsNow: () => false },
    groups: { send: async () => undefined, catchUp: note('catch up'), detached: note('groups-') },
    presence: { online: note('online'), offline: note('offline'), set: () => undefined, typing: async () => undefined },
    request: async () => undefined,
    webAddress: () => '',
    noteOutbound: () => undefined,
  };
  const sessions = new CellSessions(ctx, wiring);
  const connect = async (user: string, device: string): Promise<Device> => {
    const d = new Device(user, device);
    d.host = sessions;
    await sessions.opened(d as never);
    return d;
  };
  return { cell, hub, sessions, events, connect, entries, revocations: wiring.revocations };
}

t.test('registration: directory and hub first, then gravitation, the drain, group catch-up and presence', async (t) => {
  const r = rig(t);
  const a = await r.connect('alice', 'p');
  t.same(r.events, ['handshake slot freed', 'placement+ alice/p', 'drain alice/p', 'catch up alice/p', 'online alice/p']);
  t.equal(r.hub.session('alice', 'p'), a as never);
  t.equal(a.registered, true);
  t.equal(a.epoch, 1);
});

t.test('a device connecting again on the same cell: the old session ends and leaves every table before the new one joins', async (t) => {
  const r = rig(t);
  const old = await r.connect('alice', 'p');
  const other = await r.connect('alice', 'l');
  r.events.length = 0;
  const again = await r.connect('alice', 'p');
  t.equal(old.bye_, ErrorCode.SESSION_REPLACED, 'the old session is told why');
  t.same([...r.hub.sessionsOf('alice')].sort((x, y) => x.device.localeCompare(y.device)), [other, again], 'the user has the new session and the other device, not the old one');
  t.equal(r.hub.count, 2);
  t.ok(r.events.includes('placement- alice/p'), "the old one's gravitation slot is freed");
  t.ok(r.events.indexOf('placement- alice/p') < r.events.indexOf('placement+ alice/p'), 'before the new one takes one');
  t.same(r.cell.bus.of('kick'), [], 'no kick: the old session was on this cell');
});

t.test('a newer session on another cell: that cell is told to end the old one', async (t) => {
  const r = rig(t);
  r.entries.set('bob/p', { device: 'p', cell: 'c9', node: 'n9', epoch: 7 });
  await r.connect('bob', 'p');
  t.same(r.cell.bus.of('kick'), [{ cell: 'c9', e: { k: 'kick', user: 'bob', dev: 'p', ep: 7 } }]);
  r.sessions.kick('bob', 'p', 0);
  t.equal(r.hub.session('bob', 'p')?.isOpen, true, 'a kick older than the session is ignored');
});

t.test('revoked while being set up: the session ends and leaves the directory again', async (t) => {
  const r = rig(t);
  // The broadcast arrives between the handshake's account read and the registration.
  const d = new Device('carol', 'p');
  d.host = r.sessions;
  r.revocations.revoked('carol', 'p', d.rid);
  await r.sessions.opened(d as never);
  t.equal(d.bye_, ErrorCode.DEVICE_REVOKED);
  t.equal(r.hub.session('carol', 'p'), undefined, 'never joins the hub');
  t.ok(r.events.includes('unregister carol/p @1'), 'its fresh directory entry is removed');
  t.notOk(r.events.includes('online carol/p'), 'nobody is told it came online');
});

t.test('close: out of the hub, its live items handed back, presence and groups told, the directory entry removed', async (t) => {
  const r = rig(t);
  const a = await r.connect('dave', 'p');
  r.events.length = 0;
  a.bye(ErrorCode.SHUTTING_DOWN);
  t.same(r.events, ['forget drain dave/p', 'placement- dave/p', 'gone dave/p', 'offline dave/p', 'groups- dave/p', 'unregister dave/p @1']);
  t.equal(r.hub.count, 0);
});
