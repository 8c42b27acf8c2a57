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

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import tvm
from tvm import relax

from dlas.algorithms import BEST, Algorithm
from dlas.compiler import folds
from dlas.compiler.pipeline import PipelineLog
from dlas.compiler.tuning import (
    Tuning,
    TuningDatabase,
    keep_faster,
    stored_decision,
    tune,
)
from dlas.hardware import Device

log = logging.getLogger("dlas.compiler")


@dataclass
class TvmBuild:
    library: Path
    compile_s: float
    tune_s: float
    layers: list[dict[str, Any]]
    info: dict[str, Any] = field(default_factory=dict)
    steps: list[dict[str, Any]] = field(default_factory=list)  # pipeline.json: with times

    @property
    def pipeline(self) -> list[str]:
        """The steps that ran, in order (``dlas.compiler.pipeline``)."""
        return [s["step"] for s in self.steps]


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
        ("fold_constants_numpy", folds.fold_constants_numpy()),
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
    from dlas.compiler.base import best_algorithm_error
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
        if tuning is None:  # a config never gets here: check_layers has said why
            raise ValueError(best_algorithm_error("tvm_untuned", []))
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
        info | {"tuning_trials": trials},
        pipeline.as_list(),
    )
