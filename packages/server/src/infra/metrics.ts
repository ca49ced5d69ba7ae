import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { monitorEventLoopDelay } from 'node:perf_hooks';

/**
 * One registry per cell; the supervisor merges them into one exposition. Counters
 * and gauges without a `cell` label are summed over cells by the aggregation; the
 * event-loop lag keeps its `cell` label so each cell's lag stays visible.
 */
export class CellMetrics {
  readonly registry = new Registry();
  readonly connections = new Gauge({ name: 'gravitas_connections', help: 'Open client connections carrying a session, by transport (tcp, ws, http)', labelNames: ['transport'] as const, registers: [this.registry] });
  readonly sessions = new Gauge({ name: 'gravitas_sessions', help: 'Authenticated sessions', registers: [this.registry] });
  readonly framesIn = new Counter({ name: 'gravitas_frames_in_total', help: 'Frames received from clients', registers: [this.registry] });
  readonly framesOut = new Counter({ name: 'gravitas_frames_out_total', help: 'Frames sent to clients', registers: [this.registry] });
  readonly messagesIn = new Counter({ name: 'gravitas_messages_in_total', help: 'Chat messages accepted from senders', registers: [this.registry] });
  readonly messagesOut = new Counter({ name: 'gravitas_messages_out_total', help: 'Chat messages written to recipient devices', registers: [this.registry] });
  readonly deliveries = new Counter({ name: 'gravitas_deliveries_total', help: 'Deliveries to recipient devices by path', labelNames: ['path'] as const, registers: [this.registry] });
  readonly handshakes = new Counter({ name: 'gravitas_handshakes_total', help: 'Handshakes by kind and result (ok or an error code)', labelNames: ['kind', 'result'] as const, registers: [this.registry] });
  readonly handshakeSeconds = new Histogram({
    name: 'gravitas_handshake_duration_seconds',
    help: 'Time from first flight to key confirmation',
    labelNames: ['kind'] as const,
    buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
    registers: [this.registry],
  });
  readonly sourceRefusals = new Counter({
    name: 'gravitas_source_refusals_total',
    help: 'Connections, handshakes and chunked-HTTP downstreams refused by a per-source cap (SOURCE_LIMIT), by limit (connections, handshakes, streams) and scope (source: one address; prefix: its /24 or /64)',
    labelNames: ['limit', 'scope'] as const,
    registers: [this.registry],
  });
  readonly sourceEntries = new Gauge({ name: 'gravitas_source_entries', help: 'Entries of the per-source tables (addresses and prefixes holding a slot), read at scrape time; 0 when the cell holds no connection', registers: [this.registry] });
  readonly protocolErrors = new Counter({ name: 'gravitas_protocol_errors_total', help: 'Error frames sent to clients by code', labelNames: ['code'] as const, registers: [this.registry] });
  readonly eventLoopLag = new Gauge({ name: 'gravitas_event_loop_lag_seconds', help: 'Event-loop delay p99 over the last interval, per cell', labelNames: ['cell'] as const, registers: [this.registry] });
  readonly natsReconnects = new Counter({ name: 'gravitas_nats_reconnects_total', help: 'Reconnects of the cell NATS connection', registers: [this.registry] });
  /** Largest unsent backlog of any connection of the cell since the previous scrape (bounded by limits.maxOutboundBytes + one frame). */
  readonly outboundMax = new Gauge({ name: 'gravitas_connection_outbound_max_bytes', help: 'Largest per-connection unsent backlog seen since the previous scrape (after each write), per cell', labelNames: ['cell'] as const, registers: [this.registry] });
  readonly mailboxStores = new Counter({ name: 'gravitas_mailbox_stores_total', help: 'Items written to device mailboxes (JetStream acknowledged)', registers: [this.registry] });
  readonly mailboxExpired = new Counter({ name: 'gravitas_mailbox_expired_total', help: 'Undelivered mailbox items expired by retention', registers: [this.registry] });
  readonly rateLimited = new Counter({ name: 'gravitas_rate_limited_total', help: 'Client operations refused by a per-session or per-account limit, by kind (msg, fanout, read, req, control)', labelNames: ['kind'] as const, registers: [this.registry] });
  readonly revokedSessions = new Counter({ name: 'gravitas_revoked_sessions_total', help: 'Live sessions ended because their device was removed or their account suspended', registers: [this.registry] });
  readonly registrations = new Counter({ name: 'gravitas_registrations_total', help: 'Devices added to accounts, by proof (open, token, credential, link)', labelNames: ['proof'] as const, registers: [this.registry] });
  readonly cookiesSent = new Counter({ name: 'gravitas_handshake_cookies_total', help: 'Cookie challenges sent under handshake load', registers: [this.registry] });
  readonly groupMessages = new Counter({ name: 'gravitas_group_messages_total', help: 'Group messages stored in group logs (JetStream acknowledged)', registers: [this.registry] });
  readonly groupDeliveries = new Counter({ name: 'gravitas_group_deliveries_total', help: 'Group messages written to member devices, by path (live: following the log head; catchup: reading behind it)', labelNames: ['path'] as const, registers: [this.registry] });
  readonly groupLogReads = new Counter({ name: 'gravitas_group_log_reads_total', help: 'Group log reads: verify (leader reads extending a cell feed) and catchup (messages read by device catch-up)', labelNames: ['kind'] as const, registers: [this.registry] });
  readonly groupCursorWrites = new Counter({ name: 'gravitas_group_cursor_writes_total', help: 'Coalesced KV writes of device group cursors', registers: [this.registry] });
  readonly groupFanoutSeconds = new Histogram({
    name: 'gravitas_group_fanout_seconds',
    help: 'Per cell and group log read: verifying announced group messages in the log, then writing them to every local member device that follows the group',
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1],
    registers: [this.registry],
  });
  readonly groupFeeds = new Gauge({ name: 'gravitas_group_feeds', help: 'Groups with member devices on this cell (one log feed each)', registers: [this.registry] });
  readonly presenceWatched = new Gauge({ name: 'gravitas_presence_watched', help: 'Users whose presence this cell watches (one NATS subscription each)', registers: [this.registry] });
  readonly presenceRefused = new Counter({ name: 'gravitas_presence_watch_refused_total', help: 'Contacts not watched because the cell reached its presence watch limits', registers: [this.registry] });
  readonly typingDropped = new Counter({ name: 'gravitas_typing_dropped_total', help: 'Typing indicators dropped over the per-session rate', registers: [this.registry] });

  readonly migrations = new Counter({ name: 'gravitas_gravity_migrations_total', help: 'Sessions told to move to another cell (rebalance: traffic exchange; associate: toward whoever messaged them)', labelNames: ['why'] as const, registers: [this.registry] });
  readonly hintsFollowed = new Counter({ name: 'gravitas_gravity_hints_followed_total', help: 'Sessions that arrived on the cell a hint sent them to', registers: [this.registry] });
  readonly exchanges = new Counter({ name: 'gravitas_gravity_exchanges_total', help: 'Exchange attempts this cell started, by result (moved, empty, busy, malformed)', labelNames: ['result'] as const, registers: [this.registry] });
  readonly locality = new Gauge({ name: 'gravitas_gravity_locality', help: 'Share of live deliveries since the previous scrape whose sender and recipient sessions are on the same cell, per cell', labelNames: ['cell'] as const, registers: [this.registry] });
  readonly balance = new Gauge({ name: 'gravitas_gravity_balance', help: 'Max/mean sessions over live cells, as each cell sees the heartbeats', labelNames: ['cell'] as const, registers: [this.registry] });

  // Wake-ups relayed through peer devices (docs/relay.md).
  readonly relayWakes = new Counter({ name: 'gravitas_relay_wakes_total', help: 'Wake attempts for offline devices, by result (sent, or why none was sent)', labelNames: ['result'] as const, registers: [this.registry] });
  readonly relayRequests = new Counter({ name: 'gravitas_relay_requests_total', help: 'Relay requests written to relayer sessions on this cell', registers: [this.registry] });
  readonly relayRateLimited = new Counter({ name: 'gravitas_relay_rate_limited_total', help: 'Relay requests refused by a rate limit (target: the device to wake; relayer: a candidate relayer)', labelNames: ['kind'] as const, registers: [this.registry] });
  readonly relayLost = new Counter({ name: 'gravitas_relay_lost_total', help: 'Relay requests whose relayer session was gone when they reached its cell', registers: [this.registry] });
  readonly reachReports = new Counter({ name: 'gravitas_reach_reports_total', help: 'Reachability reports from devices, by result (ok, rate_limited)', labelNames: ['result'] as const, registers: [this.registry] });

  // Campaign tracking tiers (docs/campaigns.md). The gauges are set by the shipper on cell 0 only, so the sum over cells is the node's value.
  readonly trackingIntake = new Counter({ name: 'gravitas_tracking_intake_total', help: 'Campaign feedback requests by result (stored, duplicate, retry_later, bad_message, not_found, not_allowed, error)', labelNames: ['result'] as const, registers: [this.registry] });
  readonly trackingArchiveLag = new Gauge({ name: 'gravitas_tracking_archive_lag_seconds', help: "Age of the node's oldest tracking record not yet archived (0: none waiting)", registers: [this.registry] });
  readonly trackingUnarchived = new Gauge({ name: 'gravitas_tracking_unarchived_records', help: 'Tracking records in the node store not yet acknowledged by the archive', registers: [this.registry] });
  readonly trackingLocalRecords = new Gauge({ name: 'gravitas_tracking_local_records', help: 'Tracking records in the node store (archived or not)', registers: [this.registry] });
  readonly trackingLocalBytes = new Gauge({ name: 'gravitas_tracking_local_bytes', help: 'Accounted bytes of the node tracking store (bounded by tracking.maxBytes)', registers: [this.registry] });
  readonly trackingShipped = new Counter({ name: 'gravitas_tracking_shipped_total', help: 'Tracking records acknowledged by the archive and marked archived', registers: [this.registry] });
  readonly trackingShipFailures = new Counter({ name: 'gravitas_tracking_ship_failures_total', help: 'Shipping rounds that failed (archive unreachable or refusing); retried with backoff', registers: [this.registry] });
  readonly trackingEvicted = new Counter({ name: 'gravitas_tracking_evicted_total', help: 'Archived tracking records dropped from the node store (age or byte budget)', registers: [this.registry] });

  // Push gateway (docs/push.md). `provider`: webpush or webhook.
  readonly pushQueueDepth = new Gauge({ name: 'gravitas_push_queue_depth', help: 'Push requests waiting for a connection slot (bounded by push.queueSize)', registers: [this.registry] });
  readonly pushInFlight = new Gauge({ name: 'gravitas_push_in_flight', help: 'Push HTTP requests in flight (bounded by push.concurrency)', registers: [this.registry] });
  readonly pushRetrying = new Gauge({ name: 'gravitas_push_retrying', help: 'Push requests waiting out a retry backoff', registers: [this.registry] });
  readonly pushWindows = new Gauge({ name: 'gravitas_push_windows', help: 'Open coalescing windows (device and chat; bounded by push.maxPending)', registers: [this.registry] });
  readonly pushSent = new Counter({ name: 'gravitas_push_sent_total', help: 'Pushes accepted by the provider', labelNames: ['provider'] as const, registers: [this.registry] });
  readonly pushFailed = new Counter({ name: 'gravitas_push_failed_total', help: 'Pushes that failed for good (after retries, or refused)', labelNames: ['provider'] as const, registers: [this.registry] });
  readonly pushGone = new Counter({ name: 'gravitas_push_gone_total', help: 'Targets the provider reported gone (404/410), removed', labelNames: ['provider'] as const, registers: [this.registry] });
  readonly pushRetries = new Counter({ name: 'gravitas_push_retries_total', help: 'Push attempts retried after a transient failure', labelNames: ['provider'] as const, registers: [this.registry] });
  readonly pushCoalesced = new Counter({ name: 'gravitas_push_coalesced_total', help: 'Messages folded into a push that announced an earlier one', labelNames: ['provider'] as const, registers: [this.registry] });
  readonly pushSuppressed = new Counter({ name: 'gravitas_push_suppressed_total', help: 'Pushes not sent because the chat is muted (mutedPush: suppress)', labelNames: ['provider'] as const, registers: [this.registry] });
  readonly pushDropped = new Counter({ name: 'gravitas_push_dropped_total', help: 'Pushes dropped because the queue or the coalescing table was full', labelNames: ['provider'] as const, registers: [this.registry] });
  readonly pushDamped = new Counter({ name: 'gravitas_push_damped_total', help: 'Coalescing windows widened by rate damping', registers: [this.registry] });
  readonly custodyPendingMax = new Gauge({ name: 'gravitas_custody_pending_max', help: 'Most messages held under custody at once since the previous scrape, per cell (bounded by limits.maxPendingPerCell)', labelNames: ['cell'] as const, registers: [this.registry] });
  readonly shed = new Counter({ name: 'gravitas_shed_total', help: 'Sends refused with BUSY because the cell was overloaded (too much under custody, or its event loop late)', registers: [this.registry] });
  readonly pushUnreachable = new Counter({ name: 'gravitas_push_unreachable_total', help: 'Offline devices with no usable push target (none registered, or every attempt failed)', registers: [this.registry] });

  private readonly loop = monitorEventLoopDelay({ resolution: 10 });
  private timer: NodeJS.Timeout | undefined;

  constructor(readonly cellId: string) {
    this.loop.enable();
    this.timer = setInterval(() => {
      this.eventLoopLag.set({ cell: cellId }, this.loop.percentile(99) / 1e9);
      this.loop.reset();
    }, 1000);
    this.timer.unref();
  }

  /** Current p99 event-loop delay in ms (for heartbeats). */
  lagMs(): number {
    return this.loop.count > 0 ? this.loop.percentile(99) / 1e6 : 0;
  }

  stop(): void {
    clearInterval(this.timer);
    this.loop.disable();
  }
}
