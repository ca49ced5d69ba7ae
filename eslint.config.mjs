// A small, deliberate rule set (docs/architecture.md, "Rules that keep it"): each rule
// catches a bug a long-running cell cannot afford. Style is not linted here.
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['**/dist/**', '**/node_modules/**', 'packages/client/scripts/**'] },
  {
    files: ['packages/*/src/**/*.ts', 'bench/src/**/*.ts'],
    languageOptions: {
      parser: tseslint.parser,
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    plugins: { '@typescript-eslint': tseslint.plugin },
    linterOptions: { reportUnusedDisableDirectives: 'error' },
    rules: {
      // A promise nobody awaits or catches: its rejection is unhandled, and Node ends the process.
      '@typescript-eslint/no-floating-promises': 'error',
      // A promise where a callback's result is ignored (an async listener, an async predicate).
      '@typescript-eslint/no-misused-promises': 'error',
      // `await` on something that is not a promise: usually a missing call or a wrong type.
      '@typescript-eslint/await-thenable': 'error',
      // Only Errors are thrown and rejected: a stack, a code, and `instanceof` checks that work.
      '@typescript-eslint/only-throw-error': 'error',
      '@typescript-eslint/prefer-promise-reject-errors': 'error',
      // A switch over a union (envelope kinds, request ops, frame types) that forgets a member.
      '@typescript-eslint/switch-exhaustiveness-check': ['error', { considerDefaultExhaustiveForUnions: true }],
    },
  },
);
