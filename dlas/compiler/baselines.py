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
from abc import abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from dlas.compiler.base import COMPILERS, Compiled, Compiler, Inputs, register_compiler
from dlas.compiler.measure import (
    DEFAULT_PROTOCOL,
    Latency,
    Loaded,
    Protocol,
    Timer,
    Worker,
    sample_callable,
    time_callable,
)
from dlas.hardware.cores import exclusive
from dlas.hardware.threads import set_threads

if TYPE_CHECKING:
    from dlas.hardware import Device

TORCH_MODES = ("eager", "compile")


def load_saved_program(program_path: str | os.PathLike) -> Any:
    """A saved ``torch.export`` program; a bad or missing file is one clear error."""
    from dlas.models.export import load_program

    try:
        return load_program(str(program_path))
    except Exception as err:  # torch raises many types for a bad / missing file
        raise ValueError(f"cannot load torch.export program {program_path}: {err}") from err


def load_module(program_path: str | os.PathLike) -> Any:
    """The ``nn.Module`` of a saved ``torch.export`` program, in eval semantics."""
    return load_saved_program(program_path).module()


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
    protocol: Protocol = DEFAULT_PROTOCOL,
) -> Latency:
    """Time the program in PyTorch, eager or ``torch.compile``d (then the first warm-up
    run compiles; its cost is in ``setup_s``, never in the samples; ``warmup`` is raised
    to 1 so that no sample includes compilation)."""
    import torch

    started = time.perf_counter()
    resolved = set_threads(threads)
    runner = _torch_runner(str(program_path), input, mode)
    if mode == "compile":
        protocol = protocol.but(warmup=max(protocol.warmup, 1))
    with torch.inference_mode():
        latency = time_callable(runner, protocol, what=f"pytorch {mode}", threads=resolved)
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
    # The pool spins while a call runs (its latency) but stops when it returns: left
    # spinning ~50 ms after each round, it took the cores from the runtime timed next.
    options.add_session_config_entry("session.force_spinning_stop", "1")
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
    protocol: Protocol = DEFAULT_PROTOCOL,
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
        latency = time_callable(runner, protocol, what="onnxruntime", threads=resolved)
    return dataclasses.replace(latency, setup_s=time.perf_counter() - started - _timed_s(latency))


class Framework(Compiler):
    """A framework that runs its own kernels on this host's CPU, from the point's saved
    program: it is loaded (and, for torch.compile and onnxruntime, compiled) inside the
    worker, so its ``compile_s`` is the worker's setup time."""

    hardware = ("cpu",)

    def __init__(self, name: str | None = None, **options: Any) -> None:
        super().__init__(name, **options)
        #: what the loaded runtime reports about itself (e.g. its kernels' precision),
        #: set by :meth:`timer` in the worker and added to the point's layers record
        self.notes: dict[str, Any] = {}

    @abstractmethod
    def run(self, program_path: str, x: np.ndarray, threads: int) -> np.ndarray:
        """The program's one output on ``x``."""

    @abstractmethod
    def time(self, program_path: str, x: np.ndarray, threads: int, protocol: Protocol) -> Latency:
        """The shared protocol's latency, in this process."""

    @abstractmethod
    def timer(self, static_path: str, example: np.ndarray, threads: int, workdir: str) -> Timer:
        """``protocol -> samples`` of the loaded static program."""

    def compile_and_open(
        self,
        cfg: Any,
        device: Device,
        inputs: Inputs,
        out_dir: Path,
        tuning_root: Path,
        cores: Sequence[int],
    ) -> Compiled:
        worker = Worker(f"verify and time {self.name}", timeout=inputs.timeout_s, cores=cores)
        with exclusive():
            outputs, notes = worker.start(
                open_baseline,
                self.name,
                inputs.program_path,
                inputs.static_path,
                inputs.x,
                inputs.example,
                threads=device.threads,
            )
        kernels = {"layer": "all", "algorithm": f"{self.name} kernels", "format": "dense"}
        layers = [kernels | notes]
        return Compiled(outputs, None, worker.setup_s, 0.0, 0, layers, inputs.static_path, worker)


