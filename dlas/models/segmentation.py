"""Layer 2 for the segmentation problem space: networks that label every pixel.

* torchvision's segmentation zoo (``lraspp_mobilenet_v3_large``,
  ``deeplabv3_mobilenet_v3_large``, ``fcn_resnet50``), random weights (no download), the
  auxiliary head off. Two adaptations, as for the classification zoo: the stem takes
  ``in_channels``, and for inputs of at most 64 px (``stem=auto`` -> ``cifar``) the stem
  keeps full resolution (MobileNet-V3's first conv at stride 1), so a 64 x 64 canvas
  still has 8 x 8 features at the backbone's deepest, output-stride-16 level instead of
  4 x 4 (FCN's dilated ResNet-50 has output stride 8 and 8 x 8 features already).
  torchvision's heads upsample their logits back to the input size.
* ``unet``: a U-Net family sized like the pattern families: ``model.depth`` levels below
  the full-resolution one, ``model.width`` channels at full resolution, doubling per
  level; each level two 3x3 conv + BatchNorm + ReLU, 2x2 max-pool down, 2x2 transposed
  conv up, skip connections by concatenation, a 1x1 conv to the classes.

Every network returns one ``N x classes x H x W`` tensor (torchvision's dict output is
unwrapped), the shape the loss, the metrics, export and every compiler expect.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torchvision
from torch import nn

from dlas.models.patterns import check_sizes
from dlas.models.zoo import _set_in_channels, _set_stride, _strided_convs

SEGMENTATION_STEMS = ("auto", "imagenet", "cifar", "compact")


def resolve_segmentation_stem(stem: str, input_size: int) -> str:
    """``cifar``: full resolution at the stem; ``imagenet`` and ``compact`` (one 2x
    downsampling at the stem, which is what torchvision's stems already do here):
    unchanged; ``auto``: ``cifar`` for inputs of at most 64 px."""
    if stem not in SEGMENTATION_STEMS:
        raise ValueError(
            f"model.stem={stem!r} for a segmentation network; valid choices: "
            f"{', '.join(SEGMENTATION_STEMS)}"
        )
    if stem == "auto":
        return "cifar" if input_size <= 64 else "imagenet"
    return "imagenet" if stem == "compact" else stem


class DenseOutput(nn.Module):
    """torchvision's segmentation models return ``{"out": logits}``; the stack wants the
    tensor."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)["out"]


def _full_resolution_mobilenet(m: nn.Module) -> None:
    _set_stride(_strided_convs(m.backbone)[0], 1)


def _already_output_stride_8(m: nn.Module) -> None:
    """FCN's ResNet-50 is dilated in its last two stages (output stride 8): a 64 px input
    keeps 8 x 8 features as it is; full resolution at the stem would make it 32 x 32 with
    2048 channels, ~60x the MACs of the mobile networks."""


SEGMENTATION_ZOO: dict[str, Callable[[nn.Module], None]] = {
    # torchvision name: the adapter that keeps a small input's resolution at the stem
    "lraspp_mobilenet_v3_large": _full_resolution_mobilenet,
    "deeplabv3_mobilenet_v3_large": _full_resolution_mobilenet,
    "fcn_resnet50": _already_output_stride_8,
}


def build_segmentation_zoo_model(
    name: str,
    *,
    num_classes: int,
    in_channels: int = 3,
    input_size: int = 64,
    pretrained: bool = False,
    stem: str = "auto",
) -> nn.Module:
    if pretrained:
        raise ValueError(
            f"model={name} with model.pretrained=true: dlas does not download weights and "
            "ships none for the segmentation zoo; set model.pretrained=false"
        )
    if in_channels not in (1, 3):
        raise ValueError(f"in_channels={in_channels}; valid choices: 1, 3")
    stem = resolve_segmentation_stem(stem, input_size)
    builder = getattr(torchvision.models.segmentation, name)
    kwargs = {"aux_loss": False} if name != "lraspp_mobilenet_v3_large" else {}
    model = builder(weights=None, weights_backbone=None, num_classes=num_classes, **kwargs)
    if stem == "cifar":
        SEGMENTATION_ZOO[name](model)
    _set_in_channels(model.backbone, in_channels)
    return DenseOutput(model)


def _double_conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    def __init__(self, depth: int, width: int, num_classes: int, in_channels: int) -> None:
        super().__init__()
        channels = [width * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList(
            [_double_conv(in_channels, channels[0])]
            + [_double_conv(channels[i], channels[i + 1]) for i in range(depth)]
        )
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList(
            [nn.ConvTranspose2d(channels[i + 1], channels[i], 2, stride=2) for i in range(depth)]
        )
        self.merge = nn.ModuleList(
            [_double_conv(2 * channels[i], channels[i]) for i in range(depth)]
        )
        self.head = nn.Conv2d(channels[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for i in reversed(range(len(self.up))):
            x = self.merge[i](torch.cat([skips.pop(), self.up[i](x)], dim=1))
        return self.head(x)


def build_unet(
    *,
    num_classes: int,
    in_channels: int = 1,
    input_size: int = 64,
    depth: int = 3,
    width: int = 16,
    pretrained: bool = False,
    stem: str = "auto",
) -> UNet:
    check_sizes(depth=depth, width=width)
    if pretrained:
        raise ValueError("model=unet has no pretrained weights; set model.pretrained=false")
    if input_size % 2**depth:
        raise ValueError(
            f"model=unet with model.depth={depth} halves the input {depth} times: "
            f"dataset.image_size={input_size} must be a multiple of {2**depth}"
        )
    return UNet(depth, width, num_classes, in_channels)


def unet_params(depth: int, width: int, num_classes: int, in_channels: int) -> int:
    """The U-Net's parameter count in closed form (conv weights, BatchNorm scale and shift,
    transposed-conv and head weights and biases), checked against the built network."""

    def double(c_in: int, c_out: int) -> int:
        return 9 * c_in * c_out + 9 * c_out * c_out + 4 * c_out

    c = [width * 2**i for i in range(depth + 1)]
    down = double(in_channels, c[0]) + sum(double(c[i], c[i + 1]) for i in range(depth))
    up = sum(4 * c[i + 1] * c[i] + c[i] for i in range(depth))
    merge = sum(double(2 * c[i], c[i]) for i in range(depth))
    return down + up + merge + c[0] * num_classes + num_classes
