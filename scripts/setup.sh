#!/usr/bin/env bash
# Creates .venv/ beside the project and installs it with what the demo needs (the `paper` extra:
# data modules, torchvision, matplotlib). scripts/test.sh adds the test and dev extras. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
# torch goes first and pinned to the versions the project is tested with (PyPI's Linux wheels
# bring CUDA libraries, several GB). For a CPU-only install, or another platform, override it:
#   TORCH_PACKAGES="torch torchvision --index-url https://download.pytorch.org/whl/cpu" bash scripts/setup.sh
if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
  # shellcheck disable=SC2086
  .venv/bin/python -m pip install --quiet ${TORCH_PACKAGES:-torch==2.14.1 torchvision==0.29.1}
fi
.venv/bin/python -m pip install --quiet -e ".[paper]"
