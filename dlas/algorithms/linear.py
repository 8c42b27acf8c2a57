"""Linear layers: TVM's own ``relax.matmul`` legalization computes them (a dense layer is a
GEMM, nothing for layer 4 to choose); their schedule is ours.

The constant weight arrives as a ``(K, O)`` matrix (``x @ W^T`` folded at compile time), so
the output features are contiguous: one vector register holds ``lanes`` outputs of one row,
each input element is a broadcast, and the reduction over K runs with the accumulators in
registers. At batch 1 this is a GEMV that streams the weight matrix once, in parallel over
blocks of output features; rows (batch, or tokens) form the register tile's other axis.
"""

from __future__ import annotations

from tvm import tirx
from tvm.s_tir import Schedule
from tvm.s_tir.schedule import SBlockRV

from .schedule import (
    Knobs,
    ScheduleError,
    Tile,
    largest_divisor,
    schedules_anchor,
    tile_anchor,
)


@schedules_anchor("matmul")
def schedule_matmul(sch: Schedule, block: SBlockRV, knobs: Knobs) -> None:
    stmt = sch.get(block)
    n_spatial = sum(iv.iter_type == tirx.IterVar.DataPar for iv in stmt.iter_vars)
    if n_spatial < 2 or n_spatial == len(stmt.iter_vars):
        raise ScheduleError(f"matmul block with {len(stmt.iter_vars)} axes is not a GEMM")
    loops = sch.get_loops(block)
    lanes = knobs.lanes(str(stmt.writes[0].source.dtype))
    cols = knobs.extent(loops[n_spatial - 1])
    rows = knobs.extent(loops[n_spatial - 2])
    row_tile = largest_divisor(rows, knobs.accumulators() // 2)
    # A row segment of several vectors: several cache lines of each weight row per k.
    segment = largest_divisor(cols, lanes * max(1, knobs.accumulators() // row_tile))
    tile_anchor(
        sch,
        block,
        knobs,
        [
            Tile(n_spatial - 2, row_tile, max_inner=8),
            Tile(n_spatial - 1, segment, max_inner=lanes, vector=True, lanes=lanes),
        ],
    )
