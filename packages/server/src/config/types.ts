import type { AdminConfig } from './admin.js';
import type { CampaignConfig, TrackingConfig } from './campaigns.js';
import type { GravityConfig } from './gravity.js';
import type { GroupsConfig } from './groups.js';
import type { Limits } from './limits.js';
import type { MailboxConfig } from './mailbox.js';
import type { NetworkConfig } from './network.js';
import type { PushConfig } from './push.js';
import type { RegistrationConfig } from './registration.js';
import type { RelayConfig } from './relay.js';
import type { WebConfig } from './web.js';

/**
 * The validated configuration of one node. docs/operations.md documents every field; each
 * section's type, defaults and checks live in its own file (limits.ts, web.ts, …), put
 * together by validate.ts.
 */
export interface NodeConfig {
  nodeId: string;
  nats: { servers: string[]; token?: string; user?: string; pass?: string };
  prefix: string;
  cells: number;
  /** TCP listener of cell i on basePort + i; web listener (if web.enabled) on webBasePort + i. 0: the OS picks. */
  listen: { host: string; basePort: number; webBasePort: number };
  web: WebConfig;
  network: NetworkConfig;
  advertiseHost: string;
  admin: AdminConfig;
  dataDir: string;
  /** The cluster's X25519 server key (secret half, base64url). */
  serverKey: string;
  /** Ticket keys, current first; the second, if any, is only accepted (rotation). */
  ticketKeys: Array<{ id: number; key: string }>;
  ticketLifetimeMs: number;
  registration: RegistrationConfig;
  membership: { heartbeatMs: number; timeoutMs: number };
  /** Copies of every JetStream stream and KV bucket in a NATS cluster (1 for one server; 3 in production). */
  replicas: number;
  mailbox: MailboxConfig;
  gravity: GravityConfig;
  tracking: TrackingConfig;
  campaigns: CampaignConfig;
  /** Push gateway and muting (docs/push.md). */
  push: PushConfig;
  /** Wake-ups relayed through peer devices (docs/relay.md). */
  relay: RelayConfig;
  groups: GroupsConfig;
  limits: Limits;
  testHooks: boolean;
}
