"""Layer 5 of the stack: systems software.

``tvm_untuned`` and ``tvm_autoschedule`` compile through TVM Relax (``tvm_relax``; the
int8 route is ``int8``); ``pytorch``, ``torch_compile`` and ``onnxruntime`` are the
frameworks a user would otherwise deploy with (``baselines``). ``measure`` holds the
timing protocol all of them share.
"""

from __future__ import annotations

from dlas.compiler.baselines import BASELINES

TVM_COMPILERS = ("tvm_untuned", "tvm_autoschedule")
COMPILERS = TVM_COMPILERS + BASELINES
#: ``compiler.schedule`` (TVM): ``default`` = each kernel's default schedule (DLAS's
#: "untuned"); ``none`` = TVM's plain loop nests (dlas's "untuned" before schedules).
SCHEDULES = ("default", "none")


def check_compiler(name: str) -> None:
    if name not in COMPILERS:
        raise ValueError(f"unknown compiler {name!r}; valid choices: {', '.join(COMPILERS)}")


def check_schedule(name: str) -> None:
    if name not in SCHEDULES:
        raise ValueError(
            f"unknown compiler.schedule {name!r}; valid choices: {', '.join(SCHEDULES)}"
        )


__all__ = [
    "BASELINES",
    "COMPILERS",
    "SCHEDULES",
    "TVM_COMPILERS",
    "check_compiler",
    "check_schedule",
]
