"""Layers 4-6 of one stack point: compile, verify against PyTorch, then time.

Every compiler (TVM untuned / auto-scheduled, PyTorch eager, torch.compile,
onnxruntime) goes through the same protocol, so their numbers compare:

* verification: the compiled model's outputs on ``verify_samples`` test images vs
  the PyTorch model of the same compressed point (``max_abs_err_vs_torch``) and its
  task's quality on them (``compiled_quality``, next to PyTorch's ``reference_quality``
  on the same images; for classification also as ``compiled_top1`` / ``reference_top1``);
  a point over tolerance fails, it is never timed;
* latency: batch ``batch_size``, then ``repeat`` x ``number`` timed runs (median, mean,
  std, p90 over repeats), PyTorch eager timed the same way in the same run for
  ``speedup_vs_torch``. The repeats are split over ``rounds`` rounds that alternate
  between the compiled path(s) and eager PyTorch (each round after ``warmup`` untimed
  runs), so every ratio is taken under one machine state; ``speedup_vs_torch_lo``/``_hi``
  bound it (:mod:`dlas.compiler.rounds`). A noisy timing (samples' CV, or other
  processes' load on the timed cores, above ``measure.max_cv`` / ``max_cpu_load``) is
  retried ``retries`` times, then tagged ``dlas.noisy``, or fails the point under
  ``measure.strict``.
* ``measure.compare``: more compilers through the same verification and timing in the same
  run, against the same eager reference (the form-follows-function study compares
  compiled paths point by point without pairing runs).

Each runtime runs in a child process of its own (a :class:`~dlas.compiler.measure.Worker`
pinned to the timed cores), which verifies it and then serves the timing rounds, so a
crash in a kernel fails this point only, never the sweep, and no two runtimes share a
process.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dlas.compiler import (
    COMPILERS,
    Compiled,
    Compiler,
    Inputs,
    best_algorithm_error,
    compiler_class,
    get_compiler,
)
from dlas.compiler.baselines import open_baseline
from dlas.compiler.measure import Protocol, Worker
from dlas.compiler.noise import NoisePolicy
from dlas.compiler.rounds import Timing, time_paired
from dlas.errors import build
from dlas.hardware import Device
from dlas.hardware.cores import exclusive
from dlas.hardware.threads import timing_cores
from dlas.tracking import schema
from dlas.training.tasks import Task, get_task

log = logging.getLogger("dlas.deployment")


class VerificationError(RuntimeError):
    """The compiled model disagrees with PyTorch beyond tolerance."""


def compilers_of(cfg: Any) -> dict[str, Compiler]:
    """``compiler=`` and every ``measure.compare`` compiler, main first, each built from
    the point's compiler options (its constructor checks the values it takes)."""
    main = cfg.compiler
    options = {k: v for k, v in main.items() if k not in ("_target_", "name")}
    compilers = {main.name: build(main)}
    for other in dict.fromkeys(cfg.measure.compare):
        if other in compilers:
            continue
        if compiler_class(other).tunes:
            raise ValueError(
                f"measure.compare=[{other}] needs its tuning budget: make it the main "
                f"compiler (compiler={other} measure.compare=[{main.name}])"
            )
        compilers[other] = get_compiler(other, **options)
    return compilers


def check_layers(cfg: Any) -> Device:
    """Validate layers 4-6 before any work: each layer's own values (the algorithm/format
    pair, the compilers' options, the hardware reachable), then the rules across them,
    all here."""
    from dlas.algorithms import BEST

    compilers = compilers_of(cfg)
    main = cfg.compiler.name
    if build(cfg.algorithm).name == BEST:
        reason = best_algorithm_error(main, list(cfg.measure.compare))
        if reason is not None:
            raise ValueError(reason)
    check_measure(cfg.measure)
    h = cfg.hardware
    for name, compiler in compilers.items():
        if compiler.hardware is not None and h.name not in compiler.hardware:
            anywhere = [n for n in COMPILERS.names() if compiler_class(n).hardware is None]
            raise ValueError(
                f"compiler={name} runs on hardware={' or '.join(compiler.hardware)} only, not "
                f"hardware={h.name}; compilers for any hardware: {', '.join(anywhere)}"
            )
    return build(h)  # dlas.hardware.get_device: reachable now, or a HardwareUnavailableError


def check_measure(m: Any) -> NoisePolicy:
    """The timing protocol's knobs, checked before anything runs."""
    if m.rounds < 1:
        raise ValueError(f"measure.rounds={m.rounds} must be >= 1")
    for key in ("load_probe_s", "retry_wait_s"):
        if m[key] < 0:
            raise ValueError(f"measure.{key}={m[key]} must be >= 0")
    Protocol.from_config(m)  # warmup >= 0, repeat >= 1, number >= 1
    return NoisePolicy.from_config(m).check()


