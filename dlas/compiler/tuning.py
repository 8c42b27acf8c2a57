"""MetaSchedule over the kernels of a lowered module: the tuning budget, the database
per workload, and the end-to-end guard that keeps the untuned program when tuning lost.

``tvm_relax.build`` calls :func:`tune` between layer 4 and the default schedules (or, for
``algorithm=best``, over every candidate's lowering) and :func:`keep_faster` after them.
A database is keyed by the workload's kernels, the target, the searched ops, the
schedule space and the thread count (``dlas.identity.tuning_key``), so a retrained model
of the same shapes, or another point of a sweep, reuses it instead of tuning again.
TVM is imported where it is used: the config schema reads :data:`TUNED_OPS` from here.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dlas.compiler.fast_tvmscript import install as install_fast_tvmscript
from dlas.identity import tuning_key

if TYPE_CHECKING:
    import torch
    import tvm

    from dlas.hardware import Device

log = logging.getLogger("dlas.compiler")

#: MetaSchedule searches the tasks whose names contain one of these (``compiler.tune_ops``,
#: whose default this is): the convolutions (every layer-4 compute is named
#: ``conv2d_<algorithm>``) and linear layers (``matmul``, sparse ``dense_<format>``). The
#: rest (adds, pooling, concatenation, reshapes) are memory-bound, where a search round
#: costs seconds and saves microseconds; they keep their default schedules.
TUNED_OPS = ("conv2d", "matmul", "dense")


@dataclass
class Tuning:
    """MetaSchedule budget; databases live under ``root`` keyed by workload, target,
    ``schedule`` and the thread count the candidates were timed with.

    ``trials <= 0`` means "enough for every task": tasks x ``trials_per_task``. A smaller
    global budget leaves some tasks with no trial at all (MetaSchedule's gradient scheduler
    serves tasks round-robin first), i.e. as slow as untuned, which is logged as a warning.
    """

    trials: int
    trials_per_task: int
    root: Path
    ops: tuple[str, ...] = TUNED_OPS
    #: ``default``: the search space includes our templates and each task's default schedule
    #: is measured and committed first (tuned is never slower than untuned); ``none``:
    #: MetaSchedule's generic space alone, the rest plain loop nests (dlas before schedules).
    schedule: str = "default"
    #: the evolutionary search's population per round; 0 = from the per-task budget
    #: (``template_tuning.population_for``)
    population: int = 0


def workload_hash(mods: list[tvm.IRModule]) -> list[int]:
    """The tuning tasks' identity: the structural hashes of the modules' PrimFuncs (the
    kernels MetaSchedule tunes), not of the weights the Relax function carries, so a
    retrained model of the same shapes reuses its database."""
    import tvm
    from tvm_ffi import structural_hash

    return sorted(
        structural_hash(func)
        for mod in mods
        for _, func in mod.functions.items()
        if isinstance(func, tvm.tirx.PrimFunc)
    )


def tuning_tasks(mods: list[tvm.IRModule], target: tvm.target.Target, ops: tuple[str, ...]) -> list:
    """The MetaSchedule tasks worth searching (those named after one of ``ops``), each
    once however many of ``mods`` (``best``'s candidates) share it."""
    from tvm.s_tir import meta_schedule as ms
    from tvm_ffi import structural_hash

    seen: set[int] = set()
    tasks = []
    for mod in mods:
        for task in ms.relax_integration.extract_tasks(mod, target):
            key = structural_hash(task.dispatched[0])
            if any(op in task.task_name for op in ops) and key not in seen:
                seen.add(key)
                tasks.append(task)
    return tasks


def trial_budget(tuning: Tuning, n_tasks: int) -> int:
    """Global trials: as configured, or tasks x per-task when ``trials <= 0``."""
    if tuning.trials > 0:
        if tuning.trials_per_task and tuning.trials < n_tasks * tuning.trials_per_task:
            log.warning(
                "metaschedule: %d trials < %d tasks x %d per task: some tasks get no trial "
                "and stay as slow as untuned (compiler.trials=0 gives every task its share)",
                tuning.trials,
                n_tasks,
                tuning.trials_per_task,
            )
        return tuning.trials
    if not tuning.trials_per_task:
        raise ValueError("compiler.trials=0 (a share per task) needs compiler.trials_per_task > 0")
    return n_tasks * tuning.trials_per_task


@dataclass
class TuningDatabase:
    work_dir: Path
    tune_s: float  # spent by this call (0 when the database is reused)
    trials: int  # in the database
    cost_s: float  # what building the database cost, whenever that was


STATE_FILE = "dlas_tuning.json"  # beside a database: its budget, cost and end-to-end decision


def tuning_state(work_dir: Path) -> dict[str, Any]:
    """What dlas stored beside a tuning database (empty when nothing is)."""
    state_file = work_dir / STATE_FILE
    return json.loads(state_file.read_text()) if state_file.exists() else {}


def tune(
    mods: list[tvm.IRModule], target: tvm.target.Target, tuning: Tuning, threads: int
) -> TuningDatabase:
    """Tune the kernels of ``mods`` with MetaSchedule unless the database of this workload
    and target already holds at least the budget's trials.

    Every candidate is timed with ``threads`` (0 = every core), the count the model will
    run with: a schedule's rank depends on it (a kernel that streams its weights is
    bandwidth-bound on one core and not on two), so the database is keyed by it too.
    Candidates are always timed on this host (MetaSchedule's local runner): for an RPC
    board the count is this host's, and the end-to-end check is what times the board.
    """
    from dlas.hardware.cores import exclusive
    from dlas.hardware.threads import children_threads, resolve_threads

    threads = resolve_threads(threads)

    key = tuning_key(
        {
            "workload": workload_hash(mods),
            "target": str(target),
            "ops": list(tuning.ops),
            "schedule": tuning.schedule,
            "threads": threads,
        }
    )
    work_dir = tuning.root / key
    state_file = work_dir / STATE_FILE
    state = tuning_state(work_dir)
    done = state.get("trials", 0)
    tasks = tuning_tasks(mods, target, tuning.ops)
    trials = trial_budget(tuning, len(tasks))
    if done >= trials or not tasks:
        return TuningDatabase(work_dir, 0.0, done, state.get("tune_s", 0.0))
    install_fast_tvmscript()
    work_dir.mkdir(parents=True, exist_ok=True)
    log.info(
        "metaschedule: %d trials over %d tasks (%s per task) into %s",
        trials,
        len(tasks),
        tuning.trials_per_task or "no cap",
        work_dir,
    )
    # candidates are timed as they are found: nothing else may run; the runner's workers
    # start inside, so their thread pools get ``threads``
    with exclusive(), children_threads(threads):
        tune_s = _tune_tasks(tasks, work_dir, trials, tuning)
    state_file.write_text(json.dumps({"trials": trials, "tasks": len(tasks), "tune_s": tune_s}))
    return TuningDatabase(work_dir, tune_s, trials, tune_s)


def _drop_foreign_log_handlers() -> None:
    """MetaSchedule re-runs ``logging.config.dictConfig`` on every tuning, listing the
    handlers already on its logger by name; a handler attached without a name (pytest's
    log capture does so) makes the second tuning of a process fail. Such handlers are
    removed from that one logger: MetaSchedule writes its own console and file logs."""
    logger = logging.getLogger("tvm.s_tir.meta_schedule")
    for handler in list(logger.handlers):
        if handler.get_name() is None:
            logger.removeHandler(handler)


def _tune_tasks(tasks: list, work_dir: Path, trials: int, tuning: Tuning) -> float:
    """Tune ``tasks`` into the JSON database in ``work_dir``; with default schedules, each
    task's default is measured and committed first and the space includes our template
    (``dlas.compiler.template_tuning``). Writes ``tasks.json``: per task, trials,
    default ms and best ms."""
    from tvm.s_tir import meta_schedule as ms

    from dlas.compiler import template_tuning
    from dlas.compiler.pooled_builder import PooledBuilder

    _drop_foreign_log_handlers()
    start = time.perf_counter()
    # One builder and one runner for the whole tuning, each with a worker pool that lasts
    # as long as the tuning (MetaSchedule's own builder starts a new pool every round).
    builder = PooledBuilder()  # its workers start with install_fast_tvmscript
    runner = ms.runner.LocalRunner(initializer=install_fast_tvmscript)
    default_ms: dict = {}
    try:
        if tuning.schedule == "default":
            log.info("metaschedule: timing the default schedule of %d tasks", len(tasks))
            default_ms = template_tuning.commit_default_schedules(tasks, work_dir, builder, runner)
            population = template_tuning.population_for(tuning.trials_per_task, tuning.population)
            log.info("metaschedule: evolutionary search keeps %d candidates a round", population)
            contexts, weights = template_tuning.tune_contexts(tasks, work_dir, population)
        else:
            contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
                tasks, work_dir=str(work_dir)
            )
        ms.tune.tune_tasks(
            tasks=contexts,
            task_weights=weights,
            work_dir=str(work_dir),
            max_trials_global=trials,
            max_trials_per_task=tuning.trials_per_task or None,
            builder=builder,
            runner=runner,
        )
    finally:  # both pools hold a TVM each, with a full thread pool: none may outlive this
        builder.shutdown()
        runner.pool.shutdown()
    costs = template_tuning.task_costs(tasks, work_dir, default_ms)
    template_tuning.write_costs(costs, work_dir / "tasks.json")
    for cost in costs:
        log.info(
            "metaschedule: %s x%g: %d records, default %s ms, best %s ms",
            cost.task,
            cost.weight,
            cost.trials,
            "-" if cost.default_ms is None else f"{cost.default_ms:.4f}",
            "-" if cost.best_ms is None else f"{cost.best_ms:.4f}",
        )
    return time.perf_counter() - start


