import type { IncomingMessage, ServerResponse } from 'node:http';

/*
 * The HTTP plumbing of the admin server: stable error codes, refusals judged from the
 * request head (before any body byte is read), bounded JSON bodies and JSON answers.
 * Every answer sent before the request's body was read to its end closes the connection:
 * Node would otherwise read the rest of that body first.
 */

/** Stable codes of admin HTTP errors. */
export const AdminErrorCode = {
  NOT_FOUND: 'NOT_FOUND',
  METHOD_NOT_ALLOWED: 'METHOD_NOT_ALLOWED',
  UNAUTHORIZED: 'UNAUTHORIZED',
  BAD_REQUEST: 'BAD_REQUEST',
  INTERNAL: 'INTERNAL',
  // engagement routes (engage.ts)
  FORBIDDEN: 'FORBIDDEN',
  CONFLICT: 'CONFLICT',
  PAYLOAD_TOO_LARGE: 'PAYLOAD_TOO_LARGE',
  UNSUPPORTED_MEDIA_TYPE: 'UNSUPPORTED_MEDIA_TYPE',
  UNAVAILABLE: 'UNAVAILABLE',
} as const;

/** A refusal with its HTTP status and stable code. */
export class AdminError extends Error {
  override name = 'AdminError';
  constructor(readonly status: number, readonly code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
  }
}

/** Sends `body` as JSON (with `headers` besides the content headers); `Connection: close` if the request body was not read. */
export function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), ...headers, ...(!res.req.complete && { connection: 'close' }) });
  res.end(text);
}

/** Sends `{ error: { code, message } }` with the error's status. */
export function sendError(res: ServerResponse, e: { status: number; code: string; message: string }, headers?: Record<string, string>): void {
  sendJson(res, e.status, { error: { code: e.code, message: e.message } }, headers);
}

/** A route that takes no body ignores one this small (clients send `{}` to action routes); a larger one is 413. */
export const IGNORED_BODY_BYTES = 1024;

/**
 * Refusal of a body a route does not take (`cap` undefined) or that is over its maximum, from the
 * head alone; a chunked body's size is unknown, so a route without a body refuses it too.
 */
export function bodyRefusal(req: IncomingMessage, cap: number | undefined, what: string): AdminError | undefined {
  const chunked = req.headers['transfer-encoding'] !== undefined;
  const declared = Number(req.headers['content-length'] ?? 0);
  if (cap === undefined && (chunked || declared > IGNORED_BODY_BYTES)) return new AdminError(413, AdminErrorCode.PAYLOAD_TOO_LARGE, `${what} takes no body`);
  if (cap !== undefined && declared > cap) return new AdminError(413, AdminErrorCode.PAYLOAD_TOO_LARGE, `the body may have at most ${cap} bytes`);
  return undefined;
}

/** Reads a JSON body of at most `cap` bytes (listeners, not an async iterator: leaving one early would destroy the socket before the answer). */
export function readJson(req: IncomingMessage, cap: number): Promise<unknown> {
  const type = req.headers['content-type'] ?? '';
  if (!/^application\/json\s*(;.*)?$/i.test(type)) {
    return Promise.reject(new AdminError(415, AdminErrorCode.UNSUPPORTED_MEDIA_TYPE, 'the body must be JSON with Content-Type: application/json'));
  }
  const declared = Number(req.headers['content-length'] ?? 0);
  const tooLarge = (): AdminError => new AdminError(413, AdminErrorCode.PAYLOAD_TOO_LARGE, `the body may have at most ${cap} bytes`);
  if (declared > cap) return Promise.reject(tooLarge());
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const done = (err: Error | undefined, v?: unknown): void => {
      req.off('data', onData).off('end', onEnd).off('error', onError);
      if (err) reject(err);
      else resolve(v);
    };
    const onData = (c: Buffer): void => {
      size += c.length;
      if (size > cap) {
        req.pause();
        done(tooLarge());
      } else chunks.push(c);
    };
    const onEnd = (): void => {
      try {
        done(undefined, JSON.parse(Buffer.concat(chunks).toString('utf8')));
      } catch (err) {
        done(new AdminError(400, AdminErrorCode.BAD_REQUEST, `the body is not valid JSON: ${(err as Error).message}`));
      }
    };
    const onError = (err: Error): void => done(err);
    req.on('data', onData).on('end', onEnd).on('error', onError);
  });
}
