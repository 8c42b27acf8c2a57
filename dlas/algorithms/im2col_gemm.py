"""im2col + GEMM: lower the convolution to one matrix multiplication.

Why: a GEMM is the kernel every BLAS and every auto-scheduler knows how to make fast,
and it is the shape the sparse formats need (a sparse weight *matrix* times a dense
one). The price is memory: the im2col tensor repeats each input pixel kh*kw times.
Both steps are explicit TE stages so that the untuned code really materialises the
column matrix (as Caffe-style im2col does) and a tuner can still decide to inline it.

Layouts: column matrix ``(N, OH*OW, K)`` with ``K = C*kh*kw``, contiguous along K, so a
sparse weight row's gathers stay inside one column-matrix row. The dense weight is packed
at compile time in BLAS-style panels ``(O/VC, K, VC)``, VC = the target's vector lanes:
the schedule's micro-kernel loads VC output channels' weights for one k as one vector. The
sparse formats keep the ``(O, K)`` row-major matrix (``weight_matrix``), one sparse row
per output channel.
"""

from __future__ import annotations

import numpy as np
from tvm import te
from tvm.s_tir import Schedule
from tvm.s_tir.schedule import SBlockRV

from .common import Conv2dSpec, as_dtype, pad_nchw
from .schedule import Knobs, Tile, largest_divisor, schedules_anchor, tile_anchor


def weight_matrix(weight: np.ndarray) -> np.ndarray:
    """OIHW -> (O, C*kh*kw): the same element order im2col uses for its K axis."""
    return np.ascontiguousarray(weight.reshape(weight.shape[0], -1))


def im2col(data: te.Tensor, spec: Conv2dSpec, transposed: bool = False) -> te.Tensor:
    """col[n, p, k] (or, ``transposed``, col[n, k, p]): p = (y, x) flattened, k = (c, r, s)
    flattened (groups must be 1)."""
    padded = pad_nchw(data, spec)
    kh, kw, out_w = spec.kernel_h, spec.kernel_w, spec.out_width
    (sh, sw), (dh, dw) = spec.stride, spec.dilation

    def compute(n, p, k):
        c, r, s = k // (kh * kw), k % (kh * kw) // kw, k % kw
        y, x = p // out_w, p % out_w
        return padded[n, c, y * sh + r * dh, x * sw + s * dw]

    pixels = spec.out_height * out_w
    if transposed:
        shape = (data.shape[0], spec.reduction, pixels)
        return te.compute(shape, lambda n, k, p: compute(n, p, k), name="im2col", tag="im2col")
    shape = (data.shape[0], pixels, spec.reduction)
    return te.compute(shape, compute, name="im2col", tag="im2col")


def panel_width(out_channels: int, lanes: int) -> int:
    """Output channels per packed weight panel: one vector register's lanes, or the largest
    divisor of O below that (no tail panel)."""
    return largest_divisor(out_channels, lanes)


def gemm_weight(weight: np.ndarray, panel: int) -> np.ndarray:
    """OIHW -> (O/panel, C*kh*kw, panel): the dense GEMM's packed B matrix, BLAS-style.
    Within a panel the output channels are contiguous (one vector load per k), and one
    panel's whole K is one contiguous stream (no page-strided walk down a (K, O) matrix)."""
    o = weight.shape[0]
    wmat = weight_matrix(weight)
    return np.ascontiguousarray(wmat.reshape(o // panel, panel, -1).transpose(0, 2, 1))


def conv2d_im2col_gemm(
    data: te.Tensor, wmat: te.Tensor, spec: Conv2dSpec, out_dtype: str
) -> te.Tensor:
    """out[n, o, y, x] = sum_k col[n, y*OW + x, k] * W[k, o]: one GEMM of the (P, K) column
    matrix by the (K, O) weight matrix (packed in panels, ``gemm_weight``), its M axis (P)
    indexed as (y, x) so the result is NCHW without a copy."""
    col = im2col(data, spec)
    panel = int(wmat.shape[2])
    k = te.reduce_axis((0, spec.reduction), name="k")
    out_w = spec.out_width
    return te.compute(
        (data.shape[0], spec.out_channels, spec.out_height, out_w),
        lambda n, o, y, x: te.sum(
            as_dtype(col[n, y * out_w + x, k], out_dtype)
            * as_dtype(wmat[o // panel, k, o % panel], out_dtype),
            axis=k,
        ),
        name="gemm",
        tag="conv2d_im2col_gemm",
        attrs={"panel": panel},
    )


@schedules_anchor("gemm")
def schedule_gemm(sch: Schedule, block: SBlockRV, knobs: Knobs) -> None:
    """A BLAS-style micro-kernel: ``lanes`` output channels (one contiguous vector of the
    packed weight matrix per k) x up to half the vector registers' worth of pixels (each a
    broadcast of one column-matrix entry), accumulated in registers over all of K; the
    im2col stage before it is a parallel, vectorized copy."""
    lanes = int(sch.get(block).annotations.get("panel", 1))
    _, o_loop, y_loop, x_loop, _ = sch.get_loops(block)
    height, width = knobs.extent(y_loop), knobs.extent(x_loop)
    rows, cols = knobs.pixel_tile(height, width)
    tile_anchor(
        sch,
        block,
        knobs,
        [
            Tile(1, lanes, max_inner=lanes, vector=True),  # one packed panel
            Tile(2, rows, max_inner=8),
            Tile(3, cols, max_inner=16),
        ],
    )
