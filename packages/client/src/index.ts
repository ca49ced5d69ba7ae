export * from './client.js';
export * from './types.js';
export * from './errors.js';
export * from './store.js';
export * from './peer.js';
export * from './transport.js';
// The Node entry point: TCP, WebSocket (ws) and chunked HTTP (node:http) as the default dialers.
export { tcpDialer, wsDialer, httpDialer } from './transport-node.js';
export { UP_ROTATE_BYTES, UP_ROTATE_FRAMES } from './transport-http.js';
