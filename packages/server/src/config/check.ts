import { fromBase64Url } from '@gravitas/protocol';
import type { ConfigIssue } from '../infra/errors.js';

/*
 * The checker kit of config validation: every section (limits.ts, web.ts, push.ts, …) reads
 * its settings through one `ConfigCheck`, which looks a value up by its path in the merged
 * raw configuration, coerces the strings env and flags give, and records a ConfigIssue at
 * that path when the value is wrong, returning the default so that validation goes on and
 * reports every problem at once (validate.ts throws them together).
 */

export type Json = Record<string, unknown>;

export function isJson(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** A check of a string value: undefined when it is fine, else why not. */
export type TextCheck = (s: string) => string | undefined;

export interface ConfigCheck {
  /** Every issue recorded so far, in order. */
  readonly issues: readonly ConfigIssue[];
  /** The raw value at a dotted path (to tell "absent" from "invalid"). */
  get(path: string): unknown;
  /** Records an issue; returns undefined so that `return c.fail(…) ?? def` reads naturally. */
  fail(path: string, message: string): undefined;
  /** An integer in min..max (decimal text accepted); `message`, if given, replaces the two default messages. */
  int(path: string, def: number, min: number, max: number, message?: string): number;
  /** A finite number in min..max (text accepted). */
  num(path: string, def: number, min: number, max: number): number;
  /** A non-empty string passing `check`; undefined when absent without a default, or wrong. */
  string(path: string, def: string | undefined, check?: TextCheck): string | undefined;
  /** true/false ("true"/"false"/"1"/"0" accepted). */
  bool(path: string, def: boolean): boolean;
  /**
   * A list of strings: a JSON array, or comma-separated text (env, flags). A value that is not
   * a list of strings or fails `ok` records `message` and gives `fallback`.
   */
  strings(path: string, def: string[], ok: (items: string[]) => boolean, message: string, fallback: string[]): string[];
  /**
   * An object section with only the `known` keys: anything else is an issue at `path.key`
   * ('unknown setting'), a value that is not an object one at `path` (`shape`). Returns the
   * object, or undefined when absent or not an object.
   */
  section(path: string, known: ReadonlySet<string>, shape?: string): Json | undefined;
}

/** The checks of one validation run over `raw`. */
export function configCheck(raw: Json): ConfigCheck {
  const issues: ConfigIssue[] = [];
  const fail = (path: string, message: string): undefined => {
    issues.push({ path, message });
    return undefined;
  };
  const get = (path: string): unknown => path.split('.').reduce<unknown>((o, k) => (isJson(o) ? o[k] : undefined), raw);
  return {
    issues,
    get,
    fail,
    int(path, def, min, max, message) {
      let v = get(path);
      if (v === undefined) return def;
      if (typeof v === 'string' && /^-?\d+$/.test(v.trim())) v = Number(v);
      if (typeof v !== 'number' || !Number.isInteger(v)) return fail(path, message ?? `must be an integer, got ${JSON.stringify(v)}`) ?? def;
      if (v < min || v > max) return fail(path, message ?? `must be between ${min} and ${max}, got ${v}`) ?? def;
      return v;
    },
    num(path, def, min, max) {
      let v = get(path);
      if (v === undefined) return def;
      if (typeof v === 'string' && v.trim() !== '') v = Number(v);
      if (typeof v !== 'number' || !Number.isFinite(v)) return fail(path, `must be a number, got ${JSON.stringify(v)}`) ?? def;
      if (v < min || v > max) return fail(path, `must be between ${min} and ${max}, got ${v}`) ?? def;
      return v;
    },
    string(path, def, check) {
      const v = get(path);
      if (v === undefined) return def;
      if (typeof v !== 'string' || v.length === 0) return fail(path, 'must be a non-empty string');
      const why = check?.(v);
      return why ? fail(path, why) : v;
    },
    bool(path, def) {
      const v = get(path);
      if (v === undefined) return def;
      if (v === true || v === 'true' || v === '1') return true;
      if (v === false || v === 'false' || v === '0') return false;
      return fail(path, 'must be true or false') ?? def;
    },
    strings(path, def, ok, message, fallback) {
      let v = get(path);
      if (typeof v === 'string') v = v.split(',').map((s) => s.trim()).filter(Boolean);
      if (v === undefined) v = def;
      if (!Array.isArray(v) || !v.every((s) => typeof s === 'string') || !ok(v as string[])) {
        fail(path, message);
        return fallback;
      }
      return v as string[];
    },
    section(path, known, shape = 'must be an object') {
      const v = get(path);
      if (v === undefined) return undefined;
      if (!isJson(v)) return fail(path, shape);
      for (const k of Object.keys(v)) if (!known.has(k)) fail(`${path}.${k}`, 'unknown setting');
      return v;
    },
  };
}

/** A host name or IP address (listen.host, advertiseHost, admin.host). */
export const hostName: TextCheck = (s) => (/^[A-Za-z0-9.:_-]+$/.test(s) ? undefined : 'must be a host name or IP address');

/** A key of `bytes` bytes in base64url; `first`, if given, is the value its first byte must have (an uncompressed P-256 point). */
export const base64Key = (bytes: number, what: string, first?: { byte: number; message: string }): TextCheck => (s) => {
  try {
    const b = fromBase64Url(s, bytes);
    return first !== undefined && b[0] !== first.byte ? first.message : undefined;
  } catch {
    return `must be ${bytes} bytes in base64url (${what})`;
  }
};

/** The cluster's X25519 and ticket keys. */
export const key32 = base64Key(32, 'see `gravitas keygen`');
