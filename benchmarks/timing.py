"""One timing per process, with the stack's protocol (warm-up, then repeat x number):
the same children ``deploy.py`` uses, so benchmark rows and runs are comparable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dlas.compiler.baselines import verify_and_time_baseline
from dlas.compiler.measure import Protocol, measure_in_subprocess, verify_and_time_tvm


def time_baseline(
    kind: str, path: Path, x: np.ndarray, device: Any, protocol: Protocol, label: str
) -> tuple[np.ndarray, float]:
    """(output on ``x``, median ms) of a framework (``pytorch``, ``onnxruntime``, ...)
    running the exported program at ``path``."""
    output, lat = measure_in_subprocess(
        verify_and_time_baseline,
        kind,
        path,
        path,
        x,
        x,
        threads=device.threads,
        protocol=protocol,
        label=label,
    )
    return np.asarray(output), lat.median_ms


def time_tvm(
    library: Path, x: np.ndarray, device: Any, protocol: Protocol, label: str
) -> tuple[np.ndarray, float]:
    """(first output on ``x``, median ms) of a compiled TVM library."""
    outputs, lat = measure_in_subprocess(
        verify_and_time_tvm, str(library), [x], x, device, protocol, label=label
    )
    return np.asarray(outputs[0]), lat.median_ms
