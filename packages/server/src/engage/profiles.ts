import type { NatsConnection } from '@nats-io/transport-node';
import {
  DeliverPolicy, DiscardPolicy, jetstream, jetstreamManager, RetentionPolicy, StorageType,
  type Consumer, type JetStreamClient, type JetStreamManager, type StoredMsg,
} from '@nats-io/jetstream';
import { ErrorCode, pack, PROFILE_LIMITS, ProtocolError, unpack, type ProfilePatch, type ProfileValue, type RequestArgs } from '@gravitas/protocol';
import type { CellContext } from '../core/context.js';
import type { ProfilesPort } from '../core/ports.js';
import type { DeviceSession } from '../core/session.js';
import { API_TIMEOUT_MS, deadline, ensureStream, isNotFound, lastOn, StorageError } from '../infra/jetstream.js';
import { isCasConflict } from '../infra/nats.js';
import { ReadThrough, TtlCache } from '../infra/ttl-cache.js';
import type { Names } from '../infra/subjects.js';

/*
 * Versioned profiles (docs/campaigns.md, "Versioned profiles"). One JetStream
 * subject per user; every change publishes the user's whole attribute map, so
 * one message is one version and its stream sequence is the version number.
 * Tracking records carry that number; reports read the version back with `at`.
 */

/**
 * Versions kept per user (older ones are dropped by the stream, oldest first).
 * 1000 covers years of ordinary profile churn — longer than the tracking archive
 * keeps records (`tracking.archiveMaxAgeMs`, 400 days by default) — while bounding
 * one user's history to 1000 × 8 KiB.
 */
export const PROFILE_HISTORY = 1000;
/**
 * Compare-and-set attempts of one `set` before CONFLICT. Not infra/kv.ts
 * casModify: this compare-and-set is a publish to the user's stream subject
 * expecting its last sequence, whose new sequence is the version `set` answers;
 * casModify works on KV keys. Few attempts: a profile has one writer at a time
 * in practice, and CONFLICT tells a client to try again.
 */
const CAS_ATTEMPTS = 5;
/** The version cache: invalidated cluster-wide on every change; the TTL bounds a lost invalidation. */
const VERSION_CACHE_MAX = 100_000;
const VERSION_CACHE_TTL_MS = 60_000;
/** Messages per fetch of a listing. */
const LIST_BATCH = 256;

export type ProfileAttrs = Record<string, ProfileValue>;

/** One version of a user's profile. Version 0 is "no profile yet" (no attributes). */
export interface ProfileVersion {
  version: number;
  attrs: ProfileAttrs;
  /** When this version was stored (ms); absent for version 0. */
  at?: number;
}

export interface UserProfile extends ProfileVersion {
  user: string;
}

const isValue = (v: unknown): v is ProfileValue =>
  typeof v === 'boolean' || (typeof v === 'number' && Number.isFinite(v)) || (typeof v === 'string' && v.length <= PROFILE_LIMITS.maxStringLength);

/**
 * Decodes a stored attribute map. A foreign writer's malformed entries are left
 * out rather than failing the read; `__proto__` never becomes a key (msgpackr
 * would rename it, and assigning it changes an object's prototype).
 */
export function decodeAttrs(data: Uint8Array): ProfileAttrs {
  let o: unknown;
  try {
    o = unpack(data);
  } catch {
    return {};
  }
  const out: ProfileAttrs = {};
  if (typeof o !== 'object' || o === null || Array.isArray(o)) return out;
  for (const [k, v] of Object.entries(o as Record<string, unknown>)) {
    if (k !== '__proto__' && k.length <= PROFILE_LIMITS.maxNameLength && isValue(v)) out[k] = v;
  }
  return out;
}

function sameAttrs(a: ProfileAttrs, b: ProfileAttrs): boolean {
  const ka = Object.keys(a);
  return ka.length === Object.keys(b).length && ka.every((k) => Object.hasOwn(b, k) && a[k] === b[k]);
}

/** The profile after `patch`: null removes an attribute, anything else sets it. */
export function applyPatch(cur: ProfileAttrs, patch: ProfilePatch): ProfileAttrs {
  const next: ProfileAttrs = { ...cur };
  for (const [k, v] of Object.entries(patch)) {
    if (k === '__proto__') throw new ProtocolError(ErrorCode.BAD_MESSAGE, 'field "attrs.__proto__" is not an attribute name');
    if (v === null) delete next[k];
    else next[k] = v;
  }
  return next;
}

/**
 * The NATS side of profiles, usable from a cell or from the node's main thread
 * (the admin API): needs only a connection. `onChange` hears every version it
 * writes (the cell wrapper updates its cache and tells the cluster).
 */
