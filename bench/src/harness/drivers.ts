import type { DriverSpec } from './control.js';
import type { Driver } from './driver.js';
import { GravitasDriver } from './gravitas-driver.js';
import { SocketIoDriver } from './socketio-driver.js';
import { XmppDriver } from './xmpp-driver.js';

/**
 * The driver a generator runs for the spec the runner sent; `idPrefix` makes message ids unique per
 * generator and run; `generator` (its index) picks its own range of local addresses (sources.ts).
 */
export function makeDriver(spec: DriverSpec, idPrefix: string, generator = 0): Driver {
  switch (spec.kind) {
    case 'gravitas':
      return new GravitasDriver({ addresses: spec.addresses, serverPublicKey: new Uint8Array(Buffer.from(spec.serverPublicKey, 'base64url')), registration: spec.registration, idPrefix, spreadSources: { generator } });
    case 'xmpp':
      return new XmppDriver({ host: spec.host, port: spec.port, domain: spec.domain, muc: spec.muc, register: spec.register, idPrefix, ...(spec.ports && { ports: spec.ports }), ...(spec.mechanism && { mechanism: spec.mechanism }) });
    case 'socketio':
      return new SocketIoDriver({ urls: spec.urls, idPrefix });
  }
}
