/**
 * Stable error codes shared by server and clients. Clients switch on `code`; the
 * human text may change. Every code here must be documented in docs/protocol.md
 * (a test enforces it).
 */
export const ErrorCode = {
  // framing and decoding
  FRAME_TOO_LARGE: 'FRAME_TOO_LARGE',
  FRAME_TRUNCATED: 'FRAME_TRUNCATED',
  DECODE_FAILED: 'DECODE_FAILED',
  BAD_MESSAGE: 'BAD_MESSAGE',
  UNKNOWN_TYPE: 'UNKNOWN_TYPE',
  UNEXPECTED_MESSAGE: 'UNEXPECTED_MESSAGE',
  // handshake
  UNSUPPORTED_VERSION: 'UNSUPPORTED_VERSION',
  HANDSHAKE_FAILED: 'HANDSHAKE_FAILED',
  HANDSHAKE_REPLAY: 'HANDSHAKE_REPLAY',
  HANDSHAKE_STALE: 'HANDSHAKE_STALE',
  HANDSHAKE_TIMEOUT: 'HANDSHAKE_TIMEOUT',
  BAD_PUBLIC_KEY: 'BAD_PUBLIC_KEY',
  UNKNOWN_DEVICE: 'UNKNOWN_DEVICE',
  REGISTRATION_DENIED: 'REGISTRATION_DENIED',
  DEVICE_KEY_MISMATCH: 'DEVICE_KEY_MISMATCH',
  /** The device was removed from its account: its key and tickets are refused on every cell, its sessions end. */
  DEVICE_REVOKED: 'DEVICE_REVOKED',
  /** The account is suspended by an operator: every device is refused and every session ends. */
  ACCOUNT_SUSPENDED: 'ACCOUNT_SUSPENDED',
  TICKET_INVALID: 'TICKET_INVALID',
  TICKET_EXPIRED: 'TICKET_EXPIRED',
  TICKET_REPLAYED: 'TICKET_REPLAYED',
  BUSY: 'BUSY',
  // connect hints (never sent by the server: the SDK reports them when it ignores a hint)
  HINT_INVALID: 'HINT_INVALID',
  HINT_EXPIRED: 'HINT_EXPIRED',
  // wake tokens relayed by a peer device (never sent by the server: the SDK reports them when it ignores a token)
  WAKE_INVALID: 'WAKE_INVALID',
  WAKE_EXPIRED: 'WAKE_EXPIRED',
  WAKE_REPLAYED: 'WAKE_REPLAYED',
  // secure channel
  DECRYPT_FAILED: 'DECRYPT_FAILED',
  NONCE_REUSE: 'NONCE_REUSE',
  NONCE_GAP: 'NONCE_GAP',
  // session and delivery
  RATE_LIMITED: 'RATE_LIMITED',
  TOO_MANY_IN_FLIGHT: 'TOO_MANY_IN_FLIGHT',
  /** The recipient does not exist, or refuses the sender: deliberately one code for both. */
  UNDELIVERABLE: 'UNDELIVERABLE',
  MAILBOX_FULL: 'MAILBOX_FULL',
  STORAGE_UNAVAILABLE: 'STORAGE_UNAVAILABLE',
  SLOW_CONSUMER: 'SLOW_CONSUMER',
  // accounts, contacts and groups (in `res` answers)
  TOO_MANY_DEVICES: 'TOO_MANY_DEVICES',
  TOO_MANY_CONTACTS: 'TOO_MANY_CONTACTS',
  TOO_MANY_BLOCKED: 'TOO_MANY_BLOCKED',
  NOT_FOUND: 'NOT_FOUND',
  NOT_ALLOWED: 'NOT_ALLOWED',
  NOT_A_MEMBER: 'NOT_A_MEMBER',
  GROUP_FULL: 'GROUP_FULL',
  /** The caller would be in more groups than `groups.maxPerUser` (creating or accepting). */
  TOO_MANY_GROUPS: 'TOO_MANY_GROUPS',
  /** `push.register` past push.maxTargetsPerDevice, or `mute.set` past the mutes a user may hold. */
  TOO_MANY_PUSH_TARGETS: 'TOO_MANY_PUSH_TARGETS',
  TOO_MANY_MUTES: 'TOO_MANY_MUTES',
  CONFLICT: 'CONFLICT',
  /** Campaign feedback cannot be taken now (the node's tracking store is full until the archive catches up, or NATS is away and the campaign cannot be checked): send it again later. */
  RETRY_LATER: 'RETRY_LATER',
  SESSION_REPLACED: 'SESSION_REPLACED',
  // web transports (docs/transports.md): answered as an HTTP error with a JSON body, or a WebSocket close
  HTTP_BAD_REQUEST: 'HTTP_BAD_REQUEST',
  HTTP_NOT_FOUND: 'HTTP_NOT_FOUND',
  HTTP_METHOD_NOT_ALLOWED: 'HTTP_METHOD_NOT_ALLOWED',
  HEADERS_TOO_LARGE: 'HEADERS_TOO_LARGE',
  REQUEST_TIMEOUT: 'REQUEST_TIMEOUT',
  CHUNK_TOO_LARGE: 'CHUNK_TOO_LARGE',
  CHUNK_EXTENSION_TOO_LONG: 'CHUNK_EXTENSION_TOO_LONG',
  TOO_MANY_CHUNKS: 'TOO_MANY_CHUNKS',
  BODY_TOO_LARGE: 'BODY_TOO_LARGE',
  STREAM_UNKNOWN: 'STREAM_UNKNOWN',
  STREAM_BUSY: 'STREAM_BUSY',
  // connection sources (docs/security.md, "Connections per source"): per-source caps, trusted proxies
  /** One client address (or its /24, /64) holds as many connections, handshakes or pending streams on this cell as it may. */
  SOURCE_LIMIT: 'SOURCE_LIMIT',
  /** A trusted proxy's connection did not open with a valid PROXY protocol header. */
  BAD_PROXY_HEADER: 'BAD_PROXY_HEADER',
  SHUTTING_DOWN: 'SHUTTING_DOWN',
  IDLE_TIMEOUT: 'IDLE_TIMEOUT',
  INTERNAL: 'INTERNAL',
} as const;

