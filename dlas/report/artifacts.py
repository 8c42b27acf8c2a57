"""Log a finished report folder as the artifacts of one MLflow run.

The run lives in ``<experiment>-reports``, not in the experiment it reports on: a report
run has no stack params or metrics, and among the points it would show up as an empty row
in the compare view and be read back by the next report.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from mlflow import MlflowClient

from dlas.tracking import schema
from dlas.tracking.store import setup_experiment


def report_name(experiment: str, sweep: str | None) -> str:
    """``<experiment>[-<sweep>]``: names both the run and the default output folder."""
    return f"{experiment}-{sweep}" if sweep else experiment


def report_experiment(client: MlflowClient, experiment: str) -> str:
    """Id of ``<experiment>-reports``, created with its artifacts beside a sqlite store (the
    layout ``dlas.tracking`` gives the points), not in the current directory."""
    return setup_experiment(client.tracking_uri, f"{experiment}-reports")


def log_report(
    files: Iterable[Path],
    uri: str,
    experiment: str,
    sweep: str | None = None,
    metrics: dict[str, float] | None = None,
) -> str:
    """Upload ``files`` to a new run ``report-<experiment>[-<sweep>]``; returns its id.

    Tags ``dlas.entry=report``, ``dlas.report_of`` and ``dlas.sweep_id`` find it again;
    ``metrics`` (point count, correlations) make reports comparable in the MLflow UI.
    """
    client = MlflowClient(tracking_uri=uri)
    tags = {schema.ENTRY: "report", schema.REPORT_OF: experiment}
    if sweep:
        tags[schema.SWEEP_ID] = sweep
    run = client.create_run(
        report_experiment(client, experiment),
        run_name=f"report-{report_name(experiment, sweep)}",
        tags=tags,
    )
    run_id = run.info.run_id
    try:
        for name, value in (metrics or {}).items():
            client.log_metric(run_id, name, value)
        for path in files:
            client.log_artifact(run_id, str(path))
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")
    return run_id
