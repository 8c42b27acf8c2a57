"""Layer 5, TVM: ``torch.export`` -> Relax -> layer-4 algorithms -> (MetaSchedule) -> library.

The pipeline is a list of named passes (``passes()``), read top to bottom:

1. ``fold_weight_reshapes`` ... ``crop_padding_only_taps``: weights are constants
   (``keep_params_as_input=False``), so BatchNorm folds into the conv weights (a conv bias
   before it first moves into its mean, ``dlas.compiler.folds``), a linear layer fed by a
   pool that only replicates a 1x1 map is summed down to the real input size, kernel taps
   that read only padding are dropped, and the algorithm layer sees the real (pruned)
   weights.
2. ``mixed_precision_fp16`` (fp16 models only): convs and matmuls in float16.
3. ``layer4_algorithms``: our legalization of conv2d / linear into the chosen
   primitive and data format (``dlas.algorithms``), recorded per layer.
4. ``fast_math`` (unless ``compiler.schedule=none``; tuned too): ``exp``, ``sigmoid``,
   ``tanh``, ``erf`` and ``softmax`` as polynomials that vectorize
   (``dlas.compiler.fast_math``).
5. ``legalize`` ... ``fuse_tir``: TVM's own lowering of every other op and fusion of
   elementwise epilogues (bias, ReLU, residual add) into the producers; then
   ``narrow_indices`` (int32 indices, which tensor intrinsics need).
6. ``metaschedule_tune`` + ``apply_tuning_database`` (``tvm_autoschedule`` only).
   With ``algorithm=best``, steps 3-5 run once per candidate algorithm, all candidates'
   kernels are tuned into one database, and ``choose_algorithm_per_layer`` gives each
   layer the candidate whose tuned kernel ran fastest before steps 3-5 run for real
   (``dlas.compiler.per_layer``).
7. ``default_schedules``: every kernel no tuning record covers gets its default
   schedule (``dlas.compiler.default_schedule``): a layer-4 compute its algorithm's
   template with default knobs, every other kernel the generic one.

*Untuned* (``tvm_untuned``) means steps 1-5 and 7, DLAS's sense of the word: each
primitive's hand-written schedule at its default knobs. ``compiler.schedule=none`` skips
step 4, ``narrow_indices`` and step 7 and keeps the plain loop nests (TVM 0.27's CPU
pipeline schedules nothing itself), single-threaded, to reproduce the numbers measured
before default schedules.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import tvm
from tvm import relax

from dlas.algorithms import BEST, Algorithm
from dlas.compiler import folds
from dlas.compiler.fast_tvmscript import install as install_fast_tvmscript
from dlas.compiler.pipeline import PipelineLog
from dlas.compiler.tvm_compilers import TUNED_OPS
from dlas.hardware import Device
from dlas.identity import tuning_key

log = logging.getLogger("dlas.compiler")


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


@dataclass
class TvmBuild:
    library: Path
    compile_s: float
    tune_s: float
    layers: list[dict[str, Any]]
    pipeline: list[str]  # the steps that ran, in order (dlas.compiler.pipeline)
    info: dict[str, Any] = field(default_factory=dict)
    steps: list[dict[str, Any]] = field(default_factory=list)  # pipeline.json: with times


def to_relax(
    program: torch.export.ExportedProgram, example: torch.Tensor
) -> tuple[tvm.IRModule, str]:
    """Import into Relax; returns the module and the model's compute dtype."""
    from dlas.compiler.int8 import import_int8, is_quantized

    if is_quantized(program):
        return import_int8(program, batch_size=example.shape[0]), "int8"
    module = program.module()
    dtype = "float32"
    if any(p.dtype == torch.float16 for p in module.parameters()) or example.dtype == torch.float16:
        # The torch frontend cannot import half-precision BatchNorm: import the (fp16-exact)
        # weights as float32 and let Relax's ToMixedPrecision compute in float16.
        module = module.float()
        dtype = "float16"
    from tvm.relax.frontend.torch import from_exported_program

    static = torch.export.export(module, (example.float(),))
    return from_exported_program(static, keep_params_as_input=False), dtype


