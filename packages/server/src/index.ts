export * from './config/index.js';
export * from './infra/errors.js';
export * from './node.js';
export { Supervisor } from './supervisor/supervisor.js';
export { Names } from './infra/subjects.js';
export { AdminErrorCode } from './admin/http.js';
export type { CellInit, CellStatus, FromCell, ToCell } from './supervisor/messages.js';
export { ChunkedDecoder, HttpError, type ChunkedLimits } from './transport/chunked.js';
export { PATH_DOWN, PATH_UP, PATH_WS, STREAM_HEADER } from './transport/web-listener.js';
export { parseHead } from './transport/http-head.js';
export { WS_CLOSE_CODED } from './transport/web-transports.js';
/** Delivery proofs (docs/protocol.md §5.6): for tools that stand in for recipients, e.g. a feedback benchmark on its own cluster. */
export { DeliveryProofs } from './core/proofs.js';
export { HandshakeGuard } from './session/guard.js';
export { canonicalIp, prefixOf, SourceResolver, type ClientSource } from './transport/source.js';
export { proxyV1, proxyV2, readProxyHeader, type ProxyHeader } from './transport/proxy-protocol.js';
export { SourceTable, SourceLimits, isRefusal, REFUSAL_SLACK, type SourceCharge, type SourceRefusal, type SourceLimitKind } from './transport/source-limits.js';
export { fdNeed, fitFdBudget, softFileLimit } from './supervisor/fd-budget.js';
