/*
 * @gravitas/client/internal: for the project's own load generators and tests, not for
 * applications (the nats.js habit: `internal_mod`, exported as "./internal"). What is
 * here may change without notice.
 *
 *   - custody.ts: the device side of custody, one implementation for the SDK and for the
 *     load generators (bench/src/custody-gen.ts, bench/src/harness/gravitas-driver.ts);
 *   - storeOf(client): a client's store, for fixtures that watch what reaches its
 *     de-duplication (test/fixtures/wire.ts);
 *   - FrameWriter: what a session sends per turn (batched frames), for its unit test.
 */
export * from './custody.js';
export { storeOf } from './private.js';
export type { ClientStore } from './store.js';
export { BATCH_TARGET_BYTES, FrameWriter } from './writer.js';
