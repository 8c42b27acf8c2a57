"""Layer 2's image-restoration networks: DnCNN (Zhang et al., 2017).

DnCNN is a plain stack of 3x3 convolutions, all at full resolution: conv + ReLU, then
``depth - 2`` x (conv + BatchNorm + ReLU), then a conv back to the image's channels. It
learns the *residual*: the output is ``input + net(input)``, so for denoising the net
predicts minus the noise and for VDSR-style super-resolution the missing detail (the
paper's DnCNN-3 trains one network for both). The paper's sizes are depth 17 and width
64 (20 for blind denoising); the defaults here (depth 8, width 32) train in minutes on
2 cores. Having no pooling and no stride, its working set is the full-resolution feature
map at every layer: the opposite of a classifier's shrinking pyramid, which is what makes
it a different point for layers 4-6.
"""

from __future__ import annotations

from torch import Tensor, nn

from dlas.models.patterns import check_sizes


class DnCNN(nn.Module):
    def __init__(self, depth: int, width: int, channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [
                nn.Conv2d(width, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(width, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.head(self.body(x))


def build_dncnn(
    *,
    num_classes: int,
    in_channels: int = 1,
    input_size: int = 32,
    depth: int = 8,
    width: int = 32,
    pretrained: bool = False,
    stem: str = "auto",
) -> DnCNN:
    """``num_classes`` is the output's channels (a restoration dataset sets it to its
    ``in_channels``): the residual connection needs them equal."""
    check_sizes(depth=depth, width=width)
    if depth < 2:
        raise ValueError(f"model.depth={depth}: DnCNN needs >= 2 convolutions (first and last)")
    if pretrained:
        raise ValueError("model=dncnn has no pretrained weights; set model.pretrained=false")
    if num_classes != in_channels:
        raise ValueError(
            f"model=dncnn restores an image: its {num_classes} outputs must equal its "
            f"{in_channels} input channels (a restoration dataset sets both)"
        )
    return DnCNN(depth, width, in_channels)


def dncnn_params(depth: int, width: int, channels: int) -> int:
    """DnCNN's parameter count in closed form: first conv (weights, bias), the middle
    convs (no bias) with BatchNorm scale and shift, the last conv (weights, bias)."""
    first = 9 * channels * width + width
    middle = (depth - 2) * (9 * width * width + 2 * width)
    last = 9 * width * channels + channels
    return first + middle + last
