import { Kvm, type KV } from '@nats-io/kv';
import { loadCap, meanLoad } from '@gravitas/placement';
import { ErrorCode, ProtocolError, signWake, type RequestArgs } from '@gravitas/protocol';
import type { CellContext } from '../core/context.js';
import type { CellLoad, DeviceLocation, DeviceRoster, DirectoryPort, HintSigner, ReachEvents, RelayPort, SocialGraph, SocialRecord } from '../core/ports.js';
import type { DeviceSession } from '../core/session.js';
import { untilReady } from '../infra/nats.js';
import { TtlCache } from '../infra/ttl-cache.js';
import { consents, recentCount, ReachStore, type ReachRecord, type Relayer } from './relay-store.js';

/*
 * Wake-ups relayed through peer devices (docs/relay.md). Devices report which
 * other devices they reach directly on their LAN (`reach.report`); when a device
 * is offline and no push can reach it, `wake` picks an online device that
 * reported reaching it and sends that device a `relay` frame carrying a signed,
 * single-use, short-lived wake token. The relayer's SDK hands the token over
 * peer to peer; the target verifies it and connects to the cell it names.
 */

/** Why a wake attempt ended: `sent`, or why nothing was sent (the `result` label of gravitas_relay_wakes_total). */
export type WakeResult =
  | 'sent' | 'disabled' | 'online' | 'no_relayer' | 'relayer_offline' | 'rate_limited_target' | 'rate_limited_relayer' | 'no_cell' | 'coalesced' | 'busy' | 'error';

/** Reporters remembered for the per-device report interval (one entry per reporting device). */
const REPORTERS_MAX = 100_000;
/**
 * How long a device's report of a peer stands as its consent that the peer relays
 * for it (the mutual rule, docs/relay.md): long enough to cover the device being
 * offline, which is when it needs a relay.
 */
export const CONSENT_TTL_MS = 7 * 86_400_000;
/** Consent tiers, also the ranking of relayers: the target's own devices, its user's contacts, devices it reported itself. */
const OWN = 0;
const CONTACT = 1;
const MUTUAL = 2;

/**
 * The tier at which devices of `relayerUser` may relay for a device of `targetUser`
 * (docs/relay.md): the user's own other devices, its contacts' devices, else only
 * devices the target itself reported reaching (MUTUAL: the caller checks that
 * consent, `consents`). Undefined: the target's user blocks the relayer's.
 */
function socialTier(targetUser: string, relayerUser: string, social: SocialRecord): number | undefined {
  if (relayerUser === targetUser) return OWN;
  if (social.blocked.has(relayerUser)) return undefined;
  return social.contacts.has(relayerUser) ? CONTACT : MUTUAL;
}

interface Candidate { relayer: Relayer; loc: DeviceLocation; tier: number; recent: number; cellLoad: number }

/** What the relay asks of the other features and of the cell. */
export interface RelayPorts {
  directory: Pick<DirectoryPort, 'lookup'>;
  social: Pick<SocialGraph, 'record'>;
  accounts: Pick<DeviceRoster, 'devices'>;
  /** Live cells' loads, and the keys that sign a wake token and the hint inside it. */
  hints: HintSigner;
  /** Whether this cell is connected to NATS and not draining (a woken device could be served here). */
  connected: () => boolean;
}

export class RelayCoordinator implements RelayPort, ReachEvents {
  private store: ReachStore | undefined;
  /** Devices that reported within relay.minReportIntervalMs. */
  private readonly reporters: TtlCache<string, true>;
  /** Targets with a wake attempt running on this cell: a burst of stores makes one attempt. */
  private readonly running = new Set<string>();

  constructor(private readonly ctx: CellContext, private readonly ports: RelayPorts) {
    this.reporters = new TtlCache(REPORTERS_MAX, Math.max(1, ctx.config.relay.minReportIntervalMs));
  }

  /** Opens the reach bucket (or takes the one given: unit tests). */
  async start(bucket?: KV): Promise<void> {
    const { config: cfg, nc, names } = this.ctx;
    // Records outlive the longest report and the rate window; idle ones then vanish.
    const ttl = Math.max(cfg.relay.maxReportTtlMs, cfg.relay.windowMs) + 60_000;
    const kv = bucket ?? (await untilReady(() => new Kvm(nc).create(names.reachBucket, { history: 1, ttl, replicas: cfg.replicas }), 'reach bucket'));
    this.store = new ReachStore(kv);
  }

  private get reach(): ReachStore {
    if (!this.store) throw new ProtocolError(ErrorCode.BUSY, 'relay store not ready');
    return this.store;
  }

