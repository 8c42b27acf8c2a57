"""An Optuna study over the whole stack: every trial is one stack point, run by the same
code as ``train.py`` (stage cache shared, so repeated upstream choices are not retrained)
and logged as one MLflow run tagged with the study and trial number.

Storage is an RDB URL (sqlite by default, PostgreSQL for many machines) with Optuna's
heartbeat: a worker that dies (``kill -9``) leaves its trial RUNNING only until another
worker notices the missing heartbeat and marks it FAIL, then re-enqueues it once
(``RetryFailedTrialCallback``). ``n_trials`` is the study's total, not this process's: a
rerun or a second worker runs until the study holds that many answered trials (COMPLETE,
PRUNED, or FAIL with an error of the point itself; interrupted trials do not count).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import warnings
from typing import Any

import optuna
from filelock import FileLock
from hydra import compose
from omegaconf import DictConfig

from dlas.search.space import check_space, suggest_point
from dlas.tracking import schema
from dlas.tracking.store import sqlite_path

log = logging.getLogger("dlas.search")

DIRECTIONS = ("maximize", "minimize")
SAMPLERS = ("nsga2", "tpe")
ANSWERED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
POINT_METRICS = (
    schema.QUALITY,  # the task's own measure (top1, miou): what a search across tasks compares
    schema.TOP1,
    schema.LATENCY_MS,
    schema.SIZE_BYTES,
    schema.MACS,
    schema.NONZERO_MACS,
    schema.PARAMS,
)


def check_search(cfg: DictConfig) -> None:
    """Everything about the search config that can be wrong, before any trial."""
    s = cfg.search
    if len(s.metrics) != len(s.directions) or not s.metrics:
        raise ValueError(
            f"search.metrics {list(s.metrics)} and search.directions {list(s.directions)} "
            "must be non-empty lists of the same length"
        )
    for metric in s.metrics:
        if metric not in POINT_METRICS:
            raise ValueError(
                f"search.metrics: unknown objective {metric!r}; valid: {', '.join(POINT_METRICS)}"
            )
    for direction in s.directions:
        if direction not in DIRECTIONS:
            raise ValueError(f"search.directions: {direction!r} is not one of {DIRECTIONS}")
    if not cfg.deploy and schema.LATENCY_MS in s.metrics:
        raise ValueError(f"search.metrics asks for {schema.LATENCY_MS} but deploy=false")
    if s.sampler not in SAMPLERS:
        raise ValueError(f"search.sampler={s.sampler!r}; valid choices: {', '.join(SAMPLERS)}")
    if s.n_trials < 1:
        raise ValueError(f"search.n_trials must be >= 1, got {s.n_trials}")
    check_space(s.space)
    from dlas.data import task_of
    from dlas.stack import check_model_fits_task

    task = task_of(cfg.dataset.name)
    uses_top1 = s.constraints.get("min_top1") is not None or schema.TOP1 in s.metrics
    if uses_top1 and task != "classification":
        raise ValueError(
            f"search asks for top1 (metrics or constraints.min_top1) but dataset="
            f"{cfg.dataset.name} is a {task} task; use quality and constraints.min_quality "
            "(its own metric) instead"
        )
    for model in s.space.model:
        check_model_fits_task(model, cfg.dataset.name, task)


def storage(url: str) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage with heartbeats; a sqlite file is created under a file lock
    (two workers starting at once would both create its tables) and waited on when busy."""
    lock: Any = contextlib.nullcontext()
    kwargs: dict[str, Any] = {}
    db = sqlite_path(url)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(db) + ".lock")
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 120}}
    with lock:
        rdb = optuna.storages.RDBStorage(
            url,
            heartbeat_interval=30,
            grace_period=120,
            failed_trial_callback=optuna.storages.RetryFailedTrialCallback(max_retry=1),
            **kwargs,
        )
        if url.startswith("sqlite"):  # readers (dashboard, other workers) never block a writer
            with rdb.engine.connect() as connection:
                connection.exec_driver_sql("PRAGMA journal_mode=WAL")
        return rdb


def _constraints(trial: optuna.trial.FrozenTrial) -> list[float]:
    return trial.user_attrs.get("constraints", [0.0])