@register_compiler("pytorch")
class PyTorch(Framework):
    """PyTorch eager, the native framework (and the reference of every speedup)."""

    mode: ClassVar[str] = "eager"

    def run(self, program_path: str, x: np.ndarray, threads: int) -> np.ndarray:
        import torch

        with torch.inference_mode():
            output = _torch_runner(program_path, x, self.mode)()
        return _single_output(output, f"{program_path} in pytorch {self.mode}")

    def time(self, program_path: str, x: np.ndarray, threads: int, protocol: Protocol) -> Latency:
        return time_pytorch(program_path, x, mode=self.mode, threads=threads, protocol=protocol)

    def timer(self, static_path: str, example: np.ndarray, threads: int, workdir: str) -> Timer:
        return functools.partial(_torch_samples, _torch_runner(static_path, example, self.mode))


@register_compiler("torch_compile")
class TorchCompile(PyTorch):
    """``torch.compile`` (TorchInductor) of the same program."""

    mode = "compile"


@register_compiler("onnxruntime")
class OnnxRuntime(Framework):
    """The program exported to ONNX, run by onnxruntime's CPU execution provider."""

    def run(self, program_path: str, x: np.ndarray, threads: int) -> np.ndarray:
        with tempfile.TemporaryDirectory(prefix="dlas-onnx-") as workdir:
            outputs = _ort_runner(program_path, x, threads, None, workdir)()
        return _single_output(list(outputs), f"{program_path} in onnxruntime")

    def time(self, program_path: str, x: np.ndarray, threads: int, protocol: Protocol) -> Latency:
        return time_onnxruntime(program_path, x, threads=threads, protocol=protocol)

    def timer(self, static_path: str, example: np.ndarray, threads: int, workdir: str) -> Timer:
        runner = _ort_runner(static_path, example, threads, None, workdir)
        return functools.partial(_plain_samples, runner)


#: the registered frameworks (plugins' included once their module is imported)
def baselines() -> tuple[str, ...]:
    return tuple(n for n in COMPILERS.names() if issubclass(COMPILERS.get(n), Framework))


def framework(kind: str) -> Framework:
    """The framework baseline ``kind``; anything else is an error naming the baselines."""
    if kind not in baselines():
        raise ValueError(f"unknown baseline {kind!r}; valid choices: {', '.join(baselines())}")
    return COMPILERS.get(kind)()


def time_baseline(
    kind: str,
    program_path: str | os.PathLike,
    input: np.ndarray,
    *,
    threads: int = 0,
    protocol: Protocol = DEFAULT_PROTOCOL,
) -> Latency:
    """Time one baseline by name (``pytorch``, ``torch_compile``, ``onnxruntime``, ...)."""
    return framework(kind).time(str(program_path), input, threads, protocol)


def run_baseline(
    kind: str, program_path: str | os.PathLike, input: np.ndarray, *, threads: int = 0
) -> np.ndarray:
    """The program's output on ``input`` under one baseline, to verify every other
    framework against ``run_baseline("pytorch", ...)``."""
    chosen = framework(kind)
    return chosen.run(str(program_path), input, set_threads(threads))


def verify_and_time_baseline(
    kind: str,
    program_path: str | os.PathLike,
    static_path: str | os.PathLike,
    inputs: np.ndarray,
    example: np.ndarray,
    *,
    threads: int = 0,
    protocol: Protocol = DEFAULT_PROTOCOL,
) -> tuple[np.ndarray, Latency]:
    """The framework's outputs on ``inputs`` (dynamic-batch program), then its latency on
    ``example`` (the static deployment program), in one child process."""
    outputs = run_baseline(kind, program_path, inputs, threads=threads)
    latency = time_baseline(kind, static_path, example, threads=threads, protocol=protocol)
    return outputs, latency


def _torch_samples(runner: Callable[[], Any], protocol: Protocol) -> list[float]:
    import torch

    with torch.inference_mode():
        return sample_callable(runner, protocol)


def _plain_samples(runner: Callable[[], Any], protocol: Protocol) -> list[float]:
    return sample_callable(runner, protocol)


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
    session: ``setup_s``), and kept for the timing rounds. Its result is the outputs and
    the framework's :attr:`~Framework.notes` on the runtime it loaded."""
    chosen = framework(kind)
    outputs = None
    if inputs is not None:
        outputs = run_baseline(kind, program_path, inputs, threads=threads)
    started = time.perf_counter()
    resolved = set_threads(threads)
    workdir = tempfile.TemporaryDirectory(prefix="dlas-onnx-")
    timer = chosen.timer(str(static_path), example, resolved, workdir.name)
    timer(Protocol(warmup=0, repeat=1, number=1, warmup_ms=0))  # the first run (dropped)
    return Loaded(
        (outputs, chosen.notes), timer, time.perf_counter() - started, resolved, workdir.cleanup
    )
