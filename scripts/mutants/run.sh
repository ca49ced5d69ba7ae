#!/usr/bin/env bash
# Deliberate breakages, run by hand (never in CI): each scripts/mutants/<name>.patch breaks one
# promise of docs/guarantees.md. This applies one, rebuilds, runs the test file its header
# names, and reverts (also on Ctrl-C). A mutant is CAUGHT when that test file fails, and when
# the header has an `Expect:` line, when a failing test's name contains that text; it SURVIVED
# otherwise, which means the promise has no test that fails without it.
#
#   bash scripts/mutants/run.sh --list            names and what each breaks
#   bash scripts/mutants/run.sh <name> [<name>…]   run these
#   bash scripts/mutants/run.sh --all             run every mutant (long: one test file each)
#
# Patch header (lines before the first `diff --git`, which `git apply` skips):
#   Mutant: <name>             Breaks: <what the product then does wrong>
#   Test: <test file>          Expect: <part of the name of the test that must fail> (optional)
# A patch that does not build is reported as NO BUILD (fix the patch) and the run goes on.
# Exit status: 0 when every mutant run was caught, 1 otherwise.
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=scripts/mutants

field() { sed -n "s/^$2: *//p" "$1" | head -1; }

if [ "${1:-}" = "" ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
  sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0
fi
if [ "$1" = "--list" ]; then
  for p in "$dir"/*.patch; do printf '%-34s %s\n' "$(basename "$p" .patch)" "$(field "$p" Breaks)"; done
  exit 0
fi
if [ "$1" = "--all" ]; then set -- $(for p in "$dir"/*.patch; do basename "$p" .patch; done); fi

build() {
  npx --no-install tsc -b >/dev/null
  # The browser bundle embeds client and protocol code; browser tests load it.
  if [ "$1" = bundle ]; then node packages/client/scripts/bundle.mjs >/dev/null; fi
}

applied=""
bundle=none
revert() {
  if [ -n "$applied" ]; then
    git apply -R "$applied" && echo "mutants: reverted $(basename "$applied" .patch)" >&2
    applied=""
    build $bundle
  fi
}
trap revert EXIT
trap 'exit 130' INT TERM

results=()
status=0
for name in "$@"; do
  patch="$dir/$name.patch"
  [ -f "$patch" ] || { echo "mutants: no such mutant: $name (see --list)" >&2; exit 2; }
  test=$(field "$patch" Test); expect=$(field "$patch" Expect)
  [ -n "$test" ] && [ -f "$test" ] || { echo "mutants: $name names no existing Test: file" >&2; exit 2; }
  files=$(git apply --numstat "$patch" | cut -f3)
  # Never mix a mutant with uncommitted edits to the same files: the revert would lose them.
  if ! git diff --quiet HEAD -- $files; then
    echo "mutants: $name touches files with uncommitted changes ($files); commit or stash first" >&2; exit 2
  fi
  git apply "$patch"; applied=$patch
  bundle=none; grep -qE '^packages/(client|protocol)/' <<<"$files" && bundle=bundle
  echo "mutants: $name applied ($(tr '\n' ' ' <<<"$files")), building, running $test…" >&2
  if ! build $bundle; then
    # A patch that does not compile proves nothing: say so, and go on with the next one.
    npx --no-install tsc -b 2>&1 | head -5 | sed 's/^/    /' >&2 || true
    status=1
    results+=("$(printf '%-34s %-9s %s' "$name" "NO BUILD" "$test")")
    revert
    continue
  fi
  log=$(mktemp)
  set +e
  npx --no-install tap --disable-coverage -R tap "$test" >"$log" 2>&1
  rc=$?
  set -e
  verdict=SURVIVED
  if [ "$rc" -ne 0 ]; then
    if [ -z "$expect" ] || grep -E '^\s*not ok ' "$log" | grep -qF -- "$expect"; then verdict=CAUGHT
    else verdict="FAILED ELSEWHERE (no failing test named '$expect')"; fi
  fi
  grep -E '^\s*not ok ' "$log" | head -5 | sed 's/^\s*/    /' >&2 || true
  rm -f "$log"
  [ "$verdict" = CAUGHT ] || status=1
  results+=("$(printf '%-34s %-9s %s' "$name" "$verdict" "$test")")
  revert
done
echo
printf '%-34s %-9s %s\n' mutant verdict test
printf '%s\n' "${results[@]}"
exit "$status"
