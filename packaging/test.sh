#!/usr/bin/env bash
# The README's test command after the install: lint, format, types and import contracts, then the
# test suite. Every check runs and reports; pytest runs only when all four pass. Arguments go to
# pytest (bash packaging/test.sh tests/unit -x). VENV names another virtual environment.
set -uo pipefail
cd "$(dirname "$0")/.."
bin="${VENV:-.venv}/bin"
failed=()
check() {  # check NAME COMMAND...
  local name="$1"; shift
  echo "test.sh: $name"
  "$@" || failed+=("$name")
}
check "ruff check" "$bin/ruff" check appliance tui tests
# one line per file to reformat (the default shows each diff)
check "ruff format --check" env RUFF_OUTPUT_FORMAT=concise "$bin/ruff" format --check appliance tui tests
check "mypy" "$bin/mypy" appliance tui
# import-linter imports the packages it checks: make them this checkout's
check "lint-imports" env PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" "$bin/lint-imports"
if [ ${#failed[@]} -gt 0 ]; then
  printf 'test.sh: failed: %s; the test suite did not run\n' "$(IFS=,; echo "${failed[*]}")"
  exit 1
fi
exec "$bin/python" -m pytest "$@"
