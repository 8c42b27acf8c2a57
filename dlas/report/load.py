"""Read the stack points of an MLflow experiment into one tidy frame.

MLflow hands back ``params.*`` strings, ``metrics.*`` floats and ``tags.*`` columns, with
failed runs and superseded re-runs mixed in. The report wants one row per point with plain
names and numbers, so this is the only module that knows the run schema of ``dlas.stack``.
"""

from __future__ import annotations

import os

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient

from dlas.compiler import uses_algorithms
from dlas.report.analysis import (
    NOT_APPLICABLE,
    algorithm_label,
    sort_points,
    top1_as_percent,
)
from dlas.report.form_function import path_metric_columns
from dlas.tracking import schema
from dlas.tracking.provenance import STAGES, preference
from dlas.tracking.store import sqlite_path

# plain column -> MLflow param / metric / tag name (dlas.tracking.schema)
PARAMS = {
    "dataset": schema.DATASET,
    "model": schema.MODEL,
    "compression": schema.COMPRESSION,
    "amount": schema.AMOUNT,
    "algorithm": schema.ALGORITHM,
    "data_format": schema.DATA_FORMAT,
    "compiler": schema.COMPILER,
    "hardware": schema.HARDWARE,
    "threads": schema.THREADS,
    "depth": schema.DEPTH,
    "width": schema.WIDTH,
    "task": schema.TASK,
    "quality_metric": schema.QUALITY_METRIC,
}
NUMERIC_PARAMS = ("amount", "threads", "depth", "width")
METRICS = {
    "quality": schema.QUALITY,
    "top1": schema.TOP1,
    "size_bytes": schema.SIZE_BYTES,
    "params": schema.PARAMS,
    "macs": schema.MACS,
    "param_bytes": schema.PARAM_BYTES,
    "working_set_bytes": schema.WORKING_SET_BYTES,
    "llc_bytes": schema.LLC_BYTES,
    "sparsity": schema.SPARSITY,
    "latency_ms": schema.LATENCY_MS,
    "latency_ms_mean": schema.LATENCY_MS_MEAN,
    "latency_ms_p90": schema.LATENCY_MS_P90,
    "torch_latency_ms": schema.TORCH_LATENCY_MS,
    "speedup": schema.SPEEDUP,
    "compile_s": schema.COMPILE_S,
    "tune_s": schema.TUNE_S,
    "max_abs_err": schema.MAX_ABS_ERR,
    "compiled_top1": schema.COMPILED_TOP1,
}
TAGS = {
    "config_hash": schema.CONFIG_HASH,
    "sweep_id": schema.SWEEP_ID,
    "entry": schema.ENTRY,
    "run_name": schema.RUN_NAME,
}
# which cache entries a run's numbers came from: picks the run to show (newest_per_config)
PROVENANCE_TAGS = tuple(f"dlas.{stage}_{what}" for stage in STAGES for what in ("run", "written"))


def default_uri() -> str:
    """The store ``train.py`` writes to when nothing overrides it (conf/tracking/mlflow.yaml)."""
    return os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlruns/mlflow.db")


def sweep_filter(sweep: str) -> str:
    """MLflow filter for the runs that belong to ``sweep`` (a point can belong to several)."""
    if any(c in sweep for c in "`'\"\n"):
        raise ValueError(f"sweep id {sweep!r} cannot contain quotes or backticks")
    return f"tags.`dlas.sweep.{sweep}` = 'true'"


def open_store(uri: str) -> MlflowClient:
    """A client on ``uri``, refusing a sqlite file that does not exist: MLflow would silently
    create an empty store there (a typo, or the wrong working directory), and the report
    would then claim the experiment is missing instead of the store."""
    db = sqlite_path(uri)
    if db is not None and not db.exists():
        raise ValueError(
            f"no MLflow store at {db.resolve()} (from --uri {uri}); run from the project "
            "root or pass --uri / MLFLOW_TRACKING_URI"
        )
    return MlflowClient(tracking_uri=uri)


def experiment_names(client: MlflowClient) -> list[str]:
    return sorted(e.name for e in client.search_experiments())