export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

const CODES = new Set<string>(Object.values(ErrorCode));
export function isErrorCode(v: unknown): v is ErrorCode {
  return typeof v === 'string' && CODES.has(v);
}

/**
 * Codes after which the byte stream cannot be trusted any more: the peer closes
 * the connection after sending the error frame.
 */
export const FATAL_CODES: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  ErrorCode.FRAME_TOO_LARGE,
  ErrorCode.FRAME_TRUNCATED,
  ErrorCode.DECODE_FAILED,
  ErrorCode.UNEXPECTED_MESSAGE,
  ErrorCode.UNSUPPORTED_VERSION,
  ErrorCode.HANDSHAKE_FAILED,
  ErrorCode.HANDSHAKE_REPLAY,
  ErrorCode.HANDSHAKE_STALE,
  ErrorCode.HANDSHAKE_TIMEOUT,
  ErrorCode.BAD_PUBLIC_KEY,
  ErrorCode.UNKNOWN_DEVICE,
  ErrorCode.REGISTRATION_DENIED,
  ErrorCode.DEVICE_KEY_MISMATCH,
  ErrorCode.DEVICE_REVOKED,
  ErrorCode.ACCOUNT_SUSPENDED,
  ErrorCode.TOO_MANY_DEVICES,
  ErrorCode.TICKET_INVALID,
  ErrorCode.TICKET_EXPIRED,
  ErrorCode.TICKET_REPLAYED,
  ErrorCode.BUSY,
  ErrorCode.DECRYPT_FAILED,
  ErrorCode.NONCE_REUSE,
  ErrorCode.NONCE_GAP,
  ErrorCode.SESSION_REPLACED,
  ErrorCode.SHUTTING_DOWN,
  ErrorCode.IDLE_TIMEOUT,
  ErrorCode.SLOW_CONSUMER,
  ErrorCode.HTTP_BAD_REQUEST,
  ErrorCode.HTTP_NOT_FOUND,
  ErrorCode.HTTP_METHOD_NOT_ALLOWED,
  ErrorCode.HEADERS_TOO_LARGE,
  ErrorCode.REQUEST_TIMEOUT,
  ErrorCode.CHUNK_TOO_LARGE,
  ErrorCode.CHUNK_EXTENSION_TOO_LONG,
  ErrorCode.TOO_MANY_CHUNKS,
  ErrorCode.BODY_TOO_LARGE,
  ErrorCode.STREAM_UNKNOWN,
  ErrorCode.STREAM_BUSY,
  ErrorCode.SOURCE_LIMIT,
  ErrorCode.BAD_PROXY_HEADER,
  ErrorCode.INTERNAL,
]);

/**
 * What a client does with a refusal — one list for the SDK, the load drivers and the benchmarks.
 * A send `failed` with a retryable code is kept and sent again, with the same id, after a backoff.
 */
export const RETRYABLE_SEND_CODES: ReadonlySet<string> = new Set<ErrorCode>([ErrorCode.STORAGE_UNAVAILABLE, ErrorCode.BUSY, ErrorCode.RATE_LIMITED, ErrorCode.TOO_MANY_IN_FLIGHT]);

/** A resumption refused with one of these falls back to a full handshake. */
export const TICKET_REFUSED_CODES: ReadonlySet<string> = new Set<ErrorCode>([ErrorCode.TICKET_EXPIRED, ErrorCode.TICKET_INVALID, ErrorCode.TICKET_REPLAYED]);

/** Connection refusals every cell would repeat: a client stops reconnecting (or trying other cells). */
export const NO_RECONNECT_CODES: ReadonlySet<string> = new Set<ErrorCode>([
  ErrorCode.SESSION_REPLACED,
  ErrorCode.DEVICE_KEY_MISMATCH,
  ErrorCode.UNKNOWN_DEVICE,
  ErrorCode.REGISTRATION_DENIED,
  ErrorCode.TOO_MANY_DEVICES,
  ErrorCode.DEVICE_REVOKED,
  ErrorCode.ACCOUNT_SUSPENDED,
]);

/** Base class of every coded protocol error. */
export class ProtocolError extends Error {
  override name = 'ProtocolError';
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
  }
  get fatal(): boolean {
    return FATAL_CODES.has(this.code);
  }
}

export class FramingError extends ProtocolError {
  override name = 'FramingError';
}

export class DecodeError extends ProtocolError {
  override name = 'DecodeError';
}

export class HandshakeError extends ProtocolError {
  override name = 'HandshakeError';
}

export class ChannelError extends ProtocolError {
  override name = 'ChannelError';
}

/** An error frame received from the peer, surfaced as an exception. */
export class RemoteError extends ProtocolError {
  override name = 'RemoteError';
  readonly ref: string | undefined;
  constructor(code: ErrorCode, message: string, ref?: string) {
    super(code, message);
    this.ref = ref;
  }
}
