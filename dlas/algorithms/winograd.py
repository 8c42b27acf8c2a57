"""Winograd minimal filtering F(m x m, 3 x 3) for 3x3, stride-1, dilation-1, ungrouped convs.

Why: each m x m output tile costs (m+2)^2 multiplications instead of 9*m^2 (2.25x fewer
for F(2x2), 4x fewer for F(4x4)), at the price of transforms and a little precision.

Why ours and not topi's: in TVM 0.27 ``topi.nn.conv2d_winograd_weight_transform`` asserts
on its dtype argument and returns (a, a, CO, CI) where
``conv2d_winograd_nchw_without_weight_transform`` reads (a, a, CI, CO) (wrong results).
Here the weight transform ``U = G g G^T`` is plain numpy, run once at compile time on
the constant weight, and the data layout of U is (a, a, CI, CO) on both sides: output
channels contiguous, so the batched GEMM's micro-kernel loads one vector of them per
input channel, and writes its product M as (a, a, N, tiles_h, tiles_w, CO) for the same
reason.

Matrices from Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (2016).
F(4x4) is used when the output is at least 8x8 (fewer wasted tile rows on small maps).
"""

from __future__ import annotations

import numpy as np
from tvm import te, topi
from tvm.s_tir import Schedule
from tvm.s_tir.schedule import SBlockRV

from .common import Conv2dSpec, as_dtype, pad_nchw
from .schedule import Knobs, Tile, get_block, schedules_anchor, tile_anchor

