"""SIGINT (Ctrl-C) and SIGTERM (kill, a scheduler's stop) through the real entry point:
wherever they land (training, compiling, measuring), the MLflow run ends KILLED with the
signal named, the process exits 128 + the signal number, and the stage cache holds no
partial entry."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from conftest import TINY_DEPLOY, overrides, runs, start_entry

# A point that trains until it is stopped: tiny synthetic images, many short epochs.
LONG_TRAINING = [
    "dataset=synthetic",
    "dataset.num_samples=48",
    "dataset.image_size=16",
    "trainer.max_epochs=10000",
]


@pytest.fixture
def entry(workdir):
    """``start_entry`` whose process tree is killed at teardown if a test failed early."""
    started = []

    def start(script: str, *args: str, log: Path):
        started.append(start_entry(script, *args, log=log))
        return started[-1]

    yield start
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(autouse=True)
def private_core_lock(workdir, monkeypatch):
    """The entry point's host-wide core lock lives in the temp dir: a private one keeps
    other dlas jobs on this machine from delaying the phase a test waits for."""
    monkeypatch.setenv("TMPDIR", workdir["tmp"])


def _running_run(uri: str):
    try:
        found = runs(uri)
    except Exception:  # the entry point has not created the store yet
        return None
    return found[0] if found and found[0].info.status == "RUNNING" else None


def _wait_for(condition, proc, log: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        assert proc.poll() is None, log.read_text()[-3000:]
        time.sleep(0.2)
    pytest.fail(f"timed out waiting; log:\n{log.read_text()[-3000:]}")


def _cache_entries(cache: str) -> tuple[list[Path], list[Path]]:
    """(complete entries, anything else: temporary or half-written folders). The per-key
    lock files stay: they are the lock (``filelock``), released by the kernel."""
    root = Path(cache)
    folders = [
        p
        for stage in ("train", "compress")
        for p in (root / stage).glob("*")
        if not p.name.endswith(".lock")
    ]
    complete = [p for p in folders if (p / "meta.json").exists() and not p.name.startswith(".")]
    return complete, [p for p in folders if p not in complete]


def _assert_killed(workdir, proc, log: Path, sig: signal.Signals) -> None:
    sent = time.monotonic()
    code = proc.wait(timeout=90)
    print(f"{sig.name}: exited {time.monotonic() - sent:.1f} s after the signal")
    assert code == 128 + sig, log.read_text()[-3000:]
    (run,) = runs(workdir["uri"])
    assert run.info.status == "KILLED"
    assert run.data.tags["error"] == f"interrupted by {sig.name}"
    assert f"interrupted by {sig.name}" in log.read_text()


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_training_ends_the_run_killed(workdir, entry, sig):
    log = Path(workdir["tmp"]) / "train.log"
    proc = entry("train.py", *overrides(workdir, *LONG_TRAINING), log=log)

    def training() -> bool:
        run = _running_run(workdir["uri"])
        return run is not None and any(k.startswith("train-") for k in run.data.metrics)

    _wait_for(training, proc, log)
    proc.send_signal(sig)
    _assert_killed(workdir, proc, log, sig)
    complete, partial = _cache_entries(workdir["cache"])
    assert complete == [] and partial == []  # training never finished: nothing cached


@pytest.mark.e2e
@pytest.mark.tvm
@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "compiler", "phase"),
    [
        (signal.SIGTERM, "tvm_untuned", "tvm pipeline"),  # compiling, in this process
        (signal.SIGINT, "pytorch", "alternating rounds"),  # timing, in worker processes
    ],
    ids=["SIGTERM-compiling", "SIGINT-measuring"],
)
def test_a_signal_during_deployment_ends_the_run_killed(workdir, entry, sig, compiler, phase):
    log = Path(workdir["tmp"]) / "deploy.log"
    args = overrides(
        workdir, *TINY_DEPLOY, f"compiler={compiler}", "measure.repeat=100000", "measure.number=1"
    )
    proc = entry("train.py", *args, log=log)
    _wait_for(lambda: phase in log.read_text(), proc, log)
    proc.send_signal(sig)
    _assert_killed(workdir, proc, log, sig)
    complete, partial = _cache_entries(workdir["cache"])
    assert len(complete) == 2 and partial == []  # the finished stages only, whole
