"""The TVM pipeline of one build, recorded as it runs: ``pipeline.json`` of every TVM run.

``tvm_relax.build`` declares its steps as named passes (``graph_passes``,
``kernel_passes``) and a few named steps that are not single passes (choosing each
layer's algorithm, tuning, applying the database, the library build). Each one runs
through :class:`PipelineLog`, so the record is what ran, in order, with its wall time,
never a list kept beside the code that could disagree with it. Inside each step TVM's
own pass instrumentation (:func:`tvm.ir.instrument.pass_instrument`) names the TVM passes
that ran at its top level and times them: ``tvm.compile``'s lowering shows up pass by
pass, which is where a slow build spends its time.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("dlas.compiler")


@dataclass
class Step:
    name: str
    seconds: float = 0.0
    #: the top-level TVM passes that ran inside the step: name, seconds, how many
    #: nested passes they ran
    passes: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"step": self.name, "s": round(self.seconds, 6), "tvm_passes": self.passes}


def _clock() -> Any:
    """A TVM pass instrument that times each pass at depth 0 of the current step."""
    import tvm

    @tvm.ir.instrument.pass_instrument
    class PassClock:
        def __init__(self) -> None:
            self.stack: list[tuple[float, int]] = []
            self.nested = 0
            self.passes: list[dict[str, Any]] = []

        def run_before_pass(self, mod: Any, info: Any) -> None:
            self.stack.append((time.perf_counter(), self.nested))
            self.nested = 0

        def run_after_pass(self, mod: Any, info: Any) -> None:
            start, outer = self.stack.pop()
            if not self.stack:
                seconds = round(time.perf_counter() - start, 6)
                self.passes.append({"pass": info.name, "s": seconds, "nested": self.nested})
            self.nested = outer + 1 + self.nested

    return PassClock()


class PipelineLog:
    """The steps of one build as they ran. ``run(steps, mod)`` runs declared passes (each
    its own step), ``step(name)`` wraps anything else; both log a progress line."""

    def __init__(self, quiet: bool = False) -> None:
        self.steps: list[Step] = []
        self.quiet = quiet

    @contextlib.contextmanager
    def step(self, name: str, progress: str = "") -> Iterator[Step]:
        import tvm

        if not self.quiet:
            log.info("tvm pipeline%s: %s", progress, name)
        record = Step(name)
        ctx = tvm.transform.PassContext.current()
        before = list(ctx.instruments)
        clock = _clock()
        ctx.override_instruments([*before, clock])
        start = time.perf_counter()
        try:
            yield record
        finally:
            record.seconds = time.perf_counter() - start
            ctx.override_instruments(before)
            record.passes = clock.passes
            self.steps.append(record)

    def run(self, steps: list[tuple[str, Any]], mod: Any) -> Any:
        for i, (name, declared) in enumerate(steps, 1):
            with self.step(name, f" {i}/{len(steps)}"):
                mod = declared(mod)
        return mod

    def as_list(self) -> list[dict[str, Any]]:
        return [s.as_dict() for s in self.steps]
