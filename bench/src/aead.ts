import { createCipheriv, createDecipheriv, createSecretKey, randomBytes, type CipherKey } from 'node:crypto';
import { chacha20poly1305 } from '@noble/ciphers/chacha.js';
import { gcm } from '@noble/ciphers/aes.js';
import nacl from 'tweetnacl';
import type { Row } from './report.js';

/*
 * The transport cipher's candidates (docs/decisions.md §24): seal + open of one frame, the way
 * SecureChannel does it — a fresh nonce from a frame counter every time, the output in a new
 * buffer — at the plaintext sizes of chat traffic (an ack, a message) and at 4 KiB.
 * node:crypto ciphers are created per frame (createCipheriv), with the key as raw bytes or as a
 * KeyObject imported once; @noble/ciphers and tweetnacl are pure JavaScript (what a browser runs).
 * Rates are per second of this process's CPU time, not of the wall clock: on a machine shared
 * with other work the wall clock counts the time other processes had the core.
 */

export const AEAD_SIZES = [150, 250, 4096] as const;

const TAG = 16;

interface Candidate {
  name: string;
  note: string;
  /** Returns seal then open of `plain` under counter `n`; throws if the round trip fails. */
  roundTrip(plain: Uint8Array, n: number): void;
}

function nonce12(n: number): Buffer {
  const b = Buffer.alloc(12);
  b.writeUIntBE(n, 6, 6);
  return b;
}

function nonce24(n: number): Uint8Array {
  const b = new Uint8Array(24);
  new DataView(b.buffer).setBigUint64(16, BigInt(n));
  return b;
}

function nativeAead(alg: 'chacha20-poly1305' | 'aes-256-gcm', key: CipherKey): Candidate['roundTrip'] {
  return (plain, n) => {
    const iv = nonce12(n);
    const c = createCipheriv(alg as 'chacha20-poly1305', key, iv, { authTagLength: TAG });
    const out = Buffer.allocUnsafe(plain.length + TAG);
    out.set(c.update(plain), 0);
    c.final();
    out.set(c.getAuthTag(), plain.length);
    const d = createDecipheriv(alg as 'chacha20-poly1305', key, iv, { authTagLength: TAG });
    d.setAuthTag(out.subarray(plain.length));
    const back = d.update(out.subarray(0, plain.length));
    d.final();
    if (back.length !== plain.length) throw new Error(`${alg} round trip failed`);
  };
}

function candidates(): Candidate[] {
  const key = randomBytes(32);
  const keyObject = createSecretKey(key);
  const chacha = (n: number): ReturnType<typeof chacha20poly1305> => chacha20poly1305(key, nonce12(n));
  const aes = (n: number): ReturnType<typeof gcm> => gcm(key, nonce12(n));
  return [
    {
      name: 'secretbox.tweetnacl',
      note: 'XSalsa20-Poly1305, pure JS: today\'s cipher',
      roundTrip: (plain, n) => {
        const nonce = nonce24(n);
        if (nacl.secretbox.open(nacl.secretbox(plain, nonce, key), nonce, key) === null) throw new Error('secretbox round trip failed');
      },
    },
    { name: 'chacha20poly1305.native', note: 'node:crypto, createCipheriv per frame, raw key', roundTrip: nativeAead('chacha20-poly1305', key) },
    { name: 'chacha20poly1305.native_keyobject', note: 'node:crypto, createCipheriv per frame, KeyObject', roundTrip: nativeAead('chacha20-poly1305', keyObject) },
    { name: 'aes256gcm.native', note: 'node:crypto, createCipheriv per frame, raw key', roundTrip: nativeAead('aes-256-gcm', key) },
    { name: 'aes256gcm.native_keyobject', note: 'node:crypto, createCipheriv per frame, KeyObject', roundTrip: nativeAead('aes-256-gcm', keyObject) },
    {
      name: 'chacha20poly1305.noble',
      note: '@noble/ciphers, pure JS (the browser build)',
      roundTrip: (plain, n) => {
        if (chacha(n).decrypt(chacha(n).encrypt(plain)).length !== plain.length) throw new Error('noble chacha round trip failed');
      },
    },
    {
      name: 'aes256gcm.noble',
      note: '@noble/ciphers, pure JS',
      roundTrip: (plain, n) => {
        if (aes(n).decrypt(aes(n).encrypt(plain)).length !== plain.length) throw new Error('noble gcm round trip failed');
      },
    },
  ];
}

/** Runs `op` for about `durationMs` of CPU time (after a short warmup); returns ops per CPU-second. */
function opsPerCpuSec(durationMs: number, op: () => void, batch = 50): number {
  const cpu = (): number => {
    const u = process.cpuUsage();
    return (u.user + u.system) / 1000;
  };
  const warm = cpu() + Math.min(200, durationMs / 5);
  while (cpu() < warm) for (let i = 0; i < batch; i++) op();
  const c0 = cpu();
  let n = 0;
  let c = c0;
  do {
    for (let i = 0; i < batch; i++) op();
    n += batch;
    c = cpu();
  } while (c - c0 < durationMs);
  return (n * 1000) / (c - c0);
}

export interface AeadResult { name: string; note: string; bytes: number; perSec: number; usPerFrame: number }

/** Seal + open per second of every candidate at every size (`durationMs` each, so keep it short). */
export function measureAeads(durationMs: number, log: (m: string) => void = () => undefined): AeadResult[] {
  const out: AeadResult[] = [];
  for (const c of candidates()) {
    for (const bytes of AEAD_SIZES) {
      log(`aead ${c.name} ${bytes} B`);
      const plain = randomBytes(bytes);
      let n = 0;
      const perSec = opsPerCpuSec(durationMs, () => c.roundTrip(plain, n++));
      out.push({ name: c.name, note: c.note, bytes, perSec, usPerFrame: 1e6 / perSec });
    }
  }
  return out;
}

export function aeadRows(results: readonly AeadResult[]): Row[] {
  return results.flatMap((r) => [
    { metric: `aead.${r.name}.${r.bytes}B`, value: r.perSec, unit: 'op/cpu-s', note: `seal+open; ${r.note}` },
    { metric: `aead.${r.name}.${r.bytes}B.us`, value: r.usPerFrame, unit: 'µs', note: 'CPU per frame, seal+open' },
  ]);
}

/** The table as text: one line per cipher, seal+open per second and µs per frame at each size. */
export function aeadTable(results: readonly AeadResult[]): string {
  const names = [...new Set(results.map((r) => r.name))];
  const head = `${'seal+open per CPU-second'.padEnd(36)}${AEAD_SIZES.map((s) => `${`${s} B op/s`.padStart(14)}${'µs'.padStart(8)}`).join('')}`;
  const lines = names.map((n) =>
    n.padEnd(36) +
    AEAD_SIZES.map((s) => {
      const r = results.find((x) => x.name === n && x.bytes === s)!;
      return `${Math.round(r.perSec).toLocaleString('en-US').padStart(14)}${r.usPerFrame.toFixed(2).padStart(8)}`;
    }).join(''),
  );
  return [head, ...lines].join('\n');
}
