"""One MLflow run per stack point, which never outlives a failure as RUNNING and whose
results survive the tracking store going away.

Runs live in the store ``dlas.tracking.store`` lays out (checked before a run opens). A
run that raises ends FAILED with the error as a tag and as ``error.txt``; SIGINT or
SIGTERM (``dlas.cli``) end it KILLED with ``interrupted by SIGINT|SIGTERM``. Everything
is logged through :class:`TrackedRun`, which journals each call (``dlas.tracking.spool``):
if the store stops answering, the run goes on offline, its results are written to the
run's output folder, and the process ends non-zero naming the command that imports them.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import yaml
from mlflow.exceptions import MlflowException
from pytorch_lightning.loggers.logger import Logger
from pytorch_lightning.utilities import rank_zero_only

from dlas.cli import interruption
from dlas.errors import StoreUnavailableError
from dlas.tracking import spool
from dlas.tracking.store import one_line, setup_experiment

log = logging.getLogger("dlas.tracking")

_last: TrackedRun | None = None


def last_run() -> TrackedRun | None:
    """The run this process opened last (search tags its trial with it)."""
    return _last


def unreachable(err: BaseException | None) -> bool:
    """True when MLflow gave up on the store itself (no answer, or a 5xx after its
    retries), not when the store rejected what was sent (a real error)."""
    import requests

    while err is not None:
        if isinstance(err, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
            return True
        if isinstance(err, MlflowException) and str(err).startswith("API request to"):
            return True
        err = err.__cause__ or err.__context__
    return False


def replay_command(folder: Path) -> str:
    return f"python -m dlas.tracking.replay {folder}"


class TrackedRun:
    """The run a point logs into: each call goes to the store and into the journal.
    When the store fails, later calls only journal, and the journal is written to
    ``spool_dir`` (the run's output folder) after every call."""

    def __init__(self, client: mlflow.MlflowClient, run: Any, experiment: str, spool_dir: Path):
        self.client, self.run_id, self.spool_dir = client, run.info.run_id, spool_dir
        self.tags = dict(run.data.tags)
        self.journal = spool.Journal(
            uri=client.tracking_uri,
            experiment_id=run.info.experiment_id,
            experiment=experiment,
            run_id=self.run_id,
            run_name=run.info.run_name,
            start_time=run.info.start_time,
            entries=[spool.Entry("tags", self.tags, sent=True)],
        )
        self._staging = tempfile.TemporaryDirectory(prefix="dlas-artifacts-")
        self._staged = 0

    @property
    def online(self) -> bool:
        return self.journal.offline_reason is None

    # ------------------------------------------------------------ what a run logs

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._log(spool.Entry("params", {k: str(v) for k, v in params.items()}))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        ts = spool.now_ms()
        self.log_metric_rows([[k, float(v), ts, step or 0] for k, v in metrics.items()])

    def log_metric_rows(self, rows: list[list[Any]]) -> None:
        """``[[key, value, timestamp_ms, step], ...]`` (training curves)."""
        if rows:
            self._log(spool.Entry("metrics", rows))

    def set_tag(self, key: str, value: Any) -> None:
        self.set_tags({key: value})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if tags:
            self._log(spool.Entry("tags", {k: str(v) for k, v in tags.items()}))

    def log_text(self, text: str, artifact_file: str) -> None:
        self._staged += 1
        local = Path(self._staging.name) / str(self._staged) / Path(artifact_file).name
        local.parent.mkdir(parents=True)
        local.write_text(text)
        self.log_artifact(local, str(Path(artifact_file).parent).strip(".") or None)

    def log_dict(self, dictionary: Mapping[str, Any], artifact_file: str) -> None:
        """As MLflow's ``log_dict``: YAML for .yml/.yaml, JSON otherwise."""
        if Path(artifact_file).suffix in (".yml", ".yaml"):
            text = yaml.dump(dict(dictionary), indent=2, default_flow_style=False)
        else:
            text = json.dumps(dictionary, indent=2, default=str)
        self.log_text(text, artifact_file)

    def log_artifact(self, local: str | Path, artifact_path: str | None = None) -> None:
        self._log(spool.Entry("artifact", {"file": None, "dir": artifact_path}), Path(local))

    def end(self, status: str) -> None:
        self.journal.status, self.journal.end_time = status, spool.now_ms()
        if self.online:
            try:
                self.client.set_terminated(self.run_id, status, self.journal.end_time)
            except Exception as err:
                if not unreachable(err):
                    raise
                self._go_offline(err)
        if not self.online:
            spool.write(self.journal, self.spool_dir)
        self._staging.cleanup()

    # ------------------------------------------------------------ store or spool

    def _log(self, entry: spool.Entry, local: Path | None = None) -> None:
        self.journal.entries.append(entry)
        if self.online:
            try:
                spool.send(self.client, self.run_id, entry, local)
                entry.sent = True
                return
            except Exception as err:
                if not unreachable(err):
                    raise
                self._go_offline(err)
        if local is not None:
            entry.data["file"] = spool.spool_artifact(self.spool_dir, local, entry.data["dir"])
        spool.write(self.journal, self.spool_dir)

    def _go_offline(self, err: BaseException) -> None:
        self.journal.offline_reason = one_line(err)
        log.error(
            "tracking store %s stopped answering (%s): run %s goes on offline; its results "
            "are kept in %s",
            self.journal.uri,
            self.journal.offline_reason,
            self.run_id,
            self.spool_dir,
        )


def default_spool_root() -> Path:
    """The run's output folder: Hydra's job folder (outputs/<date>/<time>, or the sweep
    job's), else a folder in the temp dir (in-process use)."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir) / "mlflow"
    return Path(tempfile.gettempdir()) / "dlas-mlflow"


@contextmanager
def tracked_run(
    uri: str,
    experiment: str,
    *,
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
    artifact_root: str | None = None,
    spool_root: Path | None = None,
) -> Iterator[TrackedRun]:
    global _last
    from mlflow.tracking.context.registry import resolve_tags

    experiment_id = setup_experiment(uri, experiment, artifact_root)
    client = mlflow.MlflowClient(uri)
    try:  # as mlflow.start_run does: the user's tags plus source, user and git commit
        created = client.create_run(experiment_id, run_name=run_name, tags=resolve_tags(tags or {}))
    except Exception as err:
        if unreachable(err):
            raise StoreUnavailableError(
                f"tracking.uri={uri}: the store stopped answering before the run opened "
                f"({one_line(err)})"
            ) from err
        raise
    folder = (spool_root or default_spool_root()) / created.info.run_id
    run = TrackedRun(client, created, experiment, folder)
    _last = run
    try:
        yield run
    except BaseException as err:
        stop = interruption(err)
        if stop is not None:
            run.set_tag("error", str(stop))
            run.end("KILLED")
        else:
            run.set_tag("error", f"{type(err).__name__}: {err}"[:5000])
            run.log_text("".join(traceback.format_exception(err)), "error.txt")
            run.end("FAILED")
        if not run.online:
            log.error(
                "run %s ended %s offline: import its results with `%s`",
                run.run_id,
                run.journal.status,
                replay_command(run.spool_dir),
            )
        raise
    run.end("FINISHED")
    if not run.online:
        raise StoreUnavailableError(
            f"tracking store {uri} stopped answering during run {run.run_id} "
            f"({run.journal.offline_reason}); the run finished and its params, metrics, tags "
            f"and artifacts are in {run.spool_dir}: import them once the store is back with "
            f"`{replay_command(run.spool_dir)}`"
        )


class StageLogger(Logger):
    """Lightning's curves into our run under a stage prefix (``train-train/loss``, the
    names Lightning's MLFlowLogger gave them). It never ends the run, and it shares the
    run's journal, so curves survive a store outage too."""

    def __init__(self, run: TrackedRun, prefix: str) -> None:
        super().__init__()
        self._run, self._prefix = run, prefix

    @property
    def name(self) -> str:
        return "dlas"

    @property
    def version(self) -> str:
        return self._run.run_id

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        ts = spool.now_ms()
        rows = [
            [re.sub("[^a-zA-Z0-9_/. -]+", "", f"{self._prefix}-{k}"), float(v), ts, step or 0]
            for k, v in metrics.items()
            if not isinstance(v, str)
        ]
        self._run.log_metric_rows(rows)

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """Nothing: the run logs every config value as a param itself."""


class RunLogger:
    """Hands each training stage a Lightning logger writing into the active run."""

    def __init__(self, uri: str, run: TrackedRun) -> None:
        self.uri, self.run = uri, run

    def for_stage(self, stage: str) -> StageLogger:
        return StageLogger(self.run, stage)


def flatten(prefix: str, node: Any) -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"prefix.a.b": 1}``, skipping Hydra's ``_target_`` keys."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            if not str(k).startswith("_"):
                out.update(flatten(f"{prefix}.{k}" if prefix else str(k), v))
        return out
    return {prefix: node}
