import { DecodeError, ErrorCode } from './errors.js';
import { MAX_ID_LENGTH } from './limits.js';

/** Tiny runtime checks for decoded messages. Each throws BAD_MESSAGE naming the field. */
export type Obj = Record<string, unknown>;

export function bad(field: string, why: string): never {
  throw new DecodeError(ErrorCode.BAD_MESSAGE, `field "${field}" ${why}`);
}

export function isObj(v: unknown): v is Obj {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Uint8Array);
}

export function obj(v: unknown, field = 'message'): Obj {
  if (!isObj(v)) bad(field, 'must be a map');
  return v;
}

export function str(o: Obj, field: string, max: number, min = 0): string {
  const v = o[field];
  if (typeof v !== 'string') bad(field, 'must be a string');
  if (v.length < min || v.length > max) bad(field, `must have length ${min}..${max}`);
  return v;
}

export function optStr(o: Obj, field: string, max: number): string | undefined {
  return o[field] === undefined ? undefined : str(o, field, max);
}

export function int(o: Obj, field: string, min = 0, max = Number.MAX_SAFE_INTEGER): number {
  const v = o[field];
  if (typeof v !== 'number' || !Number.isInteger(v)) bad(field, 'must be an integer');
  if (v < min || v > max) bad(field, `must be in ${min}..${max}`);
  return v;
}

export function bytes(o: Obj, field: string, min: number, max = min): Uint8Array {
  const v = o[field];
  if (!(v instanceof Uint8Array)) bad(field, 'must be binary');
  if (v.length < min || v.length > max) bad(field, min === max ? `must be ${min} bytes` : `must be ${min}..${max} bytes`);
  return v;
}

export function optBytes(o: Obj, field: string, min: number, max: number): Uint8Array | undefined {
  return o[field] === undefined ? undefined : bytes(o, field, min, max);
}

/** Names used in NATS subjects and KV keys: one subject token, no wildcards. */
const NAME_RE = /^[A-Za-z0-9_-]+$/;
export function name(o: Obj, field: string, max = MAX_ID_LENGTH): string {
  const v = str(o, field, max, 1);
  if (!NAME_RE.test(v)) bad(field, 'may only contain A-Z a-z 0-9 _ -');
  return v;
}

export function isName(v: string, max = MAX_ID_LENGTH): boolean {
  return v.length > 0 && v.length <= max && NAME_RE.test(v);
}

/**
 * Names that begin with this are the system's (campaign senders, account notices,
 * server-made message ids): no account, device or client-chosen message id may take
 * one, so a system message can be neither impersonated nor pre-empted.
 */
export const SYSTEM_PREFIX = '_';

export function isSystemName(v: string): boolean {
  return v.startsWith(SYSTEM_PREFIX);
}

export function oneOf<T extends string>(o: Obj, field: string, values: readonly T[]): T {
  const v = o[field];
  if (typeof v !== 'string' || !(values as readonly string[]).includes(v)) bad(field, `must be one of ${values.join(', ')}`);
  return v as T;
}
