import { createHmac } from 'node:crypto';
import webpush from 'web-push';
import type { Provider, StoredTarget } from './push-targets.js';

/*
 * The two ways a push leaves the cluster (docs/push.md):
 *  - Web Push: RFC 8030 delivery to the subscription's push service, the payload
 *    encrypted per RFC 8291 (aes128gcm) and the request authenticated with VAPID
 *    (RFC 8292). The `web-push` library builds the request; we send it ourselves
 *    so that timeouts, redirects and status handling are ours.
 *  - Webhook: a JSON POST signed with HMAC-SHA256 over "<timestamp>.<body>".
 * Both report an Outcome; the gateway retries, removes or counts.
 */

export type Outcome =
  | { kind: 'ok' }
  /** The provider says the target no longer exists (404, 410): remove it. */
  | { kind: 'gone'; status: number }
  /** Transient (network, timeout, 408, 425, 429, 5xx): try again later; `afterMs` from Retry-After. */
  | { kind: 'retry'; why: string; afterMs?: number }
  /** Refused for good (other 4xx): retrying would not help. */
  | { kind: 'fail'; why: string };

export interface PushRequest {
  target: StoredTarget;
  /** JSON text of the payload (docs/push.md, "Payload"). */
  body: string;
  /** Stable across the retries of one push to one target. */
  idempotencyKey: string;
  urgency: 'low' | 'normal' | 'high';
  /** Replaces an undelivered push of the same topic at the push service (≤ 32 base64url characters). */
  topic: string;
}

export interface PushProvider {
  readonly name: Provider;
  send(r: PushRequest): Promise<Outcome>;
}

const RETRY_STATUS = new Set([408, 425, 429]);

function retryAfterMs(h: string | null): number | undefined {
  if (!h) return undefined;
  const s = Number(h);
  if (Number.isFinite(s) && s >= 0) return s * 1000;
  const at = Date.parse(h);
  return Number.isFinite(at) ? Math.max(0, at - Date.now()) : undefined;
}

/** What an HTTP answer means for a push. */
export function classify(status: number, retryAfter: string | null): Outcome {
  if (status >= 200 && status < 300) return { kind: 'ok' };
  if (status === 404 || status === 410) return { kind: 'gone', status };
  if (RETRY_STATUS.has(status) || status >= 500) {
    const afterMs = retryAfterMs(retryAfter);
    return { kind: 'retry', why: `HTTP ${status}`, ...(afterMs !== undefined && { afterMs }) };
  }
  return { kind: 'fail', why: `HTTP ${status}` };
}

/** Exponential backoff with full jitter: uniform in [0, min(max, base · 2^(attempt−1))]. */
export function backoffMs(attempt: number, baseMs: number, maxMs: number, rand: () => number = Math.random): number {
  return Math.floor(rand() * Math.min(maxMs, baseMs * 2 ** Math.max(0, attempt - 1)));
}

/** One POST, no redirects followed (a redirect is a refusal), the answer body discarded. */
async function post(url: string, headers: Record<string, string>, body: Uint8Array | string, timeoutMs: number): Promise<Outcome> {
  let res: Response;
  try {
    res = await fetch(url, { method: 'POST', headers, body, redirect: 'manual', signal: AbortSignal.timeout(timeoutMs) });
  } catch (err) {
    return { kind: 'retry', why: (err as Error).name === 'TimeoutError' ? 'timeout' : `network: ${(err as Error).message}` };
  }
  await res.body?.cancel().catch(() => undefined);
  return classify(res.status, res.headers.get('retry-after'));
}

export interface VapidKeys { publicKey: string; privateKey: string; subject: string }

export class WebPushProvider implements PushProvider {
  readonly name = 'webpush' as const;

  constructor(private readonly vapid: VapidKeys, private readonly ttlSeconds: number, private readonly timeoutMs: number) {}

  send(r: PushRequest): Promise<Outcome> {
    const t = r.target;
    let details: webpush.RequestDetails;
    try {
      // Encrypts (a fresh ECDH key and salt per call) and signs the VAPID JWT for the endpoint's origin.
      details = webpush.generateRequestDetails({ endpoint: t.url, keys: { p256dh: t.p256dh ?? '', auth: t.auth ?? '' } }, r.body, {
        vapidDetails: this.vapid,
        TTL: this.ttlSeconds,
        contentEncoding: 'aes128gcm',
        urgency: r.urgency,
        topic: r.topic,
      });
    } catch (err) {
      return Promise.resolve({ kind: 'fail', why: `cannot encrypt for this subscription: ${(err as Error).message}` });
    }
    const headers: Record<string, string> = {};
    for (const [k, v] of Object.entries(details.headers)) headers[k] = String(v);
    return post(details.endpoint, headers, details.body ?? new Uint8Array(0), this.timeoutMs);
  }
}

/** The webhook signature: hex HMAC-SHA256 over "<timestamp>.<body>". */
export function webhookSignature(secret: string, timestamp: string, body: string): string {
  return createHmac('sha256', secret).update(`${timestamp}.${body}`).digest('hex');
}

export class WebhookProvider implements PushProvider {
  readonly name = 'webhook' as const;

  constructor(private readonly secret: string, private readonly timeoutMs: number) {}

  send(r: PushRequest): Promise<Outcome> {
    // A fresh timestamp per attempt (receivers refuse old ones); the same body and idempotency key.
    const ts = String(Date.now());
    return post(r.target.url, {
      'content-type': 'application/json',
      'user-agent': 'gravitas-push/1',
      'x-gravitas-timestamp': ts,
      'x-gravitas-signature': `v1=${webhookSignature(this.secret, ts, r.body)}`,
      'idempotency-key': r.idempotencyKey,
    }, r.body, this.timeoutMs);
  }
}
