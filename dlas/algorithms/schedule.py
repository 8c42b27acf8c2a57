"""What every layer-4 schedule shares: knobs with target-derived defaults, and the few
moves every CPU convolution schedule makes (register tile, vectorize, parallelize, fuse the
epilogue into the tile).

Why a template with knobs and not fixed schedules: DLAS's "untuned" code was each
primitive's hand-written schedule run with its *default* knob values (AutoTVM's fallback
configs), and "tuned" was a search over the same code. Here a knob is one call of
:meth:`Knobs.split`: untuned it splits by the default the target suggests (vector lanes
from the ISA, register block sizes that fit its register file); tunable it samples the
factor with ``sample_perfect_tile``, so MetaSchedule's evolutionary search mutates exactly
the knobs the template exposes and replays the winner from its database.

Defaults follow TOPI's x86 fallback logic: the innermost tile is one vector (16 fp32 lanes
on AVX-512, 8 on AVX2, 4 on SSE), the register tile keeps ``regs`` accumulator vectors live,
and the outer loops are fused and run in parallel over the target's cores.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import tvm
from tvm import tirx
from tvm.s_tir import Schedule
from tvm.s_tir.schedule import LoopRV, SBlockRV

from dlas.identity import TEMPLATE_VERSION

#: Anchor block name -> the schedule of the layer-4 compute that produces it. Filled where
#: each schedule is defined (``@schedules_anchor("conv2d_direct")``), read by the compiler
#: layer's default-schedule pass and by its MetaSchedule search space.
ANCHORS: dict[str, Callable[[Schedule, SBlockRV, Knobs], None]] = {}
#: Producer stages (before the anchor) that an anchor's schedule handles itself; every
#: other producer (padding, packing, im2col) gets the generic :func:`schedule_stage`.
OWN_STAGES: set[str] = set()


def schedules_anchor(name: str, owns: tuple[str, ...] = ()) -> Callable[[Callable], Callable]:
    """Register a schedule for the kernels whose anchor (main compute) block is ``name``
    (and which schedules the producer stages ``owns`` itself). It is called with the
    schedule, the anchor block and the knobs."""

    def register(fn: Callable) -> Callable:
        ANCHORS[name] = fn
        OWN_STAGES.update(owns)
        return fn

    return register


class ScheduleError(ValueError):
    """A knob cannot apply to a layer (a tile that does not divide, a missing block):
    the point fails with the layer and the reason, never a silent fall-back."""


def vector_bits(target: tvm.target.Target) -> int:
    """SIMD register width the target's ISA gives (AVX-512 512, AVX/AVX2 256, else 128).

    Read from the target's features, not ``llvm_get_vector_width`` (which reports the
    host's width whatever ``mcpu`` says, so an AVX2 preset would get AVX-512 defaults)."""
    for feature, bits in (("avx512f", 512), ("avx2", 256), ("avx", 256)):
        if has_feature(target, feature):
            return bits
    return 128  # SSE, or not x86 (aarch64 NEON)


