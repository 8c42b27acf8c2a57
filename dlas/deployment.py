"""Layers 4-6 of one stack point: compile, verify against PyTorch, then time.

Every compiler (TVM untuned / auto-scheduled, PyTorch eager, torch.compile,
onnxruntime) goes through the same protocol, so their numbers compare:

* verification: the compiled model's outputs on ``verify_samples`` test images vs
  the PyTorch model of the same compressed point (``max_abs_err_vs_torch``) and its
  own test top-1 on them (``compiled_top1``, next to PyTorch's ``reference_top1`` on the
  same images); a point over tolerance fails, it is
  never timed;
* latency: batch ``batch_size``, ``warmup`` runs, then ``repeat`` x ``number`` timed
  runs (median, mean, std, p90 over repeats), PyTorch eager timed the same way in
  the same run for ``speedup_vs_torch``.
* ``measure.compare``: more compilers through the same verification and timing in the same
  run, against the same eager reference (the form-follows-function study compares
  compiled paths point by point without pairing runs).

Verification and timing run generated code in a child process each, so a crash in a
kernel fails this point only, never the sweep.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dlas.compiler import TVM_COMPILERS, check_compiler, check_schedule
from dlas.compiler.baselines import time_baseline, verify_and_time_baseline
from dlas.compiler.measure import Latency, measure_in_subprocess, verify_and_time_tvm
from dlas.hardware import Device, get_device

log = logging.getLogger("dlas.deployment")


class VerificationError(RuntimeError):
    """The compiled model disagrees with PyTorch beyond tolerance."""


def check_layers(cfg: Any) -> Device:
    """Validate layers 4-6 before any work: algorithm/format pair, compilers, hardware."""
    from dlas.algorithms import BEST, check_combination

    main = cfg.compiler.name
    check_compiler(main)
    check_schedule(cfg.compiler.schedule)
    for other in cfg.measure.compare:
        check_compiler(other)
        if other == "tvm_autoschedule" and main != other:
            raise ValueError(
                "measure.compare=[tvm_autoschedule] needs its tuning budget: make it the main "
                f"compiler (compiler=tvm_autoschedule measure.compare=[{main}])"
            )
    a = cfg.algorithm
    check_combination(a.name, a.data_format, a.fallback, a.candidates)
    if a.name == BEST and (main != "tvm_autoschedule" or "tvm_untuned" in cfg.measure.compare):
        raise ValueError(
            "algorithm=best chooses each layer's algorithm by its tuned time: it needs "
            f"compiler=tvm_autoschedule and no tvm_untuned to compare (got compiler={main}, "
            f"measure.compare={list(cfg.measure.compare)})"
        )
    h = cfg.hardware
    for name in (main, *cfg.measure.compare):
        if name not in TVM_COMPILERS and h.name != "cpu":
            raise ValueError(
                f"compiler={name} runs on hardware=cpu only, not hardware={h.name}; "
                f"compilers for any hardware: {', '.join(TVM_COMPILERS)}"
            )
    return get_device(
        h.name,
        threads=h.threads,
        target=h.target,
        target_host=h.target_host,
        host=h.host,
        port=h.port,
        key=h.key,
    )


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


@dataclass
class Compiled:
    """One compiler's result on the verification images and its latency."""

    outputs: np.ndarray
    latency: Latency
    compile_s: float
    tune_s: float
    trials: int
    layers: list[dict[str, Any]]
    artifact: Path


@dataclass
class Inputs:
    """What every compiler of a point is given: the same images, batch and protocol."""

    program: torch.export.ExportedProgram
    program_path: Path
    static_path: Path  # the program re-exported at the measured batch size
    x: np.ndarray  # verification images
    example: np.ndarray  # one timed batch
    protocol: dict[str, int]
    timeout_s: float


