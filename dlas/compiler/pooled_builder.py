"""A MetaSchedule builder whose worker processes outlive a round of the search.

MetaSchedule's ``LocalBuilder`` starts a fresh ``PopenPoolExecutor`` on every call (a
memory leak in long-lived workers, says its source), and each new worker imports TVM
and runs our initializer before it builds anything. Measured on this project's 2-core
host: ~6 s per call, so a 16-task model spends ~100 s of a 1-trial-per-task tuning on
starting workers, a quarter of it. Here the pool is kept for the whole tuning and each
worker is retired after ``uses`` builds instead (``maximum_process_uses``, TVM's own knob
for that leak), so a worker's start-up is paid once per ``uses`` builds, not per round.
Results, timeouts and errors are reported as ``LocalBuilder`` reports them.

Each worker's first build imports ``tvm.s_tir.tensor_intrin`` (hundreds of TVMScript
functions; ~26 s on this host once torch is in ``sys.modules``), so the default initializer
is ``dlas.compiler.fast_tvmscript.install``, which makes that import take seconds: without
it a first build can hit the 30 s timeout on a slow machine.
"""

from __future__ import annotations

from collections.abc import Callable

from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.builder import BuilderInput, BuilderResult, LocalBuilder
from tvm.s_tir.meta_schedule.builder.local_builder import _serialize_params, _worker_func
from tvm.support.popen_pool import PopenPoolExecutor, StatusKind

from dlas.compiler.fast_tvmscript import install as install_fast_tvmscript

#: builds per worker before it is replaced (each build leaks a little in the worker)
WORKER_USES = 64


@derived_object
class PooledBuilder(LocalBuilder._cls):  # noqa: SLF001 - TVM's way to extend a builder
    """``LocalBuilder`` with one worker pool per tuning instead of one per round."""

    def __init__(
        self,
        *,
        max_workers: int | None = None,
        timeout_sec: float = 30.0,
        initializer: Callable[[], None] | None = install_fast_tvmscript,
        uses: int = WORKER_USES,
    ) -> None:
        super().__init__(max_workers=max_workers, timeout_sec=timeout_sec, initializer=initializer)
        self.uses = uses
        self._pool: PopenPoolExecutor | None = None

    def build(self, build_inputs: list[BuilderInput]) -> list[BuilderResult]:
        if self._pool is None:
            self._pool = PopenPoolExecutor(
                max_workers=self.max_workers,
                timeout=self.timeout_sec,
                initializer=self.initializer,
                maximum_process_uses=self.uses,
            )
        jobs = [
            (self.f_build, self.f_export, b.mod, b.target, _serialize_params(b.params))
            for b in build_inputs
        ]
        results = []
        for done in self._pool.map_with_error_catching(lambda job: _worker_func(*job), jobs):
            if done.status == StatusKind.COMPLETE:
                results.append(BuilderResult(done.value, None))
            elif done.status == StatusKind.TIMEOUT:
                message = f"LocalBuilder: Timeout, killed after {self.timeout_sec} seconds"
                results.append(BuilderResult(None, message))
            else:
                message = f"LocalBuilder: An exception occurred\n{done.value}"
                results.append(BuilderResult(None, message))
        return results

    def shutdown(self) -> None:
        """Stop the workers (also when the tuning failed): they hold a TVM each."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
