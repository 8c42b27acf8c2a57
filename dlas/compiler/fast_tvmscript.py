"""Make TVMScript parsing cheap enough for MetaSchedule's worker processes.

TVMScript's decorators (``T.prim_func``, ``I.ir_module``, ``R.function``) call
``inspect.stack()``, which resolves the source file and module of *every* frame
on the stack. ``import tvm.s_tir.tensor_intrin`` parses hundreds of functions
that way and takes ~42 s, and every MetaSchedule builder/runner worker imports
it, so tuning looks hung at "Sending N sample(s) to builder".

The parsers only need the frame objects and the source line of the decorator's
caller, which ``linecache`` gives for free. ``install()`` hands those four
modules an ``inspect`` whose ``stack`` walks frames directly (everything else is
the real module), in this process and, as the workers' ``initializer``, in
every worker. It changes nothing outside TVMScript.
"""

from __future__ import annotations

import importlib
import inspect
import linecache
import sys
import types

TVMSCRIPT_MODULES = (
    "tvm.tirx.script.parser.entry",
    "tvm.tirx.script.builder.ir",
    "tvm.script.parser.ir.entry",
    "tvm.relax.script.parser.entry",
)


def light_stack(context: int = 1) -> list[inspect.FrameInfo]:
    """``inspect.stack()`` without per-frame module resolution (one line of context)."""
    frames = []
    frame = sys._getframe(1)
    while frame is not None:
        filename, lineno = frame.f_code.co_filename, frame.f_lineno
        line = linecache.getline(filename, lineno) if context else ""
        frames.append(
            inspect.FrameInfo(
                frame,
                filename,
                lineno,
                frame.f_code.co_name,
                [line] if line else None,
                0 if line else None,
            )
        )
        frame = frame.f_back
    return frames


class _FastInspect(types.ModuleType):
    """The real ``inspect`` module but for ``stack``."""

    stack = staticmethod(light_stack)

    def __getattr__(self, name: str):
        return getattr(inspect, name)


_FAST = _FastInspect("inspect")


def install() -> None:
    """Idempotent; safe to call in the parent and as a worker initializer."""
    for name in TVMSCRIPT_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:  # a TVM build without this parser
            continue
        if getattr(module, "inspect", None) is inspect:
            module.inspect = _FAST
