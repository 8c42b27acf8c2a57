"""One MLflow run per stack point, which never outlives a failure as RUNNING.

The store is an explicit sqlite database (MLflow 3 refuses plain file stores) with
artifacts in a folder beside it, so ``mlflow ui --backend-store-uri <uri>`` finds
everything. A run that raises is ended FAILED with the error as a tag and as
``error.txt``; Ctrl-C ends it KILLED.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from filelock import FileLock
from pytorch_lightning.loggers import MLFlowLogger


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


@contextmanager
def tracked_run(
    uri: str,
    experiment: str,
    *,
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
    artifact_root: str | None = None,
) -> Iterator[mlflow.ActiveRun]:
    experiment_id = setup_experiment(uri, experiment, artifact_root)
    run = mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags or {})
    try:
        yield run
    except KeyboardInterrupt:
        mlflow.set_tag("error", "interrupted")
        mlflow.end_run(status="KILLED")
        raise
    except BaseException as err:
        message = f"{type(err).__name__}: {err}"
        mlflow.set_tag("error", message[:5000])
        mlflow.log_text("".join(traceback.format_exception(err)), "error.txt")
        mlflow.end_run(status="FAILED")
        raise
    else:
        mlflow.end_run(status="FINISHED")


class StageLogger(MLFlowLogger):
    """Lightning's MLflow logger bound to the run we own: it logs curves under a stage
    prefix, and never ends the run (Lightning's would mark it FINISHED after training)."""

    def finalize(self, status: str = "success") -> None:
        pass


class RunLogger:
    """Hands each training stage a Lightning logger writing into the active run."""

    def __init__(self, uri: str, run: mlflow.ActiveRun) -> None:
        self.uri, self.run_id = uri, run.info.run_id

    def for_stage(self, stage: str) -> StageLogger:
        return StageLogger(tracking_uri=self.uri, run_id=self.run_id, prefix=stage)


def flatten(prefix: str, node: Any) -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"prefix.a.b": 1}``, skipping Hydra's ``_target_`` keys."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            if not str(k).startswith("_"):
                out.update(flatten(f"{prefix}.{k}" if prefix else str(k), v))
        return out
    return {prefix: node}
