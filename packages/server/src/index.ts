export * from './config.js';
export * from './errors.js';
export * from './node.js';
export { Supervisor } from './supervisor.js';
export { Names } from './subjects.js';
export { AdminErrorCode } from './admin.js';
export type { CellInit, CellStatus, FromCell, ToCell } from './types.js';
