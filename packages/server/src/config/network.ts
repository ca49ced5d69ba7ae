import { CAPABILITIES } from '@gravitas/protocol';
import { parseCidr } from '../infra/addresses.js';
import type { ConfigCheck } from './check.js';

/**
 * Where connections come from and how many one source may hold, per cell
 * (docs/security.md, "Connections per source"). A source is a client IP address; its prefix is
 * its /24 (IPv4) or /64 (IPv6).
 */
export interface NetworkConfig {
  /** CIDRs of proxies whose report of the client address is believed: PROXY protocol on TCP, X-Forwarded-For on the web listener. */
  trustedProxies: string[];
  /** Open connections (TCP and web together) per source, and per prefix. */
  maxConnectionsPerSource: number;
  maxConnectionsPerPrefix: number;
  /** Connections still in their handshake (session not open) per source, and per prefix. */
  maxHandshakesPerSource: number;
  maxHandshakesPerPrefix: number;
  /** Chunked-HTTP downstreams waiting for their first upstream per source, and per prefix. */
  maxPendingStreamsPerSource: number;
  maxPendingStreamsPerPrefix: number;
  /** Protocol capabilities this cell grants a client that asks (docs/protocol.md 4.7): by default all it implements. */
  capabilities: string[];
}

export const DEFAULT_NETWORK: NetworkConfig = {
  trustedProxies: [],
  // Carrier-grade NAT puts many users behind one address: generous per source, more per prefix.
  maxConnectionsPerSource: 256,
  maxConnectionsPerPrefix: 2048,
  maxHandshakesPerSource: 32,
  maxHandshakesPerPrefix: 256,
  maxPendingStreamsPerSource: 8,
  maxPendingStreamsPerPrefix: 64,
  capabilities: [...CAPABILITIES],
};

export function validateNetwork(c: ConfigCheck): NetworkConfig {
  const N = DEFAULT_NETWORK;
  const proxies = c.strings('network.trustedProxies', N.trustedProxies, (cs) => cs.length <= 1024, 'must be a list of CIDRs (e.g. ["10.0.0.0/8", "fd00::/8"]; comma-separated in env/flag), at most 1024', []);
  for (const cidr of proxies) {
    const p = parseCidr(cidr);
    if (typeof p === 'string') c.fail('network.trustedProxies', p);
    // Trusting every address would let any client name any source (and so escape its caps).
    else if (p.prefix === 0) c.fail('network.trustedProxies', `"${cidr}" trusts every address: list the proxies' own addresses or networks`);
  }
  const network: NetworkConfig = {
    trustedProxies: proxies,
    maxConnectionsPerSource: c.int('network.maxConnectionsPerSource', N.maxConnectionsPerSource, 1, 1_000_000),
    maxConnectionsPerPrefix: c.int('network.maxConnectionsPerPrefix', N.maxConnectionsPerPrefix, 1, 1_000_000),
    maxHandshakesPerSource: c.int('network.maxHandshakesPerSource', N.maxHandshakesPerSource, 1, 100_000),
    maxHandshakesPerPrefix: c.int('network.maxHandshakesPerPrefix', N.maxHandshakesPerPrefix, 1, 100_000),
    maxPendingStreamsPerSource: c.int('network.maxPendingStreamsPerSource', N.maxPendingStreamsPerSource, 1, 1_000_000),
    maxPendingStreamsPerPrefix: c.int('network.maxPendingStreamsPerPrefix', N.maxPendingStreamsPerPrefix, 1, 1_000_000),
    capabilities: c.strings('network.capabilities', N.capabilities, (cs) => cs.every((x) => CAPABILITIES.includes(x)), `must be a list of protocol capabilities out of ${CAPABILITIES.join(', ')}`, N.capabilities),
  };
  for (const k of ['Connections', 'Handshakes', 'PendingStreams'] as const) {
    if (network[`max${k}PerPrefix`] < network[`max${k}PerSource`]) c.fail(`network.max${k}PerPrefix`, `must be at least network.max${k}PerSource (${network[`max${k}PerSource`]}): a prefix holds its sources`);
  }
  return network;
}
