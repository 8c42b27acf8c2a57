"""Layer 5, TVM: ``torch.export`` -> Relax -> layer-4 algorithms -> (MetaSchedule) -> library.

The pipeline is a list of named passes (``passes()``), read top to bottom:

1. ``fold_weight_reshapes`` ... ``fold_replicated_linear``: weights are constants
   (``keep_params_as_input=False``), so BatchNorm folds into the conv weights (a conv bias
   before it first moves into its mean, ``dlas.compiler.folds``), a linear layer fed by a
   pool that only replicates a 1x1 map is summed down to the real input size, and the
   algorithm layer sees the real (pruned) weights.
2. ``mixed_precision_fp16`` (fp16 models only): convs and matmuls in float16.
3. ``layer4_algorithms``: our legalization of conv2d / linear into the chosen
   primitive and data format (``dlas.algorithms``), recorded per layer.
4. ``legalize`` ... ``fuse_tir``: TVM's own lowering of every other op and fusion of
   elementwise epilogues (bias, ReLU, residual add) into the producers.
5. ``metaschedule_tune`` + ``apply_tuning_database`` (``tvm_autoschedule`` only).

*Untuned* (``tvm_untuned``) means exactly steps 1-4: TVM 0.27 has no default CPU
schedules (``dlight.cpu`` covers GEMV and reductions only), so every kernel runs as
the plain loop nest its TE compute describes, compiled by LLVM (which vectorizes
innermost loops where it can), single-threaded inside each kernel.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import tvm
from tvm import relax

from dlas.cache import config_hash
from dlas.compiler import folds
from dlas.compiler.fast_tvmscript import install as install_fast_tvmscript
from dlas.hardware import Device

log = logging.getLogger("dlas.compiler")


#: Tasks whose name holds one of these are tuned: the convolutions (every layer-4 compute
#: is named ``conv2d_<algorithm>``), linear layers (``matmul``, sparse ``dense_<format>``).
#: The rest (adds, pooling, concatenation, reshapes) are memory-bound loop nests where a
#: search round costs seconds and saves microseconds; they stay as their plain loop nests.
TUNED_OPS = ("conv2d", "matmul", "dense")


@dataclass
class Tuning:
    """MetaSchedule budget; the database lives under ``root`` keyed by workload and target.

    ``trials <= 0`` means "enough for every task": tasks x ``trials_per_task``. A smaller
    global budget leaves some tasks with no trial at all (MetaSchedule's gradient scheduler
    serves tasks round-robin first), i.e. as slow as untuned, which is logged as a warning.
    """

    trials: int
    trials_per_task: int
    root: Path
    ops: tuple[str, ...] = TUNED_OPS


@dataclass
class TvmBuild:
    library: Path
    compile_s: float
    tune_s: float
    layers: list[dict[str, Any]]
    pipeline: list[str]
    info: dict[str, Any] = field(default_factory=dict)


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
    """Layer 4 as a named module pass that keeps the per-layer decisions it made."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.records: list[dict[str, Any]] = []

    def pass_(self) -> tvm.transform.Pass:
        from dlas.algorithms import legalize_convs

        @tvm.transform.module_pass(opt_level=0, name="layer4_algorithms")
        def apply(mod: tvm.IRModule, _ctx: Any) -> tvm.IRModule:
            mod, self.records = legalize_convs(
                mod,
                self.cfg.name,
                self.cfg.data_format,
                sparsity_threshold=self.cfg.sparsity_threshold,
                block_size=self.cfg.block_size,
                fallback=self.cfg.fallback,
            )
            return mod

        return apply


def passes(algorithms: _Algorithms, dtype: str) -> list[tuple[str, tvm.transform.Pass]]:
    t = relax.transform
    steps: list[tuple[str, tvm.transform.Pass]] = [
        ("fold_weight_reshapes", t.FoldConstant()),
        ("fold_conv_bias_into_batchnorm", folds.fold_conv_bias_into_batchnorm()),
        ("fold_batchnorm", t.FoldBatchnormToConv2D()),
        ("decompose_for_inference", t.DecomposeOpsForInference()),
        ("fold_constants", t.FoldConstant()),
        ("fold_replicated_linear", folds.fold_replicated_linear()),
    ]
    if dtype == "float16":
        steps.append(("mixed_precision_fp16", t.ToMixedPrecision(out_dtype="float16")))
    steps += [
        ("layer4_algorithms", algorithms.pass_()),
        ("legalize", t.LegalizeOps()),
        ("annotate_op_patterns", t.AnnotateTIROpPattern()),
        ("fold_constants_again", t.FoldConstant()),
        ("fuse_ops", t.FuseOps()),
        ("fuse_tir", t.FuseTIR()),
    ]
    return steps


