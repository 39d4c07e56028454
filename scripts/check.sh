#!/usr/bin/env bash
# The house's static checks, each on its own so a failure names its tool and the file it found:
# ruff (lint), ruff format, the import contract (.importlinter), mypy. The doctests run with the
# tests (pytest --doctest-modules, see pyproject.toml). Uses .venv/ when there is one (scripts/test.sh
# installs the pinned tools there), else the tools on PATH. Runs every check, then exits 1 if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
bin=""
[ -x .venv/bin/python ] && bin=".venv/bin/"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # lint-imports and mypy read this checkout
failed=()
run() {
  local name=$1
  shift
  echo "== check: $name ($*)"
  if "$@"; then
    echo "== check: $name passed"
  else
    echo "== check: $name FAILED (the lines above name the file and line)"
    failed+=("$name")
  fi
}
run "ruff lint" "${bin}ruff" check --output-format=concise .
run "ruff format" "${bin}ruff" format --check .
run "import contract" "${bin}lint-imports" --no-cache
run "mypy" "${bin}mypy"
if [ ${#failed[@]} -gt 0 ]; then
  printf 'check.sh: FAILED: %s\n' "$(IFS=';'; echo "${failed[*]}" | sed 's/;/; /g')" >&2
  exit 1
fi
echo "check.sh: all checks passed"
