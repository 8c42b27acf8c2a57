"""Direct convolution: the textbook seven-deep loop nest, with groups.

Why ours and not ``topi.nn.conv2d_nchw``: one compute covers ordinary and grouped
convolutions (DLAS's "direct" primitive), so the dispatcher can send every grouped layer
here whatever algorithm was requested, and the weight keeps PyTorch's OIHW layout
untouched: it is the baseline every other data format is compared with. Depthwise
layers get the channel-blocked variant at the end of this module (with the default
schedules; the plain loop nests of ``compiler.schedule=none`` keep the grouped compute).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import te
from tvm.s_tir import Schedule
from tvm.s_tir.schedule import SBlockRV

from .common import Conv2dSpec, as_dtype, pad_nchw
from .schedule import Knobs, Tile, largest_divisor, schedules_anchor, tile_anchor


def conv2d_direct(
    data: te.Tensor, weight: te.Tensor, spec: Conv2dSpec, out_dtype: str
) -> te.Tensor:
    """out[n, o, y, x] = sum_{c, r, s} in[n, c0 + c, y*sh + r*dh, x*sw + s*dw] * w[o, c, r, s].

    c0 = (o // (O/g)) * (C/g) is the first input channel of output channel o's group.
    """
    padded = pad_nchw(data, spec)
    cin_per_group = spec.in_channels // spec.groups
    cout_per_group = spec.out_channels // spec.groups
    (sh, sw), (dh, dw) = spec.stride, spec.dilation
    rc = te.reduce_axis((0, cin_per_group), name="rc")
    ry = te.reduce_axis((0, spec.kernel_h), name="ry")
    rx = te.reduce_axis((0, spec.kernel_w), name="rx")

    def compute(n, o, y, x):
        # Keep the groups=1 index free of the (always zero) group offset.
        c = rc if spec.groups == 1 else o // cout_per_group * cin_per_group + rc
        value = padded[n, c, y * sh + ry * dh, x * sw + rx * dw]
        return te.sum(
            as_dtype(value, out_dtype) * as_dtype(weight[o, rc, ry, rx], out_dtype),
            axis=[rc, ry, rx],
        )

    shape = (data.shape[0], spec.out_channels, spec.out_height, spec.out_width)
    # Stride and groups ride along as block annotations: the schedule vectorizes output
    # columns only where they are contiguous input reads.
    return te.compute(
        shape,
        compute,
        name="conv2d_direct",
        tag="conv2d_direct",
        attrs={"stride_w": sw, "groups": spec.groups},
    )


@schedules_anchor("conv2d_direct")
def schedule_direct(sch: Schedule, block: SBlockRV, knobs: Knobs) -> None:
    """Register tile of output channels x output pixels, one axis in vector registers.

    Loops (n, o, y, x | rc, ry, rx). Weights stay OIHW (the direct primitive is the
    untransformed baseline), so the vector axis is chosen by the map, as TOPI's direct
    schedules did:

    - wide maps (OW >= one vector, stride 1) and grouped convs: a tile of ``lanes`` output
      columns x 4 output channels; the input row segment is one vector load reused by the
      4 channels, each weight a broadcast scalar;
    - narrow maps (the 8x8 ... 1x1 maps of a CNN's late stages at small inputs): a tile of
      ``lanes`` output channels x as many pixels as half the vector registers hold; each
      input pixel is a broadcast scalar, the weights of the ``lanes`` channels one strided
      (gathered) load.

    The accumulators stay in registers across the whole reduction, and the epilogue
    (bias, ReLU, residual add) is applied to each tile as it is finished.
    """
    lanes = knobs.lanes(str(sch.get(block).writes[0].source.dtype))
    _, o_loop, y_loop, x_loop, *_ = sch.get_loops(block)
    channels, height, width = (knobs.extent(loop) for loop in (o_loop, y_loop, x_loop))
    layer = sch.get(block).annotations
    grouped = int(layer.get("groups", 1)) > 1
    unit_stride = int(layer.get("stride_w", 1)) == 1
    if grouped or (width >= lanes and unit_stride) or channels < lanes:
        vector = largest_divisor(width, lanes)
        rows = largest_divisor(height, max(1, lanes // vector)) if vector * 2 <= lanes else 1
        tiles = [
            Tile(1, 4, max_inner=8),  # output channels: 4 accumulators per column vector
            Tile(2, rows, max_inner=4),  # output rows, only when a row is short
            Tile(3, vector, max_inner=lanes, vector=True),
        ]
    else:
        rows, cols = knobs.pixel_tile(height, width)  # half the vector register file
        tiles = [
            Tile(1, lanes, max_inner=lanes, vector=True),
            Tile(2, rows, max_inner=4),
            Tile(3, cols, max_inner=16),
        ]
    tile_anchor(sch, block, knobs, tiles)


# -- depthwise, channel-blocked ----------------------------------------------------------
# A depthwise conv has no reduction over channels, so in NCHW neither output columns
# (strided by the stride, and short on late maps: 4, 2, 1 lanes of 16) nor channels
# (H x W apart) make a good vector. Blocking channels, NCHW[vc]c as oneDNN and TOPI's old
# x86 depthwise did, makes every tap one contiguous vector of vc channels whatever the map
# size and stride: the input is packed once per call, the kernel once at compile time.


def depthwise_block(spec: Conv2dSpec, lanes: int) -> int | None:
    """Channels per block (the largest of 16, 8, 4 dividing C and fitting one vector), or
    None when the layer is not a plain depthwise conv or no block fits (then it stays the
    grouped direct compute)."""
    if not (spec.is_depthwise and spec.out_channels == spec.in_channels):
        return None
    return next((c for c in (16, 8, 4) if c <= lanes and spec.in_channels % c == 0), None)


def pack_depthwise_kernel(weight: np.ndarray, vc: int) -> np.ndarray:
    """(C, 1, kh, kw) -> (C/vc, kh, kw, vc): each tap's vc channels adjacent."""
    c, _, kh, kw = weight.shape
    return np.ascontiguousarray(weight.reshape(c // vc, vc, kh, kw).transpose(0, 2, 3, 1))


def conv2d_depthwise_packed(
    data: te.Tensor, kernel_vec: te.Tensor, spec: Conv2dSpec, out_dtype: str, vc: int
) -> te.Tensor:
    """out[n, c, y, x] = sum_{r, s} in[n, c, y*sh + r*dh, x*sw + s*dw] * w[c, 0, r, s],
    computed over channel blocks: (n, c/vc, y, x, vc), then unpacked to NCHW."""
    batch, _, height, width = data.shape
    top, left, bottom, right = spec.padding
    blocks = spec.in_channels // vc

    def pack(n, cb, h, w, ci):  # zero padding folded into the packing: one pass
        inside = tvm.tirx.all(h >= top, h < top + height, w >= left, w < left + width)
        value = data[n, cb * vc + ci, h - top, w - left]
        return tvm.tirx.if_then_else(inside, value, tvm.tirx.const(0, data.dtype))

    data_vec = te.compute(
        (batch, blocks, height + top + bottom, width + left + right, vc), pack, name="data_vec_dw"
    )
    (sh, sw), (dh, dw) = spec.stride, spec.dilation
    ry = te.reduce_axis((0, spec.kernel_h), name="ry")
    rx = te.reduce_axis((0, spec.kernel_w), name="rx")
    conv = te.compute(
        (batch, blocks, spec.out_height, spec.out_width, vc),
        lambda n, cb, y, x, ci: te.sum(
            as_dtype(data_vec[n, cb, y * sh + ry * dh, x * sw + rx * dw, ci], out_dtype)
            * as_dtype(kernel_vec[cb, ry, rx, ci], out_dtype),
            axis=[ry, rx],
        ),
        name="conv_dw_packed",
    )
    return te.compute(
        (batch, spec.out_channels, spec.out_height, spec.out_width),
        lambda n, c, y, x: conv[n, c // vc, y, x, c % vc],
        name="conv2d_depthwise_packed",
        tag="conv2d_depthwise_packed",
    )


@schedules_anchor("conv_dw_packed")
def schedule_depthwise_packed(sch: Schedule, block: SBlockRV, knobs: Knobs) -> None:
    """Loops (n, cb, y, x, ci | ry, rx): a tile of rows x columns of output pixels, each
    one vector of vc channels, stays in registers across the kh x kw taps; the packing is
    the generic stage before it, the unpacking and epilogue follow each tile."""
    _, _, y_loop, x_loop, _, *_ = sch.get_loops(block)
    height, width = knobs.extent(y_loop), knobs.extent(x_loop)
    rows, cols = knobs.pixel_tile(height, width, max_cols=8)
    tile_anchor(
        sch,
        block,
        knobs,
        [
            Tile(2, rows, max_inner=4),
            Tile(3, cols, max_inner=8),
            Tile(4, 0, vector=True),
        ],
    )