  // ---- reports ------------------------------------------------------------------

  /**
   * `reach.report` from a session: the devices it reaches, for at most
   * relay.maxReportTtlMs. It becomes a relayer only of those that consent (see
   * `consent`); the report is also the reporter's own consent that the devices it
   * names relay for it. The answer is the same whichever of the named devices
   * exist or consent: it tells nothing about them.
   */
  async report(s: DeviceSession, a: RequestArgs['reach.report']): Promise<{ ttlMs: number }> {
    const cfg = this.ctx.config.relay;
    const me = `${s.user}/${s.device}`;
    if (this.reporters.get(me)) {
      this.ctx.metrics.reachReports.inc({ result: 'rate_limited' });
      throw new ProtocolError(ErrorCode.RATE_LIMITED, `at most one reach report per ${cfg.minReportIntervalMs} ms`);
    }
    this.reporters.set(me, true);
    const ttlMs = Math.min(a.ttlMs, cfg.maxReportTtlMs);
    const now = Date.now();
    const reporter = { user: s.user, device: s.device };
    const peers = [...new Map(a.peers.filter((p) => !(p.user === s.user && p.device === s.device)).map((p) => [`${p.user}/${p.device}`, p])).values()];
    if (peers.length > 0) await this.reach.addConsents(reporter, peers, now + CONSENT_TTL_MS, now);
    const tiers = await Promise.all(peers.map((p) => this.consent(p, reporter, now)));
    await Promise.all(peers.flatMap((p, i) => (tiers[i] === undefined ? [] : [this.reach.addRelayer(p, reporter, now + ttlMs, tiers[i]!, cfg.maxRelayersPerTarget, now)])));
    this.ctx.metrics.reachReports.inc({ result: 'ok' });
    return { ttlMs };
  }

  /**
   * Whether `target` lets `relayer` relay for it, and as what: one of its user's
   * own devices (registered), a device of a user the target's user lists as a
   * contact and has not blocked, or a device the target itself reported reaching
   * within CONSENT_TTL_MS (and whose user it has not blocked). Anyone else:
   * undefined, and nothing is recorded. Only registered target devices count, so
   * no record is planted under names that do not exist.
   */
  private async consent(target: { user: string; device: string }, relayer: { user: string; device: string }, now: number): Promise<number | undefined> {
    const tier = socialTier(target.user, relayer.user, await this.ports.social.record(target.user));
    if (tier === undefined || (tier === MUTUAL && !consents(await this.reach.read(target.user, target.device), relayer, now))) return undefined;
    return (await this.ports.accounts.devices(target.user)).includes(target.device) ? tier : undefined;
  }

  // ---- wake-ups -----------------------------------------------------------------

  /**
   * The trigger: `user`/`device` is offline and nothing else can reach it (no push
   * target, or its provider failed). Fire and forget; a burst for one target while
   * an attempt runs on this cell adds nothing. The token's hint names this cell (where
   * the message's sender is) if it has room.
   */
  unreachable(user: string, device: string): void {
    const key = `${user}/${device}`;
    if (this.running.has(key)) return this.count('coalesced');
    if (this.running.size >= this.ctx.config.relay.maxInFlight) return this.count('busy');
    this.running.add(key);
    this.wake(user, device)
      .catch((err) => {
        this.ctx.log('relay wake failed', err);
        this.count('error');
      })
      .finally(() => this.running.delete(key));
  }

  private count(result: WakeResult): void {
    this.ctx.metrics.relayWakes.inc({ result });
  }

  /**
   * One wake attempt for `user`/`device`: an online device that reported reaching
   * it recently, preferring the target's own other devices, then its contacts,
   * then relayers with fewer recent relays and on less loaded cells; never one the
   * target blocked. Rate-limited per target and per relayer, cluster-wide.
   */
  async wake(user: string, device: string, near: string = this.ctx.cellId): Promise<WakeResult> {
    const result = await this.attempt(user, device, near);
    this.count(result);
    return result;
  }

