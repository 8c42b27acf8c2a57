"""The two TVM compilers: ``tvm_untuned`` (each kernel's default schedule, DLAS's
"untuned") and ``tvm_autoschedule`` (MetaSchedule searches the templates' knobs).

Both compile with layer 4's algorithms and data formats through the Relax pipeline of
:mod:`dlas.compiler.tvm_relax` (imported only when a model is compiled: TVM is heavy, and
checking a config must stay quick) and run on any dlas hardware, an RPC board included.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dlas.compiler.base import Compiled, Compiler, Inputs, register_compiler
from dlas.compiler.measure import Worker, open_tvm
from dlas.compiler.tuning import TUNED_OPS
from dlas.errors import build
from dlas.hardware.cores import exclusive

if TYPE_CHECKING:
    from dlas.hardware import Device

#: ``compiler.schedule``: ``default`` = each kernel's default schedule (DLAS's "untuned");
#: ``none`` = TVM's plain loop nests (dlas's "untuned" before schedules existed).
SCHEDULES = ("default", "none")


def check_schedule(name: str) -> None:
    if name not in SCHEDULES:
        raise ValueError(
            f"unknown compiler.schedule {name!r}; valid choices: {', '.join(SCHEDULES)}"
        )


def _chunks(x: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Static-shape batches; the last one padded by repeating its first image."""
    out = []
    for i in range(0, len(x), batch_size):
        chunk = x[i : i + batch_size]
        if len(chunk) < batch_size:
            chunk = np.concatenate([chunk, np.repeat(chunk[:1], batch_size - len(chunk), 0)])
        out.append(chunk)
    return out


class TvmCompiler(Compiler):
    """TVM Relax with layer 4's algorithms; ``schedule`` as :data:`SCHEDULES`."""

    uses_algorithms = True
    hardware = None

    def __init__(self, name: str | None = None, schedule: str = "default", **options: Any):
        super().__init__(name, **options)
        check_schedule(schedule)
        self.schedule = schedule

    def tuning(self, root: Path) -> Any:
        """The MetaSchedule budget (``dlas.compiler.Tuning``), or None: no search."""
        return None

    def compile_and_open(
        self,
        cfg: Any,
        device: Device,
        inputs: Inputs,
        out_dir: Path,
        tuning_root: Path,
        cores: Sequence[int],
    ) -> Compiled:
        import torch

        from dlas.compiler import tvm_relax

        worker = Worker(f"verify and time {self.name}", timeout=inputs.timeout_s, cores=cores)
        example = torch.from_numpy(inputs.example)
        built = tvm_relax.build(
            inputs.program,
            example,
            device,
            build(cfg.algorithm),  # dlas.algorithms.get_algorithm: a typed Algorithm
            out_dir,
            self.tuning(tuning_root),
            self.schedule,
        )
        # Relax modules take float32 whatever they compute in (fp16 and int8 cast inside).
        with exclusive():
            outputs = worker.start(
                open_tvm,
                str(built.library),
                _chunks(inputs.x.astype(np.float32), cfg.measure.batch_size),
                inputs.example.astype(np.float32),
                device,
            )
        return Compiled(
            np.concatenate(outputs)[: len(inputs.x)],
            None,
            built.compile_s,
            built.tune_s,
            built.info["tuning_trials"],
            built.layers,
            built.library,
            worker,
            built.info.get("end_to_end"),
            built.steps,
        )


@register_compiler("tvm_untuned")
class TvmUntuned(TvmCompiler):
    """Each kernel's default schedule (or, with ``schedule=none``, its plain loop nest)."""


@register_compiler("tvm_autoschedule")
class TvmAutoschedule(TvmCompiler):
    """MetaSchedule over the templates' knobs, the default schedule always a candidate;
    the database is reused per workload, target, templates and thread count."""

    tunes = True

    def __init__(
        self,
        name: str | None = None,
        schedule: str = "default",
        trials: int = 0,
        trials_per_task: int = 0,
        population: int = 0,
        tune_ops: Sequence[str] = TUNED_OPS,
        **options: Any,
    ) -> None:
        super().__init__(name, schedule, **options)
        if trials <= 0 and trials_per_task <= 0:
            raise ValueError(
                "compiler.trials=0 (a share per task) needs compiler.trials_per_task > 0"
            )
        self.trials, self.trials_per_task = trials, trials_per_task
        self.population, self.tune_ops = population, tuple(tune_ops)

    def tuning(self, root: Path) -> Any:
        from dlas.compiler.tuning import Tuning

        return Tuning(
            self.trials, self.trials_per_task, root, self.tune_ops, population=self.population
        )
