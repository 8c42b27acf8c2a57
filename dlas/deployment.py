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

Verification and timing run generated code in a child process each, so a crash in a
kernel fails this point only, never the sweep.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dlas.compiler import TVM_COMPILERS, check_compiler
from dlas.compiler.baselines import time_baseline, verify_and_time_baseline
from dlas.compiler.measure import measure_in_subprocess, verify_and_time_tvm
from dlas.hardware import Device, get_device


class VerificationError(RuntimeError):
    """The compiled model disagrees with PyTorch beyond tolerance."""


def check_layers(cfg: Any) -> Device:
    """Validate layers 4-6 before any work: algorithm/format pair, compiler, hardware."""
    from dlas.algorithms import check_combination

    check_compiler(cfg.compiler.name)
    a = cfg.algorithm
    check_combination(a.name, a.data_format, a.fallback)
    h = cfg.hardware
    if cfg.compiler.name not in TVM_COMPILERS and h.name != "cpu":
        raise ValueError(
            f"compiler={cfg.compiler.name} runs on hardware=cpu only, not hardware={h.name}; "
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


@dataclass
class Deployment:
    metrics: dict[str, float]
    params: dict[str, Any]
    layers: list[dict[str, Any]]
    artifact: Path


def _chunks(x: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Static-shape batches; the last one padded by repeating its first image."""
    out = []
    for i in range(0, len(x), batch_size):
        chunk = x[i : i + batch_size]
        if len(chunk) < batch_size:
            chunk = np.concatenate([chunk, np.repeat(chunk[:1], batch_size - len(chunk), 0)])
        out.append(chunk)
    return out


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
    from dlas.compiler import tvm_relax

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
    protocol = {"warmup": m.warmup, "repeat": m.repeat, "number": m.number}
    x_np, example_np = x.numpy(), example.numpy()

    tune_s, trials = 0.0, 0
    if name in TVM_COMPILERS:
        tuning = None
        if name == "tvm_autoschedule":
            c = cfg.compiler
            tuning = tvm_relax.Tuning(c.trials, c.trials_per_task, tuning_root, tuple(c.tune_ops))
        built = tvm_relax.build(program, example, device, cfg.algorithm, out_dir, tuning)
        compile_s, tune_s, layers, artifact = (
            built.compile_s,
            built.tune_s,
            built.layers,
            built.library,
        )
        trials = built.info["tuning_trials"]
        # Relax modules take float32 whatever they compute in (fp16 and int8 cast inside).
        outputs, latency = measure_in_subprocess(
            verify_and_time_tvm,
            str(artifact),
            _chunks(x_np.astype(np.float32), m.batch_size),
            example_np.astype(np.float32),
            device,
            **protocol,
            timeout=m.timeout_s,
            label=f"verify and time {name}",
        )
        outputs = np.concatenate(outputs)[: len(x_np)]
    else:
        artifact = static_path
        outputs, latency = measure_in_subprocess(
            verify_and_time_baseline,
            name,
            program_path,
            static_path,
            x_np,
            example_np,
            threads=device.threads,
            **protocol,
            timeout=m.timeout_s,
            label=f"verify and time {name}",
        )
        compile_s = latency.setup_s  # torch.compile / ONNX export + session: their compile step
        layers = [{"layer": "all", "algorithm": f"{name} kernels", "format": "dense"}]

    with torch.no_grad():
        ref = reference(x).float().numpy()
    err = float(np.abs(outputs.astype(np.float32) - ref).max())
    tol = tolerance(dtype, float(np.abs(ref).max()), m.tolerance)
    compiled_top1 = float((outputs.argmax(1) == y.numpy()).mean() * 100)
    reference_top1 = float((ref.argmax(1) == y.numpy()).mean() * 100)  # same images
    if not np.isfinite(err) or err > tol:
        raise VerificationError(
            f"compiler={name} algorithm={cfg.algorithm.name} "
            f"data_format={cfg.algorithm.data_format}: "
            f"max |compiled - torch| = {err:.3g} > tolerance {tol:.3g} ({dtype}); "
            "the point fails, its latency is not logged"
        )
    if name == "pytorch":
        torch_latency = latency
    else:
        torch_latency = measure_in_subprocess(
            time_baseline,
            "pytorch",
            static_path,
            example_np,
            threads=device.threads,
            **protocol,
            timeout=m.timeout_s,
            label="time pytorch (reference)",
        )
    metrics = {
        **latency.metrics("latency_ms"),
        "torch_latency_ms": torch_latency.median_ms,
        "speedup_vs_torch": torch_latency.median_ms / latency.median_ms,
        "compile_s": compile_s,
        "tune_s": tune_s,
        "max_abs_err_vs_torch": err,
        "verify_tolerance": tol,
        "compiled_top1": compiled_top1,
        "reference_top1": reference_top1,
        "sparse_layers": float(sum(1 for r in layers if r.get("format") in ("csr", "bsr"))),
    }
    params = {
        "batch_size": m.batch_size,
        "tuning_trials": trials,
        "compute_dtype": dtype,
        "target": device.describe().get("target", ""),
    }
    return Deployment(metrics, params, layers, artifact)
