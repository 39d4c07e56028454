#!/usr/bin/env bash
# Sets up .venv/ (see setup.sh) with the test extra and the pinned check tools (the `dev` extra),
# runs the static checks (scripts/check.sh: ruff, ruff format, import contract, mypy), then the whole
# test suite with the package's doctests. Arguments go to pytest (`bash scripts/test.sh tests/test_x.py`
# runs one file; CHECKS=0 skips the static checks). Exits non-zero if the checks or the tests failed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pip install --quiet -e ".[dev]"
# System packages some tests need, from Debian where this machine can install them (root, apt):
# chromium + chromium-driver (the dashboard test opens TensorBoard in headless Chromium) and
# dataset-fashion-mnist (the Fashion-MNIST loaders' tests). Not fatal: without them those tests
# are skipped and say why. The demo needs neither, so setup.sh leaves them out.
missing=""
command -v chromedriver >/dev/null 2>&1 || missing="$missing chromium chromium-driver"
[ -d /usr/share/datasets/fashion-mnist ] || missing="$missing dataset-fashion-mnist"
if [ -n "$missing" ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  # shellcheck disable=SC2086
  { apt-get update -qq && apt-get install -y -qq $missing; } >/dev/null 2>&1 \
    || echo "test.sh: could not install$missing; the tests that need them will be skipped" >&2
fi
checks=0
if [ "${CHECKS:-1}" != 0 ]; then
  bash scripts/check.sh || checks=$?
fi
tests=0
.venv/bin/python -m pytest -q "$@" || tests=$?
[ "$checks" = 0 ] || echo "test.sh: the static checks failed (see '== check: ... FAILED' above)" >&2
exit $((checks || tests))
