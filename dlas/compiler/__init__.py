"""Layer 5 of the stack: systems software.

One interface (:class:`~dlas.compiler.base.Compiler`) and one registry: ``tvm_untuned``
and ``tvm_autoschedule`` compile through TVM Relax (``tvm_compilers``, ``tvm_relax``;
the int8 route is ``int8``); ``pytorch``, ``torch_compile`` and ``onnxruntime`` are the
frameworks a user would otherwise deploy with (``baselines``), ``openvino`` the
accelerator of the form-follows-function study (``openvino_runtime``). ``measure`` holds the
timing protocol all of them share. ``get_compiler(name, **options)`` is the door that
``conf/compiler``'s ``_target_`` names.
"""

from __future__ import annotations

from dlas.compiler import (  # noqa: F401  (they register themselves)
    baselines,
    openvino_runtime,
    tvm_compilers,
)
from dlas.compiler.base import (
    COMPILERS,
    Compiled,
    Compiler,
    Inputs,
    best_algorithm_error,
    compiler_class,
    get_compiler,
    register_compiler,
    uses_algorithms,
)
from dlas.compiler.tuning import TUNED_OPS
from dlas.compiler.tvm_compilers import SCHEDULES, check_schedule

__all__ = [
    "COMPILERS",
    "SCHEDULES",
    "TUNED_OPS",
    "Compiled",
    "Compiler",
    "Inputs",
    "best_algorithm_error",
    "check_schedule",
    "compiler_class",
    "get_compiler",
    "register_compiler",
    "uses_algorithms",
]
