"""One thread count for every runtime, applied without importing any of them.

Why this needs care: TVM sizes its thread pool from ``TVM_NUM_THREADS``, else half the
cores on x86 (it assumes hyper-threading), so on a 2-core VM without SMT TVM would silently
run single-threaded next to a 2-thread PyTorch. DLAS compares the two, so both get the same
count explicitly. And every count starts from the affinity mask, never ``os.cpu_count()``:
under ``taskset`` or a container's CPU limit the machine's core count is not what this
process may use, and a runtime sized from it oversubscribes the cores it has. This module
imports neither TVM nor torch, so the PyTorch and onnxruntime baselines do not pay for
importing TVM.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

log = logging.getLogger("dlas.hardware")


def allowed_cores() -> list[int]:
    """The CPU ids this process may run on (its affinity mask), sorted."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def available_cores() -> int:
    """Cores this process may run on: the affinity mask, not the machine's core count, so
    a container or ``taskset`` limit is respected."""
    return len(allowed_cores())


def resolve_threads(threads: int) -> int:
    """``threads``, or every core this process may run on for 0. An explicit count above
    that is kept (the user asked for it) but said out loud: its runtimes oversubscribe."""
    if threads < 0:
        raise ValueError(f"threads={threads} must be >= 0 (0 = every core)")
    cores = available_cores()
    if threads > cores:
        log.warning(
            "threads=%d but this process may run on %d core(s) (affinity mask %s): "
            "runtimes will oversubscribe them and latencies measure the contention",
            threads,
            cores,
            allowed_cores(),
        )
    return threads or cores


def timing_cores(threads: int = 0) -> list[int]:
    """The cores a timed child is pinned to: ``threads`` of the allowed ones (0 = all).

    The *last* ones, because Linux steers most device interrupts to the lowest-numbered
    CPUs. Every runtime of a point gets the same cores: they are timed one after the
    other, never together, so each sees the same caches and the same neighbours.
    """
    cores = allowed_cores()
    count = min(resolve_threads(threads), len(cores))
    return cores[len(cores) - count :]


def pin_to(cores: Iterable[int]) -> None:
    """Pin this whole process (every thread it has now; later threads inherit) to
    ``cores``. ``os.sched_setaffinity(0, ...)`` alone moves only the calling thread, and a
    spawned child already has numpy's BLAS threads by the time its job starts."""
    import psutil

    mask = set(cores)
    if not hasattr(os, "sched_setaffinity"):  # not Linux: nothing to pin with
        return
    os.sched_setaffinity(0, mask)
    for thread in psutil.Process().threads():
        try:
            os.sched_setaffinity(thread.id, mask)
        except (ProcessLookupError, PermissionError):  # the thread ended meanwhile
            continue


def set_threads(threads: int = 0) -> int:
    """Use ``threads`` (0 = every core this process may run on) in TVM and PyTorch alike.

    Sets ``TVM_NUM_THREADS`` / ``OMP_NUM_THREADS`` for libraries imported later and for
    child processes, reconfigures TVM's pool if TVM is loaded (its pool may already exist)
    and calls ``torch.set_num_threads`` if torch is loaded, with one inter-op thread: a
    batch-1 forward pass runs its operators one after another, and intra x inter threads
    above the core count would oversubscribe. Returns the resolved count.
    """
    resolved = resolve_threads(threads)
    os.environ["TVM_NUM_THREADS"] = str(resolved)
    os.environ["OMP_NUM_THREADS"] = str(resolved)
    if "tvm" in sys.modules:
        import tvm

        # -3 = kSpecifyThreadShareAllCore: `resolved` workers, all allowed on every core.
        # (Mode 1, "big cores", cannot go above the pool's halved default.)
        cpus = [str(c) for c in allowed_cores()]
        tvm.get_global_func("runtime.config_threadpool")(-3, resolved, cpus)
    if "torch" in sys.modules:
        import torch

        torch.set_num_threads(resolved)
        if torch.get_num_interop_threads() != 1:
            try:
                torch.set_num_interop_threads(1)
            except RuntimeError:  # only possible before torch's first parallel work
                log.debug("torch's inter-op pool already started; left at its size")
    return resolved


@contextmanager
def children_threads(threads: int = 0) -> Iterator[int]:
    """``TVM_NUM_THREADS`` = ``threads`` (0 = every allowed core) for the child processes
    started inside, restored afterwards; yields the resolved count.

    Why: a TVM child sizes its pool from the environment it starts with, else half the
    cores. MetaSchedule's runner workers and an RPC server are such children: left to
    that default on a 2-core host, every tuning candidate was timed on one thread while
    the tuned model runs on two, so the search ranked schedules for the wrong machine.
    """
    resolved = resolve_threads(threads)
    saved = os.environ.get("TVM_NUM_THREADS")
    os.environ["TVM_NUM_THREADS"] = str(resolved)
    try:
        yield resolved
    finally:
        if saved is None:
            os.environ.pop("TVM_NUM_THREADS", None)
        else:
            os.environ["TVM_NUM_THREADS"] = saved
