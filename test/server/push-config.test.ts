/*
 * The `push` and `relay` sections of a node's config: defaults, VAPID keys that go together
 * and are checked, bounds, unknown keys, and what `gravitas keygen --vapid` prints
 * being accepted as is.
 */
import t from 'tap';
import { ConfigError, validateConfig } from '@gravitas/server';
import { clusterKeys, runCli } from '../fixtures/cluster.js';
import { vapidKeys } from '../fixtures/push-service.js';

const keys = clusterKeys();
const base = { serverKey: keys.serverKey, ticketKeys: keys.ticketKeys, registration: { mode: 'open' } };

function paths(push: Record<string, unknown>): string[] {
  try {
    validateConfig({ ...base, push });
    return [];
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    return err.issues.map((i) => i.path).sort();
  }
}

t.test('defaults', async (t) => {
  const c = validateConfig(base);
  t.match(c.push, { enabled: true, allowHttp: false, maxTargetsPerDevice: 4, queueSize: 10_000, concurrency: 16, coalesceMs: 2000 });
  t.equal(c.push.vapidPublicKey, undefined, 'no VAPID keys unless given');
  t.equal(c.push.webhookSecret, undefined);
});

t.test('VAPID keys, secret and bounds are checked', async (t) => {
  const v = vapidKeys();
  const full = { vapidPublicKey: v.publicKey, vapidPrivateKey: v.privateKey, vapidSubject: 'mailto:ops@example.com' };
  t.same(paths(full), [], 'a full VAPID set');
  t.same(paths({ vapidPublicKey: v.publicKey }), ['push.vapidPublicKey'], 'the three go together');
  t.same(paths({ ...full, vapidPublicKey: v.privateKey }), ['push.vapidPublicKey'], 'a public key must be a 65-byte point');
  t.same(paths({ ...full, vapidPrivateKey: 'short' }), ['push.vapidPrivateKey'], 'a private key must be 32 bytes');
  t.same(paths({ ...full, vapidSubject: 'http://example.com' }), ['push.vapidSubject'], 'subject mailto: or https:');
  t.same(paths({ webhookSecret: 'short' }), ['push.webhookSecret'], 'a webhook secret of at least 16 characters');
  t.same(paths({ queueSize: 0 }), ['push.queueSize']);
  t.same(paths({ concurrency: 'many' }), ['push.concurrency']);
  t.same(paths({ retryBaseMs: 1000, retryMaxMs: 10 }), ['push.retryMaxMs']);
  t.same(paths({ groupMuteBaseMs: 100_000, groupMuteCapMs: 50_000 }), ['push.groupMuteCapMs']);
  t.same(paths({ vapidKey: 'x' }), ['push.vapidKey'], 'an unknown setting');
});

t.test('gravitas keygen --vapid prints a push section a node accepts', async (t) => {
  const r = await runCli(['keygen', '--vapid', '--subject', 'mailto:me@example.com']);
  t.equal(r.code, 0, r.stderr);
  const out = JSON.parse(r.stdout) as Record<string, unknown>;
  const c = validateConfig({ ...out, registration: { mode: 'open' } });
  t.equal(c.push.vapidSubject, 'mailto:me@example.com');
  t.ok(c.push.vapidPublicKey && c.push.vapidPrivateKey && c.push.webhookSecret, 'keys and secret');
});

t.test('the relay section: documented defaults; a token lives at most 5 minutes; bounds are checked', async (t) => {
  const relayPaths = (relay: Record<string, unknown>): string[] => {
    try {
      validateConfig({ ...base, relay });
      return [];
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      return err.issues.map((i) => i.path).sort();
    }
  };
  // docs/operations.md, relay rows.
  t.same(validateConfig(base).relay, {
    enabled: true, tokenTtlMs: 30_000, maxReportTtlMs: 600_000, minReportIntervalMs: 1000, maxRelayersPerTarget: 8,
    windowMs: 60_000, perTargetPerWindow: 3, perRelayerPerWindow: 10, maxInFlight: 256,
  });
  t.same(relayPaths({ tokenTtlMs: 300_000 }), [], 'a token of exactly 5 minutes');
  // A longer one would be signed by nobody (signWake refuses) and accepted by no device: refuse it at start.
  t.same(relayPaths({ tokenTtlMs: 300_001 }), ['relay.tokenTtlMs'], 'a token beyond 5 minutes');
  t.same(relayPaths({ tokenTtlMs: 999 }), ['relay.tokenTtlMs']);
  t.same(relayPaths({ maxReportTtlMs: 3_600_001 }), ['relay.maxReportTtlMs'], 'no report beyond what reach.report may ask');
  t.same(relayPaths({ maxRelayersPerTarget: 0 }), ['relay.maxRelayersPerTarget']);
  t.same(relayPaths({ maxRelayersPerTarget: 65 }), ['relay.maxRelayersPerTarget']);
  t.same(relayPaths({ perTargetPerWindow: 0, perRelayerPerWindow: 1001 }), ['relay.perRelayerPerWindow', 'relay.perTargetPerWindow']);
  t.same(relayPaths({ windowMs: 'long' }), ['relay.windowMs']);
  t.same(relayPaths({ tokenTTL: 1 }), ['relay.tokenTTL'], 'an unknown setting');
});