def _chunks(x: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Static-shape batches; the last one padded by repeating its first image."""
    out = []
    for i in range(0, len(x), batch_size):
        chunk = x[i : i + batch_size]
        if len(chunk) < batch_size:
            chunk = np.concatenate([chunk, np.repeat(chunk[:1], batch_size - len(chunk), 0)])
        out.append(chunk)
    return out


def compile_and_time(
    name: str, cfg: Any, device: Device, inputs: Inputs, out_dir: Path, tuning_root: Path
) -> Compiled:
    """Compile with ``name``, then verify and time it in a child process."""
    from dlas.compiler import tvm_relax

    batch_size = cfg.measure.batch_size
    if name not in TVM_COMPILERS:
        outputs, latency = measure_in_subprocess(
            verify_and_time_baseline,
            name,
            inputs.program_path,
            inputs.static_path,
            inputs.x,
            inputs.example,
            threads=device.threads,
            **inputs.protocol,
            timeout=inputs.timeout_s,
            label=f"verify and time {name}",
        )
        layers = [{"layer": "all", "algorithm": f"{name} kernels", "format": "dense"}]
        # torch.compile / ONNX export + session: their compile step
        return Compiled(outputs, latency, latency.setup_s, 0.0, 0, layers, inputs.static_path)
    tuning = None
    if name == "tvm_autoschedule":
        c = cfg.compiler
        tuning = tvm_relax.Tuning(c.trials, c.trials_per_task, tuning_root, tuple(c.tune_ops))
    example = torch.from_numpy(inputs.example)
    built = tvm_relax.build(
        inputs.program, example, device, cfg.algorithm, out_dir, tuning, cfg.compiler.schedule
    )
    # Relax modules take float32 whatever they compute in (fp16 and int8 cast inside).
    outputs, latency = measure_in_subprocess(
        verify_and_time_tvm,
        str(built.library),
        _chunks(inputs.x.astype(np.float32), batch_size),
        inputs.example.astype(np.float32),
        device,
        **inputs.protocol,
        timeout=inputs.timeout_s,
        label=f"verify and time {name}",
    )
    outputs = np.concatenate(outputs)[: len(inputs.x)]
    return Compiled(
        outputs,
        latency,
        built.compile_s,
        built.tune_s,
        built.info["tuning_trials"],
        built.layers,
        built.library,
    )


def verify(
    name: str, cfg: Any, compiled: Compiled, ref: np.ndarray, y: np.ndarray, dtype: str
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
        "max_abs_err_vs_torch": err,
        "verify_tolerance": tol,
        "compiled_top1": float((compiled.outputs.argmax(1) == y).mean() * 100),
    }


def deploy(
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
        {"warmup": m.warmup, "repeat": m.repeat, "number": m.number},
        m.timeout_s,
    )
    with torch.no_grad():
        ref = reference(x).float().numpy()
    labels = y.numpy()

    names = [name, *(c for c in dict.fromkeys(m.compare) if c != name)]
    results: dict[str, Compiled] = {}
    checks: dict[str, dict[str, float]] = {}
    for i, compiler in enumerate(names):
        if len(names) > 1:
            log.info("compiler %d/%d: %s", i + 1, len(names), compiler)
        results[compiler] = compile_and_time(
            compiler, cfg, device, inputs, out_dir / compiler, tuning_root
        )
        checks[compiler] = verify(compiler, cfg, results[compiler], ref, labels, dtype)

    if "pytorch" in results:
        torch_latency = results["pytorch"].latency
    else:
        torch_latency = measure_in_subprocess(
            time_baseline,
            "pytorch",
            static_path,
            inputs.example,
            threads=device.threads,
            **inputs.protocol,
            timeout=m.timeout_s,
            label="time pytorch (reference)",
        )
    main = results[name]
    metrics = {
        **main.latency.metrics("latency_ms"),
        "torch_latency_ms": torch_latency.median_ms,
        "speedup_vs_torch": torch_latency.median_ms / main.latency.median_ms,
        "compile_s": main.compile_s,
        "tune_s": main.tune_s,
        **checks[name],
        "reference_top1": float((ref.argmax(1) == labels).mean() * 100),  # same images
        "sparse_layers": float(sum(1 for r in main.layers if r.get("format") in ("csr", "bsr"))),
    }
    if len(names) > 1:  # every compiled path under its own name, the main one included
        for compiler, result in results.items():
            metrics |= {
                f"{compiler}/latency_ms_median": result.latency.median_ms,
                f"{compiler}/speedup_vs_torch": torch_latency.median_ms / result.latency.median_ms,
                f"{compiler}/compile_s": result.compile_s,
                f"{compiler}/tune_s": result.tune_s,
                f"{compiler}/max_abs_err_vs_torch": checks[compiler]["max_abs_err_vs_torch"],
            }
    params = {
        "batch_size": m.batch_size,
        "tuning_trials": main.trials,
        "compute_dtype": dtype,
        "target": device.describe().get("target", ""),
    }
    return Deployment(metrics, params, main.layers, main.artifact)
