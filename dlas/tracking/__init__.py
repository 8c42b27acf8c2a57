"""Experiment tracking (MLflow): one run per stack point, one schema for all.

Names resolve lazily: ``mlflow_run`` imports Lightning (seconds), which the store rules
in ``store`` and the sweep tags in ``sweep`` do not need.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dlas.tracking.mlflow_run import RunLogger, TrackedRun, flatten, last_run, tracked_run
    from dlas.tracking.store import check_store, setup_experiment, sqlite_path

_WHERE = {
    "RunLogger": "mlflow_run",
    "TrackedRun": "mlflow_run",
    "flatten": "mlflow_run",
    "last_run": "mlflow_run",
    "tracked_run": "mlflow_run",
    "check_store": "store",
    "setup_experiment": "store",
    "sqlite_path": "store",
}

__all__ = [
    "RunLogger",
    "TrackedRun",
    "check_store",
    "flatten",
    "last_run",
    "setup_experiment",
    "sqlite_path",
    "tracked_run",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'dlas.tracking' has no attribute {name!r}")
    return getattr(importlib.import_module(f"dlas.tracking.{_WHERE[name]}"), name)
