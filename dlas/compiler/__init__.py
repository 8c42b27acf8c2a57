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


def check_compiler(name: str) -> None:
    if name not in COMPILERS:
        raise ValueError(f"unknown compiler {name!r}; valid choices: {', '.join(COMPILERS)}")


__all__ = ["BASELINES", "COMPILERS", "TVM_COMPILERS", "check_compiler"]
