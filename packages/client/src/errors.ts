import { ProtocolError, RemoteError, type ErrorCode } from '@gravitas/protocol';

/** Failures of the SDK itself (as opposed to coded errors sent by the server). */
export const ClientErrorCode = {
  CONNECT_FAILED: 'CONNECT_FAILED',
  CONNECT_TIMEOUT: 'CONNECT_TIMEOUT',
  CLOSED: 'CLOSED',
  NOT_CONNECTED: 'NOT_CONNECTED',
  OUTBOX_FULL: 'OUTBOX_FULL',
  DUPLICATE_ID: 'DUPLICATE_ID',
  /** The client store (storagePath) could not be opened, or a write to it failed. */
  STORAGE_FAILED: 'STORAGE_FAILED',
  /** markRead or track for a message this client has no delivery proof of: pass the message itself. */
  NO_PROOF: 'NO_PROOF',
} as const;
export type ClientErrorCode = (typeof ClientErrorCode)[keyof typeof ClientErrorCode];

export class ClientError extends Error {
  override name = 'ClientError';
  constructor(readonly code: ClientErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
  }
}

/** A message the server refused or could not deliver (status `failed`). */
export class DeliveryError extends RemoteError {
  override name = 'DeliveryError';
  constructor(code: ErrorCode, id: string) {
    super(code, `message ${id} was not delivered: ${code}`, id);
  }
}

export { ProtocolError, RemoteError };
