import type { KV } from '@nats-io/kv';
import { fromBase64Url, nativeSuite, type HintKeyPair, type ServerHandshakeContext } from '@gravitas/protocol';
import type { CellContext } from '../core/context.js';
import type { DeliveryProofs } from '../core/proofs.js';
import type { SessionHost } from './host.js';
import { Accounts, type AccountEvents } from './accounts.js';
import { AccountBudgets } from './budgets.js';
import { HandshakeGuard } from './guard.js';
import { LinkApprovals } from './registration.js';
import { Revocations } from './revocations.js';
import { SpentIds } from './tickets.js';

/**
 * Who may hold a session on this cell, and how much it may do: the handshake's
 * keys and guard, accounts and their registrations, spent tickets, per-account
 * budgets, and the revocations heard of. The stores open at start, once the
 * KV buckets are there.
 */
export class Identity implements Pick<SessionHost, 'handshake' | 'guard' | 'accounts' | 'tickets' | 'budgets' | 'proofs'> {
  readonly handshake: ServerHandshakeContext;
  readonly guard: HandshakeGuard;
  readonly revocations: Revocations;
  accounts!: Accounts;
  tickets!: SpentIds;
  budgets!: AccountBudgets;

  constructor(private readonly ctx: CellContext, readonly proofs: DeliveryProofs) {
    const { config } = ctx;
    this.guard = new HandshakeGuard(config.limits.maxHandshakesInFlight, config.limits.cookieThresholdPerSec);
    const [current, previous] = config.ticketKeys.map((k) => ({ id: k.id, key: fromBase64Url(k.key, 32) }));
    this.handshake = {
      staticKey: nativeSuite.fromSecret(fromBase64Url(config.serverKey, 32)),
      ticketKeys: { current: current!, ...(previous && { previous }) },
      ticketLifetimeMs: config.ticketLifetimeMs,
      suite: nativeSuite,
      now: Date.now,
      capabilities: config.network.capabilities,
    };
    this.revocations = new Revocations(ctx, () => this.accounts);
  }

  /** Opens the stores; `hintKeys` sign link approvals, `events` hear of account changes. */
  open(b: { accounts: KV; tickets: KV; budgets: KV }, hintKeys: HintKeyPair, events: AccountEvents): void {
    const { config, log } = this.ctx;
    const l = config.limits;
    this.tickets = new SpentIds(b.tickets);
    this.accounts = new Accounts(b.accounts, this.tickets, config.registration, l.maxDevicesPerUser, new LinkApprovals(hintKeys), events);
    const rates = { msg: l.accountMsgRatePerSec, fanout: l.accountFanoutRatePerSec, read: l.accountReadRatePerSec, req: l.accountRequestRatePerSec };
    this.budgets = new AccountBudgets(b.budgets, rates, l.maxDevicesPerUser, log);
  }
}
