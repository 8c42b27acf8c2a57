"""Layer 5 baselines: what a user would deploy with instead of a tuned compiler stack.

* ``pytorch``: PyTorch eager, the native framework (the reference for verification);
* ``torch_compile``: ``torch.compile`` (TorchInductor) of the same program;
* ``onnxruntime``: the program exported to ONNX, run by onnxruntime's CPU provider
  (on this machine kind it is the fastest of all, so it is the number to beat).

All start from the same ``torch.export`` program file (``.pt2``) the TVM path imports, so
every framework runs exactly the same graph and weights, and all are timed with the shared
protocol of :mod:`dlas.compiler.measure`. Run them through ``measure_in_subprocess`` for
the one-process-per-point rule; the functions here time in the calling process.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dlas.compiler.measure import Latency, Loaded, sample_callable, time_callable
from dlas.hardware.threads import set_threads

BASELINES = ("pytorch", "torch_compile", "onnxruntime")
TORCH_MODES = ("eager", "compile")


def _check_kind(kind: str) -> str:
    if kind not in BASELINES:
        raise ValueError(f"unknown baseline {kind!r}; valid choices: {', '.join(BASELINES)}")
    return kind


def load_module(program_path: str | os.PathLike) -> Any:
    """The ``nn.Module`` of a saved ``torch.export`` program, in eval semantics."""
    from dlas.models.export import load_program

    try:
        program = load_program(str(program_path))
    except Exception as err:  # torch raises many types for a bad / missing file
        raise ValueError(f"cannot load torch.export program {program_path}: {err}") from err
    return program.module()


def _single_output(value: Any, what: str) -> np.ndarray:
    """The one output of a classifier as numpy; more than one is an error, not a guess."""
    import torch

    if isinstance(value, list | tuple):
        if len(value) != 1:
            raise ValueError(f"{what} returns {len(value)} outputs; expected 1 (a classifier)")
        value = value[0]
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _torch_runner(program_path: str, x: np.ndarray, mode: str) -> Callable[[], Any]:
    """A zero-argument call of the program on ``x`` (eager or ``torch.compile``d)."""
    import torch

    if mode not in TORCH_MODES:
        raise ValueError(f"unknown PyTorch mode {mode!r}; valid choices: {', '.join(TORCH_MODES)}")
    module = load_module(program_path)
    if mode == "compile":
        module = torch.compile(module)
    tensor = torch.from_numpy(np.ascontiguousarray(x))
    return lambda: module(tensor)


def time_pytorch(
    program_path: str | os.PathLike,
    input: np.ndarray,
    *,
    mode: str = "eager",
    threads: int = 0,
    warmup: int = 1,
    repeat: int = 10,
    number: int = 5,
) -> Latency:
    """Time the program in PyTorch, eager or ``torch.compile``d (then the first warm-up
    run compiles; its cost is in ``setup_s``, never in the samples; ``warmup`` is raised
    to 1 so that no sample includes compilation)."""
    import torch

    started = time.perf_counter()
    resolved = set_threads(threads)
    runner = _torch_runner(str(program_path), input, mode)
    if mode == "compile":
        warmup = max(warmup, 1)
    with torch.inference_mode():
        latency = time_callable(
            runner,
            warmup=warmup,
            repeat=repeat,
            number=number,
            what=f"pytorch {mode}",
            threads=resolved,
        )
    return dataclasses.replace(latency, setup_s=time.perf_counter() - started - _timed_s(latency))


def _timed_s(latency: Latency) -> float:
    return sum(latency.samples_ms) * latency.number / 1e3


def export_onnx(
    program_path: str | os.PathLike, onnx_path: str | os.PathLike, example: np.ndarray
) -> str:
    """Export the saved program to one self-contained ONNX file (weights inside), with
    the dynamo exporter, which takes an ``ExportedProgram`` as it is."""
    import torch

    from dlas.models.export import load_program

    program = load_program(str(program_path))
    example_t = torch.from_numpy(np.ascontiguousarray(example))
    try:
        torch.onnx.export(
            program, (example_t,), str(onnx_path), dynamo=True, external_data=False, verbose=False
        )
    except Exception as err:  # the exporter raises many types; one clear message
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RuntimeError(f"ONNX export of {program_path} failed: {first}") from err
    return str(onnx_path)


def _ort_session(onnx_path: str, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1  # batch-1 CNNs have no parallel branches worth it
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])


def _ort_runner(
    program_path: str, x: np.ndarray, threads: int, onnx_path: str | None, workdir: str
) -> Callable[[], Any]:
    path = onnx_path or str(Path(workdir) / (Path(program_path).stem + ".onnx"))
    if onnx_path is None or not Path(onnx_path).exists():
        export_onnx(program_path, path, x)
    session = _ort_session(path, threads)
    feed = {session.get_inputs()[0].name: np.ascontiguousarray(x)}
    return lambda: session.run(None, feed)


def time_onnxruntime(
    program_path: str | os.PathLike,
    input: np.ndarray,
    *,
    threads: int = 0,
    warmup: int = 1,
    repeat: int = 10,
    number: int = 5,
    onnx_path: str | os.PathLike | None = None,
) -> Latency:
    """Time the program in onnxruntime (CPU provider, ``intra_op_num_threads=threads``).

    The ONNX file is exported to a temporary directory, or to ``onnx_path`` when given (and
    reused when it exists, e.g. to log it as an artifact). Export and session creation are
    in ``setup_s``, not in the samples.
    """
    started = time.perf_counter()
    resolved = set_threads(threads)
    with tempfile.TemporaryDirectory(prefix="dlas-onnx-") as workdir:
        runner = _ort_runner(
            str(program_path),
            input,
            resolved,
            None if onnx_path is None else str(onnx_path),
            workdir,
        )
        latency = time_callable(
            runner,
            warmup=warmup,
            repeat=repeat,
            number=number,
            what="onnxruntime",
            threads=resolved,
        )
    return dataclasses.replace(latency, setup_s=time.perf_counter() - started - _timed_s(latency))


def time_baseline(
    kind: str,
    program_path: str | os.PathLike,
    input: np.ndarray,
    *,
    threads: int = 0,
    warmup: int = 1,
    repeat: int = 10,
    number: int = 5,
) -> Latency:
    """Time one baseline by name (``pytorch``, ``torch_compile`` or ``onnxruntime``)."""
    protocol = {"threads": threads, "warmup": warmup, "repeat": repeat, "number": number}
    if _check_kind(kind) == "onnxruntime":
        return time_onnxruntime(program_path, input, **protocol)
    mode = "compile" if kind == "torch_compile" else "eager"
    return time_pytorch(program_path, input, mode=mode, **protocol)


def run_baseline(
    kind: str, program_path: str | os.PathLike, input: np.ndarray, *, threads: int = 0
) -> np.ndarray:
    """The program's output on ``input`` under one baseline, to verify every other
    framework against ``run_baseline("pytorch", ...)``."""
    resolved = set_threads(threads)
    if _check_kind(kind) == "onnxruntime":
        with tempfile.TemporaryDirectory(prefix="dlas-onnx-") as workdir:
            outputs = _ort_runner(str(program_path), input, resolved, None, workdir)()
        return _single_output(list(outputs), f"{program_path} in onnxruntime")
    import torch

    mode = "compile" if kind == "torch_compile" else "eager"
    with torch.inference_mode():
        output = _torch_runner(str(program_path), input, mode)()
    return _single_output(output, f"{program_path} in pytorch {mode}")


def verify_and_time_baseline(
    kind: str,
    program_path: str | os.PathLike,
    static_path: str | os.PathLike,
    inputs: np.ndarray,
    example: np.ndarray,
    *,
    threads: int = 0,
    warmup: int = 1,
    repeat: int = 10,
    number: int = 5,
) -> tuple[np.ndarray, Latency]:
    """The framework's outputs on ``inputs`` (dynamic-batch program), then its latency on
    ``example`` (the static deployment program), in one child process."""
    outputs = run_baseline(kind, program_path, inputs, threads=threads)
    latency = time_baseline(
        kind, static_path, example, threads=threads, warmup=warmup, repeat=repeat, number=number
    )
    return outputs, latency


def _torch_samples(runner: Callable[[], Any], warmup: int, repeat: int, number: int) -> list[float]:
    import torch

    with torch.inference_mode():
        return sample_callable(runner, warmup=warmup, repeat=repeat, number=number)


def _plain_samples(runner: Callable[[], Any], warmup: int, repeat: int, number: int) -> list[float]:
    return sample_callable(runner, warmup=warmup, repeat=repeat, number=number)


def open_baseline(
    kind: str,
    program_path: str | os.PathLike,
    static_path: str | os.PathLike,
    inputs: np.ndarray | None,
    example: np.ndarray,
    *,
    threads: int = 0,
) -> Loaded:
    """A :class:`~dlas.compiler.measure.Worker` setup: the framework's outputs on
    ``inputs`` (the dynamic-batch program; ``None`` for the eager reference, which is not
    verified against itself), then the static deployment program on ``example`` loaded
    and run once untimed (torch.compile compiles, onnxruntime exports and builds its
    session: ``setup_s``), and kept for the timing rounds."""
    outputs = None
    if inputs is not None:
        outputs = run_baseline(kind, program_path, inputs, threads=threads)
    started = time.perf_counter()
    resolved = set_threads(threads)
    workdir = tempfile.TemporaryDirectory(prefix="dlas-onnx-")
    if _check_kind(kind) == "onnxruntime":
        runner = _ort_runner(str(static_path), example, resolved, None, workdir.name)
        timer = functools.partial(_plain_samples, runner)
    else:
        mode = "compile" if kind == "torch_compile" else "eager"
        runner = _torch_runner(str(static_path), example, mode)
        timer = functools.partial(_torch_samples, runner)
    timer(1, 0, 1)  # the first, untimed run
    return Loaded(outputs, timer, time.perf_counter() - started, resolved, workdir.cleanup)
