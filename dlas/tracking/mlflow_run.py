"""One MLflow run per stack point, which never outlives a failure as RUNNING.

Runs live in the store ``dlas.tracking.store`` lays out. A run that raises is ended
FAILED with the error as a tag and as ``error.txt``; Ctrl-C ends it KILLED.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import mlflow
from pytorch_lightning.loggers import MLFlowLogger

from dlas.tracking.store import setup_experiment


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
