/*
 * A node's configuration: types.ts (NodeConfig), one file per section with its type, defaults
 * and checks (limits.ts, web.ts, network.ts, admin.ts, registration.ts, mailbox.ts, gravity.ts,
 * campaigns.ts, groups.ts, push.ts, relay.ts), the checker kit they share (check.ts), the
 * composition (validate.ts) and the sources (load.ts: file < env < flags < overrides).
 */
export type { NodeConfig } from './types.js';
export { DEFAULT_LIMITS, type Limits } from './limits.js';
export { DEFAULT_MAILBOX, type MailboxConfig } from './mailbox.js';
export { DEFAULT_GRAVITY, type GravityConfig } from './gravity.js';
export { DEFAULT_CAMPAIGNS, DEFAULT_TRACKING, type CampaignConfig, type TrackingConfig } from './campaigns.js';
export { DEFAULT_WEB, type WebConfig } from './web.js';
export { DEFAULT_NETWORK, type NetworkConfig } from './network.js';
export { DEFAULT_ADMIN, type AdminConfig } from './admin.js';
export { CREDENTIAL_ALGORITHMS, type CredentialAlgorithm, type CredentialConfig, type RegistrationConfig } from './registration.js';
export { DEFAULT_GROUPS, type GroupsConfig } from './groups.js';
export { ENV_VARS, FLAGS, loadConfig, type ConfigSources } from './load.js';
export { FD_CAP_SETTINGS, isExplicit, validateConfig, type FdCapSetting } from './validate.js';
