/*
 * `@gravitas/server/internal`: pieces that tests and benchmarks drive directly
 * (stores, codecs, the damping curve) without a running node. Not part of the
 * product's API and free to change with the code; nothing outside this
 * repository should import it.
 */
export { JetStreamArchive } from './engage/archive.js';
export { decodePredicate } from './engage/campaign-input.js';
export { matches, type Campaign, type CampaignProgress, type CampaignState, type Predicate } from './engage/campaign-types.js';
export { decodeJob, enqueueJob, type CampaignJob } from './engage/jobs.js';
export { PROFILE_HISTORY, ProfileStore, type UserProfile } from './engage/profiles.js';
export type { TrackingRecord } from './engage/records.js';
export { campaignReport, userReport, type ReportSources } from './engage/reports.js';
export { LocalQueryResponder, LOCAL_PAGE, queryUnarchived } from './engage/shipper.js';
export { recordId, TrackingStore, type LocalQuery } from './engage/tracking-store.js';
export { Damper } from './reach/damping.js';

// Features and the cell's plumbing, for unit tests that build one feature on fakes of its ports.
export type { Bus, CellContext, Hub, Log } from './core/context.js';
export type * from './core/ports.js';
export type { BudgetKind, Delivery, DeviceSession, DrainState, StoredRef } from './core/session.js';
export type { Envelope, Invalidation, Item, ChatItem, ReceiptItem } from './core/envelope.js';
export { DeliveryProofs } from './core/proofs.js';
export { CellMetrics } from './infra/metrics.js';
export { Names } from './infra/subjects.js';
export { TurnFlusher, type Flushable } from './infra/turn.js';
export { casModify, casModifyRev, CAS_ATTEMPTS, isCasConflict } from './infra/kv.js';
export { Custody, type CustodyPorts } from './messaging/custody.js';
export { Routing, type RoutingPorts } from './messaging/routing.js';
export { MailboxDrains } from './messaging/drain.js';
export { Groups, type GroupPorts } from './messaging/groups/groups.js';
export type { LogEntry, LogStore } from './messaging/groups/log.js';
export { PushGateway, type PushPorts } from './reach/push-gateway.js';
export { RelayCoordinator, type RelayPorts } from './reach/relay.js';
export { PresenceHub, type PresencePorts } from './social/presence.js';
export type { CasKv } from './infra/kv.js';
export { CampaignStore } from './engage/campaign-store.js';
export { CampaignError } from './engage/campaign-types.js';
export { Expansion, type ProfileSource } from './engage/runner-expand.js';
export { JobRun, Warnings } from './engage/runner-job.js';
export { CampaignJobError, CampaignRecords, decodeLedger, encodeLedger, ledgerKey, type Ledger } from './engage/runner-ledger.js';
export { markerKey, Sending, sentEventId, type SendDeps, type SendMetrics } from './engage/runner-send.js';
export { SessionHub } from './cell/hub.js';
export { CellSessions, type SessionWiring } from './cell/sessions.js';
export { Revocations } from './session/revocations.js';
