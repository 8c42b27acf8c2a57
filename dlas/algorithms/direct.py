"""Direct convolution: the textbook seven-deep loop nest, with groups.

Why ours and not ``topi.nn.conv2d_nchw``: one compute covers ordinary, grouped and
depthwise convolutions (DLAS's "direct" primitive), so the dispatcher can send every
grouped layer here whatever algorithm was requested, and the weight keeps PyTorch's
OIHW layout untouched: it is the baseline every other data format is compared with.
"""

from __future__ import annotations

from tvm import te

from .common import Conv2dSpec, as_dtype, pad_nchw


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
    return te.compute(shape, compute, name="conv2d_direct", tag="conv2d_direct")