#: The tuned program is kept unless the untuned one is faster by more than this share:
#: two timings of one program differ by ~1-2% here, and a coin flip should not undo tuning.
KEEP_TUNED_WITHIN = 0.02


def stored_decision(work_dir: Path, trials: int) -> dict[str, Any] | None:
    """The end-to-end decision stored beside a database of ``trials`` trials, if any."""
    decided = tuning_state(work_dir).get("end_to_end")
    return decided if decided is not None and decided.get("trials") == trials else None


def _store_decision(work_dir: Path, decided: dict[str, Any]) -> None:
    """Merge into the state file as it is now (a parallel point may have re-tuned since
    it was read), written atomically so that a concurrent reader never sees half."""
    state_file, state = work_dir / STATE_FILE, tuning_state(work_dir)
    if state.get("trials", decided["trials"]) != decided["trials"]:
        return  # re-tuned meanwhile: this decision is about an older database
    tmp = state_file.with_name(f".{state_file.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(state | {"end_to_end": decided}))
    os.replace(tmp, state_file)


def keep_faster(
    tuned: tvm.IRModule,
    untuned: tvm.IRModule,
    target: tvm.target.Target,
    example: torch.Tensor,
    device: Device,
    out_dir: Path,
    work_dir: Path,
    trials: int,
) -> tuple[tvm.IRModule, dict[str, Any] | None, float, Path | None]:
    """The tuned or the untuned program, whichever runs the whole model faster; with the
    decision (None when it could not be measured: the tuned program is kept), the
    seconds the check cost beyond compiling the winner, and the winner's compiled library
    (so it is not compiled a second time).

    MetaSchedule times each kernel alone, calling it again and again on one set of
    buffers, so weights up to the cores' L2 stay there; in the model they come from L3
    after the other layers' (resnet18's 2.4 MB layer-3 conv: 0.028 ms alone, 0.051 ms in
    the model), so a kernel that wins alone can lose in place (measured: resnet18 at 32
    and 64 trials per task, tuned 0.69 / 0.64 ms vs untuned 0.65 / 0.58 ms end to end,
    while the best records sum 4-8% below the defaults). Both programs are
    compiled and timed end to end, in turn in one child process pinned to the timing
    cores (untuned, tuned, tuned, untuned: the best round median of each counts). The
    untuned program is kept only if it is faster by more than :data:`KEEP_TUNED_WITHIN`.
    The decision is stored beside the database, so re-applying it does not time again.
    """
    import tvm

    from dlas.compiler.measure import MeasurementError, measure_in_subprocess, time_tvm_alternating
    from dlas.hardware.threads import timing_cores

    start = time.perf_counter()
    libraries, compile_s = {}, {}
    for kind, mod in (("untuned", untuned), ("tuned", tuned)):
        begin = time.perf_counter()
        libraries[kind] = out_dir / f"end-to-end-{kind}.so"
        libraries[kind].parent.mkdir(parents=True, exist_ok=True)
        tvm.compile(mod, target=target).export_library(str(libraries[kind]))
        compile_s[kind] = time.perf_counter() - begin
    try:
        untuned_rounds, tuned_rounds = measure_in_subprocess(
            time_tvm_alternating,
            [str(libraries["untuned"]), str(libraries["tuned"])],
            example.numpy().astype(np.float32),  # Relax modules take float32 (casts inside)
            device,
            label="end to end: tuned vs untuned",
            timeout=1800,
            cores=None if device.is_remote else timing_cores(device.threads),
        )
    except MeasurementError as err:
        log.warning("metaschedule: could not time tuned vs untuned (%s); keeping tuned", err)
        libraries["untuned"].unlink()
        return tuned, None, time.perf_counter() - start - compile_s["tuned"], libraries["tuned"]
    untuned_ms, tuned_ms = min(untuned_rounds), min(tuned_rounds)
    kept = "untuned" if untuned_ms * (1 + KEEP_TUNED_WITHIN) < tuned_ms else "tuned"
    decided = {
        "trials": trials,
        "untuned_ms": untuned_ms,
        "tuned_ms": tuned_ms,
        "rounds": {"untuned": untuned_rounds, "tuned": tuned_rounds},
        "kept": kept,
        "seconds": time.perf_counter() - start,
    }
    _store_decision(work_dir, decided)
    log.log(
        logging.WARNING if kept == "untuned" else logging.INFO,
        "metaschedule: end to end, tuned %.3f ms vs untuned %.3f ms: keeping the %s program",
        tuned_ms,
        untuned_ms,
        kept,
    )
    libraries["untuned" if kept == "tuned" else "tuned"].unlink()
    winner = tuned if kept == "tuned" else untuned
    return winner, decided, time.perf_counter() - start - compile_s[kept], libraries[kept]
