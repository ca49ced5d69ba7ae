/*
 * `@gravitas/protocol/internal`: both builds of the primitives side by side, for
 * tests that hold the browser build to the Node one. Not part of the package's API.
 */
export * as nodePrimitives from './primitives.js';
export * as browserPrimitives from './primitives.browser.js';
