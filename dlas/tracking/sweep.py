"""A multirun sweep as one trustworthy object: an identity, membership tags, and resume.

* Identity: ``on_multirun_start`` (a Hydra callback, so it runs once, in the process that
  launches the jobs) hashes the entry script and its sorted sweep overrides into a
  ``sweep_id``. Re-running the same command gives the same id, so a resumed sweep is the
  same sweep. The id reaches every job, in-process or in joblib/submitit workers, through
  the environment.
* Membership: each point's run is tagged ``dlas.sweep_id`` (the sweep that made it) and
  ``dlas.sweep.<id> = true`` for every sweep it belongs to, which is how ``dlas.report``
  selects a sweep even when a point was measured by an earlier one.
* Resume: before a point starts, a FINISHED run with the same resolved config
  (``dlas.config_hash``) is reused instead of rerun (``tracking.resume``; by default in
  sweeps only). Runs left RUNNING by a process that died without a word (``kill -9``,
  OOM killer, power loss) are found by their host and pid tags and marked KILLED, so
  nothing that did not finish ever looks finished or running.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import psutil
from hydra.experimental.callback import Callback
from mlflow.entities import Run
from omegaconf import DictConfig

from dlas.identity import point_key
from dlas.tracking import schema
from dlas.tracking.provenance import preference

log = logging.getLogger("dlas.tracking")

ENV_ID, ENV_SPEC, ENV_DIR = "DLAS_SWEEP_ID", "DLAS_SWEEP", "DLAS_SWEEP_DIR"


@dataclass(frozen=True)
class Sweep:
    id: str
    spec: str  # the command's overrides, e.g. "compression=prune,quant model=resnet18,vgg16"
    dir: str  # Hydra's sweep dir of this invocation

    @property
    def member_tag(self) -> str:
        return f"dlas.sweep.{self.id}"

    def tags(self) -> dict[str, str]:
        return {
            schema.SWEEP_ID: self.id,
            "dlas.sweep": self.spec[:5000],
            "dlas.sweep_dir": self.dir,
            self.member_tag: "true",
        }


def sweep_identity(entry: str, overrides: list[str]) -> str:
    return point_key({"entry": entry, "overrides": sorted(overrides)})[:12]


class SweepCallback(Callback):
    """Names the sweep before Hydra launches its jobs (configured in conf/config.yaml)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        overrides = [str(o) for o in config.hydra.overrides.task]
        entry = Path(sys.argv[0]).stem
        os.environ[ENV_ID] = sweep_identity(entry, overrides)
        os.environ[ENV_SPEC] = f"{entry}: " + " ".join(sorted(overrides))
        os.environ[ENV_DIR] = str(config.hydra.sweep.dir)
        log.info(
            "sweep %s (%s) in %s", os.environ[ENV_ID], os.environ[ENV_SPEC], config.hydra.sweep.dir
        )


def current_sweep() -> Sweep | None:
    """The sweep this process is a job of, if any."""
    sweep_id = os.environ.get(ENV_ID)
    if not sweep_id:
        return None
    return Sweep(sweep_id, os.environ.get(ENV_SPEC, ""), os.environ.get(ENV_DIR, ""))


def process_tags() -> dict[str, str]:
    """Who runs this run: how a later process tells a live run from an orphaned one."""
    return {"dlas.host": socket.gethostname(), "dlas.pid": str(os.getpid())}


def finished_run(experiment_id: str, point_hash: str) -> Run | None:
    """The FINISHED run of this exact resolved config to reuse, if there is one: of
    several, the one whose numbers are the cached model's (:func:`preference`)."""
    found = mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=(
            f"tags.`dlas.config_hash` = '{point_hash}' and attributes.status = 'FINISHED'"
        ),
        order_by=["attributes.start_time DESC"],
        max_results=1000,
        output_format="list",
    )
    if not found:
        return None
    return max(found, key=lambda r: preference(r.data.tags, r.info.run_id, r.info.start_time))


def _orphaned(run: Run, host: str) -> bool:
    tags = run.data.tags
    if tags.get("dlas.host") != host or not tags.get("dlas.pid", "").isdigit():
        return False  # another machine's run (or not ours): we cannot tell, leave it
    pid = int(tags["dlas.pid"])
    try:
        started = psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return True
    # The pid was reused by a process started after the run began: the run's is gone.
    return started > run.info.start_time / 1000 + 1


def reap_orphaned_runs(experiment_id: str) -> list[str]:
    """Mark KILLED the RUNNING runs whose process on this host no longer exists."""
    client = mlflow.MlflowClient()
    host = socket.gethostname()
    running = mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string="attributes.status = 'RUNNING'",
        output_format="list",
    )
    reaped = []
    for run in running:
        if _orphaned(run, host):
            pid = run.data.tags["dlas.pid"]
            client.set_tag(
                run.info.run_id,
                "error",
                f"killed: process {pid} on {host} ended without closing this run (e.g. kill -9)",
            )
            client.set_terminated(run.info.run_id, status="KILLED")
            reaped.append(run.info.run_id)
            log.warning(
                "run %s was left RUNNING by dead process %s: marked KILLED", run.info.run_id, pid
            )
    return reaped


def reuse_finished(run: Run, sweep: Sweep | None) -> dict[str, float]:
    """Count an already finished point in: tag it with this sweep, return its metrics."""
    if sweep is not None:
        mlflow.MlflowClient().set_tag(run.info.run_id, sweep.member_tag, "true")
    log.info(
        "skipping %s: already FINISHED with this exact config as run %s "
        "(tracking.resume=false runs it again)",
        run.info.run_name,
        run.info.run_id,
    )
    return dict(run.data.metrics)
