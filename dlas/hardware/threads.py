"""One thread count for every runtime, applied without importing any of them.

Why this needs care: TVM sizes its thread pool from ``TVM_NUM_THREADS``, else half the
cores on x86 (it assumes hyper-threading), so on a 2-core VM without SMT TVM would silently
run single-threaded next to a 2-thread PyTorch. DLAS compares the two, so both get the same
count explicitly. This module imports neither TVM nor torch, so the PyTorch and
onnxruntime baselines do not pay for importing TVM.
"""

from __future__ import annotations

import os
import sys


def available_cores() -> int:
    """Cores this process may run on: the affinity mask, not the machine's core count, so
    a container or ``taskset`` limit is respected."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def set_threads(threads: int = 0) -> int:
    """Use ``threads`` (0 = every core this process may run on) in TVM and PyTorch alike.

    Sets ``TVM_NUM_THREADS`` / ``OMP_NUM_THREADS`` for libraries imported later and for
    child processes, reconfigures TVM's pool if TVM is loaded (its pool may already exist)
    and calls ``torch.set_num_threads`` if torch is loaded. Returns the resolved count.
    """
    if threads < 0:
        raise ValueError(f"threads={threads} must be >= 0 (0 = every core)")
    resolved = threads or available_cores()
    os.environ["TVM_NUM_THREADS"] = str(resolved)
    os.environ["OMP_NUM_THREADS"] = str(resolved)
    if "tvm" in sys.modules:
        import tvm

        try:
            cpus = sorted(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            cpus = list(range(os.cpu_count() or 1))
        # -3 = kSpecifyThreadShareAllCore: `resolved` workers, all allowed on every core.
        # (Mode 1, "big cores", cannot go above the pool's halved default.)
        tvm.get_global_func("runtime.config_threadpool")(-3, resolved, [str(c) for c in cpus])
    if "torch" in sys.modules:
        import torch

        torch.set_num_threads(resolved)
    return resolved
