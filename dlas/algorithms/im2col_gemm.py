"""im2col + GEMM: lower the convolution to one matrix multiplication.

Why: a GEMM is the kernel every BLAS and every auto-scheduler knows how to make fast,
and it is the shape the sparse formats need (a sparse weight *matrix* times a dense
one). The price is memory: the im2col tensor repeats each input pixel kh*kw times.
Both steps are explicit TE stages so that the untuned code really materialises the
column matrix (as Caffe-style im2col does) and a tuner can still decide to inline it.

Layouts: weight matrix ``(O, K)`` with ``K = C*kh*kw`` (PyTorch's OIHW, flattened at
compile time); column matrix ``(N, OH*OW, K)``. Both are contiguous along K, the GEMM's
reduction and so the innermost loop of the untuned nest: each output is a dot product of
two contiguous rows (Caffe's ``(K, OH*OW)`` order strides by OH*OW there, which
thrashes the cache untuned), and a sparse row's gathers stay inside one column-matrix row.
"""

from __future__ import annotations

import numpy as np
from tvm import te

from .common import Conv2dSpec, as_dtype, pad_nchw


def weight_matrix(weight: np.ndarray) -> np.ndarray:
    """OIHW -> (O, C*kh*kw): the same element order im2col uses for its K axis."""
    return np.ascontiguousarray(weight.reshape(weight.shape[0], -1))


def im2col(data: te.Tensor, spec: Conv2dSpec) -> te.Tensor:
    """col[n, p, k]: p = (y, x) flattened, k = (c, r, s) flattened (groups must be 1)."""
    padded = pad_nchw(data, spec)
    kh, kw, out_w = spec.kernel_h, spec.kernel_w, spec.out_width
    (sh, sw), (dh, dw) = spec.stride, spec.dilation

    def compute(n, p, k):
        c, r, s = k // (kh * kw), k % (kh * kw) // kw, k % kw
        y, x = p // out_w, p % out_w
        return padded[n, c, y * sh + r * dh, x * sw + s * dw]

    shape = (data.shape[0], spec.out_height * out_w, spec.reduction)
    return te.compute(shape, compute, name="im2col", tag="im2col")


def conv2d_im2col_gemm(
    data: te.Tensor, wmat: te.Tensor, spec: Conv2dSpec, out_dtype: str
) -> te.Tensor:
    """out[n, o, p] = sum_k wmat[o, k] * col[n, p, k], then viewed back as NCHW."""
    col = im2col(data, spec)
    k = te.reduce_axis((0, spec.reduction), name="k")
    gemm = te.compute(
        (data.shape[0], spec.out_channels, col.shape[1]),
        lambda n, o, p: te.sum(
            as_dtype(wmat[o, k], out_dtype) * as_dtype(col[n, p, k], out_dtype), axis=k
        ),
        name="gemm",
        tag="gemm",
    )
    out_w = spec.out_width
    return te.compute(
        (data.shape[0], spec.out_channels, spec.out_height, out_w),
        lambda n, o, y, x: gemm[n, o, y * out_w + x],
        name="conv2d_im2col_gemm",
        tag="conv2d_im2col_gemm",
    )
