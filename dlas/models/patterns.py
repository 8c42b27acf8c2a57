"""Macro-architecture pattern families: one design pattern, repeated, at a chosen size.

"Does Form Follow Function?" (Abbasi et al., 2021) asks how much a compiler speeds a
network up over its native framework as a function of its *design pattern*, its *depth*
and its *width*. The zoo cannot answer that: each of its models mixes patterns and sizes.
So every family here is one pattern on one skeleton, and only the two knobs move:

    stem conv 3x3 -> ``stages`` stages (channels width, 2 width, 4 width, ...; each stage
    after the first halves the resolution) of ``depth`` blocks -> global pool -> linear

Blocks (every conv is bias-free and followed by BatchNorm, as in the papers they come from):

* ``plain``: conv3x3-BN-ReLU (VGG).
* ``residual``: two conv3x3 and an identity shortcut, 1x1 projection when the shape
  changes (ResNet basic block).
* ``bottleneck``: 1x1 down to width/4, conv3x3, 1x1 back up, shortcut (ResNet-50 block).
* ``depthwise_separable``: depthwise conv3x3 then pointwise 1x1 (MobileNetV1).
* ``inverted_residual``: pointwise expand x6, depthwise 3x3, linear pointwise project,
  shortcut when the shape allows (MobileNetV2).
* ``dense``: each layer BN-ReLU-conv3x3 adds ``width / 2`` channels concatenated to its
  input (DenseNet growth rate); between stages BN-ReLU-conv1x1 to the next stage's width
  and 2x2 average pooling.

``param_count`` is each family's parameter count in closed form: a study can place a
point against the cache size before building it, and the tests hold the modules to it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from dlas.models.zoo import resolve_stem

PATTERNS = (
    "plain",
    "residual",
    "bottleneck",
    "depthwise_separable",
    "inverted_residual",
    "dense",
)
BOTTLENECK_REDUCTION = 4  # bottleneck: inner channels = out / 4 (ResNet-50)
INVERTED_EXPANSION = 6  # inverted residual: inner channels = in x 6 (MobileNetV2)


def conv_bn(
    c_in: int,
    c_out: int,
    kernel: int,
    stride: int = 1,
    groups: int = 1,
    act: type[nn.Module] | None = nn.ReLU,
) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
    ]
    if act is not None:
        layers.append(act(inplace=True))
    return nn.Sequential(*layers)


class Residual(nn.Module):
    """``act(body(x) + shortcut(x))``: the shortcut is identity unless the shape changes."""

    def __init__(self, body: nn.Module, shortcut: nn.Module, act: bool = True) -> None:
        super().__init__()
        self.body, self.shortcut = body, shortcut
        self.act = nn.ReLU(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


def _shortcut(c_in: int, c_out: int, stride: int) -> nn.Module:
    if stride == 1 and c_in == c_out:
        return nn.Identity()
    return conv_bn(c_in, c_out, 1, stride, act=None)


def plain_block(c_in: int, c_out: int, stride: int) -> nn.Module:
    return conv_bn(c_in, c_out, 3, stride)


def residual_block(c_in: int, c_out: int, stride: int) -> nn.Module:
    body = nn.Sequential(conv_bn(c_in, c_out, 3, stride), conv_bn(c_out, c_out, 3, act=None))
    return Residual(body, _shortcut(c_in, c_out, stride))


def bottleneck_block(c_in: int, c_out: int, stride: int) -> nn.Module:
    mid = c_out // BOTTLENECK_REDUCTION
    body = nn.Sequential(
        conv_bn(c_in, mid, 1), conv_bn(mid, mid, 3, stride), conv_bn(mid, c_out, 1, act=None)
    )
    return Residual(body, _shortcut(c_in, c_out, stride))


def depthwise_separable_block(c_in: int, c_out: int, stride: int) -> nn.Module:
    return nn.Sequential(conv_bn(c_in, c_in, 3, stride, groups=c_in), conv_bn(c_in, c_out, 1))


def inverted_residual_block(c_in: int, c_out: int, stride: int) -> nn.Module:
    hidden = c_in * INVERTED_EXPANSION
    body = nn.Sequential(
        conv_bn(c_in, hidden, 1, act=nn.ReLU6),
        conv_bn(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
        conv_bn(hidden, c_out, 1, act=None),
    )
    if stride == 1 and c_in == c_out:  # MobileNetV2: no shortcut (and no act) otherwise
        return Residual(body, nn.Identity(), act=False)
    return body


BLOCKS: dict[str, Callable[[int, int, int], nn.Module]] = {
    "plain": plain_block,
    "residual": residual_block,
    "bottleneck": bottleneck_block,
    "depthwise_separable": depthwise_separable_block,
    "inverted_residual": inverted_residual_block,
}


class DenseLayer(nn.Module):
    """BN-ReLU-conv3x3 producing ``growth`` new channels, concatenated to the input."""

    def __init__(self, c_in: int, growth: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(c_in)
        self.conv = nn.Conv2d(c_in, growth, 3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(torch.relu(self.norm(x)))], 1)


def _transition(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.BatchNorm2d(c_in),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_in, c_out, 1, bias=False),
        nn.AvgPool2d(2),
    )


def stage_widths(width: int, stages: int) -> list[int]:
    return [width * 2**s for s in range(stages)]


def _stem(in_channels: int, width: int, stem: str) -> nn.Sequential:
    """cifar: full resolution into the first stage; compact: one 2x downsampling;
    imagenet: 4x (stride-2 conv then max pool, as ResNet)."""
    layers: list[nn.Module] = [conv_bn(in_channels, width, 3, 1 if stem == "cifar" else 2)]
    if stem == "imagenet":
        layers.append(nn.MaxPool2d(3, 2, 1))
    return nn.Sequential(*layers)


@dataclass(frozen=True)
class Step:
    """One layer of a family's body: where channels and resolution change."""

    kind: str  # "block" | "dense_layer" | "transition"
    c_in: int
    c_out: int
    stride: int = 1


