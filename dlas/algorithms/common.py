"""What every convolution compute needs to know about one ``relax.nn.conv2d`` call.

The computes of this package are plain TE functions of tensors and Python ints. They
all read the same static description of the layer, parsed once here from the Relax
call, so that no compute re-derives padding or output sizes its own (slightly different)
way. Only the batch dimension may be symbolic: every compute keeps ``n`` as its own
axis, so a model exported with a dynamic batch still legalizes.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm import te, topi
from tvm.ir import Expr


@dataclass(frozen=True)
class Conv2dSpec:
    """Static attributes of an NCHW / OIHW 2-D convolution."""

    in_channels: int
    height: int
    width: int
    out_channels: int
    kernel_h: int
    kernel_w: int
    stride: tuple[int, int]
    padding: tuple[int, int, int, int]  # top, left, bottom, right (Relax order)
    dilation: tuple[int, int]
    groups: int

    @property
    def out_height(self) -> int:
        span = (self.kernel_h - 1) * self.dilation[0] + 1
        return (self.height + self.padding[0] + self.padding[2] - span) // self.stride[0] + 1

    @property
    def out_width(self) -> int:
        span = (self.kernel_w - 1) * self.dilation[1] + 1
        return (self.width + self.padding[1] + self.padding[3] - span) // self.stride[1] + 1

    @property
    def reduction(self) -> int:
        """Length of one output's dot product: C/g * kh * kw (the GEMM K)."""
        return self.in_channels // self.groups * self.kernel_h * self.kernel_w

    @property
    def is_depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.in_channels

    def describe(self, batch: object) -> str:
        """``"N,C,H,W->O,C/g,kh,kw s1 p1 g1"``: compact, and identical for identical layers."""

        def one(values: tuple[int, ...]) -> str:
            return str(values[0]) if len(set(values)) == 1 else ",".join(map(str, values))

        text = (
            f"{batch},{self.in_channels},{self.height},{self.width}->"
            f"{self.out_channels},{self.in_channels // self.groups},{self.kernel_h},{self.kernel_w}"
            f" s{one(self.stride)} p{one(self.padding)} g{self.groups}"
        )
        if self.dilation != (1, 1):
            text += f" d{one(self.dilation)}"
        return text


def pad_nchw(data: te.Tensor, spec: Conv2dSpec, extra_bottom: int = 0, extra_right: int = 0):
    """Zero-pad H and W as the conv asks (plus optional extra rows/columns for tiling)."""
    top, left, bottom, right = spec.padding
    if top == left == bottom + extra_bottom == right + extra_right == 0:
        return data
    return topi.nn.pad(
        data,
        [0, 0, top, left],
        [0, 0, bottom + extra_bottom, right + extra_right],
        name="data_pad",
    )


def as_dtype(value: Expr | te.TensorSlice, dtype: str) -> Expr:
    """Cast only when needed, so fp32 computes stay free of no-op casts."""
    current = value.dtype if isinstance(value, te.TensorSlice) else value.ty.dtype
    return value if current == dtype else value.astype(dtype)
