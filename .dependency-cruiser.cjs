/*
 * The layer rules of packages/ (docs/architecture.md, "Layers"), checked by
 * `npm test` (`npm run lint`). A feature folder of the server knows
 * core/ (what features share: context, ports, envelopes), infra/ (no feature
 * knowledge) and config/; it never reaches into the cell that composes it nor
 * into another feature's folder — the other feature's interface is in core/.
 */
const SERVER = '^packages/server/src/';
const FEATURES = 'transport|session|cluster|social|messaging|reach|engage';

/** @type {import('dependency-cruiser').IConfiguration} */
module.exports = {
  forbidden: [
    {
      name: 'no-circular',
      comment: 'An import cycle: split the shared part into a module both import, or pass an interface from core/.',
      severity: 'error',
      from: { path: '^packages/' },
      to: { circular: true },
    },
    {
      name: 'feature-not-to-cell',
      comment: 'A feature takes a CellContext and ports (core/); the cell composes features, never the reverse.',
      severity: 'error',
      from: { path: `${SERVER}(${FEATURES})/` },
      to: { path: `${SERVER}cell/` },
    },
    {
      name: 'feature-not-to-other-feature',
      comment: "A feature knows another only by its interface in core/ports.ts (or a narrower one of its own).",
      severity: 'error',
      from: { path: `${SERVER}(${FEATURES})/` },
      to: { path: `${SERVER}(${FEATURES})/`, pathNot: `${SERVER}$1/` },
    },
    {
      name: 'admin-not-to-cell',
      comment: "The node's admin API (main thread) uses features' stores, never a cell.",
      severity: 'error',
      from: { path: `${SERVER}admin/` },
      to: { path: `${SERVER}cell/` },
    },
    {
      name: 'core-infra-config-know-no-feature',
      comment: 'core/, infra/ and config/ sit below every feature: they import none (nor the cell, supervisor or node).',
      severity: 'error',
      from: { path: `${SERVER}(core|infra|config)/` },
      to: { path: `${SERVER}(${FEATURES}|admin|cell|supervisor|node\\.ts|index\\.ts|internal\\.ts)` },
    },
    {
      name: 'infra-at-the-bottom',
      comment: 'infra/ has no feature knowledge, not even the shared vocabulary of core/ or the configuration: it takes what it needs as plain parameters.',
      severity: 'error',
      from: { path: `${SERVER}infra/` },
      to: { path: `${SERVER}(core|config)/` },
    },
    {
      name: 'protocol-placement-stand-alone',
      comment: 'The protocol and placement packages are used by the SDK, the simulator and the server alike: they import none of them.',
      severity: 'error',
      from: { path: '^packages/(protocol|placement)/' },
      to: { path: '^packages/(server|client|cli|testkit)/' },
    },
    {
      name: 'client-not-to-server',
      comment: 'The SDK runs in browsers and apps: nothing of the server.',
      severity: 'error',
      from: { path: '^packages/client/' },
      to: { path: '^packages/(server|cli|testkit)/' },
    },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    exclude: { path: '(^|/)(dist|node_modules)/' },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.base.json' },
    enhancedResolveOptions: { exportsFields: ['exports'], conditionNames: ['import', 'types', 'default'], extensions: ['.ts', '.js'] },
    moduleSystems: ['es6'],
  },
};