def target_lanes(dtype: str) -> int:
    """Vector lanes of ``dtype`` on the target being compiled for (``with target:``), for
    the data layouts chosen at legalization (packed panels, spatial-pack tiles); an AVX2
    width when no target is current."""
    target = tvm.target.Target.current(allow_none=True)
    bits = vector_bits(target) if target is not None else 256
    return max(1, bits // tvm.runtime.DataType(dtype).bits)


def target_has(feature: str) -> bool:
    """Whether the target being compiled for (``with target:``) has an ISA feature."""
    target = tvm.target.Target.current(allow_none=True)
    return target is not None and has_feature(target, feature)


def has_feature(target: tvm.target.Target, feature: str) -> bool:
    from tvm.target.codegen import target_has_features

    try:
        return target.kind.name == "llvm" and bool(target_has_features(feature, target))
    except Exception:  # noqa: BLE001 - TVM raises several types for a foreign target
        return False


def target_cores(target: tvm.target.Target) -> int:
    from dlas.hardware.threads import available_cores

    cores = target.attrs.get("num-cores") if target.kind.name == "llvm" else None
    return int(cores) if cores else available_cores()


def largest_divisor(n: int, limit: int) -> int:
    """The largest divisor of ``n`` that is <= ``limit`` (>= 1)."""
    for d in range(max(1, min(n, limit)), 0, -1):
        if n % d == 0:
            return d
    return 1


@dataclass
class Knobs:
    """The knobs of one schedule: target-derived defaults, or sampled when ``tunable``.

    ``vector_bits`` and ``cores`` come from the target (see :func:`for_target`); every
    schedule asks for its splits through :meth:`split`, so one template serves the
    default schedule and MetaSchedule's search space.
    """

    sch: Schedule
    vector_bits: int
    cores: int
    tunable: bool = False

    @classmethod
    def for_target(cls, sch: Schedule, target: tvm.target.Target, tunable: bool) -> Knobs:
        return cls(sch, vector_bits(target), target_cores(target), tunable)

    def lanes(self, dtype: str) -> int:
        """Elements of ``dtype`` in one vector register."""
        return max(1, self.vector_bits // tvm.runtime.DataType(dtype).bits)

    def accumulators(self) -> int:
        """Vector accumulators a register tile may keep live: half the register file
        (AVX-512 has 32 vector registers, AVX2 and SSE 16), the rest for operands."""
        return 16 if self.vector_bits >= 512 else 8

    def split(self, loop: LoopRV, default: int, max_inner: int | None = None) -> list[LoopRV]:
        """Split ``loop`` into (outer, inner); the inner extent is ``default`` rounded down to
        a divisor of the extent (untuned), or a sampled divisor up to ``max_inner``."""
        extent = self.extent(loop)
        if self.tunable:
            cap = max(1, max_inner or default)
            factors = self.sch.sample_perfect_tile(loop, n=2, max_innermost_factor=cap)
            return list(self.sch.split(loop, factors=factors))
        inner = largest_divisor(extent, default)
        return list(self.sch.split(loop, factors=[None, inner]))

    def extent(self, loop: LoopRV) -> int:
        value = self.sch.get(loop).extent
        if not isinstance(value, tirx.IntImm):
            raise ScheduleError(f"loop extent {value} is not static")
        return int(value)

    def pixel_tile(self, height: int, width: int, max_cols: int | None = None) -> tuple[int, int]:
        """(rows, cols) of output pixels a register tile holds, one accumulator vector
        each: columns first (up to ``max_cols``), then rows, within :meth:`accumulators`;
        divisors of the map, so no tail."""
        pixels = self.accumulators()
        cols = largest_divisor(width, min(max_cols or pixels, pixels))
        return largest_divisor(height, max(1, pixels // cols)), cols

    def unroll_step(self) -> int | object:
        """``pragma_auto_unroll_max_step`` for the reduction loop (0 = LLVM decides):
        16 untuned, one of 0 / 16 / 64 / 512 sampled."""
        if self.tunable:
            return self.sch.sample_categorical([0, 16, 64, 512], [0.25] * 4)
        return 16


def get_block(sch: Schedule, name: str) -> SBlockRV:
    try:
        return sch.get_sblock(name)
    except Exception as err:  # TVM raises its own error type for an unknown block
        raise ScheduleError(f"no block named {name!r} in the kernel") from err


def is_elementwise(sch: Schedule, block: SBlockRV) -> bool:
    """A block with only spatial iterators (injective: add, relu, requantize, reshape)."""
    stmt = sch.get(block)
    return all(iv.iter_type == tirx.IterVar.DataPar for iv in stmt.iter_vars)


def inline_epilogue(sch: Schedule, anchor: SBlockRV) -> SBlockRV | None:
    """Fold the elementwise blocks after ``anchor`` (bias, ReLU, residual add, unpacking,
    requantize, SiLU's ``x * sigmoid(x)``) into one block that reads the anchor's output
    directly; returns that last block, or None when the anchor writes the kernel's output
    itself.

    Every elementwise block between the anchor and the kernel's output is inlined into its
    consumers, so an epilogue shaped as a DAG (SiLU reads the biased value twice) fuses as
    well as a chain; the last one (the kernel output) is kept, to be computed inside the
    anchor's tile (:func:`fuse_epilogue`).
    """
    if not sch.get_consumers(anchor):
        return None
    name = sch.get(anchor).name_hint
    names = [sch.get(b).name_hint for b in root_blocks(sch)]
    after = [get_block(sch, n) for n in names[names.index(name) + 1 :]] if name in names else []
    if not after or not all(is_elementwise(sch, b) for b in after):
        return _inline_chain(sch, anchor)
    *middle, last = after
    if sch.get_consumers(last) or not all(sch.get_consumers(b) for b in middle):
        return _inline_chain(sch, anchor)  # a second output: not one epilogue block
    for block in middle:
        sch.compute_inline(block)  # a refusal fails the layer (ScheduleError upstream)
    return last


def _inline_chain(sch: Schedule, anchor: SBlockRV) -> SBlockRV | None:
    """The single-consumer elementwise chain after ``anchor``, inlined but for its last
    block (returned)."""
    consumers = sch.get_consumers(anchor)
    if not consumers:
        return None
    chain = []
    block = consumers[0]
    while True:
        if len(sch.get_consumers(anchor)) != 1 or not is_elementwise(sch, block):
            break
        chain.append(block)
        nxt = sch.get_consumers(block)
        if len(nxt) != 1:
            break
        block = nxt[0]
    if not chain:
        return None
    *middle, last = chain
    for block in middle:
        sch.compute_inline(block)
    return last


def fuse_epilogue(
    sch: Schedule, epilogue: SBlockRV | None, at: LoopRV, knobs: Knobs, anchor: SBlockRV
) -> None:
    """Compute the epilogue tile right after the accumulator tile it reads (under loop
    ``at``), while it is still in cache, and vectorize its innermost loop.

    Elementwise side inputs of the epilogue computed in the same kernel (an int8 residual
    dequantized before it is added) are inlined into it first, so the tile computes them
    too. One that cannot be (it feeds other blocks too) leaves the epilogue as a stage of
    its own after the nest, with the generic parallel, vectorized schedule.
    """
    if epilogue is None:
        return
    name = sch.get(anchor).name_hint
    for producer in sch.get_producers(epilogue):
        if sch.get(producer).name_hint != name and is_elementwise(sch, producer):
            with contextlib.suppress(Exception):  # a failed primitive changes nothing
                sch.compute_inline(producer)
    try:
        sch.reverse_compute_at(epilogue, at, preserve_unit_loops=True)
    except Exception:  # noqa: BLE001 - a producer outside the tile: not fusable
        schedule_stage(sch, epilogue, knobs)
        return
    dtype = str(sch.get(epilogue).writes[0].source.dtype)
    vectorize_inner(sch, epilogue, knobs.lanes(dtype))


def vectorize_inner(sch: Schedule, block: SBlockRV, lanes: int) -> None:
    """Vectorize the innermost spatial loop of ``block`` by up to ``lanes`` (a divisor of
    its extent, so no tail), when that loop is longer than 1."""
    loops = sch.get_loops(block)
    if not loops:
        return
    inner = loops[-1]
    extent = sch.get(inner).extent
    if not isinstance(extent, tirx.IntImm) or int(extent) < 2:
        return
    stmt = sch.get(block)
    if any(iv.iter_type != tirx.IterVar.DataPar for iv in stmt.iter_vars):
        return
    factor = largest_divisor(int(extent), lanes)
    if factor < 2:
        return
    if factor < int(extent):
        inner = sch.split(inner, factors=[None, factor])[1]
    sch.vectorize(inner)


def parallel_outer(sch: Schedule, loops: list[LoopRV], cores: int, grain: int = 4) -> list[LoopRV]:
    """Fuse leading loops until there are ``grain`` x ``cores`` iterations to share, then
    mark the fused loop parallel (one fork/join per kernel, work balanced across cores).
    Returns the loops that remain: the fused one, then those not fused."""
    take, total = [], 1
    for loop in loops:
        take.append(loop)
        extent = sch.get(loop).extent
        total *= int(extent) if isinstance(extent, tirx.IntImm) else 1 << 20
        if total >= grain * cores:
            break
    fused = sch.fuse(*take) if len(take) > 1 else take[0]
    if cores > 1:
        sch.parallel(fused)
    return [fused, *loops[len(take) :]]


def schedule_stage(sch: Schedule, block: SBlockRV, knobs: Knobs) -> None:
    """The generic default for a kernel's non-anchor stages and for every kernel that is
    no layer-4 compute (padding, packing, pooling, add, concat, softmax, layout
    transforms): parallel outer loops, vectorized innermost spatial loop."""
    loops = sch.get_loops(block)
    if not loops:
        return
    stmt = sch.get(block)
    n_spatial = 0
    for iv in stmt.iter_vars:
        if iv.iter_type != tirx.IterVar.DataPar:
            break
        n_spatial += 1
    dtype = stmt.writes[0].source.dtype if stmt.writes else "float32"
    lanes = knobs.lanes(str(dtype))
    reduction = n_spatial < len(stmt.iter_vars)
    if not reduction:
        vectorize_inner(sch, block, lanes)
        loops = sch.get_loops(block)
        outer = loops[:-1] if len(loops) > 1 and _is_vectorized(sch, loops[-1]) else loops
    else:
        outer = loops[:n_spatial] if len(loops) >= n_spatial else loops
    if outer and knobs.cores > 1:
        parallel_outer(sch, outer, knobs.cores)


def inline_injective(sch: Schedule) -> None:
    """Compute every injective intermediate of a kernel inside its consumer, so that a
    fused chain (concat, then a BatchNorm's subtract, divide, multiply, add, then ReLU) is
    one pass over memory and one fork/join, not one per op. TVM's FuseOps groups such
    chains into one kernel but legalizes each op to its own loop nest; without this, each
    writes an intermediate buffer (densenet121's 58 concat-BN-ReLU kernels ran 6 parallel
    loops each). A block that cannot be inlined (it writes the kernel's output, or a
    reduction reads it) keeps its own loop nest."""
    for block in root_blocks(sch)[:-1]:
        consumers = sch.get_consumers(block)
        # Only into elementwise consumers: inlined into a reduction (padding into a pool
        # window, exp into softmax's sum and its normalization) it would be recomputed.
        if (
            is_elementwise(sch, block)
            and consumers
            and all(is_elementwise(sch, c) for c in consumers)
        ):
            with contextlib.suppress(Exception):  # TVM's own error type: not inlinable
                sch.compute_inline(block)


def _is_vectorized(sch: Schedule, loop: LoopRV) -> bool:
    return sch.get(loop).kind == tirx.ForKind.VECTORIZED


def root_blocks(sch: Schedule) -> list[SBlockRV]:
    """The blocks directly under the kernel's root, in program order."""
    try:
        root = sch.get_sblock("root")
    except Exception:  # noqa: BLE001 - TVM's own error type: a kernel without a root
        return []
    return list(sch.get_child_blocks(root))


def is_scheduled(func: tirx.PrimFunc) -> bool:
    attrs = func.attrs
    return attrs is not None and "tirx.is_scheduled" in attrs and bool(attrs["tirx.is_scheduled"])


__all__ = [
    "ANCHORS",
    "TEMPLATE_VERSION",
    "OWN_STAGES",
    "schedules_anchor",
    "Knobs",
    "ScheduleError",
    "fuse_epilogue",
    "get_block",
    "inline_epilogue",
    "inline_injective",
    "Tile",
    "largest_divisor",
    "tile_anchor",
    "parallel_outer",
    "root_blocks",
    "schedule_stage",
    "vectorize_inner",
    "vector_bits",
]


@dataclass(frozen=True)
class Tile:
    """How one spatial loop of an anchor block is tiled: split into (outer, inner) with
    ``default`` inner extent (up to ``max_inner`` when sampled); the inner loop goes inside
    the reduction (register tile), vectorized if ``vector``. ``default=0``: the loop is a
    tile axis of the compute's own data layout already (spatial pack's vh, vw, vc) and
    moves inside whole."""

    loop: int
    default: int
    max_inner: int | None = None
    vector: bool = False
    #: vector tiles wider than one register: the inner loop is split again into
    #: (unrolled registers, ``lanes``), as a GEMV's row segment of several vectors
    lanes: int | None = None


def tile_anchor(
    sch: Schedule,
    anchor: SBlockRV,
    knobs: Knobs,
    tiles: list[Tile],
    *,
    accumulate_local: bool = True,
) -> LoopRV:
    """The register-tiled loop nest every conv/GEMM schedule here builds.

    The anchor's spatial loops are split per ``tiles``; the nest becomes
    ``[spatial outer] [reduction] [register inners] [vector inner]``: each output tile of
    ``prod(inner)`` values stays in registers across the whole reduction, reads of the
    operands are reused across the tile, and the vector loop maps to one SIMD register.
    The outer spatial loops are fused and run in parallel; the epilogue (bias, ReLU,
    residual add, unpacking) is computed per tile, straight from the accumulators.
    Returns the innermost outer spatial loop (where the epilogue is computed).
    """
    stmt = sch.get(anchor)
    kinds = [iv.iter_type for iv in stmt.iter_vars]
    loops = sch.get_loops(anchor)
    if len(loops) != len(kinds):
        raise ScheduleError(f"block {stmt.name_hint!r} is not a perfect loop nest")
    n_spatial = sum(k == tirx.IterVar.DataPar for k in kinds)
    spatial, reduction = list(loops[:n_spatial]), list(loops[n_spatial:])
    epilogue = inline_epilogue(sch, anchor)
    outer, inner, vector = list(spatial), [], None
    by_loop = {t.loop: t for t in tiles}
    vector_dim = next((t.loop for t in tiles if t.vector), None)
    for i, loop in enumerate(spatial):
        tile = by_loop.get(i)
        if tile is None:
            continue
        if tile.default == 0:
            o, n = None, loop
        else:
            o, n = knobs.split(loop, tile.default, tile.max_inner)
        outer[i] = o
        if tile.vector and tile.lanes and not knobs.tunable and knobs.extent(n) > tile.lanes:
            mid, n = sch.split(n, factors=[None, largest_divisor(knobs.extent(n), tile.lanes)])
            inner.append(mid)
        if tile.vector:
            vector = n
        else:
            inner.append(n)
    outer = [loop for loop in outer if loop is not None]
    order = outer + reduction + inner + ([vector] if vector is not None else [])
    sch.reorder(*order)
    step = knobs.unroll_step()
    if reduction and (knobs.tunable or step):
        sch.annotate(reduction[0], "pragma_auto_unroll_max_step", step)
        sch.annotate(reduction[0], "pragma_unroll_explicit", 1)
    for loop in inner:
        sch.unroll(loop)
    if vector is not None:
        sch.vectorize(vector)
    at = parallel_outer(sch, outer, knobs.cores)[-1]
    if accumulate_local:
        write_back = sch.cache_write(anchor, 0, "local")
        if vector_dim is not None and vector_dim != n_spatial - 1:
            # Accumulators laid out with the vector axis innermost: one register each.
            dims = list(range(n_spatial))
            dims.append(dims.pop(vector_dim))
            sch.transform_layout(anchor, ("write", 0), lambda *idx: [idx[d] for d in dims])
        if epilogue is not None:
            sch.compute_inline(write_back)
        else:
            epilogue = write_back
    fuse_epilogue(sch, epilogue, at, knobs, anchor)
    if reduction:
        sch.decompose_reduction(anchor, reduction[0])
    return at