def body_plan(pattern: str, depth: int, width: int, stages: int) -> list[Step]:
    """The body of a family as steps, walked both to build it and to count its parameters,
    so the two cannot disagree on how channels thread from block to block."""
    steps: list[Step] = []
    if pattern == "dense":
        growth, channels = width // 2, width
        for s, c in enumerate(stage_widths(width, stages)):
            if s:
                steps.append(Step("transition", channels, c, 2))
                channels = c
            for _ in range(depth):
                steps.append(Step("dense_layer", channels, channels + growth))
                channels += growth
        return steps
    c_in = width
    for s, c in enumerate(stage_widths(width, stages)):
        for d in range(depth):
            steps.append(Step("block", c_in, c, 2 if s and not d else 1))  # stage entry
            c_in = c
    return steps


def _layer(pattern: str, step: Step) -> nn.Module:
    if step.kind == "transition":
        return _transition(step.c_in, step.c_out)
    if step.kind == "dense_layer":
        return DenseLayer(step.c_in, step.c_out - step.c_in)
    return BLOCKS[pattern](step.c_in, step.c_out, step.stride)


class PatternNet(nn.Module):
    """A network of one pattern; ``pattern``, ``depth`` and ``width`` stay readable on it."""

    def __init__(
        self,
        pattern: str,
        depth: int,
        width: int,
        num_classes: int,
        in_channels: int = 3,
        stages: int = 3,
        stem: str = "cifar",
    ) -> None:
        super().__init__()
        self.pattern, self.depth, self.width = pattern, depth, width
        steps = body_plan(pattern, depth, width, stages)
        layers = [_layer(pattern, step) for step in steps]
        channels = steps[-1].c_out
        if pattern == "dense":  # DenseNet ends its features with a norm and an activation
            layers += [nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
        self.stem = _stem(in_channels, width, stem)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(self.stem(x)))
        return self.classifier(torch.flatten(x, 1))


def check_sizes(**knobs: int) -> None:
    """Every size knob of a family (``depth=2``, ``width=16``...) a positive integer, or an
    error naming it (the pattern families' and DARTS's alike)."""
    for knob, value in knobs.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"model.{knob}={value!r}: must be an integer >= 1")


