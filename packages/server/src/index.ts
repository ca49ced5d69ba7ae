export * from './config.js';
export * from './errors.js';
export * from './node.js';
export { Supervisor } from './supervisor.js';
export { Names } from './subjects.js';
export { AdminErrorCode } from './admin.js';
export type { CellInit, CellStatus, FromCell, ToCell } from './types.js';
export { ChunkedDecoder, HttpError, type ChunkedLimits } from './cell/chunked.js';
export { parseHead, PATH_DOWN, PATH_UP, PATH_WS, STREAM_HEADER } from './cell/web-listener.js';
export { WS_CLOSE_CODED } from './cell/web-transports.js';
/** Delivery proofs (docs/protocol.md §5.6): for tools that stand in for recipients, e.g. a feedback benchmark on its own cluster. */
export { DeliveryProofs } from './cell/proofs.js';
export { HandshakeGuard } from './cell/guard.js';
export { canonicalIp, prefixOf, SourceResolver, type ClientSource } from './net/source.js';
export { proxyV1, proxyV2, readProxyHeader, type ProxyHeader } from './net/proxy-protocol.js';
export { SourceTable, SourceLimits, isRefusal, REFUSAL_SLACK, type SourceCharge, type SourceRefusal, type SourceLimitKind } from './net/source-limits.js';
export { fdNeed, fitFdBudget, softFileLimit } from './net/fd-budget.js';