def tolerance(dtype: str, scale: float, override: float | None) -> float:
    """Max |compiled - torch| allowed: fp32 kernels agree to rounding; fp16 and int8
    kernels legitimately round differently from PyTorch's, relative to the logit scale."""
    if override is not None:
        return override
    relative = {"float32": 1e-5, "float16": 2e-2, "int8": 1e-1}[dtype]
    return max(1e-3, relative * scale) if dtype == "float32" else relative * max(scale, 1.0)


def disagreement(
    outputs: np.ndarray, ref: np.ndarray, dtype: str, override: float | None = None
) -> tuple[float, float]:
    """Max |outputs - ref| (inf when not finite, so it is never within tolerance) and the
    tolerance it must stay within."""
    err = float(np.abs(outputs.astype(np.float32) - ref).max())
    return (err if np.isfinite(err) else math.inf), tolerance(
        dtype, float(np.abs(ref).max()), override
    )


@dataclass
class Deployment:
    metrics: dict[str, float]
    params: dict[str, Any]
    layers: list[dict[str, Any]]
    artifact: Path
    tags: dict[str, str] = field(default_factory=dict)  # dlas.noisy when the timing was
    timing: dict[str, Any] = field(default_factory=dict)  # latencies.json: the raw samples
    #: pipeline.json: each compiler with a pass pipeline -> its steps as they ran, timed
    pipelines: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def launch_reference(inputs: Inputs, device: Device, cores: Sequence[int]) -> Worker:
    """Eager PyTorch on the static program, loading in a worker of its own: the reference
    every speedup of the point is over (not verified: it is what the others are verified
    against). It loads while the point compiles, as the compile is computing too (the
    host lock is shared, see ``dlas.hardware.cores``); :meth:`Worker.ready` waits for
    it before timing."""
    worker = Worker("time pytorch (reference)", timeout=inputs.timeout_s, cores=cores)
    worker.launch(
        open_baseline,
        "pytorch",
        inputs.program_path,
        inputs.static_path,
        None,
        inputs.example,
        threads=device.threads,
    )
    return worker


def timing_metrics(timing: Timing, names: Sequence[str], main: str) -> dict[str, float]:
    """The run schema's timing metrics: the main compiler's under plain names, and with
    ``measure.compare`` every compiled path's under ``<compiler>/``."""
    lat, ref, speed = timing.latencies[main], timing.latencies["pytorch"], timing.speedups[main]
    metrics = {
        **lat.metrics(schema.LATENCY),
        schema.TORCH_LATENCY_MS: ref.median_ms,
        schema.SPEEDUP: speed.ratio,
        schema.SPEEDUP_LO: speed.lo,
        schema.SPEEDUP_HI: speed.hi,
        schema.LATENCY_CV: timing.cvs[main],
        schema.TORCH_LATENCY_CV: timing.cvs["pytorch"],
        schema.CPU_LOAD_BEFORE: timing.load_before,
        schema.CPU_LOAD_DURING: timing.load_during,
        schema.MEASURE_ATTEMPTS: float(timing.attempts),
        schema.MEASURE_ROUNDS: float(speed.rounds),
    }
    if len(names) > 1:
        for name in names:
            own = metrics_of(timing, name)
            metrics |= {schema.of_compiler(name, k): v for k, v in own.items()}
    return metrics


def metrics_of(timing: Timing, name: str) -> dict[str, float]:
    """One compiled path's timing: the ``schema.PER_COMPILER`` subset of what the main
    path logs, so the schema, not this function, decides which names a path repeats."""
    speed = timing.speedups[name]
    stats = {
        **timing.latencies[name].metrics(schema.LATENCY),
        schema.SPEEDUP: speed.ratio,
        schema.SPEEDUP_LO: speed.lo,
        schema.SPEEDUP_HI: speed.hi,
        schema.LATENCY_CV: timing.cvs[name],
    }
    return {key: stats[key] for key in schema.PER_COMPILER}


def scores(outputs: np.ndarray, score: Callable[[np.ndarray], float], task: Task, who: str):
    """``<who>_quality`` and, for classification, ``<who>_top1`` (the names runs had
    before there were other tasks) of outputs on the verification images."""
    value = score(outputs)
    named = {schema.COMPILED_QUALITY if who == "compiled" else schema.REFERENCE_QUALITY: value}
    if task.quality == schema.TOP1:
        named[schema.COMPILED_TOP1 if who == "compiled" else schema.REFERENCE_TOP1] = value
    return named


def verify(
    name: str,
    cfg: Any,
    compiled: Compiled,
    ref: np.ndarray,
    score: Callable[[np.ndarray], float],
    task: Task,
    dtype: str,
) -> dict[str, float]:
    """Compare with PyTorch on the same images; a compiler over tolerance fails the point."""
    err, tol = disagreement(compiled.outputs, ref, dtype, cfg.measure.tolerance)
    if err > tol:
        raise VerificationError(
            f"compiler={name} algorithm={cfg.algorithm.name} "
            f"data_format={cfg.algorithm.data_format}: "
            f"max |compiled - torch| = {err:.3g} > tolerance {tol:.3g} ({dtype}); "
            "the point fails, its latency is not logged"
        )
    return {
        schema.MAX_ABS_ERR: err,
        schema.VERIFY_TOLERANCE: tol,
        **scores(compiled.outputs, score, task, "compiled"),
    }


