import { HTTP_UP_ROTATE_BYTES, HTTP_UP_ROTATE_FRAMES } from '@gravitas/protocol';
import type { ConfigCheck } from './check.js';
import { DEFAULT_LIMITS, type Limits } from './limits.js';

/** The web listener of each cell: WebSocket and chunked HTTP (docs/transports.md). */
export interface WebConfig {
  /** Off: cells have only their TCP listener. */
  enabled: boolean;
  /** Origins a browser may connect from ("*": any; the protocol authenticates, no cookies are used). */
  corsOrigins: string[];
  /** A request head (request line and headers) longer than this is refused (HEADERS_TOO_LARGE). */
  maxHeaderBytes: number;
  /** A request head must be complete within this time (REQUEST_TIMEOUT: slowloris). */
  headerTimeoutMs: number;
  /** Largest chunk of an upstream body (CHUNK_TOO_LARGE); at least limits.maxFrameBytes + 4. */
  maxChunkBytes: number;
  /** Chunks in one upstream request (TOO_MANY_CHUNKS); the SDK starts a new request well before. */
  maxChunksPerRequest: number;
  /** Body bytes of one upstream request (BODY_TOO_LARGE). */
  maxBodyBytes: number;
  /** Downstreams no upstream has claimed yet (beyond: STREAM_BUSY); each expires with the handshake timeout. */
  maxPendingStreams: number;
  /** Raw connections on a cell's web listener (beyond: 503 BUSY). Default: 2 × limits.maxConnectionsPerCell. */
  maxConnections: number;
}

export const DEFAULT_WEB: WebConfig = {
  enabled: true,
  corsOrigins: ['*'],
  maxHeaderBytes: 8192,
  headerTimeoutMs: 10_000,
  maxChunkBytes: 128 * 1024,
  maxChunksPerRequest: 100_000,
  maxBodyBytes: 64 * 1024 * 1024,
  maxPendingStreams: 1024,
  maxConnections: 2 * DEFAULT_LIMITS.maxConnectionsPerCell,
};

const ORIGIN = /^https?:\/\/[A-Za-z0-9.:[\]-]+$/;

/** The web section; its maxConnections default and maxChunkBytes floor follow `limits`. */
export function validateWeb(c: ConfigCheck, limits: Limits): WebConfig {
  const W = DEFAULT_WEB;
  const origins = c.strings('web.corsOrigins', W.corsOrigins, (os) => os.length > 0 && os.every((o) => o === '*' || ORIGIN.test(o)), 'must be a list of origins (http(s)://host[:port]) or "*"', W.corsOrigins);
  const web: WebConfig = {
    enabled: c.bool('web.enabled', W.enabled),
    corsOrigins: origins,
    maxHeaderBytes: c.int('web.maxHeaderBytes', W.maxHeaderBytes, 1024, 1024 * 1024),
    headerTimeoutMs: c.int('web.headerTimeoutMs', W.headerTimeoutMs, 100, 120_000),
    maxChunkBytes: c.int('web.maxChunkBytes', W.maxChunkBytes, 1028, 16 * 1024 * 1024),
    // Floors above what the SDK sends per upstream request (it starts a new one before), with room for re-chunking proxies.
    maxChunksPerRequest: c.int('web.maxChunksPerRequest', W.maxChunksPerRequest, 4 * HTTP_UP_ROTATE_FRAMES, 100_000_000),
    maxBodyBytes: c.int('web.maxBodyBytes', W.maxBodyBytes, 2 * HTTP_UP_ROTATE_BYTES, 2 ** 40),
    maxPendingStreams: c.int('web.maxPendingStreams', W.maxPendingStreams, 1, 1_000_000),
    maxConnections: c.int('web.maxConnections', 2 * limits.maxConnectionsPerCell, 1, 2_000_000),
  };
  if (web.maxChunkBytes < limits.maxFrameBytes + 4) c.fail('web.maxChunkBytes', `must be at least limits.maxFrameBytes + 4 (${limits.maxFrameBytes + 4}): the SDK sends one frame per chunk`);
  return web;
}
