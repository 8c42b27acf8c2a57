"""Layer 4, "algorithms & data formats": how each convolution is computed, and how its
weights are stored.

``legalize_convs`` rewrites every ``relax.nn.conv2d`` of an imported model into a
``call_tir`` of one of our TE computes (and, for the sparse formats, every linear layer
with a constant weight), and reports per layer what it got and why:

- ``direct``: the plain loop nest, OIHW weights (also every grouped conv; depthwise ones
  channel-blocked, NCHW[vc]c, under the default schedules);
- ``gemm``: explicit im2col matrix times the (O, C*kh*kw) weight matrix;
- ``spatial_pack``: NCHW[x]c-style register tiles, kernel packed (O/VC, C, kh, kw, VC);
- ``winograd``: F(2x2 or 4x4, 3x3), weights pre-transformed; 3x3 stride-1 convs only.

``best`` is not a compute but a rule: every layer gets whichever of ``candidates`` ran
fastest once tuned (MetaSchedule times each candidate's kernel in place, epilogue
included; ``dlas.compiler.per_layer``), so it needs ``compiler=tvm_autoschedule``. The
legalization then takes one algorithm per layer.

Data formats: ``dense``; ``csr`` and ``bsr`` store only the (blocks of) non-zero weights
and run a sparse im2col GEMM, so they go with ``gemm`` only.

This module imports TVM lazily: configs can be validated with ``check_combination``
without paying TVM's import time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import tvm

ALGORITHMS = ("direct", "gemm", "spatial_pack", "winograd")
DATA_FORMATS = ("dense", "csr", "bsr")
# Algorithms that accept each data format (the sparse formats are a sparse im2col GEMM).
FORMAT_ALGORITHMS = {
    "dense": ALGORITHMS,
    "csr": ("gemm",),
    "bsr": ("gemm",),
}
# A fallback must handle any ungrouped conv: Winograd is what falls back, never the target.
FALLBACKS = ("direct", "gemm", "spatial_pack")
#: The per-layer choice among tuned candidates: a value of ``algorithm.name`` besides the
#: algorithms themselves.
BEST = "best"
CHOICES = (*ALGORITHMS, BEST)

__all__ = [
    "ALGORITHMS",
    "BEST",
    "CHOICES",
    "DATA_FORMATS",
    "Algorithm",
    "algorithm_label",
    "check_combination",
    "get_algorithm",
    "legalize_convs",
]


def check_combination(
    algorithm: str,
    data_format: str,
    fallback: str = "direct",
    candidates: Sequence[str] = ALGORITHMS,
) -> None:
    """Raise ValueError naming the bad value and the valid choices; called before any work."""
    if algorithm not in CHOICES:
        raise ValueError(f"unknown algorithm {algorithm!r}; valid algorithms: {', '.join(CHOICES)}")
    if algorithm == BEST:
        bad = [c for c in candidates if c not in ALGORITHMS]
        if bad or not candidates:
            raise ValueError(
                f"algorithm 'best': candidates {list(candidates)} must be a non-empty list of "
                f"{', '.join(ALGORITHMS)}"
            )
        if data_format != "dense":
            raise ValueError(
                f"algorithm 'best' chooses among dense algorithms, not data format "
                f"{data_format!r}: the sparse formats are a sparse im2col GEMM, use "
                f"algorithm=gemm algorithm.data_format={data_format}"
            )
    if data_format not in DATA_FORMATS:
        raise ValueError(
            f"unknown data format {data_format!r}; valid data formats: {', '.join(DATA_FORMATS)}"
        )
    if fallback not in FALLBACKS:
        raise ValueError(
            f"invalid fallback {fallback!r}; valid fallbacks: {', '.join(FALLBACKS)} "
            "(the fallback must handle every ungrouped conv, so it cannot be winograd)"
        )
    if algorithm != BEST and algorithm not in FORMAT_ALGORITHMS[data_format]:
        sparse = ", ".join(f for f in DATA_FORMATS if f != "dense")
        raise ValueError(
            f"algorithm {algorithm!r} does not support data format {data_format!r}: "
            f"the sparse formats ({sparse}) are a sparse im2col GEMM and are accepted only by "
            f"algorithm {', '.join(FORMAT_ALGORITHMS[data_format])!r}; with {algorithm!r} use "
            f"data format 'dense'. Valid algorithms: {', '.join(ALGORITHMS)}; valid data "
            f"formats: {', '.join(DATA_FORMATS)}"
        )


@dataclass(frozen=True)
class Algorithm:
    """Layer 4 of one point as a typed value, built once from ``conf/algorithm`` (its
    ``_target_`` is :func:`get_algorithm`) and checked in its constructor: the compiler
    gets this, never a raw config node."""

    name: str
    data_format: str = "dense"
    sparsity_threshold: float = 0.0
    block_size: int = 4
    fallback: str = "direct"
    #: ``best`` only: what each layer chooses among (first wins ties)
    candidates: tuple[str, ...] = ALGORITHMS

    def __post_init__(self) -> None:
        object.__setattr__(self, "candidates", tuple(self.candidates))
        check_combination(self.name, self.data_format, self.fallback, self.candidates)
        if not 0.0 <= self.sparsity_threshold <= 1.0:
            raise ValueError(
                f"algorithm.sparsity_threshold={self.sparsity_threshold} is outside [0, 1]"
            )
        if self.block_size < 1:
            raise ValueError(f"algorithm.block_size={self.block_size} must be >= 1")

    @property
    def label(self) -> str:
        return algorithm_label(self.name, self.data_format)


def algorithm_label(name: str, data_format: str) -> str:
    """``gemm``, or ``gemm+csr`` for a sparse format: what a run's ``algorithm_label``
    param says (``algorithm=csr`` is the preset of gemm on CSR weights, so its
    ``algorithm`` param alone reads ``gemm``)."""
    return name if data_format == "dense" else f"{name}+{data_format}"


def get_algorithm(name: str, **options: Any) -> Algorithm:
    """The layer-4 door (``conf/algorithm``'s ``_target_``)."""
    return Algorithm(name, **options)


def legalize_convs(
    mod: tvm.IRModule,
    algorithm: str,
    data_format: str = "dense",
    *,
    sparsity_threshold: float = 0.0,
    block_size: int = 4,
    fallback: str = "direct",
    per_layer: Sequence[str] = (),
    plain_layouts: bool = False,
) -> tuple[tvm.IRModule, list[dict]]:
    """Legalize every conv2d (and, for csr/bsr, every constant-weight linear) of ``mod``.

    ``mod`` comes from ``from_exported_program(ep, keep_params_as_input=False)``: weights
    must be constants for any layout change (else the layer falls back to ``direct``).
    Shapes must be static except the batch. Returns the new module and one record per
    layer: ``layer, op, shape, algorithm, requested, fallback_reason, format,
    weight_sparsity, kernel`` (fraction of exact zeros; None for a non-constant weight;
    ``kernel`` is the name of the PrimFunc the layer became).

    ``algorithm="best"`` takes the choice made per conv layer, in the order the records
    list them, from ``per_layer``.

    ``plain_layouts``: the data layouts the schedule-less loop nests were designed around
    (``compiler.schedule=none``: (O, K) GEMM weights, 8-channel spatial-pack blocks,
    Winograd's (a, a, O, C), a (P, K) sparse column matrix), so their numbers reproduce;
    otherwise the layouts the default schedules vectorize (one vector of output
    channels or pixels contiguous, sized by the current target's lanes).
    """
    check_combination(algorithm, data_format, fallback)
    if algorithm == BEST and not per_layer:
        raise ValueError(
            "algorithm 'best' needs the per-layer choice (dlas.compiler.per_layer makes it "
            "from tuned candidates)"
        )
    if not 0.0 <= sparsity_threshold <= 1.0:
        raise ValueError(f"sparsity_threshold must be in [0, 1], got {sparsity_threshold}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")

    from .legalize import Options, legalize

    opts = Options(
        algorithm,
        data_format,
        sparsity_threshold,
        block_size,
        fallback,
        tuple(per_layer),
        plain_layouts,
    )
    return legalize(mod, opts)
