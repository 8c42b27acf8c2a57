"""Layer 6, Hardware: the device a stack point is compiled for and measured on.

``get_device("cpu" | "cuda" | "rpc", ...)`` returns a :class:`Device` (TVM target, target
host, threads, how to reach it); :func:`set_threads` applies one thread count to TVM and
PyTorch alike.

Names are resolved lazily: TVM takes seconds to import, and ``set_threads`` /
``available_cores`` are needed by the PyTorch and onnxruntime baselines, which never use
TVM.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dlas.hardware.caches import cpu_caches, last_level_cache_bytes
    from dlas.hardware.device import DEVICES, Device, get_device
    from dlas.hardware.rpc import (
        HardwareUnavailableError,
        LocalRPC,
        check_tracker,
        configure_remote_threads,
        free_port,
    )
    from dlas.hardware.targets import host_cpu, host_target, parse_target
    from dlas.hardware.threads import available_cores, set_threads

_WHERE = {
    "cpu_caches": "caches",
    "last_level_cache_bytes": "caches",
    "DEVICES": "device",
    "Device": "device",
    "get_device": "device",
    "HardwareUnavailableError": "rpc",
    "LocalRPC": "rpc",
    "check_tracker": "rpc",
    "configure_remote_threads": "rpc",
    "free_port": "rpc",
    "host_cpu": "targets",
    "host_target": "targets",
    "parse_target": "targets",
    "available_cores": "threads",
    "set_threads": "threads",
}

__all__ = [
    "DEVICES",
    "Device",
    "HardwareUnavailableError",
    "LocalRPC",
    "available_cores",
    "check_tracker",
    "configure_remote_threads",
    "cpu_caches",
    "free_port",
    "get_device",
    "host_cpu",
    "host_target",
    "last_level_cache_bytes",
    "parse_target",
    "set_threads",
]
assert sorted(__all__) == sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'dlas.hardware' has no attribute {name!r}")
    return getattr(importlib.import_module(f"dlas.hardware.{_WHERE[name]}"), name)


def __dir__() -> list[str]:
    return __all__
