// Injected by bundle.mjs where a bundled module reads one of these globals: the
// Node-first packages (protocol, client core) use a few Node globals that
// browsers lack. Only what they use, nothing more.
export { Buffer } from 'buffer';

/** process.nextTick: a microtask (the client emits some errors asynchronously). */
export const process = { nextTick: (fn, ...args) => queueMicrotask(() => fn(...args)), env: {} };

/**
 * Node timers return objects with unref(); browsers return numbers. unref() means
 * nothing in a page, and the number comes back out for clearTimeout.
 */
class Timeout {
  constructor(id) {
    this.id = id;
  }
  unref() {
    return this;
  }
  ref() {
    return this;
  }
  hasRef() {
    return false;
  }
  [Symbol.toPrimitive]() {
    return this.id;
  }
}

const unwrap = (t) => (t instanceof Timeout ? t.id : t);
export const setTimeout = (fn, ms, ...args) => new Timeout(globalThis.setTimeout(fn, ms, ...args));
export const setInterval = (fn, ms, ...args) => new Timeout(globalThis.setInterval(fn, ms, ...args));
export const clearTimeout = (t) => globalThis.clearTimeout(unwrap(t));
export const clearInterval = (t) => globalThis.clearInterval(unwrap(t));
