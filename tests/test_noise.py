"""The timing protocol on a busy machine, without timing anything: the CV, the paired
bootstrap, the noise decision and its retries (with fake workers whose samples we choose),
A/B alternation between two real worker processes, each pinned to its core, and the
other-processes' CPU load read around a busy loop of our own.

Speed is never asserted. This module imports only numpy and dlas's light modules: every
spawned worker child imports it to find its job.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from dlas.compiler.measure import Loaded, MeasurementError, Protocol, Worker
from dlas.compiler.noise import (
    NoisePolicy,
    NoisyMeasurementError,
    coefficient_of_variation,
    noise_reasons,
    paired_speedup,
    quietest,
)
from dlas.compiler.rounds import round_sizes, run_rounds, time_paired
from dlas.hardware.load import CpuLoad, LoadMonitor
from dlas.hardware.threads import allowed_cores, timing_cores

# ------------------------------------------------------------------ CV and the bootstrap


def test_coefficient_of_variation() -> None:
    assert coefficient_of_variation([2.0, 2.0, 2.0]) == 0.0
    assert coefficient_of_variation([1.0, 3.0]) == pytest.approx(0.5)  # std 1 / mean 2
    assert coefficient_of_variation([5.0]) == 0.0  # one sample: no spread to speak of
    assert coefficient_of_variation([0.0, 0.0]) == math.inf


def test_pairing_cancels_a_machine_state_shared_by_both_runtimes() -> None:
    # Round 2 ran twice as slow for both (a neighbour came and went): the ratio did not move.
    reference = [[10.0, 10.0], [20.0, 20.0], [10.0, 10.0]]
    compiled = [[5.0, 5.0], [10.0, 10.0], [5.0, 5.0]]
    s = paired_speedup(reference, compiled)
    assert (s.ratio, s.lo, s.hi, s.rounds) == (2.0, 2.0, 2.0, 3)


def test_paired_speedup_is_a_ratio_of_medians_with_a_bootstrap_over_rounds() -> None:
    ratios = [1.9, 2.0, 2.1, 2.0, 5.0]  # one outlier round
    reference = [[r] for r in ratios]
    compiled = [[1.0]] * len(ratios)
    s = paired_speedup(reference, compiled)
    assert s.ratio == 2.0  # medians: the outlier round does not pull it (the mean is 2.6)
    assert 1.9 <= s.lo <= s.ratio <= s.hi <= 5.0
    assert s == paired_speedup(reference, compiled)  # seeded: same samples, same interval
    one = paired_speedup([[3.0, 3.0]], [[1.5, 1.5]])
    assert (one.ratio, one.lo, one.hi) == (2.0, 2.0, 2.0)
    with pytest.raises(ValueError, match="paired rounds"):
        paired_speedup([[1.0]], [[1.0], [1.0]])


def test_round_sizes_split_the_repeats() -> None:
    assert round_sizes(10, 5) == [2, 2, 2, 2, 2]
    assert round_sizes(7, 3) == [3, 2, 2]
    assert round_sizes(3, 5) == [1, 1, 1]  # never an empty round
    assert round_sizes(4, 1) == [4]
    with pytest.raises(ValueError, match="rounds=0"):
        round_sizes(4, 0)


# ------------------------------------------------------------------- the noise decision

POLICY = NoisePolicy(max_cv=0.1, max_cpu_load=0.25, retries=2)


def test_a_quiet_attempt_has_no_reasons() -> None:
    assert noise_reasons({"tvm_untuned": 0.02, "pytorch": 0.05}, 0.01, 0.1, POLICY) == []


def test_each_symptom_is_named_with_its_threshold() -> None:
    reasons = noise_reasons({"tvm_untuned": 0.02, "pytorch": 0.31}, 0.97, 0.5, POLICY)
    assert reasons == [
        "latency CV 0.31 of pytorch > measure.max_cv 0.1",
        "other processes used 97% of the timed cores before timing > measure.max_cpu_load 25%",
        "other processes used 50% of the timed cores during timing > measure.max_cpu_load 25%",
    ]


def test_a_window_too_short_to_judge_and_non_finite_cvs() -> None:
    assert noise_reasons({"a": 0.0}, 0.0, None, POLICY) == []  # during: not judgeable
    assert noise_reasons({"a": math.nan}, 0.0, None, POLICY) == [
        "latency CV nan of a > measure.max_cv 0.1"
    ]


def test_the_quietest_attempt_is_kept() -> None:
    attempts = [
        (["cv", "load"], {"a": 0.2}),
        (["cv"], {"a": 0.5}),
        (["cv"], {"a": 0.3}),
        (["cv", "load", "load"], {"a": 0.0}),
    ]
    assert quietest(attempts) == 2  # fewest symptoms, then the lowest worst CV
    assert quietest([(["cv"], {"a": math.inf}), (["cv"], {"a": 0.9})]) == 1


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        (NoisePolicy(max_cv=0), "measure.max_cv=0"),
        (NoisePolicy(max_cpu_load=1.5), "measure.max_cpu_load=1.5"),
        (NoisePolicy(retries=-1), "measure.retries=-1"),
    ],
)
def test_nonsense_thresholds_are_named(policy: NoisePolicy, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        policy.check()


# ---------------------------------------------- rounds and retries, with scripted workers


class _Scripted:
    """A worker stand-in: answers each round with the next scripted samples."""

    def __init__(self, name: str, script: list[list[float]], calls: list[str]) -> None:
        self.name, self.script, self.calls = name, iter(script), calls
        self.pid, self.threads, self.setup_s = os.getpid(), 1, 0.0
        self.settle_ms: list[float] = []

    def time(self, protocol: Protocol) -> list[float]:
        self.calls.append(self.name)
        samples = next(self.script)
        assert len(samples) == protocol.repeat
        return samples


# max_cpu_load=1: whatever else runs on this machine, only the scripted CVs decide.
SCRIPTED = {"cores": [0], "protocol": Protocol(0, 4, 1), "rounds": 2, "probe_s": 0}
QUIET, NOISY = [1.0, 1.0], [1.0, 3.0]


def _workers(ref: list[list[float]], cmp: list[list[float]], calls: list[str]) -> dict:
    return {"tvm": _Scripted("tvm", cmp, calls), "pytorch": _Scripted("pytorch", ref, calls)}


def test_rounds_alternate_and_flip_order() -> None:
    calls: list[str] = []
    workers = _workers([QUIET] * 3, [QUIET] * 3, calls)
    samples = run_rounds(workers, Protocol(warmup=0, repeat=6, number=1), rounds=3)
    assert calls == ["tvm", "pytorch", "pytorch", "tvm", "tvm", "pytorch"]
    assert samples["tvm"] == [QUIET] * 3


def test_a_noisy_attempt_is_retried_and_a_quiet_one_kept() -> None:
    calls: list[str] = []
    # attempt 1: pytorch's second round is noisy; attempt 2: quiet, 2x faster compiled
    ref = [QUIET, NOISY, [4.0, 4.0], [4.0, 4.0]]
    cmp = [QUIET, QUIET, [2.0, 2.0], [2.0, 2.0]]
    policy = NoisePolicy(max_cv=0.1, max_cpu_load=1.0, retries=2)
    timing = time_paired(_workers(ref, cmp, calls), "pytorch", policy=policy, **SCRIPTED)
    assert timing.attempts == 2 and timing.reasons == [] and timing.noisy is None
    assert timing.speedups["tvm"].ratio == 2.0 and timing.speedups["pytorch"].ratio == 1.0
    assert timing.latencies["tvm"].samples_ms == [2.0] * 4 and timing.cvs["pytorch"] == 0.0


def test_noise_that_lasts_is_reported_after_the_retries(monkeypatch) -> None:
    waits: list[float] = []
    monkeypatch.setattr("dlas.compiler.rounds.sleep", waits.append)
    calls: list[str] = []
    policy = NoisePolicy(max_cv=0.1, max_cpu_load=1.0, retries=2)
    workers = _workers([NOISY] * 6, [QUIET] * 6, calls)
    timing = time_paired(workers, "pytorch", policy=policy, retry_wait_s=1.5, **SCRIPTED)
    assert timing.attempts == 3 and len(calls) == 3 * 2 * 2  # attempts x rounds x runtimes
    assert waits == [1.5, 3.0]  # a pause before each retry, doubling
    assert timing.noisy == "latency CV 0.5 of pytorch > measure.max_cv 0.1"
    assert timing.cvs["pytorch"] == 0.5  # [1, 3, 1, 3]: std 1 / mean 2


def test_strict_fails_naming_the_cv_and_the_threshold() -> None:
    policy = NoisePolicy(max_cv=0.1, max_cpu_load=1.0, retries=0, strict=True)
    workers = _workers([NOISY] * 2, [QUIET] * 2, [])
    with pytest.raises(NoisyMeasurementError) as err:
        time_paired(workers, "pytorch", policy=policy, **SCRIPTED)
    text = str(err.value)
    assert "measure.strict=true" in text and "after 1 attempt(s)" in text
    assert "latency CV 0.5 of pytorch > measure.max_cv 0.1" in text


# ------------------------------------------------------- real workers, pinned, alternating
# (module level, so the spawned child can import them by name)


def _whoami(protocol: Protocol) -> list[float]:
    return [float(os.getpid())] * protocol.repeat


def _open_whoami() -> Loaded:
    from dlas.hardware.threads import set_threads

    threads = set_threads(0)  # every core the child may run on: its pinned ones
    import psutil

    masks = [sorted(os.sched_getaffinity(t.id)) for t in psutil.Process().threads()]
    return Loaded((os.getpid(), masks, os.environ["OMP_NUM_THREADS"]), _whoami, threads=threads)


def test_two_runtimes_alternate_between_two_pinned_processes() -> None:
    core = timing_cores(1)
    assert len(core) == 1 and core[0] in allowed_cores()
    with Worker("a", timeout=120, cores=core) as a, Worker("b", timeout=120, cores=core) as b:
        for worker in (a, b):
            pid, masks, omp = worker.start(_open_whoami)
            assert pid == worker.pid != os.getpid()
            assert masks and all(m == core for m in masks)  # every thread, not just one
            assert omp == "1" and worker.threads == 1
        samples = run_rounds({"a": a, "b": b}, Protocol(0, 4, 1), rounds=2)
    assert samples == {"a": [[a.pid] * 2] * 2, "b": [[b.pid] * 2] * 2}


def test_a_launched_worker_loads_while_this_process_goes_on() -> None:
    with Worker("early", timeout=120) as worker:
        with pytest.raises(MeasurementError, match="early: the worker was not launched"):
            worker.ready()
        worker.launch(_open_whoami)
        assert worker.pid != os.getpid()  # spawned at launch, before anything waits for it
        pid, _, _ = worker.ready()
        assert pid == worker.pid and worker.time(Protocol(0, 2, 1)) == [pid, pid]


def _crash_on_two(protocol: Protocol) -> list[float]:
    if protocol.repeat == 2:
        os.kill(os.getpid(), signal.SIGSEGV)
    return [1.0] * protocol.repeat


def _open_crashy() -> Loaded:
    return Loaded(None, _crash_on_two)


def test_a_worker_crashing_mid_rounds_fails_naming_it() -> None:
    with Worker("crashy conv", timeout=120) as worker:
        worker.start(_open_crashy)
        assert worker.time(Protocol(0, 1, 1)) == [1.0]  # it serves round after round...
        with pytest.raises(MeasurementError, match="crashy conv crashed.*SIGSEGV"):
            worker.time(Protocol(0, 2, 1))  # ...until its kernel faults
        with pytest.raises(MeasurementError, match="not running"):
            worker.time(Protocol(0, 1, 1))


def _spin_after(protocol: Protocol) -> list[float]:
    """A round that leaves a thread burning the CPU for ``number`` tenths of a second,
    like a spin-waiting pool; its samples say when that thread stops."""
    import threading

    end = time.monotonic() + protocol.number / 10

    def spin() -> None:
        while time.monotonic() < end:
            pass

    threading.Thread(target=spin, daemon=True).start()
    return [end] * protocol.repeat


def _open_spinner() -> Loaded:
    return Loaded(None, _spin_after)


def test_a_round_ends_only_when_its_runtime_stops_spinning(caplog) -> None:
    """onnxruntime's pool spun ~50 ms after each round and slowed the next runtime's first
    samples 2-4x; a worker now answers only once its own threads have gone quiet."""
    with Worker("spinner", timeout=120) as worker:
        worker.start(_open_spinner)
        (end,) = worker.time(Protocol(0, 1, 3))  # spins 0.3 s after the round
        assert time.monotonic() >= end  # the round was not handed back while it spun
        assert worker.settle_ms[-1] >= 200
        with caplog.at_level("WARNING", logger="dlas.measure"):
            worker.time(Protocol(0, 1, 30))  # spins 3 s: longer than the 1 s a worker waits
        assert 1000 <= worker.settle_ms[-1] < 2500
        assert "spinner: the runtime's threads still used the CPU" in caplog.text


# ------------------------------------------------------------------ other processes' load

_BUSY_LOOP = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end: pass"


def busy_loop(seconds: float, core: int | None = None) -> subprocess.Popen:
    """A CPU hog that ends by itself after ``seconds`` (callers still kill it)."""
    hog = subprocess.Popen([sys.executable, "-c", _BUSY_LOOP.format(seconds=seconds)])
    if core is not None:
        os.sched_setaffinity(hog.pid, {core})
    return hog


def test_a_busy_process_is_others_load_unless_it_is_ours() -> None:
    core = timing_cores(1)
    hog = busy_loop(5, core[0])
    try:
        monitor = LoadMonitor(core, own_pids=[hog.pid]).start()
        time.sleep(0.6)  # sleeping: this process is no load of its own
        load = monitor.stop()
    finally:
        hog.kill()
        hog.wait()
    assert load.judgeable and load.own_s / load.wall_s > 0.2  # the hog ran on that core
    assert load.busy_s >= load.own_s - 0.03  # its time is in the core's busy time (ticks)
    as_others = CpuLoad(load.cores, load.wall_s, load.busy_s, 0.0)
    assert as_others.others >= load.others + 0.2  # not ours: counted as someone else's
    assert 0.0 <= load.others <= as_others.others <= 1.0


def test_a_short_window_is_not_judged() -> None:
    assert not CpuLoad((0,), 0.05, 0.05, 0.0).judgeable
    assert CpuLoad((0, 1), 1.0, 1.5, 0.5).others == pytest.approx(0.5)
    assert CpuLoad((0,), 1.0, 0.2, 0.5).others == 0.0  # clamped: never negative
    assert np.isfinite(CpuLoad((0,), 0.0, 0.0, 0.0).others)
