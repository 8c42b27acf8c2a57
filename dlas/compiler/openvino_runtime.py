"""Layer 5: OpenVINO, the accelerator "Does Form Follow Function?" measured against the
native framework, run on this host's CPU from the point's saved program.

Why these choices:

* float programs (fp32, fp16) are converted from the ``torch.export`` program itself
  (``openvino.convert_model(program, example_input=...)``), so OpenVINO sees the graph
  and weights every other compiler sees;
* int8 programs (PT2E ``quantized_decomposed`` ops) do not convert that way (OpenVINO's
  torch frontend rejects an int8 weight feeding a float convolution), so they go through
  the same QDQ ONNX export onnxruntime runs, which OpenVINO's low-precision transforms
  turn into u8 x i8 convolutions: the quantized model runs on OpenVINO's int8 kernels,
  not dequantized to float;
* compiled for the ``CPU`` device with the LATENCY hint and ``INFERENCE_NUM_THREADS`` =
  the hardware layer's threads, and an explicit inference precision: OpenVINO would
  otherwise pick bf16 on CPUs that have it, and an fp32 point must be timed in fp32.
  fp16 programs ask for f16 where the CPU lists FP16 among its optimization
  capabilities, else f32 with a warning (the layers record says which ran);
* each model is reshaped to its input's static shape before compiling, as OpenVINO's own
  ``benchmark_app`` does: the timed program is the static-batch one.

The layers record (``layers.json``) names the precisions OpenVINO's runtime model reports
for its convolution and matmul kernels (``u8`` for an int8 point), read from the compiled
model, not assumed.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dlas.compiler.base import register_compiler
from dlas.compiler.baselines import (
    Framework,
    _plain_samples,
    _single_output,
    _timed_s,
    export_onnx,
    load_saved_program,
)
from dlas.compiler.measure import Latency, Protocol, Timer, time_callable
from dlas.hardware.threads import set_threads

log = logging.getLogger("dlas.compiler.openvino")

#: the kernels whose runtime precision the layers record reports
KERNELS = ("Convolution", "GroupConvolution", "FullyConnected", "MatMul", "Deconvolution")


@functools.cache
def _core() -> Any:
    import openvino as ov

    return ov.Core()


def _input_dtype(program: Any) -> Any:
    """The dtype of the program's one user input (float16 for an fp16 point)."""
    inputs = program.graph_signature.user_inputs
    node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == inputs[0])
    return node.meta["val"].dtype


def precision_hint(dtype: Any) -> str:
    """The inference precision to ask for: the program's own, where this CPU has it."""
    import torch

    if dtype != torch.float16:
        return "f32"  # int8 points too: their quantized kernels run u8 whatever this says
    if "FP16" in _core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        return "f16"
    log.warning("this CPU lists no FP16 capability: OpenVINO runs the fp16 point in f32")
    return "f32"


def convert(program_path: str, example: np.ndarray, workdir: str) -> tuple[Any, str]:
    """The OpenVINO model of the saved program, reshaped to ``example``'s shape, and the
    inference precision it is to be compiled with."""
    import openvino as ov
    import torch

    from dlas.compiler.int8 import is_quantized

    program = load_saved_program(program_path)
    hint = precision_hint(_input_dtype(program))
    if is_quantized(program):
        onnx_path = Path(workdir) / (Path(program_path).stem + ".onnx")
        model = ov.convert_model(export_onnx(program_path, onnx_path, example))
    else:
        tensor = torch.from_numpy(np.ascontiguousarray(example))
        model = ov.convert_model(program, example_input=(tensor,))
    model.reshape({model.inputs[0]: list(example.shape)})
    return model, hint


def compile_model(program_path: str, example: np.ndarray, threads: int, workdir: str) -> Any:
    """The program compiled by OpenVINO's CPU plugin for one static input shape."""
    model, hint = convert(program_path, example, workdir)
    config = {
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": int(threads),
        "INFERENCE_PRECISION_HINT": hint,
    }
    return _core().compile_model(model, "CPU", config)


def kernel_precisions(compiled: Any) -> dict[str, int]:
    """``precision -> count`` of the compiled model's convolution and matmul kernels."""
    counts: dict[str, int] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) in KERNELS:
            precision = info["runtimePrecision"].astype(str)
            counts[precision] = counts.get(precision, 0) + 1
    return counts


def _runner(compiled: Any, x: np.ndarray) -> Callable[[], Any]:
    """A zero-argument inference on ``x``, its input tensor bound once (zero-copy), as
    OpenVINO's ``benchmark_app`` times a request."""
    import openvino as ov

    request = compiled.create_infer_request()
    data = np.ascontiguousarray(x)
    request.set_input_tensor(ov.Tensor(data, shared_memory=True))

    def infer() -> Any:
        request.infer()
        return request.get_output_tensor(0).data

    infer.keep = data  # type: ignore[attr-defined]  (the tensor shares this buffer)
    return infer


@register_compiler("openvino")
class OpenVino(Framework):
    """OpenVINO's CPU plugin (the LATENCY hint, the hardware layer's threads)."""

    def run(self, program_path: str, x: np.ndarray, threads: int) -> np.ndarray:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="dlas-openvino-") as workdir:
            compiled = compile_model(program_path, x, threads, workdir)
            output = np.array(_runner(compiled, x)(), copy=True)
        return _single_output(output, f"{program_path} in openvino")

    def time(self, program_path: str, x: np.ndarray, threads: int, protocol: Protocol) -> Latency:
        import dataclasses
        import tempfile
        import time

        started = time.perf_counter()
        resolved = set_threads(threads)
        with tempfile.TemporaryDirectory(prefix="dlas-openvino-") as workdir:
            runner = self._open(program_path, x, resolved, workdir)
        latency = time_callable(runner, protocol, what="openvino", threads=resolved)
        return dataclasses.replace(
            latency, setup_s=time.perf_counter() - started - _timed_s(latency)
        )

    def timer(self, static_path: str, example: np.ndarray, threads: int, workdir: str) -> Timer:
        return functools.partial(_plain_samples, self._open(static_path, example, threads, workdir))

    def _open(self, path: str, x: np.ndarray, threads: int, workdir: str) -> Callable[[], Any]:
        compiled = compile_model(path, x, threads, workdir)
        self.notes = {
            "precision": kernel_precisions(compiled),
            "threads": int(compiled.get_property("INFERENCE_NUM_THREADS")),
            "openvino": _version(),
        }
        return _runner(compiled, x)


def _version() -> str:
    import openvino as ov

    return ov.__version__.split("-")[0]
