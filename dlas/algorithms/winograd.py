"""Winograd minimal filtering F(m x m, 3 x 3) for 3x3, stride-1, dilation-1, ungrouped convs.

Why: each m x m output tile costs (m+2)^2 multiplications instead of 9*m^2 (2.25x fewer
for F(2x2), 4x fewer for F(4x4)), at the price of transforms and a little precision.

Why ours and not topi's: in TVM 0.27 ``topi.nn.conv2d_winograd_weight_transform`` asserts
on its dtype argument and returns (a, a, CO, CI) where
``conv2d_winograd_nchw_without_weight_transform`` reads (a, a, CI, CO) (wrong results).
Here the weight transform ``U = G g G^T`` is plain numpy, run once at compile time on
the constant weight, and the data layout of U is (a, a, CO, CI) on both sides.

Matrices from Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (2016).
F(4x4) is used when the output is at least 8x8 (fewer wasted tile rows on small maps).
"""

from __future__ import annotations

import numpy as np
from tvm import te, topi

from .common import Conv2dSpec, as_dtype, pad_nchw

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


def transform_weight(weight: np.ndarray, m: int) -> np.ndarray:
    """OIHW 3x3 -> U = G g G^T, laid out (alpha, alpha, O, C); computed in float64."""
    g = np.asarray(_MATRICES[m][1], dtype=np.float64)
    u = np.einsum("ar,ocrs,bs->aboc", g, weight.astype(np.float64), g)
    return np.ascontiguousarray(u.astype(weight.dtype))


def conv2d_winograd(
    data: te.Tensor, u: te.Tensor, spec: Conv2dSpec, out_dtype: str, m: int
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
    mm = te.compute(
        (alpha, alpha, batch, spec.out_channels, tiles_h, tiles_w),
        lambda eps, nu, n, o, th, tw: te.sum(
            as_dtype(u[eps, nu, o, rc], out_dtype) * v[eps, nu, n, rc, th, tw], axis=rc
        ),
        name="winograd_batched_gemm",
    )
    s1 = te.reduce_axis((0, alpha), name="s1")
    s2 = te.reduce_axis((0, alpha), name="s2")
    return te.compute(
        (batch, spec.out_channels, spec.out_height, spec.out_width),
        lambda n, o, y, x: te.sum(
            mm[s1, s2, n, o, y // m, x // m] * a[s1, y % m] * a[s2, x % m], axis=[s1, s2]
        ),
        name="conv2d_winograd",
        tag="conv2d_winograd",
    )