export class ProfileStore {
  readonly js: JetStreamClient;
  private jsm: JetStreamManager | undefined;

  constructor(
    readonly nc: NatsConnection,
    readonly names: Names,
    /** Copies of the stream (NodeConfig.replicas). */
    readonly replicas: number,
    private readonly onChange: (user: string, version: number) => void = () => undefined,
  ) {
    this.js = jetstream(nc, { timeout: API_TIMEOUT_MS });
  }

  /**
   * Creates the stream or brings it to this config (idempotent across cells and
   * nodes). Limits retention, one subject per user keeping PROFILE_HISTORY
   * versions (discard old: a full history drops that user's oldest version, never
   * another user's current one); no stream-wide cap for the same reason — the
   * JetStream server's max_file_store bounds it. No direct gets: reads go to the
   * leader and see what was just written.
   */
  async start(): Promise<void> {
    const jsm = await this.manager();
    await ensureStream(jsm, {
      name: this.names.profilesStream,
      subjects: [this.names.profileSubjects],
      retention: RetentionPolicy.Limits,
      storage: StorageType.File,
      num_replicas: this.replicas,
      max_msgs_per_subject: PROFILE_HISTORY,
      discard: DiscardPolicy.Old,
      // Room for the headers of a compare-and-set publish on top of the largest map.
      max_msg_size: PROFILE_LIMITS.maxBytes + 1024,
      allow_direct: false,
    });
  }

  private async manager(): Promise<JetStreamManager> {
    this.jsm ??= await jetstreamManager(this.nc, { timeout: API_TIMEOUT_MS });
    return this.jsm;
  }

  private toVersion(m: StoredMsg): ProfileVersion {
    return { version: m.seq, attrs: decodeAttrs(m.data), at: m.time.getTime() };
  }

  /** The current profile of `user` (version 0 and no attributes when there is none). */
  async get(user: string): Promise<ProfileVersion> {
    const m = await this.last(user);
    return m ? this.toVersion(m) : { version: 0, attrs: {} };
  }

  private async last(user: string): Promise<StoredMsg | null> {
    try {
      return await lastOn(await this.manager(), this.names.profilesStream, this.names.profileSubject(user));
    } catch (err) {
      throw asStorageError(err, 'reading a profile');
    }
  }

  /** The current version number of `user` (0: no profile yet), read from the stream leader. */
  async version(user: string): Promise<number> {
    return (await this.last(user))?.seq ?? 0;
  }

  /**
   * Version `version` of `user`'s profile: NOT_FOUND when that sequence is not
   * one of this user's versions (another user's, or dropped from the history).
   * Version 0 is the empty profile every user starts with.
   */
  async at(user: string, version: number): Promise<ProfileVersion> {
    if (version === 0) return { version: 0, attrs: {} };
    if (!Number.isSafeInteger(version) || version < 0) throw new ProtocolError(ErrorCode.BAD_MESSAGE, 'a profile version is a non-negative integer');
    const jsm = await this.manager();
    let m: StoredMsg | null;
    try {
      m = await deadline(
        jsm.streams.getMessage(this.names.profilesStream, { seq: version }).catch((err) => {
          if (isNotFound(err)) return null;
          throw err;
        }),
        'reading a profile version',
      );
    } catch (err) {
      throw asStorageError(err, 'reading a profile version');
    }
    if (!m || m.subject !== this.names.profileSubject(user)) throw new ProtocolError(ErrorCode.NOT_FOUND, `${user} has no profile version ${version} (never, or no longer kept)`);
    return this.toVersion(m);
  }

  /**
   * Applies `patch` (validated by decodeProfilePatch) and stores the merged map as
   * a new version: read the last version from the leader, merge, check the limits,
   * publish expecting that version to still be the last (compare-and-set), and on
   * a conflict start over. A patch that changes nothing writes nothing and answers
   * the current version, which also makes a retried set (after a lost answer)
   * harmless.
   */
  async set(user: string, patch: ProfilePatch): Promise<ProfileVersion> {
    const subject = this.names.profileSubject(user);
    for (let attempt = 0; attempt < CAS_ATTEMPTS; attempt++) {
      const last = await this.last(user);
      const cur = last ? this.toVersion(last) : { version: 0, attrs: {} };
      const attrs = applyPatch(cur.attrs, patch);
      if (sameAttrs(attrs, cur.attrs)) return cur;
      const count = Object.keys(attrs).length;
      if (count > PROFILE_LIMITS.maxAttrs) {
        throw new ProtocolError(ErrorCode.BAD_MESSAGE, `a profile may hold at most ${PROFILE_LIMITS.maxAttrs} attributes (this change makes ${count})`);
      }
      const data = pack(attrs);
      if (data.length > PROFILE_LIMITS.maxBytes) {
        throw new ProtocolError(ErrorCode.BAD_MESSAGE, `a profile may take at most ${PROFILE_LIMITS.maxBytes} bytes encoded (this change makes ${data.length})`);
      }
      let seq: number;
      try {
        seq = (await this.js.publish(subject, data, { expect: { lastSubjectSequence: cur.version } })).seq;
      } catch (err) {
        if (isCasConflict(err)) {
          // Another writer won: jittered pause so that two loops do not keep colliding.
          await new Promise((r) => setTimeout(r, Math.random() * 20 * (attempt + 1)));
          continue;
        }
        throw asStorageError(err, 'storing a profile');
      }
      this.onChange(user, seq);
      return { version: seq, attrs, at: Date.now() };
    }
    throw new ProtocolError(ErrorCode.CONFLICT, `the profile of ${user} is being changed concurrently; try again`);
  }

