/*
 * What the package's own modules and its internal entry (internal.ts) know of a client
 * and the public API does not show: how its parts emit its events, and its store (for
 * test fixtures that watch what reaches the de-duplication, test/fixtures/wire.ts).
 */
import type { ClientStore } from './store.js';
import type { ClientEvents } from './types.js';

/** Emits a client event (the client's own emit, handed to its parts). */
export type Emit = <K extends keyof ClientEvents>(event: K, ...args: ClientEvents[K]) => void;

const stores = new WeakMap<object, ClientStore>();

export function registerStore(client: object, store: ClientStore): void {
  stores.set(client, store);
}

/** The store of a GravitasClient (undefined for any other object). */
export function storeOf(client: object): ClientStore | undefined {
  return stores.get(client);
}
