"""Direct convolution: the textbook seven-deep loop nest, with groups.

Why ours and not ``topi.nn.conv2d_nchw``: one compute covers ordinary, grouped and
depthwise convolutions (DLAS's "direct" primitive), so the dispatcher can send every
grouped layer here whatever algorithm was requested, and the weight keeps PyTorch's
OIHW layout untouched: it is the baseline every other data format is compared with.
"""

from __future__ import annotations

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

    - wide maps (OW >= one vector, stride 1) and depthwise/grouped convs: a tile of ``lanes`` output
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
        pixels = knobs.accumulators()  # half the vector register file
        cols = largest_divisor(width, pixels)
        rows = largest_divisor(height, max(1, pixels // cols))
        tiles = [
            Tile(1, lanes, max_inner=lanes, vector=True),
            Tile(2, rows, max_inner=4),
            Tile(3, cols, max_inner=16),
        ]
    tile_anchor(sch, block, knobs, tiles)
