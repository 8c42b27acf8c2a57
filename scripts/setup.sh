#!/usr/bin/env bash
# Create .venv and install dlas with its pinned dependencies (idempotent, ~1 min cold).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check uv
.venv/bin/python -m uv pip install --quiet --python .venv/bin/python -e '.[dev]'
# OpenVINO's model converter sends usage telemetry unless the user has opted out (its
# own opt_in_out tool writes the choice to ~/intel); dlas never sends it.
.venv/bin/opt_in_out --opt_out > /dev/null
# Bytecode for every installed module, once: uv installs none, and where
# PYTHONDONTWRITEBYTECODE is set (CI, containers) Python would otherwise recompile
# torch, lightning and mlflow from source in every process, ~16 s each on 2 cores;
# the tests and MetaSchedule's workers start hundreds of processes. Idempotent (~30 s
# cold, seconds after); uv's --compile-bytecode only compiles what it installs now.
# Its failures are the Python-2 files some packages ship, never imported (kept in the
# log); the check after it says whether the modules every process imports have theirs.
.venv/bin/python -m compileall -q -j 0 .venv/lib/python3*/site-packages \
    > .venv/compileall.log 2>&1 || true
.venv/bin/python - <<'PY'
import importlib.util
import os
import sys

missing = []
for name in ("torch", "pytorch_lightning", "mlflow", "tvm"):
    spec = importlib.util.find_spec(name)
    if spec and spec.origin and not os.path.exists(importlib.util.cache_from_source(spec.origin)):
        missing.append(name)
if missing:
    print(f"setup: no bytecode for {missing} (see .venv/compileall.log): every process "
          "will compile them from source", file=sys.stderr)
PY