def check_pattern(pattern: str, depth: int, width: int, stages: int) -> None:
    """Fail before building, naming the bad value and what would be valid."""
    if pattern not in PATTERNS:
        raise ValueError(f"unknown pattern {pattern!r}; valid choices: {', '.join(PATTERNS)}")
    check_sizes(depth=depth, width=width, stages=stages)
    if pattern == "bottleneck" and width % BOTTLENECK_REDUCTION:
        raise ValueError(
            f"model.width={width}: a bottleneck reduces channels by {BOTTLENECK_REDUCTION}, "
            f"so width must be a multiple of {BOTTLENECK_REDUCTION}"
        )
    if pattern == "dense" and width % 2:
        raise ValueError(f"model.width={width}: dense grows by width/2, so width must be even")


def build_pattern_model(
    pattern: str,
    *,
    num_classes: int,
    in_channels: int = 3,
    input_size: int = 32,
    depth: int = 2,
    width: int = 16,
    stages: int = 3,
    stem: str = "auto",
    pretrained: bool = False,
) -> PatternNet:
    check_pattern(pattern, depth, width, stages)
    stem = resolve_stem(stem, input_size)
    if pretrained:
        raise ValueError(
            f"model={pattern} is a pattern family with no pretrained weights; "
            "set model.pretrained=false (pretrained weights exist for the torchvision zoo)"
        )
    return PatternNet(pattern, depth, width, num_classes, in_channels, stages, stem)


# ------------------------------------------------------------------ closed-form sizes


def _conv_bn_params(c_in: int, c_out: int, kernel: int, groups: int = 1) -> int:
    return kernel * kernel * (c_in // groups) * c_out + 2 * c_out


def _shortcut_params(c_in: int, c_out: int, stride: int) -> int:
    return 0 if stride == 1 and c_in == c_out else _conv_bn_params(c_in, c_out, 1)


def block_params(pattern: str, c_in: int, c_out: int, stride: int) -> int:
    """Parameters of one block of ``pattern`` (not ``dense``: see ``step_params``)."""
    if pattern == "plain":
        return _conv_bn_params(c_in, c_out, 3)
    if pattern == "residual":
        return (
            _conv_bn_params(c_in, c_out, 3)
            + _conv_bn_params(c_out, c_out, 3)
            + _shortcut_params(c_in, c_out, stride)
        )
    if pattern == "bottleneck":
        m = c_out // BOTTLENECK_REDUCTION
        return (
            _conv_bn_params(c_in, m, 1)
            + _conv_bn_params(m, m, 3)
            + _conv_bn_params(m, c_out, 1)
            + _shortcut_params(c_in, c_out, stride)
        )
    if pattern == "depthwise_separable":
        return _conv_bn_params(c_in, c_in, 3, groups=c_in) + _conv_bn_params(c_in, c_out, 1)
    if pattern == "inverted_residual":
        h = c_in * INVERTED_EXPANSION
        return (
            _conv_bn_params(c_in, h, 1)
            + _conv_bn_params(h, h, 3, groups=h)
            + _conv_bn_params(h, c_out, 1)
        )
    raise ValueError(f"no single-block formula for pattern {pattern!r}")


def step_params(pattern: str, step: Step) -> int:
    """Parameters of one step of :func:`body_plan`."""
    if step.kind == "transition":  # BN, conv1x1
        return 2 * step.c_in + step.c_in * step.c_out
    if step.kind == "dense_layer":  # BN, conv3x3 to the growth
        return 2 * step.c_in + 9 * step.c_in * (step.c_out - step.c_in)
    return block_params(pattern, step.c_in, step.c_out, step.stride)


def param_count(
    pattern: str,
    depth: int,
    width: int,
    *,
    num_classes: int,
    in_channels: int = 3,
    stages: int = 3,
) -> int:
    """The number of parameters of ``build_pattern_model`` (BatchNorm weight and bias
    included, its running statistics are buffers), from the block formulas alone."""
    steps = body_plan(pattern, depth, width, stages)
    total = _conv_bn_params(in_channels, width, 3) + sum(step_params(pattern, t) for t in steps)
    channels = steps[-1].c_out
    if pattern == "dense":
        total += 2 * channels  # final BN
    return total + channels * num_classes + num_classes