def load_points(uri: str, experiment: str, sweep: str | None = None) -> pd.DataFrame:
    """One row per stack point of ``experiment`` (only ``sweep``'s when given).

    Only FINISHED runs count, and of runs sharing a ``dlas.config_hash`` (the same point run
    again) only the newest. Columns: the keys of :data:`PARAMS`, :data:`METRICS` and
    :data:`TAGS`, plus ``label`` (algorithm, ``+csr``/``+bsr`` when sparse; ``n/a`` for
    non-TVM compilers), ``run_id`` and ``start_time``. ``top1`` is in percent; ``quality``
    is the task's own measure (``quality_metric``: top1, miou), the axis fronts are drawn
    on. A run that timed several compiled paths adds ``<compiler>/latency_ms`` and
    ``<compiler>/speedup`` for each (:func:`dlas.report.form_function.compiled_paths` unfolds them).

    Raises ValueError, naming the experiment (and sweep) and listing the experiments that
    do exist, when there is nothing to report on.
    """
    client = open_store(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None or found.lifecycle_stage != "active":
        raise ValueError(
            f"no MLflow experiment {experiment!r} in {uri}; existing experiments: "
            f"{', '.join(experiment_names(client)) or '(none)'}"
        )
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(
        experiment_ids=[found.experiment_id],
        filter_string=sweep_filter(sweep) if sweep else None,
        output_format="pandas",
    )
    finished = runs[runs["status"] == "FINISHED"] if not runs.empty else runs
    if finished.empty:
        raise ValueError(nothing_to_report(client, found.experiment_id, experiment, sweep, runs))
    return sort_points(newest_per_config(tidy(finished))).reset_index(drop=True)


def nothing_to_report(
    client: MlflowClient,
    experiment_id: str,
    experiment: str,
    sweep: str | None,
    runs: pd.DataFrame,
) -> str:
    """Why there is no FINISHED run: a wrong sweep id (name the ones that exist) or only
    failed/running points (count them by status)."""
    where = f"experiment {experiment!r}" + (f" sweep {sweep!r}" if sweep else "")
    if not runs.empty:
        counts = runs["status"].value_counts().to_dict()
        return f"{where} has no FINISHED runs (found {counts})"
    message = f"{where} has no runs"
    if sweep:
        mlflow.set_tracking_uri(client.tracking_uri)
        every = mlflow.search_runs(experiment_ids=[experiment_id], output_format="pandas")
        column = f"tags.{TAGS['sweep_id']}"
        sweeps = sorted(every[column].dropna().unique()) if column in every.columns else []
        message += f"; sweeps in this experiment: {', '.join(sweeps) or '(none tagged)'}"
    return message + f"; existing experiments: {', '.join(experiment_names(client))}"


def _column(runs: pd.DataFrame, name: str) -> pd.Series:
    return runs[name] if name in runs.columns else pd.Series(np.nan, index=runs.index)


def tidy(runs: pd.DataFrame) -> pd.DataFrame:
    """``mlflow.search_runs`` output -> plain, typed columns (absent ones are NaN, so a
    sweep without deployment still has a ``latency_ms`` column)."""
    points = pd.DataFrame(index=runs.index)
    for column, param in PARAMS.items():
        values = _column(runs, f"params.{param}")
        if column in NUMERIC_PARAMS:
            points[column] = pd.to_numeric(values, errors="coerce")
        else:
            points[column] = values.fillna("").astype(str)
    for column, metric in METRICS.items():
        points[column] = pd.to_numeric(_column(runs, f"metrics.{metric}"), errors="coerce")
    for column, tag in TAGS.items():
        points[column] = _column(runs, f"tags.{tag}")
    for tag in PROVENANCE_TAGS:
        points[tag] = _column(runs, f"tags.{tag}")
    points["top1"] = top1_as_percent(points["top1"])
    # runs logged before there were tasks: classification, quality = top-1
    old = points["quality_metric"] == ""
    points.loc[old, "task"] = "classification"
    points.loc[old, "quality_metric"] = schema.TOP1
    points["quality"] = points["quality"].where(points["quality"].notna(), points["top1"])
    tvm = points["compiler"].map(uses_algorithms)
    points["label"] = [
        algorithm_label(a, f, c)
        for a, f, c in zip(
            points["algorithm"], points["data_format"], points["compiler"], strict=True
        )
    ]
    points.loc[~tvm, ["algorithm", "data_format"]] = NOT_APPLICABLE
    points["run_id"] = runs["run_id"]
    points["start_time"] = runs["start_time"]
    paths = path_metric_columns(runs.columns)
    numbers = runs[list(paths)].apply(pd.to_numeric, errors="coerce").rename(columns=paths)
    return pd.concat([points, numbers], axis=1)


def newest_per_config(points: pd.DataFrame) -> pd.DataFrame:
    """Keep one run of each ``config_hash``: the one whose numbers are the cached model's
    (:func:`dlas.tracking.provenance.preference`; with no cache tags, the newest: re-running
    a point supersedes it). Runs without a hash (logged by hand, older code) are all kept."""
    keys = [
        preference(tags, run_id, start)
        for tags, run_id, start in zip(
            points[list(PROVENANCE_TAGS)].to_dict("records"),
            points["run_id"],
            points["start_time"].map(lambda t: t.timestamp() if hasattr(t, "timestamp") else t),
            strict=True,
        )
    ]
    order = sorted(range(len(keys)), key=keys.__getitem__, reverse=True)
    newest_first = points.iloc[order]
    hashed = newest_first["config_hash"].notna() & (newest_first["config_hash"] != "")
    keep = ~newest_first["config_hash"].duplicated() | ~hashed
    return newest_first[keep]
