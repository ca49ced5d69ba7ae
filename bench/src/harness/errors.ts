/*
 * Errors of the load harness. Each has a stable `code` that scripts and tests switch on; every
 * code is listed in docs/benchmarking.md (a test checks that).
 */

export const HARNESS_ERROR_CODES = [
  'SCENARIO_READ',
  'SCENARIO_PARSE',
  'SCENARIO_INVALID',
  'HISTOGRAM_DECODE',
  'DRIVER_ERROR',
  'TARGET_UNAVAILABLE',
  'CONTROL_UNAVAILABLE',
  'CONTROL_MESSAGE_INVALID',
  'GENERATOR_FAILED',
  'PROVISION_FAILED',
] as const;
export type HarnessErrorCode = (typeof HARNESS_ERROR_CODES)[number];

export class HarnessError extends Error {
  override name = 'HarnessError';
  constructor(
    readonly code: HarnessErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/**
 * A scenario file that cannot be used: unreadable (SCENARIO_READ), not YAML/JSON (SCENARIO_PARSE),
 * or failing validation (SCENARIO_INVALID; `issues` holds every problem, each starting with the
 * path of the offending value, e.g. `behaviours.groups.share: must be a number in [0, 1], got 1.5`).
 */
export class ScenarioError extends HarnessError {
  override name = 'ScenarioError';
  constructor(
    code: 'SCENARIO_READ' | 'SCENARIO_PARSE' | 'SCENARIO_INVALID',
    readonly file: string | undefined,
    readonly issues: readonly string[],
    options?: { cause?: unknown },
  ) {
    const where = file === undefined ? 'scenario' : `scenario ${file}`;
    super(code, issues.length === 1 ? `${where}: ${issues[0]}` : `${where}: ${issues.length} problems:\n  ${issues.join('\n  ')}`, options);
  }
}
