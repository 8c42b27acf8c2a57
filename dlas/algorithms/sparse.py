"""Sparse weight formats: CSR and BSR (block CSR), as a sparse im2col GEMM.

Why: unstructured pruning zeroes weights but a dense kernel still multiplies by every
zero; only a format that does not store the zeros skips that work (DLAS's "sparse"
primitives). The weight matrix is the im2col GEMM's ``(O, K)`` matrix (or a linear
layer's ``(O, K)`` weight); each output channel is one sparse row, and its dot product
runs over that row's stored entries only, gathering the matching rows of the dense
operand (the im2col column matrix, or the activations of a linear layer).

- CSR stores single non-zeros: ``data[nnz]``, ``indices[nnz]`` (column k), ``indptr[O+1]``.
- BSR stores ``bs x bs`` blocks that hold at least one non-zero:
  ``data[nnzb, bs, bs]``, ``indices[nnzb]`` (block column), ``indptr[O/bs+1]``. Fewer index
  reads and dense inner blocks that vectorise, but explicit zeros inside kept blocks:
  it pays off only when pruning left whole blocks empty (block/structured pruning).

The arrays are built here in numpy at compile time and become Relax constants. Each row
loop runs to the static bound ``max_row`` (the longest row) and skips, by a guard, the
entries past its own row's end. Why not a data-dependent loop extent
(``indptr[o+1] - indptr[o]``), which TE accepts: MetaSchedule's CPU post-processor
``DisallowDynamicLoop`` rejects every schedule of such a loop, so the layer could never be
tuned; the static bound costs ``max_row / mean_row`` extra guarded iterations instead.
(``te.sum(..., where=...)`` would be the natural guard, but TVM 0.27's
``create_prim_func`` silently drops ``where``: wrong results. Hence ``if_then_else``.)

The loaded row pointers and column indices are clamped into range. On our arrays that
changes nothing; but MetaSchedule measures each candidate on *random* inputs, index
arrays included, and without the clamps every sparse candidate reads out of bounds and
fails, so sparse layers could never be tuned.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
from tvm import te, tirx
from tvm.ir import Expr
from tvm.s_tir import Schedule
from tvm.s_tir.schedule import SBlockRV

from .common import Conv2dSpec, as_dtype
from .im2col_gemm import im2col
from .schedule import Knobs, Tile, largest_divisor, schedules_anchor, tile_anchor

# operand(k, output_index) -> the dense value multiplied by weight[o, k] for that output.
Operand = Callable[[Expr, Sequence[Expr]], Expr]


class SparseMatrix(NamedTuple):
    """One CSR or BSR matrix as the three arrays that become Relax constants."""

    data: np.ndarray
    indices: np.ndarray
    indptr: np.ndarray

    @property
    def max_row(self) -> int:
        """Most entries (or blocks) in one row: the static bound of the row loop (>= 1)."""
        return max(1, int(np.diff(self.indptr).max(initial=0)))


class SparseTensors(NamedTuple):
    """The same matrix inside a TE compute: three tensors, the static row bound and the
    number of columns K of the dense matrix."""

    data: te.Tensor
    indices: te.Tensor
    indptr: te.Tensor
    max_row: int
    columns: int


def sparsity(weight: np.ndarray) -> float:
    """Fraction of exact zeros: what pruning left behind."""
    return float(np.count_nonzero(weight == 0)) / weight.size if weight.size else 0.0


def _sparse_matrix(data: np.ndarray, indices: np.ndarray, counts: np.ndarray) -> SparseMatrix:
    """Pack row counts into indptr, and pad data/indices with ``max_row`` unused entries.

    Why the padding: a row loop runs to the static ``max_row`` and guards reads past its
    row's end; should a schedule ever make those guarded reads speculative (vectorised
    selects), they still land inside the arrays. It also keeps an all-zero matrix from
    producing zero-length constants.
    """
    indptr = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    pad = max(1, int(counts.max(initial=0)))
    data = np.concatenate([data, np.zeros((pad, *data.shape[1:]), dtype=data.dtype)])
    indices = np.concatenate([indices, np.zeros(pad, dtype=np.int32)])
    return SparseMatrix(np.ascontiguousarray(data), indices, indptr)


def to_csr(matrix: np.ndarray) -> SparseMatrix:
    """Dense (O, K) -> CSR with int32 column indices and int64 row pointers."""
    rows, cols = np.nonzero(matrix)
    counts = np.bincount(rows, minlength=matrix.shape[0])
    return _sparse_matrix(matrix[rows, cols], cols.astype(np.int32), counts)


def to_bsr(matrix: np.ndarray, block: int) -> SparseMatrix:
    """Dense (O, K) -> BSR of ``block x block`` blocks; O and K must divide by ``block``."""
    o, k = matrix.shape
    blocks = matrix.reshape(o // block, block, k // block, block).transpose(0, 2, 1, 3)
    keep = np.any(blocks != 0, axis=(2, 3))  # (O/bs, K/bs)
    block_rows, block_cols = np.nonzero(keep)
    counts = keep.sum(axis=1)
    return _sparse_matrix(blocks[block_rows, block_cols], block_cols.astype(np.int32), counts)


def _clamp(value: Expr, high: int) -> Expr:
    return tirx.max(tirx.min(value, high), 0)


def _row_start(sparse: SparseTensors, row: Expr) -> Expr:
    """indptr[row], kept where ``max_row`` reads from it stay inside the (padded) arrays."""
    return _clamp(sparse.indptr[row], int(sparse.data.shape[0]) - sparse.max_row)


def csr_matmul(
    sparse: SparseTensors,
    out_shape: Sequence[Expr],
    row_axis: int,
    operand: Operand,
    out_dtype: str,
    name: str,
) -> te.Tensor:
    """out[idx] = sum over the stored entries j of row o = idx[row_axis]: data[j] * operand."""
    data, indices, indptr, max_row, columns = sparse

    def compute(*idx):
        row = idx[row_axis]
        start = _row_start(sparse, row)
        j = te.reduce_axis((0, max_row), name="j")
        column = _clamp(indices[start + j], columns - 1)
        product = as_dtype(data[start + j], out_dtype) * as_dtype(operand(column, idx), out_dtype)
        in_row = start + j < indptr[row + 1]
        return te.sum(tirx.if_then_else(in_row, product, tirx.const(0, out_dtype)), axis=j)

    return te.compute(tuple(out_shape), compute, name=name, tag=name)


def bsr_matmul(
    sparse: SparseTensors,
    out_shape: Sequence[Expr],
    row_axis: int,
    operand: Operand,
    out_dtype: str,
    name: str,
) -> te.Tensor:
    """Like ``csr_matmul``, over the ``bs x bs`` blocks of block row o // bs."""
    data, indices, indptr, max_row, columns = sparse
    block = int(data.shape[1])

    def compute(*idx):
        row = idx[row_axis]
        start = _row_start(sparse, row // block)
        j = te.reduce_axis((0, max_row), name="j")
        c = te.reduce_axis((0, block), name="c")
        column = _clamp(indices[start + j], columns // block - 1) * block + c
        product = as_dtype(data[start + j, row % block, c], out_dtype) * as_dtype(
            operand(column, idx), out_dtype
        )
        in_row = start + j < indptr[row // block + 1]
        return te.sum(tirx.if_then_else(in_row, product, tirx.const(0, out_dtype)), axis=[j, c])

    return te.compute(tuple(out_shape), compute, name=name, tag=name)


def _kernel(fmt: str) -> Callable[..., te.Tensor]:
    return {"csr": csr_matmul, "bsr": bsr_matmul}[fmt]


def conv2d_sparse(
    data: te.Tensor,
    weight: SparseTensors,
    spec: Conv2dSpec,
    out_dtype: str,
    fmt: str,
    pixels_contiguous: bool = True,
) -> te.Tensor:
    """Sparse (O, K) weight times the dense im2col matrix, written straight to NCHW.

    ``pixels_contiguous``: the column matrix as (K, P), so that one stored weight
    multiplies a contiguous vector of output pixels (the scheduled kernel); else (P, K),
    the plain loop nest's (each output's gathers stay inside one row)."""
    col = im2col(data, spec, transposed=pixels_contiguous)
    out_w = spec.out_width
    shape = (data.shape[0], spec.out_channels, spec.out_height, out_w)
    if pixels_contiguous:
        operand: Operand = lambda k, idx: col[idx[0], k, idx[2] * out_w + idx[3]]  # noqa: E731
    else:
        operand = lambda k, idx: col[idx[0], idx[2] * out_w + idx[3], k]  # noqa: E731
    return _kernel(fmt)(weight, shape, 1, operand, out_dtype, f"conv2d_{fmt}")


def dense_sparse(
    x: te.Tensor, weight: SparseTensors, out_features: int, out_dtype: str, fmt: str
) -> te.Tensor:
    """x[..., K] times a sparse (O, K) weight transposed: a linear layer without bias."""
    shape = (*x.shape[:-1], out_features)
    operand: Operand = lambda k, idx: x[(*idx[:-1], k)]  # noqa: E731
    return _kernel(fmt)(weight, shape, len(shape) - 1, operand, out_dtype, f"dense_{fmt}")


@schedules_anchor("conv2d_csr")
@schedules_anchor("conv2d_bsr")
def schedule_sparse_conv(sch: Schedule, block: SBlockRV, knobs: Knobs) -> None:
    """Each stored weight (or block row) times a vector of output pixels: loops
    (n, o, y, x | j [, c]) with x in a vector (the (K, P) column matrix makes it one
    contiguous load) and a few rows of the map in registers; each output channel's row
    pointer and indices are read once per tile and reused across its pixels. Output
    channels run in parallel (their rows differ in length: the balance is the sparsity's)."""
    lanes = knobs.lanes(str(sch.get(block).writes[0].source.dtype))
    _, _, y_loop, x_loop, *_ = sch.get_loops(block)
    width = knobs.extent(x_loop)
    vector = largest_divisor(width, lanes)
    rows = largest_divisor(
        knobs.extent(y_loop), max(1, knobs.accumulators() * lanes // vector // 4)
    )
    tile_anchor(
        sch,
        block,
        knobs,
        [Tile(2, rows, max_inner=8), Tile(3, vector, max_inner=lanes, vector=True)],
    )
