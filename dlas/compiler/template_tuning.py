"""MetaSchedule over our templates: what ``tvm_autoschedule`` searches, and its floor.

Two things make tuned code comparable with untuned code, in DLAS's sense:

- **The search space includes the template.** A layer-4 kernel's space is the union of
  its own schedule with *sampled* knobs (``dlas.compiler.default_schedule`` with
  ``tunable=True``: tile sizes through ``sample_perfect_tile``, the unroll depth through
  ``sample_categorical``) and MetaSchedule's generic x86 space (multi-level tiling and
  friends, ``post-order-apply``); the evolutionary search draws from both and keeps the
  faster. Which space a winner came from is in the database's trace.
- **The default schedule is measured first.** Before any search, each task's default
  schedule is built and timed by MetaSchedule's own builder and runner and committed to the
  database as a tuning record. MetaSchedule applies the fastest record of a workload, so a
  tuned kernel can never be slower than its untuned one; and the default time is kept per
  task (``tasks.json``): trials, default ms, best ms.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import tvm

from dlas.compiler.default_schedule import anchor_of, apply_schedule

log = logging.getLogger("dlas.compiler")


def register_intrinsics() -> None:
    """Register every tensor intrinsic a tuning record may name, before a database opens.

    A JSON database parses every record's trace when it is opened, and a trace names its
    tensor intrinsics: ours (``dlas.algorithms.vnni``) and TVM's, which MetaSchedule's
    generic x86 space tries on VNNI targets (``dot_16x4_vnni``, registered by importing
    ``tvm.s_tir.tensor_intrin``). The tuning process has them all by the time it reads
    its results; a later process that only re-applies the database did not, and failed
    with "TensorIntrin 'dot_16x4_vnni' is not registered" on every int8 point.
    """
    from dlas.algorithms import vnni
    from dlas.compiler.fast_tvmscript import install

    install()  # importing tensor_intrin parses hundreds of TVMScript functions
    import tvm.s_tir.tensor_intrin  # noqa: F401

    vnni.register()


def open_database(work_dir: Path) -> Any:
    """The JSON tuning database in ``work_dir``, with every intrinsic it may name."""
    from tvm.s_tir import meta_schedule as ms

    register_intrinsics()
    return ms.database.JSONDatabase(work_dir=str(work_dir))


def _template(target: tvm.target.Target):
    """The tunable template of a kernel as a MetaSchedule ``ScheduleFn`` body."""

    def apply(sch: Any) -> None:
        apply_schedule(sch, target, tunable=True)

    return apply


#: MetaSchedule's trials per round (``tune_tasks``' ``num_trials_per_iter``) and its
#: evolutionary search's default population
TRIALS_PER_ROUND, MAX_POPULATION, MIN_POPULATION = 64, 512, 64


def population_for(trials_per_task: int, population: int = 0) -> int:
    """The evolutionary search's population: ``population`` if set, else 4 x the trials a
    round measures, within 64..512.

    Why not MetaSchedule's 512 always: each round samples and evolves the whole
    population (every candidate through the postprocessors and the cost model), and on
    this project's 2-core host that costs ~17 s per round even when the round measures one
    candidate, most of a small budget's tuning time. A round measures at most
    ``min(64, trials_per_task)`` candidates, and a cost model trained on that few
    measurements does not rank 512 candidates much better than 4 x as many.
    """
    if population:
        return population
    if not trials_per_task:  # no per-task cap: rounds of 64, MetaSchedule's default
        return MAX_POPULATION
    per_round = min(TRIALS_PER_ROUND, trials_per_task)
    return min(MAX_POPULATION, max(MIN_POPULATION, 4 * per_round))


def tune_contexts(
    tasks: list, work_dir: Path, population: int = MAX_POPULATION, seed: int | None = None
) -> tuple[list, list]:
    """One TuneContext per task: the union space for layer-4 kernels, MetaSchedule's
    generic space for the rest, searched with a population of ``population``."""
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.logging import get_loggers_from_work_dir
    from tvm.s_tir.meta_schedule.utils import fork_seed

    contexts, weights = [], []
    loggers = get_loggers_from_work_dir(str(work_dir), [t.task_name for t in tasks])
    for task, logger, rand_state in zip(tasks, loggers, fork_seed(seed, n=len(tasks)), strict=True):
        func = task.dispatched[0]["main"]
        space: Any = "post-order-apply"
        if anchor_of(tvm.s_tir.Schedule(func)) is not None:
            space = ms.space_generator.SpaceGeneratorUnion(
                [
                    ms.space_generator.ScheduleFn(_template(task.target)),
                    ms.space_generator.PostOrderApply(),
                ]
            )
        contexts.append(
            ms.TuneContext(
                mod=task.dispatched[0],
                target=task.target,
                space_generator=space,
                search_strategy=ms.search_strategy.EvolutionarySearch(population_size=population),
                task_name=task.task_name,
                logger=logger,
                rand_state=rand_state,
                num_threads="physical",
            ).clone()
        )
        weights.append(task.weight)
    return contexts, weights


@dataclass
class TaskCost:
    """One tuned task: how often it runs per inference, what its default schedule and its
    best record measure (ms, MetaSchedule's runner), and how many records it has."""

    task: str
    weight: float
    trials: int
    default_ms: float | None
    best_ms: float | None
    #: which space the best record came from: ``default`` (the untuned schedule),
    #: ``template`` (our template with sampled knobs) or ``generic`` (MetaSchedule's own)
    best_from: str | None = None


def space_of(trace: Any) -> str:
    """Which search space a record's trace was drawn from. MetaSchedule's generic space
    marks every tiled block with ``meta_schedule.tiling_structure`` (or, for kernels it
    does not tile, the root's ``meta_schedule.parallel`` annotations); our template
    samples knobs without either; the default schedule samples nothing."""
    text = str(trace)
    if "meta_schedule." in text:
        return "generic"
    return "template" if "sample_" in text else "default"


def commit_default_schedules(tasks: list, work_dir: Path, builder: Any, runner: Any) -> dict:
    """Build and time each task's default schedule; commit it to the JSON database in
    ``work_dir`` as a tuning record. Returns ``{task name: default ms}`` (None where the
    default schedule failed to build or run: then only searched records compete)."""
    from tvm.s_tir import meta_schedule as ms

    database = open_database(work_dir)
    inputs, records = [], []
    for task in tasks:
        mod = task.dispatched[0]
        sch = tvm.s_tir.Schedule(mod)
        apply_schedule(sch, task.target, tunable=False)
        records.append((task, mod, sch))
        inputs.append(ms.builder.BuilderInput(sch.mod, task.target))
    built = builder.build(inputs)
    default_ms: dict[str, float | None] = {}
    pending = []
    for (task, mod, sch), result in zip(records, built, strict=True):
        if result.error_msg:
            log.warning(
                "default schedule of %s did not build: %s", task.task_name, result.error_msg
            )
            default_ms[task.task_name] = None
            continue
        args_info = ms.arg_info.ArgInfo.from_prim_func(mod["main"])
        run = runner.run([ms.runner.RunnerInput(result.artifact_path, "cpu", args_info)])[0]
        pending.append((task, mod, sch, args_info, run))
    for task, mod, sch, args_info, run in pending:
        res = run.result()
        if res.error_msg or not res.run_secs:
            log.warning("default schedule of %s did not run: %s", task.task_name, res.error_msg)
            default_ms[task.task_name] = None
            continue
        secs = [float(s) for s in res.run_secs]
        workload = database.commit_workload(mod)
        database.commit_tuning_record(
            ms.database.TuningRecord(sch.trace, workload, secs, task.target, args_info)
        )
        default_ms[task.task_name] = 1e3 * sum(secs) / len(secs)
    return default_ms


def task_costs(tasks: list, work_dir: Path, default_ms: dict) -> list[TaskCost]:
    """Per task: records in the database and the best one's time."""
    database = open_database(work_dir)
    costs = []
    for task in tasks:
        mod = task.dispatched[0]
        best_ms, trials, best_from = None, 0, None
        if database.has_workload(mod):
            workload = database.commit_workload(mod)
            records = database.get_top_k(workload, 1 << 20)
            trials = len(records)
            timed = [
                (sum(float(s) for s in r.run_secs) / len(r.run_secs), r)
                for r in records
                if r.run_secs
            ]
            if timed:
                secs, best = min(timed, key=lambda t: t[0])
                best_ms, best_from = 1e3 * secs, space_of(best.trace)
        costs.append(
            TaskCost(
                task.task_name,
                float(task.weight),
                trials,
                default_ms.get(task.task_name),
                best_ms,
                best_from,
            )
        )
    return costs


def write_costs(costs: list[TaskCost], path: Path) -> None:
    path.write_text(json.dumps([asdict(c) for c in costs], indent=1))