class _Algorithms:
    """Layer 4 as a named module pass that keeps the per-layer decisions it made.

    ``name`` overrides the configured algorithm (one candidate of ``best``); ``per_layer``
    is ``best``'s choice, one algorithm per conv layer."""

    def __init__(
        self,
        cfg: Algorithm | None,
        name: str | None = None,
        per_layer: Sequence[str] = (),
        schedule: str = "default",
    ) -> None:
        self.cfg = cfg
        self.name = name or (cfg.name if cfg is not None else "direct")
        self.per_layer = list(per_layer)
        self.plain_layouts = schedule == "none"
        self.records: list[dict[str, Any]] = []

    def pass_(self) -> tvm.transform.Pass:
        from dlas.algorithms import legalize_convs

        @tvm.transform.module_pass(opt_level=0, name="layer4_algorithms")
        def apply(mod: tvm.IRModule, _ctx: Any) -> tvm.IRModule:
            mod, self.records = legalize_convs(
                mod,
                self.name,
                self.cfg.data_format,
                sparsity_threshold=self.cfg.sparsity_threshold,
                block_size=self.cfg.block_size,
                fallback=self.cfg.fallback,
                per_layer=self.per_layer,
                plain_layouts=self.plain_layouts,
            )
            return mod

        return apply


def passes(algorithms: _Algorithms, dtype: str) -> list[tuple[str, tvm.transform.Pass]]:
    """The whole pipeline up to the tuning, as (name, pass) pairs."""
    return graph_passes(dtype) + kernel_passes(algorithms)


def graph_passes(dtype: str) -> list[tuple[str, tvm.transform.Pass]]:
    """Graph-level folds, the same whatever algorithm the layers get."""
    t = relax.transform
    steps: list[tuple[str, tvm.transform.Pass]] = [
        ("fold_weight_reshapes", t.FoldConstant()),
        ("fold_conv_bias_into_batchnorm", folds.fold_conv_bias_into_batchnorm()),
        ("fold_batchnorm", t.FoldBatchnormToConv2D()),
        ("decompose_for_inference", t.DecomposeOpsForInference()),
        ("fold_constants", t.FoldConstant()),
        ("fold_replicated_linear", folds.fold_replicated_linear()),
        ("crop_padding_only_taps", folds.crop_padding_only_taps()),
    ]
    if dtype == "float16":
        steps.append(("mixed_precision_fp16", t.ToMixedPrecision(out_dtype="float16")))
    return steps


def kernel_passes(algorithms: _Algorithms) -> list[tuple[str, tvm.transform.Pass]]:
    """Layer 4, then TVM's lowering of the other ops and the fusion into kernels (with
    int32 indices for the scheduled kernels, which tensor intrinsics need)."""
    from dlas.compiler.default_schedule import narrow_indices
    from dlas.compiler.fast_math import fast_math

    t = relax.transform
    steps = [("layer4_algorithms", algorithms.pass_())]
    if not algorithms.plain_layouts:  # the default schedules vectorize exp and sigmoid
        steps.append(("fast_math", fast_math()))
    steps += [
        ("legalize", t.LegalizeOps()),
        ("annotate_op_patterns", t.AnnotateTIROpPattern()),
        ("fold_constants_again", t.FoldConstant()),
        ("fuse_ops", t.FuseOps()),
        ("fuse_tir", t.FuseTIR()),
    ]
    if not algorithms.plain_layouts:
        steps.append(("narrow_indices", narrow_indices()))
    return steps


def workload_hash(mods: list[tvm.IRModule]) -> list[int]:
    """The tuning tasks' identity: the structural hashes of the modules' PrimFuncs (the
    kernels MetaSchedule tunes), not of the weights the Relax function carries, so a
    retrained model of the same shapes reuses its database."""
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


def _choose_per_layer(
    mod: tvm.IRModule, cfg: Any, device: Device, tuning: Tuning
) -> tuple[list[str], list[dict], TuningDatabase]:
    """``algorithm=best``: lower with every candidate, tune them all, keep each layer's
    fastest (``dlas.compiler.per_layer``)."""
    from dlas.compiler import per_layer

    def lower(name: str) -> tuple[tvm.IRModule, list[dict]]:
        algorithms = _Algorithms(cfg, name=name, schedule=tuning.schedule)
        with device.compile_target:
            lowered = PipelineLog(quiet=True).run(kernel_passes(algorithms), mod)
        return lowered, algorithms.records

    log.info("algorithm=best: lowering with each of %s", ", ".join(cfg.candidates))
    candidates = per_layer.legalize_candidates(lower, list(cfg.candidates))
    database = tune([c.mod for c in candidates], device.target, tuning, device.threads)
    chosen, costs = per_layer.choose(candidates, database.work_dir, device.target)
    log.info("algorithm=best: per conv layer %s", ", ".join(chosen))
    return chosen, costs, database