  private async attempt(user: string, device: string, near: string): Promise<WakeResult> {
    const cfg = this.ctx.config.relay;
    if (!cfg.enabled) return 'disabled';
    const now = Date.now();
    const target = await this.reach.read(user, device);
    const reported = target.r.filter((r) => r.expiresAt > now);
    if (reported.length === 0) return 'no_relayer';
    if (recentCount(target.w, cfg.windowMs, now) >= cfg.perTargetPerWindow) {
      this.ctx.metrics.relayRateLimited.inc({ kind: 'target' });
      return 'rate_limited_target';
    }
    // Fresh: a cached "online" would skip a device that just left, a cached "offline" wake one that is back.
    if ((await this.ports.directory.lookup(user, true)).some((l) => l.device === device)) return 'online';
    const candidates = await this.candidates(user, target, reported, now);
    if (candidates.length === 0) return 'relayer_offline';
    let chosen: Candidate | undefined;
    for (const c of candidates) {
      if (await this.reach.takeSlot(c.relayer.user, c.relayer.device, 's', cfg.perRelayerPerWindow, cfg.windowMs, now)) {
        chosen = c;
        break;
      }
      this.ctx.metrics.relayRateLimited.inc({ kind: 'relayer' });
    }
    if (!chosen) return 'rate_limited_relayer';
    // Taken last, with a compare-and-set: two cells waking one target at once cannot both pass.
    if (!(await this.reach.takeSlot(user, device, 'w', cfg.perTargetPerWindow, cfg.windowMs, now))) {
      this.ctx.metrics.relayRateLimited.inc({ kind: 'target' });
      return 'rate_limited_target';
    }
    const loads = this.loads();
    const cell = this.hintCell(near, loads);
    if (!cell) return 'no_cell';
    const expiresAt = now + cfg.tokenTtlMs;
    const hint = this.ports.hints.signHintTo(cell, user, device, cfg.tokenTtlMs, now, loads)!;
    const w = signWake({ user, device, hint, issuedAt: now, expiresAt }, this.ports.hints.keys.secretKey);
    const { relayer, loc } = chosen;
    if (loc.cell === this.ctx.cellId) this.deliver(relayer.user, relayer.device, user, device, w);
    else this.ctx.bus.publish(loc.cell, { k: 'rly', u: relayer.user, dev: relayer.device, tu: user, td: device, w });
    return 'sent';
  }

  /**
   * Reported relayers that are online and still have the target's consent (the
   * rules of `consent`, checked again now: a contact removed or blocked since its
   * report, or a mutual consent expired, no longer counts), best first.
   */
  private async candidates(user: string, target: ReachRecord, reported: Relayer[], now: number): Promise<Candidate[]> {
    const users = [...new Set(reported.map((r) => r.user))];
    const [located, social] = await Promise.all([Promise.all(users.map((u) => this.ports.directory.lookup(u))), this.ports.social.record(user)]);
    const where = new Map(users.map((u, i) => [u, located[i]!]));
    const loads = this.loads();
    const online: Array<{ relayer: Relayer; loc: DeviceLocation; tier: number }> = [];
    for (const relayer of reported) {
      const tier = socialTier(user, relayer.user, social);
      if (tier === undefined || (tier === MUTUAL && !consents(target, relayer, now))) continue;
      const loc = where.get(relayer.user)?.find((l) => l.device === relayer.device);
      if (loc) online.push({ relayer, loc, tier });
    }
    const records = await Promise.all(online.map((o) => this.reach.read(o.relayer.user, o.relayer.device)));
    const cfg = this.ctx.config.relay;
    const out = online.map((o, i): Candidate => ({
      ...o,
      // The target's own other device first, then its contacts, then devices it reported itself.
      recent: recentCount(records[i]!.s, cfg.windowMs, now),
      cellLoad: loads.get(o.loc.cell)?.load ?? Number.MAX_SAFE_INTEGER,
    }));
    return out.sort((a, b) => a.tier - b.tier || a.recent - b.recent || a.cellLoad - b.cellLoad);
  }

  /** Gravitation's live cells, less this one while it is cut off from NATS (a woken device could not be served here). */
  private loads(): Map<string, CellLoad> {
    const out = this.ports.hints.loads();
    if (!this.ports.connected()) out.delete(this.ctx.cellId);
    return out;
  }

  /** The cell the token sends the target to: `near` while it is up and under the load cap, else the least loaded. */
  private hintCell(near: string, loads: Map<string, CellLoad>): string | undefined {
    const cap = loadCap(meanLoad(loads), this.ctx.config.gravity.epsilon);
    if ((loads.get(near)?.load ?? Infinity) < cap) return near;
    let best: [string, number] | undefined;
    for (const [cell, l] of loads) if (!best || l.load < best[1]) best = [cell, l.load];
    return best?.[0];
  }

  /** Writes the relay frame to the relayer's session on this cell (from here or from a `rly` envelope). */
  deliver(u: string, dev: string, tu: string, td: string, w: Uint8Array): void {
    const s = this.ctx.hub.session(u, dev);
    if (!s?.isOpen) {
      this.ctx.metrics.relayLost.inc();
      return;
    }
    s.send({ t: 'relay', u: tu, d: td, w });
    this.ctx.metrics.relayRequests.inc();
  }
}