def workload_hash(mod: tvm.IRModule) -> list[int]:
    """The tuning tasks' identity: the structural hashes of the module's PrimFuncs (the
    kernels MetaSchedule tunes), not of the weights the Relax function carries, so a
    retrained model of the same shapes reuses its database."""
    from tvm_ffi import structural_hash

    return sorted(
        structural_hash(func)
        for _, func in mod.functions.items()
        if isinstance(func, tvm.tirx.PrimFunc)
    )


def tuning_tasks(mod: tvm.IRModule, target: tvm.target.Target, ops: tuple[str, ...]) -> list:
    """The MetaSchedule tasks worth searching: those named after one of ``ops``."""
    from tvm.s_tir import meta_schedule as ms

    tasks = ms.relax_integration.extract_tasks(mod, target)
    return [t for t in tasks if any(op in t.task_name for op in ops)]


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


def tune(mod: tvm.IRModule, target: tvm.target.Target, tuning: Tuning) -> TuningDatabase:
    """Tune with MetaSchedule unless the database of this workload and target already holds
    at least the budget's trials."""
    from dlas.hardware.cores import exclusive

    key = config_hash(
        {"workload": workload_hash(mod), "target": str(target), "ops": list(tuning.ops)}
    )
    work_dir = tuning.root / key
    state_file = work_dir / "dlas_tuning.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    done = state.get("trials", 0)
    tasks = tuning_tasks(mod, target, tuning.ops)
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
    with exclusive():  # candidates are timed as they are found: nothing else may run
        tune_s = _tune_tasks(tasks, work_dir, trials, tuning.trials_per_task)
    state_file.write_text(json.dumps({"trials": trials, "tasks": len(tasks), "tune_s": tune_s}))
    return TuningDatabase(work_dir, tune_s, trials, tune_s)


def _tune_tasks(tasks: list, work_dir: Path, trials: int, per_task: int) -> float:
    from tvm.s_tir import meta_schedule as ms

    start = time.perf_counter()
    contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
        tasks, work_dir=str(work_dir)
    )
    ms.tune.tune_tasks(
        tasks=contexts,
        task_weights=weights,
        work_dir=str(work_dir),
        max_trials_global=trials,
        max_trials_per_task=per_task or None,
        builder=ms.builder.LocalBuilder(initializer=install_fast_tvmscript),
        runner=ms.runner.LocalRunner(initializer=install_fast_tvmscript),
    )
    return time.perf_counter() - start


def build(
    program: torch.export.ExportedProgram,
    example: torch.Tensor,
    device: Device,
    algorithm_cfg: Any,
    out_dir: Path,
    tuning: Tuning | None = None,
) -> TvmBuild:
    start = time.perf_counter()
    mod, dtype = to_relax(program, example)
    algorithms = _Algorithms(algorithm_cfg)
    steps = passes(algorithms, dtype)
    target = device.compile_target
    with target:
        for i, (name, step) in enumerate(steps, 1):
            log.info("tvm pipeline %d/%d: %s", i, len(steps), name)
            mod = step(mod)
    tune_s, trials = 0.0, 0
    info: dict[str, Any] = {"dtype": dtype}
    names = [name for name, _ in steps]
    if tuning is not None:
        database = tune(mod, device.target, tuning)
        tune_s, trials = database.tune_s, database.trials
        info["tuning_cost_s"] = database.cost_s
        with target, tvm.transform.PassContext(opt_level=3):
            mod = relax.transform.MetaScheduleApplyDatabase(str(database.work_dir))(mod)
        names += ["metaschedule_tune", "apply_tuning_database"]
    log.info("tvm: building the library for %s", target.kind.name)
    executable = tvm.compile(mod, target=target)
    out_dir.mkdir(parents=True, exist_ok=True)
    library = out_dir / "model.so"
    executable.export_library(str(library))
    compile_s = time.perf_counter() - start - tune_s
    return TvmBuild(
        library,
        compile_s,
        tune_s,
        algorithms.records,
        names,
        info | {"tuning_trials": trials},
    )
