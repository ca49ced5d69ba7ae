/** Protocol-wide constants. Limits that operators may tune live in server config. */
export const PROTOCOL_VERSION = 1;
/** Default and hard upper bound of one frame body (bytes after the length prefix). */
export const DEFAULT_MAX_FRAME_BYTES = 64 * 1024;
export const HARD_MAX_FRAME_BYTES = 1024 * 1024;
export const FRAME_HEADER_BYTES = 4;
/** Text of one chat message, in UTF-16 code units (bounded well below a frame). */
export const MAX_TEXT_LENGTH = 16 * 1024;
export const MAX_ID_LENGTH = 64;
/** Accepted clock skew of a hello's timestamp; also the replay-cache window. */
export const HELLO_MAX_SKEW_MS = 120_000;
/** A sealed frame's counter may not reach 2^48: the session must reconnect first. */
export const MAX_FRAME_COUNTER = 2 ** 48;
/**
 * Chunked-HTTP upstream (docs/transports.md): a client ends its upstream request
 * and starts the next after this many frames or bytes. Servers accept at least
 * four times the frames and twice the bytes per request, so a proxy that splits
 * chunks still stays inside the caps.
 */
export const HTTP_UP_ROTATE_FRAMES = 4096;
export const HTTP_UP_ROTATE_BYTES = 4 * 1024 * 1024;
/**
 * The chunked-HTTP stream id: a response header of the downstream, and the request
 * header naming the stream of an upstream POST (never the URL, which lands in logs).
 */
export const HTTP_STREAM_HEADER = 'X-Gravitas-Stream';
/** Longest registration credential (a compact JWT) a hello may carry. */
export const MAX_CREDENTIAL_LENGTH = 6144;
/** Largest device-link approval (`devices.link`, docs/security.md). */
export const MAX_LINK_APPROVAL_BYTES = 512;
/**
 * Length of the delivery proof (`rk`): a MAC the server puts on every message it
 * delivers, over the message and its reader, which a `read` receipt or campaign
 * feedback (`track`) must carry back — so only a reader it reached can send one.
 */
export const DELIVERY_PROOF_BYTES = 12;
