"""Layer 5 measurement protocol and framework baselines.

Speed is never asserted (a shared CI machine is noisy): only statistics, call counts,
crash isolation and outputs. torch and TVM are imported inside tests, not at the top:
every spawned measurement child imports this module to find its job, and should not pay
seconds for libraries the job does not use.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from dlas.compiler.baselines import baselines, run_baseline, time_baseline, time_pytorch
from dlas.compiler.measure import (
    Latency,
    MeasurementError,
    Protocol,
    measure_in_subprocess,
    run_tvm_module,
    run_tvm_module_batches,
    sample_callable,
    time_callable,
    time_tvm_module,
)

# ------------------------------------------------------------ jobs run in a child process
# (module level, so the spawned child can import them by name)


def _child_pid_and_latency(calls: int) -> tuple[int, Latency]:
    return os.getpid(), time_callable(
        lambda: sum(range(calls)), Protocol(warmup=1, repeat=3, number=2)
    )


def _segfault_by_signal() -> None:
    os.kill(os.getpid(), signal.SIGSEGV)


def _segfault_by_null_read() -> bytes:
    return ctypes.string_at(0)


def _abort() -> None:
    os.abort()


def _raise() -> None:
    raise KeyError("no such layer: conv99")


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


# ------------------------------------------------------------------------- statistics


def test_latency_statistics_from_samples() -> None:
    samples = [4.0, 1.0, 3.0, 2.0, 10.0]
    lat = Latency.from_samples(samples, number=5, threads=2)
    assert lat.median_ms == 3.0
    assert lat.mean_ms == 4.0
    assert lat.std_ms == pytest.approx(np.sqrt((0 + 9 + 1 + 4 + 36) / 5))  # population std
    assert lat.p90_ms == pytest.approx(4.0 + 0.6 * (10.0 - 4.0))  # linear between 4 and 10
    assert (lat.repeat, lat.number, lat.threads) == (5, 5, 2)
    assert lat.samples_ms == samples
    assert lat.metrics() == {
        "latency_ms_mean": 4.0,
        "latency_ms_median": 3.0,
        "latency_ms_std": lat.std_ms,
        "latency_ms_p90": lat.p90_ms,
    }


def test_latency_needs_samples() -> None:
    with pytest.raises(ValueError, match="no latency samples"):
        Latency.from_samples([], number=1)


def test_time_callable_follows_the_protocol() -> None:
    calls = []
    protocol = Protocol(warmup=2, repeat=3, number=4, warmup_ms=0)
    lat = time_callable(lambda: calls.append(1), protocol)
    assert len(calls) == 2 + 3 * 4
    assert (lat.repeat, lat.number, len(lat.samples_ms)) == (3, 4, 3)
    assert all(s >= 0 for s in lat.samples_ms)
    assert min(lat.samples_ms) <= lat.median_ms <= lat.p90_ms <= max(lat.samples_ms)


def test_the_warm_up_lasts_at_least_warmup_ms() -> None:
    """A round warms up for ``warmup_ms`` however fast a call is, so the first sample
    does not pay for caches another runtime's round left cold."""
    calls: list[float] = []
    samples = sample_callable(
        lambda: calls.append(time.perf_counter()), Protocol(warmup=1, repeat=2, number=1)
    )
    assert len(samples) == 2 and len(calls) > 3
    warm = calls[:-2]
    assert (warm[-1] - warm[0]) * 1e3 < 25 and (calls[-2] - warm[0]) * 1e3 > 24.9
    slow = []
    sample_callable(lambda: (slow.append(1), time.sleep(0.03)), Protocol(1, 1, 1, warmup_ms=25))
    assert len(slow) == 2  # one warm-up call that outlasts warmup_ms is enough


@pytest.mark.parametrize(
    "protocol", [{"repeat": 0}, {"number": 0}, {"warmup": -1}, {"warmup_ms": -1}]
)
def test_a_bad_protocol_is_rejected_when_made(protocol: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="timing protocol"):
        Protocol(**protocol)


# ------------------------------------------------------------------ one process per point


def test_measure_in_subprocess_returns_the_childs_result() -> None:
    pid, lat = measure_in_subprocess(_child_pid_and_latency, 100, timeout=120)
    assert pid != os.getpid()
    assert isinstance(lat, Latency) and lat.repeat == 3 and lat.number == 2


@pytest.mark.parametrize(
    ("job", "signal_name"),
    [
        (_segfault_by_signal, "SIGSEGV"),
        (_segfault_by_null_read, "SIGSEGV"),
        (_abort, "SIGABRT"),
    ],
)
def test_a_crashing_child_raises_naming_the_signal(job, signal_name: str) -> None:
    with pytest.raises(MeasurementError, match=f"crashed.*{signal_name}"):
        measure_in_subprocess(job, timeout=120, label="crashy conv")


def test_the_sweep_goes_on_after_a_crash() -> None:
    with pytest.raises(MeasurementError, match="crashy conv crashed"):
        measure_in_subprocess(_segfault_by_null_read, timeout=120, label="crashy conv")
    pid, lat = measure_in_subprocess(_child_pid_and_latency, 10, timeout=120)
    assert pid != os.getpid() and lat.repeat == 3


def test_a_child_exception_reaches_the_parent_as_text() -> None:
    with pytest.raises(MeasurementError, match="KeyError: 'no such layer: conv99'"):
        measure_in_subprocess(_raise, timeout=120)


