import { base64Key, type ConfigCheck, type TextCheck } from './check.js';

/** The `push` section of a node's config (docs/push.md, docs/operations.md). */
export interface PushConfig {
  /** Off: no pushes are sent; registrations and mutes still work. */
  enabled: boolean;
  /** VAPID (RFC 8292) key pair, base64url (65-byte public point, 32-byte private scalar), and contact subject. */
  vapidPublicKey?: string;
  vapidPrivateKey?: string;
  vapidSubject?: string;
  /** HMAC-SHA256 key of webhook signatures (at least 16 characters). No key: webhook targets are refused. */
  webhookSecret?: string;
  /** Accept http:// endpoints (development and tests); production pushes go over https only. */
  allowHttp: boolean;
  maxTargetsPerDevice: number;
  /** Push requests waiting for a connection slot; past it the oldest is dropped (counted). */
  queueSize: number;
  /** HTTP requests in flight per cell. */
  concurrency: number;
  timeoutMs: number;
  /** Attempts per push and target (the first included); retries back off exponentially with full jitter. */
  maxAttempts: number;
  retryBaseMs: number;
  retryMaxMs: number;
  /** Web Push TTL header: how long the push service keeps an undelivered push. */
  ttlSeconds: number;
  /** Messages to one device in one chat within this window make one push (the smallest window). */
  coalesceMs: number;
  /** Coalescing windows open at once per cell; past it new ones are refused (counted as dropped). */
  maxPending: number;
  /** Lifetime of the connect hint a push carries. */
  hintTtlMs: number;
  /** Muting a group without a duration: base × members, at most cap. */
  groupMuteBaseMs: number;
  groupMuteCapMs: number;
  /** Damping: above this rate (messages per minute in one chat) the window grows in proportion. */
  dampingThresholdPerMin: number;
  dampingHalfLifeMs: number;
  dampingMaxWindowMs: number;
  /** Characters of message text in a push when the user opted in (pushPreview). */
  previewChars: number;
}

export const DEFAULT_PUSH: PushConfig = {
  enabled: true,
  allowHttp: false,
  maxTargetsPerDevice: 4,
  queueSize: 10_000,
  concurrency: 16,
  timeoutMs: 10_000,
  maxAttempts: 4,
  retryBaseMs: 500,
  retryMaxMs: 30_000,
  ttlSeconds: 24 * 3600,
  coalesceMs: 2_000,
  maxPending: 100_000,
  hintTtlMs: 10 * 60_000,
  groupMuteBaseMs: 15 * 60_000,
  groupMuteCapMs: 7 * 24 * 3600_000,
  dampingThresholdPerMin: 6,
  dampingHalfLifeMs: 60_000,
  dampingMaxWindowMs: 5 * 60_000,
  previewChars: 120,
};

/** Every key of the section, for the unknown-setting check. */
export const PUSH_KEYS = new Set([...Object.keys(DEFAULT_PUSH), 'vapidPublicKey', 'vapidPrivateKey', 'vapidSubject', 'webhookSecret']);

const vapidKey = (bytes: number, first?: { byte: number; message: string }): TextCheck => base64Key(bytes, 'see `gravitas keygen --vapid`', first);

export function validatePushConfig(c: ConfigCheck): PushConfig {
  const D = DEFAULT_PUSH;
  const out: PushConfig = {
    enabled: c.bool('push.enabled', D.enabled),
    allowHttp: c.bool('push.allowHttp', D.allowHttp),
    maxTargetsPerDevice: c.int('push.maxTargetsPerDevice', D.maxTargetsPerDevice, 1, 32),
    queueSize: c.int('push.queueSize', D.queueSize, 1, 1_000_000),
    concurrency: c.int('push.concurrency', D.concurrency, 1, 1024),
    timeoutMs: c.int('push.timeoutMs', D.timeoutMs, 100, 120_000),
    maxAttempts: c.int('push.maxAttempts', D.maxAttempts, 1, 20),
    retryBaseMs: c.int('push.retryBaseMs', D.retryBaseMs, 1, 600_000),
    retryMaxMs: c.int('push.retryMaxMs', D.retryMaxMs, 1, 3_600_000),
    ttlSeconds: c.int('push.ttlSeconds', D.ttlSeconds, 0, 28 * 24 * 3600),
    coalesceMs: c.int('push.coalesceMs', D.coalesceMs, 0, 600_000),
    maxPending: c.int('push.maxPending', D.maxPending, 1, 10_000_000),
    hintTtlMs: c.int('push.hintTtlMs', D.hintTtlMs, 1000, 24 * 3600_000),
    groupMuteBaseMs: c.int('push.groupMuteBaseMs', D.groupMuteBaseMs, 1000, 30 * 24 * 3600_000),
    groupMuteCapMs: c.int('push.groupMuteCapMs', D.groupMuteCapMs, 1000, 366 * 24 * 3600_000),
    dampingThresholdPerMin: c.int('push.dampingThresholdPerMin', D.dampingThresholdPerMin, 1, 1_000_000),
    dampingHalfLifeMs: c.int('push.dampingHalfLifeMs', D.dampingHalfLifeMs, 100, 24 * 3600_000),
    dampingMaxWindowMs: c.int('push.dampingMaxWindowMs', D.dampingMaxWindowMs, 0, 24 * 3600_000),
    previewChars: c.int('push.previewChars', D.previewChars, 0, 1000),
  };
  const pub = c.string('push.vapidPublicKey', undefined, vapidKey(65, { byte: 4, message: 'must be an uncompressed P-256 public key' }));
  const priv = c.string('push.vapidPrivateKey', undefined, vapidKey(32));
  const subject = c.string('push.vapidSubject', undefined, (s) => (/^(mailto:\S+@\S+|https:\/\/\S+)$/.test(s) ? undefined : 'must be a mailto: or https: URL (RFC 8292)'));
  const present = ['vapidPublicKey', 'vapidPrivateKey', 'vapidSubject'].filter((k) => c.get(`push.${k}`) !== undefined).length;
  if (present > 0 && present < 3) c.fail('push.vapidPublicKey', 'vapidPublicKey, vapidPrivateKey and vapidSubject go together');
  else if (pub && priv && subject) Object.assign(out, { vapidPublicKey: pub, vapidPrivateKey: priv, vapidSubject: subject });
  const secret = c.string('push.webhookSecret', undefined, (s) => (s.length >= 16 ? undefined : 'must be at least 16 characters'));
  if (secret) out.webhookSecret = secret;
  if (out.retryMaxMs < out.retryBaseMs) c.fail('push.retryMaxMs', 'must be at least push.retryBaseMs');
  if (out.groupMuteCapMs < out.groupMuteBaseMs) c.fail('push.groupMuteCapMs', 'must be at least push.groupMuteBaseMs');
  return out;
}