def open_study(cfg: DictConfig) -> optuna.Study:
    # Heartbeats, retries and metric names are stable in use but flagged experimental.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    s = cfg.search
    constraints = _constraints if s.constraints.max_latency_ms is not None else None
    if s.sampler == "nsga2":
        sampler = optuna.samplers.NSGAIISampler(seed=s.seed, constraints_func=constraints)
    else:
        sampler = optuna.samplers.TPESampler(seed=s.seed, constraints_func=constraints)
    study = optuna.create_study(
        study_name=s.study_name,
        storage=storage(s.storage),
        directions=list(s.directions),
        sampler=sampler,
        load_if_exists=True,
    )
    study.set_metric_names(list(s.metrics))
    return study


def answered(study: optuna.Study) -> int:
    """Trials that gave an answer (see module docstring): what ``n_trials`` counts."""
    fail = optuna.trial.TrialState.FAIL
    return sum(
        1
        for t in study.get_trials(deepcopy=False, states=(*ANSWERED, fail))
        if t.state != fail or "error" in t.user_attrs
    )


def gate(constraints: Any):
    """Constraints known after compression stop a point before compiling it."""

    def check(metrics: dict[str, float]) -> str | None:
        quality, size = constraints.get("min_quality"), constraints.max_size_bytes
        got_quality, got_size = metrics[schema.QUALITY], metrics[schema.SIZE_BYTES]
        if quality is not None and got_quality < quality:
            return f"quality {got_quality:.2f} < search.constraints.min_quality {quality}"
        top1 = constraints.get("min_top1")
        if top1 is not None and metrics[schema.TOP1] < top1:
            return f"top1 {metrics[schema.TOP1]:.2f} < search.constraints.min_top1 {top1}"
        if size is not None and got_size > size:
            return f"size_bytes {got_size:.0f} > max_size_bytes {size:.0f}"
        return None

    return check


class Objective:
    """One trial = one stack point: compose its config, run it, return the objectives."""

    def __init__(self, cfg: DictConfig, base_overrides: list[str]) -> None:
        self.cfg, self.base = cfg, base_overrides
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, trial: optuna.Trial) -> tuple[float, ...]:
        from dlas.stack import run_point
        from dlas.tracking import last_run

        s = self.cfg.search
        point = suggest_point(trial, s.space)
        keys = {o.split("=", 1)[0] for o in point}
        overrides = [o for o in self.base if o.split("=", 1)[0].lstrip("+~") not in keys]
        overrides += point
        trial.set_user_attr("overrides", point)
        trial.set_user_attr("worker", self.worker)
        log.info("trial %d: %s", trial.number, " ".join(point))
        tags = {schema.STUDY: s.study_name, schema.TRIAL: str(trial.number)}
        try:
            point_cfg = compose(config_name="config", overrides=overrides)
            metrics = run_point(point_cfg, tags=tags, gate=gate(s.constraints))
        except Exception as err:  # the point failed: FAIL in Optuna, FAILED in MLflow
            trial.set_user_attr("error", f"{type(err).__name__}: {err}"[:2000])
            raise
        finally:
            last = last_run()
            if last is not None and last.tags.get(schema.TRIAL) == str(trial.number):
                trial.set_user_attr("run_id", last.run_id)
        if metrics.get(schema.PRUNED):
            raise optuna.TrialPruned("constraint violated before deployment")
        limit = s.constraints.max_latency_ms
        if limit is not None:
            trial.set_user_attr("constraints", [metrics[schema.LATENCY_MS] - limit])
        return tuple(float(metrics[m]) for m in s.metrics)


def run_search(cfg: DictConfig, base_overrides: list[str]) -> optuna.Study:
    """Run trials until the study holds ``search.n_trials`` answered ones."""
    check_search(cfg)
    study = open_study(cfg)
    objective = Objective(cfg, base_overrides)
    target = cfg.search.n_trials
    while (done := answered(study)) < target:
        log.info("study %s: %d/%d trials answered", study.study_name, done, target)
        study.optimize(objective, n_trials=1, catch=(Exception,))
    log.info("study %s: %d/%d trials answered", study.study_name, answered(study), target)
    return study
