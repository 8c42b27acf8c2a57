"""Graph folds of ours that TVM's Relax pipeline does not do, each exact in real arithmetic.

Both exist because weights are constants at compile time, so work that depends on the
weights alone can be done once by the compiler instead of on every inference:

* ``fold_conv_bias_into_batchnorm``: a conv with a bias followed by BatchNorm (VGG-BN)
  is ``BN(conv(x) + b)``, which Relax's ``FoldBatchnormToConv2D`` does not match; with
  the bias moved into the BatchNorm's mean (``BN(conv(x))`` with ``mean - b``) it does,
  and the conv ends as conv + one bias add that fuses with its ReLU, instead of carrying
  five per-channel elementwise ops.
* ``fold_replicated_linear``: torchvision's classifiers pool to a fixed grid before the
  first linear layer (VGG: ``AdaptiveAvgPool2d((7, 7))``). When the feature map reaching
  it is already 1x1 (any ImageNet-stem VGG on 32x32 inputs), the pool only replicates each
  channel 49 times, and ``W @ repeat(x)`` equals ``(W summed over the 49 copies) @ x``.
  The compiler sums the weight blocks once: VGG-16's first linear layer shrinks from a
  25088x4096 matrix (411 MB streamed per inference) to 512x4096 (8 MB).
* ``crop_padding_only_taps``: a kernel tap (row or column of a conv's window) that, for
  every output pixel, lands on the zero padding only multiplies zeros. On small maps that
  is most of the weights: a ResNet's last stage sees a 1x1 map at 32x32 inputs (ImageNet
  stem), where each 3x3 conv with padding 1 reads only its centre tap, i.e. it streams
  9x the weights it needs (9.4 MB instead of 1 MB per 512-channel conv). The compiler
  keeps the taps that reach the input and shrinks the padding to match; the output shape
  and values do not change (the dropped products were exact zeros). int8 convs pad with
  their zero point, not with zeros: ``dlas.compiler.int8`` crops them where it imports
  them, before the zero-point padding and correction are emitted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import tvm
from tvm import relax
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

from dlas.algorithms.legalize import static_ints


def _function_pass(name: str, rewrite: Any) -> tvm.transform.Pass:
    """A named pass applying ``rewrite`` to every Relax function."""

    @relax.transform.function_pass(opt_level=0, name=name)
    def apply(func: relax.Function, _mod: tvm.IRModule, _ctx: Any) -> relax.Function:
        return rewrite(func)

    return apply


def fold_conv_bias_into_batchnorm() -> tvm.transform.Pass:
    """``BN(conv(x) + b)`` -> ``BN'(conv(x))`` with ``mean' = mean - b`` (exact)."""
    conv = is_op("relax.nn.conv2d")(wildcard(), is_const())
    bias = is_const()
    gamma, beta, mean, var = is_const(), is_const(), is_const(), is_const()
    biased = is_op("relax.add")(conv, bias)
    pattern = is_op("relax.nn.batch_norm")(biased, gamma, beta, mean, var)

    def rewriter(call: relax.Call, m: dict) -> relax.Expr:
        b, mu = m[bias].value.numpy(), m[mean].value.numpy()
        if call.attrs.axis != 1 or b.size != mu.shape[0]:  # not a per-output-channel bias
            return call
        shifted = mu - b.reshape(mu.shape)
        return relax.Call(
            call.op, [m[conv], m[gamma], m[beta], relax.const(shifted), m[var]], call.attrs
        )

    return _function_pass(
        "fold_conv_bias_into_batchnorm", lambda f: rewrite_call(pattern, rewriter, f)
    )


def fold_replicated_linear() -> tvm.transform.Pass:
    """``matmul(flatten(adaptive_avg_pool2d(x -> HxW)), W)`` on a 1x1 ``x`` ->
    ``matmul(flatten(x), W summed over its H*W replicated rows)`` (exact)."""
    x = wildcard()
    pool = is_op("relax.nn.adaptive_avg_pool2d")(x)
    flat = is_op("relax.reshape")(pool, wildcard())
    weight = is_const()
    pattern = is_op("relax.matmul")(flat, weight)

    def rewriter(call: relax.Call, m: dict) -> relax.Expr:
        pooled, w = m[pool], m[weight].value.numpy()  # w: (C * H * W, out), channel-major
        shape, grid, flat_shape = (
            static_ints(getattr(e.ty, "shape", None)) for e in (m[x], pooled, m[flat])
        )
        if (
            shape is None
            or grid is None
            or len(shape) != 4
            or shape[2:] != [1, 1]  # a 1x1 map: the pool only replicates it
            or (pooled.attrs.layout, pooled.attrs.out_layout) != ("NCHW", "NCHW")
            or w.dtype.kind != "f"  # int8 weight sums would overflow
            or w.ndim != 2
            or w.shape[0] != grid[1] * grid[2] * grid[3]
            or flat_shape != [grid[0], w.shape[0]]  # the flatten of the pooled map
        ):
            return call
        n, c = shape[:2]
        folded = w.reshape(c, grid[2] * grid[3], w.shape[1]).sum(axis=1, dtype=np.float64)
        flat_x = relax.op.reshape(m[x], (n, c))
        return relax.op.matmul(
            flat_x, relax.const(folded.astype(w.dtype)), out_dtype=call.attrs.out_dtype
        )

    return _function_pass("fold_replicated_linear", lambda f: rewrite_call(pattern, rewriter, f))


def live_taps(size: int, pad_lo: int, pad_hi: int, kernel: int, stride: int, dilation: int):
    """Along one spatial axis: ``(first, last, new_pad_lo, new_pad_hi)`` of the taps that
    read the input for some output position, or None when every tap does or no exact
    crop exists (a gap between live taps, or a crop that would need negative padding)."""
    out = (size + pad_lo + pad_hi - dilation * (kernel - 1) - 1) // stride + 1
    live = [
        k
        for k in range(kernel)
        if any(0 <= o * stride - pad_lo + k * dilation < size for o in range(out))
    ]
    if not live or len(live) == kernel or live != list(range(live[0], live[-1] + 1)):
        return None
    first, last = live[0], live[-1]
    lo = pad_lo - first * dilation
    # the least bottom padding that still reaches the last output's window; any of the
    # next stride - 1 values gives the same output length (the division floors)
    hi = max(0, (out - 1) * stride + dilation * (last - first) + 1 - size - lo)
    if lo < 0 or (size + lo + hi - dilation * (last - first) - 1) // stride + 1 != out:
        return None
    return first, last, lo, hi


def crop_kernel(
    w: np.ndarray,
    size: Sequence[int],
    padding: Sequence[int],
    strides: Sequence[int],
    dilation: Sequence[int],
) -> tuple[np.ndarray, tuple[int, int, int, int]] | None:
    """An OIHW kernel cut to its live taps on a ``size`` (H, W) map, with the padding
    (top, left, bottom, right) that keeps the output; None when nothing can be cut."""
    top, left, bottom, right = padding
    rows = live_taps(size[0], top, bottom, w.shape[2], strides[0], dilation[0])
    cols = live_taps(size[1], left, right, w.shape[3], strides[1], dilation[1])
    if rows is None and cols is None:
        return None
    rows = rows or (0, w.shape[2] - 1, top, bottom)
    cols = cols or (0, w.shape[3] - 1, left, right)
    cropped = np.ascontiguousarray(w[:, :, rows[0] : rows[1] + 1, cols[0] : cols[1] + 1])
    return cropped, (rows[2], cols[2], rows[3], cols[3])


def crop_padding_only_taps() -> tvm.transform.Pass:
    """``conv2d(x, W)`` -> ``conv2d(x, W[:, :, kh0:kh1, kw0:kw1])`` with the padding shrunk
    to match, where the dropped taps read padding only (exact)."""
    data, weight = wildcard(), is_const()
    pattern = is_op("relax.nn.conv2d")(data, weight)

    def rewriter(call: relax.Call, m: dict) -> relax.Expr:
        attrs, w = call.attrs, m[weight].value.numpy()
        shape = static_ints(getattr(m[data].ty, "shape", None))
        if (
            shape is None
            or len(shape) != 4
            or attrs.data_layout != "NCHW"
            or attrs.kernel_layout != "OIHW"
            or attrs.out_layout != "NCHW"
            or w.dtype.kind != "f"  # int8 convs: cropped where they are imported (int8.py)
            or len(attrs.padding) != 4
        ):
            return call
        strides, dilation = [int(v) for v in attrs.strides], [int(v) for v in attrs.dilation]
        padding = [int(p) for p in attrs.padding]
        cropped = crop_kernel(w, shape[2:], padding, strides, dilation)
        if cropped is None:
            return call
        return relax.op.nn.conv2d(
            m[data],
            relax.const(cropped[0]),
            strides=strides,
            padding=cropped[1],
            dilation=dilation,
            groups=int(attrs.groups),
            data_layout="NCHW",
            kernel_layout="OIHW",
            out_layout="NCHW",
            out_dtype=attrs.out_dtype,
        )

    return _function_pass("crop_padding_only_taps", lambda f: rewrite_call(pattern, rewriter, f))


# Ops whose result on constant float tensors numpy computes bit for bit as TVM's compiled
# kernel does (IEEE add/sub/mul/div/sqrt are correctly rounded; the rest move data).
_BINARY = {
    "relax.add": np.add,
    "relax.subtract": np.subtract,
    "relax.multiply": np.multiply,
    "relax.divide": np.divide,
}
_UNARY = {"relax.sqrt": np.sqrt, "relax.negative": np.negative}
_RESHAPES = ("relax.reshape", "relax.expand_dims", "relax.squeeze")


def _evaluate(call: relax.Call, values: list[np.ndarray]) -> np.ndarray | None:
    """``call`` on constant ``values`` in numpy, or None where that is not exact here."""
    name = call.op.name
    out_shape = static_ints(getattr(call.ty, "shape", None))
    out_dtype = getattr(call.ty, "dtype", None)
    if out_shape is None or out_dtype is None:
        return None
    if name in _BINARY:
        result = _BINARY[name](values[0], values[1])
    elif name in _UNARY:
        result = _UNARY[name](values[0])
    elif name in _RESHAPES:
        result = values[0].reshape(out_shape)
    elif name == "relax.permute_dims":
        axes = call.attrs.axes
        result = np.transpose(values[0], None if axes is None else [int(a) for a in axes])
    elif name == "relax.astype":
        result = values[0].astype(str(call.attrs.dtype))
    else:
        return None
    if list(result.shape) != out_shape or str(result.dtype) != str(out_dtype):
        return None  # a broadcast or promotion rule numpy and Relax disagree on: let TVM fold
    return result


def fold_constants_numpy() -> tvm.transform.Pass:
    """Fold the elementwise and reshaping ops on constant float tensors in numpy.

    TVM's ``FoldConstant`` evaluates each foldable call by compiling it with LLVM and
    running it, tens of milliseconds a call: on resnet18 the BatchNorm folds alone are ~60
    calls and ~3 s of every build. These ops (BatchNorm's scale and shift arithmetic, the
    weight reshapes) give the same bits in numpy in microseconds; ``FoldConstant`` runs
    after this and folds whatever is left (integer arithmetic, other ops)."""

    # each argument slot: a constant tensor (looked up through its binding) or anything
    # else, which the rewriter then takes only if it is a scalar (``x + 1e-5``)
    consts, others = [is_const(), is_const()], [wildcard(), wildcard()]
    arg = [c | w for c, w in zip(consts, others, strict=True)]
    patterns = [is_op(name)(arg[0], arg[1]) for name in _BINARY]
    # reshape's second argument is its shape, which the call's own shape already gives
    one_arg = (*_UNARY, "relax.permute_dims", "relax.astype", *_RESHAPES[1:])
    patterns += [is_op(name)(arg[0]) for name in one_arg]
    patterns += [is_op(_RESHAPES[0])(arg[0], wildcard())]
    pattern = patterns[0]
    for p in patterns[1:]:
        pattern = pattern | p

    def value(slot: int, m: dict) -> np.ndarray | None:
        if consts[slot] in m:
            return m[consts[slot]].value.numpy()
        expr = m.get(others[slot])  # a float scalar is a FloatImm (relax.prim_value)
        if isinstance(expr, tvm.tirx.FloatImm):
            return np.asarray(expr.value, dtype=str(expr.ty.dtype))
        return None

    def rewriter(call: relax.Call, m: dict) -> relax.Expr:
        if not isinstance(call, relax.Call) or not isinstance(call.op, tvm.ir.Op):
            return call  # matched through a variable's binding: its call is rewritten itself
        arity = 2 if call.op.name in _BINARY else 1
        values = [value(i, m) for i in range(arity)]
        if any(v is None or v.dtype.kind != "f" for v in values):
            return call
        result = _evaluate(call, values)  # type: ignore[arg-type]
        return call if result is None else relax.const(result, str(result.dtype))

    return _function_pass("fold_constants_numpy", lambda f: rewrite_call(pattern, rewriter, f))
