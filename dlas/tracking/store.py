"""Where runs are stored: an explicit sqlite database (MLflow 3 refuses plain file stores)
with artifacts in a folder beside it, so ``mlflow ui --backend-store-uri <uri>`` finds
everything. Kept free of Lightning so that light tools (``dlas.report``, ``search.py``)
share these rules without paying its import.
"""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
from filelock import FileLock


def sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None


def setup_experiment(uri: str, experiment: str, artifact_root: str | None = None) -> str:
    """Point MLflow at ``uri`` and return the id of ``experiment``, created if missing.

    For a sqlite store this runs under a file lock beside the database: MLflow creates
    and migrates its tables on first use, and two processes doing that at once (parallel
    sweep jobs, search workers) fail with "table already exists".
    """
    db = sqlite_path(uri)
    if db is None:
        return _get_or_create(uri, experiment, artifact_root)
    db.parent.mkdir(parents=True, exist_ok=True)
    if artifact_root is None:
        artifact_root = str((db.parent / "artifacts").resolve())
    with FileLock(str(db) + ".lock"):
        return _get_or_create(uri, experiment, artifact_root)


def _get_or_create(uri: str, experiment: str, artifact_root: str | None) -> str:
    mlflow.set_tracking_uri(uri)
    found = mlflow.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    location = os.path.join(artifact_root, experiment) if artifact_root else None
    try:
        return mlflow.create_experiment(experiment, artifact_location=location)
    except mlflow.exceptions.MlflowException:  # created meanwhile by another process
        found = mlflow.get_experiment_by_name(experiment)
        if found is None:
            raise
        return found.experiment_id