def test_a_hung_child_is_killed_at_the_timeout() -> None:
    with pytest.raises(MeasurementError, match="timed out after 1 s"):
        measure_in_subprocess(_sleep, 600, timeout=1)


# ---------------------------------------------------------------- a tiny conv program


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, np.ndarray, np.ndarray]:
    """A saved torch.export program, an input and the eager PyTorch reference output."""
    import torch
    from torch import nn

    class TinyConv(nn.Module):
        """Conv + BatchNorm + ReLU + pool + linear: the zoo's op mix, in microseconds."""

        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.bn = nn.BatchNorm2d(8)
            self.fc = nn.Linear(8, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))

    torch.manual_seed(0)
    model = TinyConv().eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so folding is exercised
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(1, 3, 8, 8)
    path = tmp_path_factory.mktemp("program") / "tiny.pt2"
    torch.export.save(torch.export.export(model, (x,)), str(path))
    with torch.no_grad():
        reference = model(x).numpy()
    return str(path), x.numpy(), reference


@pytest.mark.parametrize("kind", baselines())
def test_baseline_outputs_match_pytorch(program, kind: str) -> None:
    path, x, reference = program
    out = run_baseline(kind, path, x, threads=1)
    assert out.shape == reference.shape
    np.testing.assert_allclose(out, reference, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", ["pytorch", "onnxruntime", "openvino"])
def test_baselines_are_timed_with_the_protocol(program, kind: str) -> None:
    path, x, _ = program
    lat = time_baseline(kind, path, x, threads=1, protocol=Protocol(1, 3, 2))
    assert (lat.repeat, lat.number, lat.threads) == (3, 2, 1)
    assert lat.setup_s >= 0 and all(s > 0 for s in lat.samples_ms)


def test_torch_compile_is_timed_after_compiling(program) -> None:
    path, x, _ = program
    lat = time_pytorch(path, x, mode="compile", threads=1, protocol=Protocol(0, 2, 1))
    assert (lat.repeat, lat.number) == (2, 1)
    assert lat.setup_s > 0  # the compile happened in an untimed warm-up run


def test_unknown_baseline_names_the_choices(program) -> None:
    with pytest.raises(
        ValueError, match="'tensorrt'; valid choices: onnxruntime, openvino, pytorch, torch_co"
    ):
        run_baseline("tensorrt", program[0], program[1])
    with pytest.raises(ValueError, match="'tvm_untuned'; valid choices: onnxruntime, openvino, py"):
        run_baseline("tvm_untuned", program[0], program[1])  # a compiler, not a baseline
    with pytest.raises(ValueError, match="eager, compile"):
        time_pytorch(program[0], program[1], mode="jit")


# --------------------------------------------------------------- TVM modules, locally


@pytest.fixture(scope="module")
def tvm_library(program, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tiny program compiled by TVM Relax for this host and exported as a library."""
    import torch
    import tvm
    from tvm.relax.frontend.torch import from_exported_program

    from dlas.hardware import host_target

    mod = from_exported_program(torch.export.load(program[0]), keep_params_as_input=False)
    path = tmp_path_factory.mktemp("tvm") / "tiny.so"
    tvm.compile(mod, host_target(1)).export_library(str(path))
    return str(path)


@pytest.mark.tvm
@pytest.mark.slow
def test_tvm_module_output_and_latency_locally(program, tvm_library: str) -> None:
    from dlas.hardware import get_device

    _, x, reference = program
    device = get_device("cpu", threads=1)
    np.testing.assert_allclose(run_tvm_module(tvm_library, x, device), reference, atol=1e-4)
    lat = time_tvm_module(tvm_library, x, device, Protocol(1, 3, 2))
    assert (lat.repeat, lat.number, lat.threads) == (3, 2, 1)
    assert all(s > 0 for s in lat.samples_ms)


def test_tvm_module_runs_many_batches_with_one_load(program, tvm_library: str) -> None:
    from dlas.hardware import get_device

    _, x, reference = program
    batches = [x, np.zeros_like(x), x]
    outputs = run_tvm_module_batches(tvm_library, batches, get_device("cpu", threads=1))
    assert len(outputs) == 3
    np.testing.assert_allclose(outputs[0], reference, atol=1e-4)
    np.testing.assert_array_equal(outputs[0], outputs[2])
    assert not np.array_equal(outputs[0], outputs[1])
    assert run_tvm_module_batches(tvm_library, [], get_device("cpu", threads=1)) == []


@pytest.mark.tvm
@pytest.mark.slow
def test_tvm_module_measured_in_its_own_process(program, tvm_library: str) -> None:
    from dlas.hardware import get_device

    device = get_device("cpu", threads=1)
    lat = measure_in_subprocess(
        time_tvm_module, tvm_library, program[1], device, Protocol(repeat=2, number=1), timeout=300
    )
    assert (lat.repeat, lat.number, lat.threads) == (2, 1, 1)


@pytest.mark.tvm
@pytest.mark.slow
def test_a_missing_library_fails_clearly(tmp_path: Path) -> None:
    from dlas.hardware import get_device

    with pytest.raises(ValueError, match="cannot find file"):
        time_tvm_module(
            str(tmp_path / "absent.so"),
            np.zeros((1, 3, 8, 8), "float32"),
            get_device("cpu", threads=1),
        )