# (B^T, G, A^T) for F(m, 3), keyed by the output tile size m.
_MATRICES: dict[int, tuple[list[list[float]], ...]] = {
    2: (
        [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
        [[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]],
        [[1, 1, 1, 0], [0, 1, -1, -1]],
    ),
    4: (
        [
            [4, 0, -5, 0, 1, 0],
            [0, -4, -4, 1, 1, 0],
            [0, 4, -4, -1, 1, 0],
            [0, -2, -1, 2, 1, 0],
            [0, 2, -1, -2, 1, 0],
            [0, 4, 0, -5, 0, 1],
        ],
        [
            [1 / 4, 0, 0],
            [-1 / 6, -1 / 6, -1 / 6],
            [-1 / 6, 1 / 6, -1 / 6],
            [1 / 24, 1 / 12, 1 / 6],
            [1 / 24, -1 / 12, 1 / 6],
            [0, 0, 1],
        ],
        [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
    ),
}


def applicable(spec: Conv2dSpec) -> str | None:
    """None if this layer can use Winograd, else the reason it cannot."""
    if (spec.kernel_h, spec.kernel_w) != (3, 3):
        return f"winograd needs a 3x3 kernel, not {spec.kernel_h}x{spec.kernel_w}"
    if spec.stride != (1, 1):
        return f"winograd needs stride 1, not {spec.stride}"
    if spec.dilation != (1, 1):
        return f"winograd needs dilation 1, not {spec.dilation}"
    if spec.groups != 1:
        return f"winograd needs groups=1, not {spec.groups}"
    return None


def tile_size(spec: Conv2dSpec) -> int:
    """m of F(m x m, 3 x 3): 4 on maps of at least 8x8, else 2."""
    return 4 if min(spec.out_height, spec.out_width) >= 8 else 2


def transform_weight(weight: np.ndarray, m: int, channels_last: bool = True) -> np.ndarray:
    """OIHW 3x3 -> U = G g G^T, laid out (alpha, alpha, C, O) (``channels_last``: output
    channels contiguous, for the scheduled GEMM) or (alpha, alpha, O, C) (the plain loop
    nest's, reduction contiguous); computed in float64."""
    g = np.asarray(_MATRICES[m][1], dtype=np.float64)
    layout = "ar,ocrs,bs->abco" if channels_last else "ar,ocrs,bs->aboc"
    u = np.einsum(layout, g, weight.astype(np.float64), g)
    return np.ascontiguousarray(u.astype(weight.dtype))


def conv2d_winograd(
    data: te.Tensor,
    u: te.Tensor,
    spec: Conv2dSpec,
    out_dtype: str,
    m: int,
    channels_last: bool = True,
) -> te.Tensor:
    """Input transform V = B^T d B, batched GEMM M = U V over channels, output A^T M A."""
    b_t, _, a_t = (np.asarray(x, dtype=np.float64) for x in _MATRICES[m])
    alpha = m + 2
    b = topi.utils.const_matrix(b_t.T.astype(out_dtype), "B")  # b[r, eps] = B^T[eps, r]
    a = topi.utils.const_matrix(a_t.T.astype(out_dtype), "A")  # a[r, v] = A^T[v, r]
    batch = data.shape[0]
    tiles_h = -(-spec.out_height // m)
    tiles_w = -(-spec.out_width // m)
    # Pad so that every tile, including the last partial one, reads in-bounds zeros.
    padded = pad_nchw(
        data,
        spec,
        extra_bottom=tiles_h * m - spec.out_height,
        extra_right=tiles_w * m - spec.out_width,
    )

    r1 = te.reduce_axis((0, alpha), name="r1")
    r2 = te.reduce_axis((0, alpha), name="r2")
    v = te.compute(
        (alpha, alpha, batch, spec.in_channels, tiles_h, tiles_w),
        lambda eps, nu, n, c, th, tw: te.sum(
            as_dtype(padded[n, c, th * m + r1, tw * m + r2], out_dtype) * b[r1, eps] * b[r2, nu],
            axis=[r1, r2],
        ),
        name="winograd_input_transform",
    )
    rc = te.reduce_axis((0, spec.in_channels), name="rc")
    if channels_last:  # M as (a, a, N, tiles_h, tiles_w, O): one vector of channels
        mm = te.compute(
            (alpha, alpha, batch, tiles_h, tiles_w, spec.out_channels),
            lambda eps, nu, n, th, tw, o: te.sum(
                as_dtype(u[eps, nu, rc, o], out_dtype) * v[eps, nu, n, rc, th, tw], axis=rc
            ),
            name="winograd_batched_gemm",
        )

        def product(n, o, th, tw, s1, s2):
            return mm[s1, s2, n, th, tw, o]
    else:  # the plain loop nest's (a, a, N, O, tiles_h, tiles_w)
        mm = te.compute(
            (alpha, alpha, batch, spec.out_channels, tiles_h, tiles_w),
            lambda eps, nu, n, o, th, tw: te.sum(
                as_dtype(u[eps, nu, o, rc], out_dtype) * v[eps, nu, n, rc, th, tw], axis=rc
            ),
            name="winograd_batched_gemm",
        )

        def product(n, o, th, tw, s1, s2):
            return mm[s1, s2, n, o, th, tw]

    s1 = te.reduce_axis((0, alpha), name="s1")
    s2 = te.reduce_axis((0, alpha), name="s2")
    return te.compute(
        (batch, spec.out_channels, spec.out_height, spec.out_width),
        lambda n, o, y, x: te.sum(
            product(n, o, y // m, x // m, s1, s2) * a[s1, y % m] * a[s2, x % m], axis=[s1, s2]
        ),
        name="conv2d_winograd",
        tag="conv2d_winograd",
    )


@schedules_anchor("winograd_batched_gemm", owns=("winograd_input_transform",))
def schedule_winograd(sch: Schedule, block: SBlockRV, knobs: Knobs) -> None:
    """Three stages, each its own parallel nest: the input transform (per tile, all of
    ``B^T d B`` unrolled so the zeros of B fold away), the batched GEMM as a micro-kernel
    (``lanes`` output channels of U per vector x a register tile of Winograd tiles, per
    (eps, nu)), and the output transform ``A^T M A`` tiled the same way with the epilogue
    fused into it."""
    _schedule_input_transform(sch, knobs)
    gemm = block
    lanes = knobs.lanes(str(sch.get(gemm).writes[0].source.dtype))
    _, _, _, th_loop, tw_loop, _, _ = sch.get_loops(gemm)
    rows, cols = knobs.pixel_tile(knobs.extent(th_loop), knobs.extent(tw_loop))
    tile_anchor(
        sch,
        gemm,
        knobs,
        [
            Tile(3, rows, max_inner=8),
            Tile(4, cols, max_inner=16),
            Tile(5, lanes, max_inner=lanes, vector=True),
        ],
    )
    out = get_block(sch, "conv2d_winograd")
    _, _, y_loop, x_loop, _, _ = sch.get_loops(out)
    rows, cols = knobs.pixel_tile(knobs.extent(y_loop), knobs.extent(x_loop))
    tile_anchor(
        sch,
        out,
        knobs,
        [
            Tile(1, lanes, max_inner=lanes, vector=True),
            Tile(2, rows, max_inner=8),
            Tile(3, cols, max_inner=16),
        ],
    )


def _schedule_input_transform(sch: Schedule, knobs: Knobs) -> None:
    """(n, c, th, tw) in parallel; per tile, eps, nu, r1, r2 fully unrolled: B is a
    constant matrix, so unrolled its zero and +-1 entries cost nothing."""
    block = get_block(sch, "winograd_input_transform")
    eps, nu, n, c, th, tw, r1, r2 = sch.get_loops(block)
    sch.reorder(n, c, th, tw, eps, nu, r1, r2)
    for loop in (eps, nu, r1, r2):
        sch.unroll(loop)
    fused = sch.fuse(n, c)
    if knobs.cores > 1:
        sch.parallel(fused)
