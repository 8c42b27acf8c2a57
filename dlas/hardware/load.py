"""How much of the timed cores other processes used: the load a latency was measured under.

The core lock (:mod:`dlas.hardware.cores`) keeps other *dlas* jobs off the cores while a
point is timed, but nothing of ours can see another user's job, a compiler in another
terminal, or a hypervisor giving our virtual CPUs to another VM (steal time). A latency
measured beside any of them measures the contention (eager PyTorch logged 198.8 ms
instead of 9.4 ms with two busy cores next to it), so the timing protocol reads this
before and during timing and treats a busy machine as noise.

What "other" means: the busy time of the timed cores (``psutil.cpu_times(percpu=True)``:
user, nice, system, irq, softirq and steal) minus the CPU time of our timed child
processes, which are pinned to those cores. Everything else on those cores, this
parent process included, is someone else's. Both counters tick at the kernel's
``USER_HZ`` (10 ms), so a window of a few ticks is too coarse to judge:
:attr:`CpuLoad.judgeable` says whether one is long enough.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import psutil

#: Shortest window whose load is worth judging: 20 ticks of 10 ms, so the counters'
#: rounding is a few percent of it.
MIN_WINDOW_S = 0.2

_BUSY = ("user", "nice", "system", "irq", "softirq", "steal")


@dataclass(frozen=True)
class CpuLoad:
    """CPU seconds spent on ``cores`` in a window of ``wall_s`` seconds: by anyone
    (``busy_s``) and by our own processes (``own_s``)."""

    cores: tuple[int, ...]
    wall_s: float
    busy_s: float
    own_s: float

    @property
    def others(self) -> float:
        """The fraction of the cores' time other processes used, in [0, 1]."""
        capacity = self.wall_s * max(len(self.cores), 1)
        if capacity <= 0:
            return 0.0
        return min(max(self.busy_s - self.own_s, 0.0) / capacity, 1.0)

    @property
    def judgeable(self) -> bool:
        """Long enough for the tick-rounded counters to mean something."""
        return self.wall_s >= MIN_WINDOW_S


def _busy_seconds(cores: Sequence[int]) -> float:
    per_cpu = psutil.cpu_times(percpu=True)
    return sum(getattr(per_cpu[c], f, 0.0) for c in cores if c < len(per_cpu) for f in _BUSY)


def _own_seconds(pids: Iterable[int], last: dict[int, float]) -> float:
    """CPU seconds of ``pids``; a process that has exited keeps its last reading, so a
    worker dying mid-window does not turn its time into someone else's."""
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            last[pid] = t.user + t.system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
        total += last.get(pid, 0.0)
    return total


class LoadMonitor:
    """Measure :class:`CpuLoad` over a window: ``start()`` ... ``stop()``, or ``with``."""

    def __init__(self, cores: Iterable[int], own_pids: Iterable[int] = ()) -> None:
        self.cores = tuple(sorted(cores))
        self.own_pids = tuple(own_pids)
        self._last: dict[int, float] = {}
        self.result: CpuLoad | None = None

    def start(self) -> LoadMonitor:
        self._t0 = time.monotonic()
        self._busy0 = _busy_seconds(self.cores)
        self._own0 = _own_seconds(self.own_pids, self._last)
        return self

    def stop(self) -> CpuLoad:
        wall = time.monotonic() - self._t0
        self.result = CpuLoad(
            self.cores,
            wall,
            _busy_seconds(self.cores) - self._busy0,
            _own_seconds(self.own_pids, self._last) - self._own0,
        )
        return self.result

    def __enter__(self) -> LoadMonitor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def probe(cores: Iterable[int], seconds: float, own_pids: Iterable[int] = ()) -> CpuLoad:
    """The load on ``cores`` over the next ``seconds`` (this process sleeps meanwhile)."""
    with LoadMonitor(cores, own_pids) as monitor:
        time.sleep(seconds)
    assert monitor.result is not None
    return monitor.result


#: A process counts as idle once it used less than this fraction of one core...
IDLE_BELOW = 0.1
#: ...over a window this long (``CLOCK_PROCESS_CPUTIME_ID`` counts in ns, not ticks).
#: Not shorter: on a shared host the hypervisor can take a vCPU away for a few ms
#: (steal reached 44% of this machine's time in some seconds), and a 5 ms window in
#: which a spinning thread was not scheduled at all read as idle.
IDLE_WINDOW_S = 0.02


def wait_until_idle(limit_s: float = 1.0) -> tuple[float, bool]:
    """Wait until this process's threads stop using the CPU; return (seconds waited,
    whether they did within ``limit_s``).

    Why: a runtime's thread pool does not sleep when a call returns. onnxruntime's
    workers spin-wait ~50 ms after a round, torch's OpenMP threads ~10 ms (measured on
    this project's host). Whatever is timed next on the same cores loses those cores to
    them: eager PyTorch timed right after an onnxruntime round ran 2-4x slower for its
    first samples (7.7-13.7 ms against 3.5 ms), and a study timing four runtimes in
    alternating rounds tagged every point noisy. A worker therefore ends each round only
    when its own process has gone quiet.
    """
    started = previous_wall = time.perf_counter()
    previous_cpu = time.clock_gettime(time.CLOCK_PROCESS_CPUTIME_ID)
    while True:
        time.sleep(IDLE_WINDOW_S)
        wall = time.perf_counter()
        cpu = time.clock_gettime(time.CLOCK_PROCESS_CPUTIME_ID)
        if cpu - previous_cpu < IDLE_BELOW * (wall - previous_wall):
            return wall - started, True
        if wall - started >= limit_s:
            return wall - started, False
        previous_wall, previous_cpu = wall, cpu
