"""Layer 5's one interface: a compiler turns a point's program into a runtime that a
:class:`~dlas.compiler.measure.Worker` keeps loaded, so that ``dlas.deployment`` verifies
and times every compiler the same way.

Why an interface and a registry: the deployment, the checks before a run, the search
space and the report each used to ask "is this TVM?" by name. Each compiler now says
what it is once, where it is defined (:func:`register_compiler` on its class): whether
layer 4's algorithms and data formats apply to it (``uses_algorithms``), whether it
searches schedules within a trial budget (``tunes``), and which hardware it runs on.
Adding a compiler is one module with a registered class plus one ``conf/compiler`` YAML
file whose ``_target_`` names the class: named as ``compiler=`` or in
``measure.compare``, its module is imported from that ``_target_``
(:func:`compiler_class`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from dlas.registry import Registry

if TYPE_CHECKING:
    import torch

    from dlas.compiler.measure import Latency, Worker
    from dlas.hardware import Device


@dataclass
class Inputs:
    """What every compiler of a point is given: the same images and batch."""

    program: torch.export.ExportedProgram
    program_path: Path
    static_path: Path  # the program re-exported at the measured batch size
    x: np.ndarray  # verification images
    example: np.ndarray  # one timed batch
    timeout_s: float


@dataclass
class Compiled:
    """One compiler's result on the verification images, the worker that keeps it loaded
    for the timing rounds, and (once timed) its latency."""

    outputs: np.ndarray
    latency: Latency | None
    compile_s: float
    tune_s: float
    trials: int
    layers: list[dict[str, Any]]
    artifact: Path
    worker: Worker | None = None
    #: a tuning compiler: the whole model timed tuned and untuned, and which was kept
    end_to_end: dict[str, Any] | None = None
    #: a compiler with a pass pipeline: its steps as they ran, timed (``pipeline.json``)
    pipeline: list[dict[str, Any]] | None = None


class Compiler(ABC):
    """One layer-5 option. Constructed from its ``conf/compiler`` node's values (the
    schema's fields, ``name`` included), which it validates in its constructor."""

    #: its ``compiler=`` name, set by :func:`register_compiler`
    name: ClassVar[str] = ""
    #: compiles with layer 4's algorithms and data formats; the others run their own
    #: kernels, and the algorithm params their runs carry mean nothing (report: n/a)
    uses_algorithms: ClassVar[bool] = False
    #: searches schedules within ``compiler.trials``: it needs that budget, so it can be
    #: the main compiler only, and only it can choose each layer's algorithm (``best``)
    tunes: ClassVar[bool] = False
    #: the ``hardware=`` names it runs on; None: every one
    hardware: ClassVar[tuple[str, ...] | None] = ("cpu",)

    def __init__(self, name: str | None = None, **options: Any) -> None:
        if name is not None and name != self.name:
            raise ValueError(f"compiler {type(self).__name__} is {self.name!r}, not {name!r}")
        self.options = options

    @abstractmethod
    def compile_and_open(
        self,
        cfg: Any,
        device: Device,
        inputs: Inputs,
        out_dir: Path,
        tuning_root: Path,
        cores: Sequence[int],
    ) -> Compiled:
        """Compile ``inputs.program`` for ``device``, then load it in a worker pinned to
        ``cores`` that has computed its outputs on ``inputs.x`` and stays up for the
        timing rounds (the caller closes it). ``cfg`` is the point's whole config (the
        algorithm layer and ``measure.batch_size`` are read from it)."""


COMPILERS: Registry[type[Compiler]] = Registry("compiler")


def register_compiler(name: str) -> Callable[[type[Compiler]], type[Compiler]]:
    """Class decorator: ``name`` is the compiler's ``compiler=`` value."""

    def add(cls: type[Compiler]) -> type[Compiler]:
        cls.name = name
        return COMPILERS.register(name)(cls)

    return add


def compiler_class(name: str) -> type[Compiler]:
    """The registered class of ``name``; unknown names name the valid choices.

    A name no imported module registered (a plugin's, given only in ``measure.compare``)
    is looked up where Hydra finds this run's configs: the ``_target_`` of its
    ``compiler/<name>.yaml`` is imported, which registers it, so that a new compiler stays
    one module plus one YAML file wherever it is named."""
    if name not in COMPILERS.names():
        import_declared(name)
    return COMPILERS.get(name)


def import_declared(name: str) -> None:
    """Import the module of the class ``compiler/<name>.yaml`` names as its ``_target_``,
    in the first of this Hydra run's config sources that has the file (none outside a
    Hydra run, or when no source declares ``name``: the registry's error says the rest)."""
    import importlib
    import importlib.resources

    from omegaconf import OmegaConf

    try:
        from hydra.core.hydra_config import HydraConfig

        sources = HydraConfig.get().runtime.config_sources
    except (ImportError, ValueError):  # not inside a Hydra run
        return
    for source in sources:
        if source.schema == "file":
            path: Any = Path(source.path) / "compiler" / f"{name}.yaml"
        elif source.schema == "pkg":
            path = importlib.resources.files(source.path.replace("/", ".")) / "compiler"
            path = path / f"{name}.yaml"
        else:
            continue
        if not path.is_file():
            continue
        target = OmegaConf.create(path.read_text()).get("_target_")
        if isinstance(target, str) and "." in target:
            importlib.import_module(target.rsplit(".", 1)[0])
        return


def get_compiler(name: str, **options: Any) -> Compiler:
    """The layer-5 door (``conf/compiler``'s ``_target_``), as ``get_model`` is layer 2's."""
    return compiler_class(name)(name=name, **options)


def uses_algorithms(name: Any) -> bool:
    """Whether layer 4's algorithm applies to runs of compiler ``name`` (the report's
    question about logged runs: a name no compiler registers here, e.g. one a plugin
    logged, runs its own kernels as far as this process can tell)."""
    return (
        isinstance(name, str) and name in COMPILERS.names() and COMPILERS.get(name).uses_algorithms
    )


def best_algorithm_error(main: str, compare: Sequence[str]) -> str | None:
    """Why ``algorithm=best`` cannot run with these compilers, or None: it chooses each
    layer's algorithm by its tuned time, so the main compiler must tune and no other
    compiler of the point may take layer 4's algorithm without tuning it."""
    untuned = [c for c in compare if c != main and compiler_class(c).uses_algorithms]
    if compiler_class(main).tunes and not untuned:
        return None
    tuning = " or ".join(n for n in COMPILERS.names() if COMPILERS.get(n).tunes)
    here = f" (here: {', '.join(untuned)})" if untuned else ""
    return (
        "algorithm=best chooses each layer's algorithm by its tuned time: it needs "
        f"compiler={tuning} and no compiler that takes layer 4's algorithms untuned in "
        f"measure.compare{here} (got compiler={main}, measure.compare={list(compare)})"
    )