  /**
   * The latest version of every user's profile, each user once, in stream order:
   * an ordered consumer delivering the last message per subject. It reads the set
   * that existed when it was created (its pending count then), so it ends even
   * while profiles keep changing; a user changed since may appear with the newer
   * version. For the campaign runner's predicate audiences.
   */
  async *all(): AsyncGenerator<UserProfile> {
    const stream = this.names.profilesStream;
    const prefix = this.names.profileSubject('');
    let consumer: Consumer;
    try {
      consumer = await deadline(
        this.js.consumers.get(stream, { filter_subjects: this.names.profileSubjects, deliver_policy: DeliverPolicy.LastPerSubject }),
        'creating a profile reader',
      );
    } catch (err) {
      throw asStorageError(err, 'listing profiles');
    }
    try {
      let left = (await consumer.info(true)).num_pending;
      while (left > 0) {
        const batch = await deadline(consumer.fetch({ max_messages: Math.min(left, LIST_BATCH), expires: 5000 }), 'listing profiles');
        let got = 0;
        for await (const m of batch) {
          got++;
          left--;
          if (m.subject.startsWith(prefix)) yield { user: m.subject.slice(prefix.length), version: m.seq, attrs: decodeAttrs(m.data), at: m.time.getTime() };
        }
        // Nothing within the expiry although the creation count says more: a stalled stream.
        if (got === 0) throw new StorageError(ErrorCode.STORAGE_UNAVAILABLE, 'listing profiles stalled');
      }
    } finally {
      consumer.delete().catch(() => undefined);
    }
  }
}

/** A JetStream failure as the retryable STORAGE_UNAVAILABLE (coded errors pass through). */
function asStorageError(err: unknown, what: string): ProtocolError {
  if (err instanceof ProtocolError) return err;
  return new StorageError(ErrorCode.STORAGE_UNAVAILABLE, `${what} failed: ${(err as Error).message}`, { cause: err });
}

/**
 * A cell's profiles: the `profile.get` / `profile.set` requests of its sessions,
 * and the version numbers the tracking intake stamps on records, cached and kept
 * fresh by cluster-wide invalidations.
 */
export class Profiles implements ProfilesPort {
  readonly store: ProfileStore;
  private readonly versions = new ReadThrough<string, number>(new TtlCache(VERSION_CACHE_MAX, VERSION_CACHE_TTL_MS));

  constructor(ctx: CellContext) {
    this.store = new ProfileStore(ctx.nc, ctx.names, ctx.config.replicas, (user, version) => {
      this.versions.set(user, version);
      ctx.bus.invalidate({ kind: 'profile', key: user });
    });
  }

  async start(): Promise<void> {
    await this.store.start();
  }

  /** A `req` of area profile (arguments already validated). */
  async handle(s: DeviceSession, op: string, args: unknown): Promise<unknown> {
    switch (op) {
      case 'profile.get': {
        const { version, attrs } = await this.store.get(s.user);
        return { version, attrs };
      }
      case 'profile.set': {
        const { version } = await this.store.set(s.user, (args as RequestArgs['profile.set']).attrs);
        return { version };
      }
      default:
        throw new ProtocolError(ErrorCode.NOT_ALLOWED, `${op} is not a profile operation`);
    }
  }

  /** The current profile version of `user` (0: none), from the cache when it is there. */
  version(user: string): Promise<number> {
    return this.versions.get(user, () => this.store.version(user));
  }

  /** The latest profile of every user (ProfileStore.all): a predicate audience's source. */
  all(): AsyncIterable<UserProfile> {
    return this.store.all();
  }

  /** Another cell (or this one, or the admin API) changed the profile of `user`. */
  invalidate(user: string): void {
    this.versions.invalidate(user);
  }

  async stop(): Promise<void> {}
}