def _copy(mod: tvm.IRModule) -> tvm.IRModule:
    """A deep copy: some scheduling passes rewrite the functions of their input in place."""
    return tvm.ir.load_json(tvm.ir.save_json(mod))


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


def build(
    program: torch.export.ExportedProgram,
    example: torch.Tensor,
    device: Device,
    algorithm_cfg: Algorithm,
    out_dir: Path,
    tuning: Tuning | None = None,
    schedule: str = "default",
) -> TvmBuild:
    """Compile one point; ``schedule`` says what the kernels no tuning record covers get:
    their default schedules (``default``, DLAS's "untuned") or none (the plain loop
    nests). With ``tuning``, its ``schedule`` must agree."""
    from dlas.compiler import check_schedule
    from dlas.compiler.default_schedule import default_schedules

    check_schedule(schedule)
    if tuning is not None and tuning.schedule != schedule:
        tuning = replace(tuning, schedule=schedule)
    start = time.perf_counter()
    pipeline = PipelineLog()
    with pipeline.step("import_exported_program"):
        mod, dtype = to_relax(program, example)
    target = device.compile_target
    with target:
        mod = pipeline.run(graph_passes(dtype), mod)
    info: dict[str, Any] = {"dtype": dtype}
    tune_s, trials, database, untuned, compiled, decided = 0.0, 0, None, None, None, None
    chosen: list[str] = []
    costs: list[dict] = []
    if algorithm_cfg.name == BEST:
        if tuning is None:
            raise ValueError(
                "algorithm=best chooses each layer's algorithm by its tuned time: it needs "
                "compiler=tvm_autoschedule"
            )
        with pipeline.step("choose_algorithm_per_layer"):
            chosen, costs, database = _choose_per_layer(mod, algorithm_cfg, device, tuning)
    algorithms = _Algorithms(algorithm_cfg, per_layer=chosen, schedule=schedule)
    with target:
        mod = pipeline.run(kernel_passes(algorithms), mod)
    if tuning is not None:
        if database is None:
            with pipeline.step("metaschedule_tune"):
                database = tune([mod], device.target, tuning, device.threads)
        tune_s, trials = database.tune_s, database.trials
        info["tuning_cost_s"] = database.cost_s
        info["tuning_dir"] = str(database.work_dir)  # its tasks.json: per-task costs
        check = schedule == "default" and not chosen and database.work_dir.exists()
        decided = stored_decision(database.work_dir, trials) if check else None
        if check and decided is None:
            untuned = _copy(mod)  # scheduling passes rewrite functions in place
        if decided is None or decided["kept"] == "tuned":
            from dlas.compiler.template_tuning import register_intrinsics

            register_intrinsics()  # the database's records may name any of them
            # the step inside the opt_level=3 context, so that its instrument sees the pass
            opt3 = tvm.transform.PassContext(opt_level=3)
            with target, opt3, pipeline.step("apply_tuning_database"):
                mod = relax.transform.MetaScheduleApplyDatabase(str(database.work_dir))(mod)
        else:
            with pipeline.step("untuned_was_faster_end_to_end"):
                pass  # the stored decision: the database is not applied
    if schedule == "default":
        with pipeline.step("default_schedules"), target:
            mod = default_schedules(target)(mod)
            if untuned is not None:
                untuned = default_schedules(target)(untuned)
        if untuned is not None:
            assert database is not None
            with pipeline.step("keep_faster_of_tuned_and_untuned"):
                mod, decided, guard_s, compiled = keep_faster(
                    mod, untuned, target, example, device, out_dir, database.work_dir, trials
                )
            tune_s += guard_s  # part of tuning; a re-applied database pays nothing
    if decided is not None:  # stored, or measured just now
        info["end_to_end"] = decided
    if chosen:
        convs = (r for r in algorithms.records if r["op"] == "conv2d")
        for record, candidate_ms in zip(convs, costs, strict=True):
            record["candidate_ms"] = candidate_ms
    out_dir.mkdir(parents=True, exist_ok=True)
    library = out_dir / "model.so"
    with pipeline.step(f"build_library_{target.kind.name}"):
        if compiled is not None:  # the end-to-end check compiled the winner already
            compiled.replace(library)
        else:
            tvm.compile(mod, target=target).export_library(str(library))
    compile_s = time.perf_counter() - start - tune_s
    return TvmBuild(
        library,
        compile_s,
        tune_s,
        algorithms.records,
        pipeline.names(),
        info | {"tuning_trials": trials},
        pipeline.as_list(),
    )