def compile_verify_and_time(
    cfg: Any,
    device: Device,
    program: torch.export.ExportedProgram,
    program_path: Path,
    reference: nn.Module,
    data: Any,
    input_dtype: torch.dtype,
    dtype: str,
    out_dir: Path,
    tuning_root: Path,
) -> Deployment:
    """``compiler=`` and every ``measure.compare`` compiler, each verified and timed, and
    PyTorch eager timed once as the reference of all their speedups."""
    m, name = cfg.measure, cfg.compiler.name
    out_dir.mkdir(parents=True, exist_ok=True)
    x, y = data.example_batch(m.verify_samples)
    x = x.to(input_dtype)
    example = x[: m.batch_size]
    if len(example) < m.batch_size:
        example = example.repeat((m.batch_size + len(example) - 1) // len(example), 1, 1, 1)[
            : m.batch_size
        ]
    static = torch.export.export(program.module(), (example,))
    static_path = out_dir / "static.pt2"
    torch.export.save(static, static_path)
    inputs = Inputs(
        program,
        program_path,
        static_path,
        x.numpy(),
        example.numpy(),
        m.timeout_s,
    )
    with torch.no_grad():
        ref = reference(x).float().numpy()
    task = get_task(data.task)
    score = functools.partial(
        task.quality_of,
        target=y.numpy(),
        num_classes=data.num_classes,
        ignore_index=data.ignore_index,
    )

    compilers = compilers_of(cfg)
    names = list(compilers)
    cores = timing_cores(device.threads)
    results: dict[str, Compiled] = {}
    checks: dict[str, dict[str, float]] = {}
    with contextlib.ExitStack() as workers:

        def reference() -> Worker:
            worker = launch_reference(inputs, device, cores)
            workers.callback(worker.close)
            return worker

        # The reference loads beside the compile, unless a compiler tunes: MetaSchedule
        # times candidates in this process tree, and nothing may load beside a timing.
        early = None
        if "pytorch" not in names and not any(compilers[c].tunes for c in names):
            early = reference()
        for i, compiler in enumerate(names):
            if len(names) > 1:
                log.info("compiler %d/%d: %s", i + 1, len(names), compiler)
            results[compiler] = compiled = compilers[compiler].compile_and_open(
                cfg, device, inputs, out_dir / compiler, tuning_root, cores
            )
            assert compiled.worker is not None
            workers.callback(compiled.worker.close)
            checks[compiler] = verify(compiler, cfg, compiled, ref, score, task, dtype)
        timed = {c: r.worker for c, r in results.items() if r.worker is not None}
        if "pytorch" not in timed:
            timed["pytorch"] = early or reference()
            timed["pytorch"].ready()
        with exclusive():
            timing = time_paired(
                timed,
                "pytorch",
                cores=cores,
                protocol=Protocol.from_config(m),
                rounds=m.rounds,
                policy=NoisePolicy.from_config(m),
                probe_s=m.load_probe_s,
                retry_wait_s=m.retry_wait_s,
            )
    for compiler, result in results.items():
        result.latency = timing.latencies[compiler]

    main = results[name]
    metrics = {
        **timing_metrics(timing, names, name),
        schema.COMPILE_S: main.compile_s,
        schema.TUNE_S: main.tune_s,
        **checks[name],
        **scores(ref, score, task, "reference"),  # the same images
        schema.SPARSE_LAYERS: float(
            sum(1 for r in main.layers if r.get("format") in ("csr", "bsr"))
        ),
    }
    if len(names) > 1:  # every compiled path under its own name, the main one included
        for compiler, result in results.items():
            build = {
                schema.COMPILE_S: result.compile_s,
                schema.TUNE_S: result.tune_s,
                **checks[compiler],
            }
            metrics |= {
                schema.of_compiler(compiler, k): build[k] for k in schema.PER_COMPILER_BUILD
            }
    params = {
        schema.BATCH_SIZE: m.batch_size,
        schema.TUNING_TRIALS: main.trials,
        schema.COMPUTE_DTYPE: dtype,
        schema.TARGET: device.describe().get("target", ""),
    }
    if main.end_to_end is not None:  # tuned vs untuned, the whole model: which was kept
        params[schema.TUNING_KEPT] = main.end_to_end["kept"]
        metrics[schema.TUNED_END_TO_END_MS] = main.end_to_end["tuned_ms"]
        metrics[schema.UNTUNED_END_TO_END_MS] = main.end_to_end["untuned_ms"]
    tags = {} if timing.noisy is None else {schema.NOISY: timing.noisy}
    record = timing.record(m.number, cores)
    pipelines = {c: r.pipeline for c, r in results.items() if r.pipeline is not None}
    return Deployment(metrics, params, main.layers, main.artifact, tags, record, pipelines)
