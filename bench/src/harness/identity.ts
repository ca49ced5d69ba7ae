import { createHmac } from 'node:crypto';
import type { DeviceRef } from './driver.js';

/*
 * Who the simulated people are on the wire. Names and device secrets derive from the run's
 * namespace, so every generator agrees on them without being told, and a re-run with the same
 * namespace (`--namespace`) acts as the same accounts against a long-lived cluster. A fresh run
 * gets a fresh namespace: its accounts, mailboxes and groups start empty.
 */

/** Lower-case letters and digits only: valid as a Gravitas user name and as an XMPP localpart. */
export const NAMESPACE_PATTERN = /^[a-z0-9]{1,16}$/;

/** User `i` of the population: `<namespace>u<i in base 36>`. */
export const userName = (namespace: string, i: number): string => `${namespace}u${i.toString(36)}`;

/** Device `k` (0-based) of a user. */
export const deviceName = (k: number): string => `d${k}`;

/** 32 bytes per device: HMAC-SHA256 keyed by the namespace. Drivers turn it into a key or a password. */
export function deviceSecret(namespace: string, user: string, device: string): Uint8Array {
  return new Uint8Array(createHmac('sha256', `gravitas-bench/${namespace}`).update(`${user}/${device}`).digest());
}

/** 32 bytes per user: an account's secret where the protocol has one per account (XMPP). */
export function userSecret(namespace: string, user: string): Uint8Array {
  return new Uint8Array(createHmac('sha256', `gravitas-bench/${namespace}/user`).update(user).digest());
}

export function deviceRef(namespace: string, userIndex: number, deviceIndex: number): DeviceRef {
  const user = userName(namespace, userIndex);
  const device = deviceName(deviceIndex);
  return { user, device, secret: deviceSecret(namespace, user, device), userSecret: userSecret(namespace, user), index: userIndex };
}
