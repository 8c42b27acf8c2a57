#!/usr/bin/env bash
# Create .venv and install dlas with its pinned dependencies (idempotent, ~1 min cold).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check uv
.venv/bin/python -m uv pip install --quiet --python .venv/bin/python -e '.[dev]'
# Bytecode for every installed module, once: uv installs none, and where
# PYTHONDONTWRITEBYTECODE is set (CI, containers) Python would otherwise recompile
# torch, lightning and mlflow from source in every process, ~16 s each on 2 cores;
# the tests and MetaSchedule's workers start hundreds of processes. Idempotent (~30 s
# cold, seconds after). Errors are Python-2 files some packages ship, never imported.
.venv/bin/python -m compileall -q -j 0 .venv/lib/python3*/site-packages > /dev/null || true
