#!/usr/bin/env bash
# Sets up .venv/ (see setup.sh) and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
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
.venv/bin/python -m pytest -q "$@"
