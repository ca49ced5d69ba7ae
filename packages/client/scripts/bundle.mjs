#!/usr/bin/env node
/*
 * Bundles the browser SDK (dist/browser/index.js, built by tsc) into one
 * self-contained ES module: dist/browser/gravitas.js. Run after `tsc -b`
 * (scripts/bootstrap.sh does). Other scripts and tests import browserBuildOptions()
 * to bundle other entries the same way.
 *
 * What makes the Node-first packages fit a browser:
 *   - platform "browser": package.json "browser" fields apply, so @gravitas/protocol
 *     gets primitives.browser.js (no node:crypto) and tweetnacl skips its require('crypto');
 *   - `Buffer` (the `buffer` package), `process.nextTick` and unref()-able timers
 *     are injected where they are read (node-shims.mjs);
 *   - node:events is the `events` package;
 *   - any other node: built-in fails the build, except those listed in NODE_STUBS,
 *     which are reached only on Node-only paths (a storage path) and throw if called.
 */
import { build } from 'esbuild';
import { mkdirSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
export const CLIENT_DIR = join(here, '..');
export const BUNDLE_PATH = join(CLIENT_DIR, 'dist/browser/gravitas.js');

/** Built-ins imported by modules in the bundle but used only on Node-only paths. */
export const NODE_STUBS = ['node:fs', 'node:module', 'node:path'];

/** Built-ins with a browser package of the same API. */
const ALIASES = { 'node:events': 'events' };

const nodeBuiltins = {
  name: 'gravitas-node-builtins',
  setup(b) {
    b.onResolve({ filter: /^node:/ }, (args) => {
      const alias = ALIASES[args.path];
      if (alias) return b.resolve(alias, { resolveDir: args.resolveDir, kind: args.kind });
      if (NODE_STUBS.includes(args.path)) return { path: args.path, namespace: 'node-stub' };
      return { errors: [{ text: `${args.path} (imported by ${args.importer}) has no browser version: keep it out of the browser entry's imports, or add a seam` }] };
    });
    // Every named import resolves to a function that throws: such a path is a bug in a browser.
    b.onLoad({ filter: /.*/, namespace: 'node-stub' }, (args) => ({
      contents: `const fail = () => { throw new Error(${JSON.stringify(`${args.path} is not available in a browser`)}); };
        export default new Proxy({}, { get: () => fail });
        export const mkdirSync = fail, createRequire = fail, join = fail, resolve = fail;`,
      loader: 'js',
    }));
  },
};

/** esbuild options for a browser ES module of `entry`, written to `outfile`. */
export function browserBuildOptions(entry, outfile) {
  return {
    entryPoints: [entry],
    outfile,
    bundle: true,
    format: 'esm',
    platform: 'browser',
    target: ['es2022'],
    minify: true,
    sourcemap: 'linked',
    legalComments: 'eof',
    inject: [join(here, 'node-shims.mjs')],
    define: { 'process.env.NODE_ENV': '"production"' },
    plugins: [nodeBuiltins],
    logLevel: 'warning',
  };
}

async function main() {
  mkdirSync(dirname(BUNDLE_PATH), { recursive: true });
  await build(browserBuildOptions(join(CLIENT_DIR, 'dist/browser/index.js'), BUNDLE_PATH));
  process.stderr.write(`gravitas bundle: ${BUNDLE_PATH} (${Math.round(statSync(BUNDLE_PATH).size / 1024)} KiB)\n`);
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  main().catch((err) => {
    process.stderr.write(`gravitas bundle: ${err.message}\n`);
    process.exit(1);
  });
}
