"""Layer 6: devices, targets, threads, and a real TVM RPC round trip on loopback.

The RPC test starts TVM's own tracker and server (child processes, free ports on
127.0.0.1 only), measures a tiny compiled module remotely, and stops both by pid.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
import tvm
from omegaconf import OmegaConf
from torch import nn

from dlas.compiler.measure import Protocol, Worker, open_tvm, run_tvm_module, time_tvm_module
from dlas.compiler.rounds import run_rounds
from dlas.hardware import (
    Device,
    HardwareUnavailableError,
    LocalRPC,
    available_cores,
    free_port,
    get_device,
    host_cpu,
    parse_target,
    set_threads,
)

# ------------------------------------------------------------------------------ cpu


def test_cpu_device_targets_the_detected_cpu_with_the_thread_count() -> None:
    device = get_device("cpu", threads=1)
    assert isinstance(device, Device) and device.name == "cpu" and device.threads == 1
    assert device.target.kind.name == "llvm"
    detected = str(tvm.get_global_func("tvm.codegen.llvm.GetHostCPUName")())
    assert host_cpu() == detected  # LLVM knows this CPU, so it is used as is
    assert str(device.target.attrs["mcpu"]) == detected
    assert int(device.target.attrs["num-cores"]) == 1
    assert device.compile_target.same_as(device.target)  # no separate host on the CPU
    assert device.describe() == {
        "hardware": "cpu",
        "threads": 1,
        "target": f"llvm mcpu={detected} num-cores=1",
    }


def test_cpu_threads_zero_means_every_available_core() -> None:
    device = get_device("cpu")
    assert device.threads == available_cores() == len(os.sched_getaffinity(0))
    assert int(device.target.attrs["num-cores"]) == available_cores()


def test_a_configured_target_is_kept_and_given_the_thread_count() -> None:
    device = get_device("cpu", threads=2, target={"kind": "llvm", "mcpu": "skylake-avx512"})
    assert str(device.target.attrs["mcpu"]) == "skylake-avx512"
    assert int(device.target.attrs["num-cores"]) == 2


def test_device_pickles_for_measurement_subprocesses() -> None:
    device = get_device("cpu", threads=1)
    clone = pickle.loads(pickle.dumps(device))
    assert str(clone.target) == str(device.target) and clone.threads == 1


# --------------------------------------------------------------------------- targets


def test_parse_target_accepts_every_config_form() -> None:
    legacy = parse_target("llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a72 -mattr=+neon,+v8a")
    assert str(legacy.attrs["mcpu"]) == "cortex-a72"
    assert [str(a) for a in legacy.attrs["mattr"]] == ["+neon", "+v8a"]
    from_omegaconf = parse_target(OmegaConf.create({"kind": "llvm", "mcpu": "znver4"}))
    assert str(from_omegaconf.attrs["mcpu"]) == "znver4"
    assert parse_target('{"kind": "llvm", "num-cores": 3}').attrs["num-cores"] == 3
    with_host = parse_target({"kind": "llvm", "host": {"kind": "llvm"}})
    assert with_host.host is not None and with_host.host.kind.name == "llvm"
    with pytest.raises(ValueError, match="invalid TVM target"):
        parse_target({"kind": "no-such-kind"})


# ------------------------------------------------------------------------ unavailable


def test_unknown_hardware_names_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown hardware 'tpu'; valid choices: cpu, cuda, rpc"):
        get_device("tpu")


@pytest.mark.gpu
@pytest.mark.skipif(bool(tvm.cuda(0).exist), reason="a GPU is visible here")
def test_cuda_without_a_gpu_fails_clearly() -> None:
    with pytest.raises(HardwareUnavailableError, match="hardware=cuda.*valid choices: cpu"):
        get_device("cuda")


def test_rpc_with_no_tracker_names_the_address() -> None:
    port = free_port()
    with pytest.raises(HardwareUnavailableError, match=f"tracker at 127.0.0.1:{port}"):
        get_device("rpc", host="127.0.0.1", port=port, timeout=2)


# --------------------------------------------------------------------------- threads


def test_set_threads_reaches_tvm_and_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TVM_NUM_THREADS", os.environ.get("TVM_NUM_THREADS", ""))
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", ""))
    before = torch.get_num_threads()
    try:
        assert set_threads(1) == 1
        assert os.environ["TVM_NUM_THREADS"] == "1"
        assert torch.get_num_threads() == 1
        assert tvm.runtime.num_threads() == 1
        assert set_threads(0) == available_cores()
        assert tvm.runtime.num_threads() == available_cores()  # above TVM's halved default
    finally:
        set_threads(before)
    with pytest.raises(ValueError, match="threads=-1"):
        set_threads(-1)


@pytest.mark.tvm
@pytest.mark.slow
def test_children_threads_sizes_a_tvm_childs_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    """What MetaSchedule's runner workers and an RPC server are: TVM children, whose pool
    comes from the environment they start with (else half the cores)."""
    from dlas.hardware.threads import children_threads

    monkeypatch.setenv("TVM_NUM_THREADS", "7")
    child = [sys.executable, "-c", "import tvm; print(tvm.runtime.num_threads())"]
    with children_threads(1) as resolved:
        assert resolved == 1
        assert subprocess.check_output(child, text=True).strip() == "1"
    assert os.environ["TVM_NUM_THREADS"] == "7"  # restored
    monkeypatch.delenv("TVM_NUM_THREADS")
    with children_threads(0) as resolved:
        assert resolved == available_cores()
    assert "TVM_NUM_THREADS" not in os.environ


_ONE_CORE_CHILD = """
import json, os, torch, tvm
from dlas.hardware import get_device, set_threads
from dlas.hardware.threads import timing_cores
from dlas.stack import resolve_threads
print(json.dumps({
    "mask": sorted(os.sched_getaffinity(0)),
    "resolve_threads": resolve_threads(0),
    "device": get_device("cpu").threads,
    "set_threads": set_threads(0),
    "torch": torch.get_num_threads(),
    "torch_interop": torch.get_num_interop_threads(),
    "tvm": tvm.runtime.num_threads(),
    "timing_cores": timing_cores(0),
}))
"""


@pytest.mark.slow
def test_one_core_affinity_gives_every_runtime_one_thread() -> None:
    """As under ``taskset -c <core>`` or a container limited to one CPU: the machine has
    more cores, this process may use one, and torch, TVM and the logged ``threads`` agree."""
    core = max(os.sched_getaffinity(0))
    out = subprocess.run(
        [sys.executable, "-c", _ONE_CORE_CHILD],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=lambda: os.sched_setaffinity(0, {core}),
        env={k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report == {
        "mask": [core],
        "resolve_threads": 1,
        "device": 1,
        "set_threads": 1,
        "torch": 1,
        "torch_interop": 1,
        "tvm": 1,
        "timing_cores": [core],
    }


# ------------------------------------------------------------------------------- rpc


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


@pytest.mark.tvm
@pytest.mark.slow
def test_rpc_round_trip_on_loopback(tmp_path) -> None:
    from tvm.relax.frontend.torch import from_exported_program

    torch.manual_seed(0)
    x = torch.randn(1, 3, 8, 8)
    program = torch.export.export(_Tiny().eval(), (x,))
    library = str(tmp_path / "tiny.so")
    local = get_device("cpu", threads=1)
    mod = from_exported_program(program, keep_params_as_input=False)
    tvm.compile(mod, local.compile_target).export_library(library)
    expected = run_tvm_module(library, x.numpy(), local)

    key = f"dlas-test-{os.getpid()}"
    with LocalRPC(key=key, threads=1) as rpc:
        pids = rpc.pids
        assert all(pids.values())
        remote = get_device(
            "rpc", host="127.0.0.1", port=rpc.port, key=key, threads=1, target=local.target
        )
        assert remote.describe()["rpc"] == f"{key}@127.0.0.1:{rpc.port}"
        np.testing.assert_allclose(run_tvm_module(library, x.numpy(), remote), expected, atol=1e-6)
        lat = time_tvm_module(library, x.numpy(), remote, Protocol(warmup=1, repeat=3, number=2))
        assert (lat.repeat, lat.number, lat.threads) == (3, 2, 1)
        assert all(s > 0 for s in lat.samples_ms)
        # Two TVM workers on one server (measure.compare with two TVM compilers): neither
        # may hold the server's one session between rounds, or the other waits forever.
        with Worker("a", timeout=120) as a, Worker("b", timeout=120) as b:
            for worker in (a, b):
                (out,) = worker.start(open_tvm, library, [x.numpy()], x.numpy(), remote)
                np.testing.assert_allclose(out, expected, atol=1e-6)
            rounds = run_rounds({"a": a, "b": b}, Protocol(0, 4, 1), rounds=2)
        assert all(len(r) == 2 and min(r) > 0 for w in rounds.values() for r in w)
        with pytest.raises(HardwareUnavailableError, match="no RPC server with key 'other'"):
            get_device("rpc", host="127.0.0.1", port=rpc.port, key="other", timeout=1)
    for pid in pids.values():  # both children are gone (or reaped zombies), not left running
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_cache_sizes_are_read_from_sysfs(tmp_path) -> None:
    """The kernel's notation per cache index; instruction caches are not where data lives."""
    from dlas.hardware.caches import cpu_caches, last_level_cache_bytes, parse_size

    for i, (level, kind, size) in enumerate(
        [
            (1, "Data", "48K"),
            (1, "Instruction", "64K"),
            (2, "Unified", "1024K"),
            (3, "Unified", "32M"),
        ]
    ):
        index = tmp_path / f"index{i}"
        index.mkdir()
        (index / "level").write_text(f"{level}\n")
        (index / "type").write_text(f"{kind}\n")
        (index / "size").write_text(f"{size}\n")
    assert parse_size("32768K") == 32 * 1024**2 and parse_size("512") == 512
    assert cpu_caches(tmp_path) == {1: 48 * 1024, 2: 1024**2, 3: 32 * 1024**2}
    assert last_level_cache_bytes(tmp_path) == 32 * 1024**2
