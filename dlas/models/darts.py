"""DARTS: the network that differentiable architecture search found (Liu et al., ICLR
2019), built from the paper's published genotype, as a model family of its own.

"Does Form Follow Function?" compares hand-crafted patterns with NAS-found networks and
finds the largest compiler speedups on the latter (DARTS: 12x with OpenVINO). A NAS cell
is not one repeated pattern: each cell is a small DAG of separable, dilated and pooling
ops over the two previous cells' outputs, and its output concatenates four nodes. So it
is built here as the paper's CIFAR network, not as a block of ``patterns``:

    stem conv3x3 (3 x width channels) -> ``depth`` cells -> global pool -> linear

with the cells at 1/3 and 2/3 of the depth being reduction cells (stride 2, channels
doubled), exactly as the DARTS CIFAR network places them. ``model.depth`` is the number
of cells and ``model.width`` the initial channels: the paper's evaluated network is
depth 20, width 36 (3.3 M parameters), this family's default (``conf/model/darts.yaml``);
the network it searched in is depth 8, width 16.

What is left out, and why: the auxiliary head and drop-path are training aids of the
paper's 600-epoch schedule, not part of the deployed network, so they would only change
how it trains here, never what is compiled. On odd feature-map sizes (e.g. 7x7 after two
reductions of a 28x28 digit) the factorized reduction's shifted path is zero-padded by
one pixel so that both halves agree in size; DARTS only ever ran on even sizes, where
this changes nothing.

``param_count`` is the closed form of the parameter count, walked over the same cell
plan the builder uses; the tests check it against the module and the paper's 3.3 M.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dlas.models.patterns import check_sizes
from dlas.models.zoo import resolve_stem

#: the genotype the DARTS paper reports for CIFAR-10 (second-order search, "DARTS_V2"):
#: per cell, four nodes, each the sum of two (op, input state) pairs; states 0 and 1 are
#: the two previous cells' outputs, 2.. the cell's own nodes; the output concatenates 2-5
NORMAL = (
    ("sep_conv_3x3", 0),
    ("sep_conv_3x3", 1),
    ("sep_conv_3x3", 0),
    ("sep_conv_3x3", 1),
    ("sep_conv_3x3", 1),
    ("skip_connect", 0),
    ("skip_connect", 0),
    ("dil_conv_3x3", 2),
)
REDUCE = (
    ("max_pool_3x3", 0),
    ("max_pool_3x3", 1),
    ("skip_connect", 2),
    ("max_pool_3x3", 1),
    ("max_pool_3x3", 0),
    ("skip_connect", 2),
    ("skip_connect", 2),
    ("max_pool_3x3", 1),
)
CONCAT = (2, 3, 4, 5)
STEM_MULTIPLIER = 3  # the stem has 3 x width channels


class SepConv(nn.Module):
    """ReLU, depthwise kxk, pointwise, BN; twice (the first one strided)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int) -> None:
        super().__init__()
        pad = kernel // 2
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, kernel, stride, pad, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_in, 1, bias=False),
            nn.BatchNorm2d(c_in),
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, kernel, 1, pad, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class DilConv(nn.Module):
    """ReLU, depthwise kxk with dilation 2, pointwise, BN."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, kernel, stride, 2 * (kernel // 2), 2, c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class ReLUConvBN(nn.Module):
    """ReLU, conv1x1, BN: how a cell brings a previous cell's output to its width."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False), nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class FactorizedReduce(nn.Module):
    """Halve the resolution without losing every other pixel: two stride-2 1x1 convs,
    the second on the input shifted by one pixel, concatenated, then BN."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        if c_out % 2:
            raise ValueError(f"a factorized reduction needs an even width, got {c_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, 2, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out // 2, 1, 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        shifted = x[:, :, 1:, 1:]
        if x.shape[-1] % 2 or x.shape[-2] % 2:  # odd sizes: see the module docstring
            shifted = F.pad(shifted, (0, x.shape[-1] % 2, 0, x.shape[-2] % 2))
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(shifted)], dim=1))


def make_op(name: str, channels: int, stride: int) -> nn.Module:
    """One of the genotype's ops at ``channels`` in and out."""
    if name == "sep_conv_3x3":
        return SepConv(channels, channels, 3, stride)
    if name == "dil_conv_3x3":
        return DilConv(channels, channels, 3, stride)
    if name == "max_pool_3x3":
        return nn.MaxPool2d(3, stride, 1)
    if name == "skip_connect":
        return nn.Identity() if stride == 1 else FactorizedReduce(channels, channels)
    raise ValueError(f"no DARTS op {name!r}")


class Cell(nn.Module):
    """One DARTS cell: both inputs brought to ``channels``, four nodes of two ops each,
    the output the concatenation of the nodes (4 x ``channels``)."""

    def __init__(
        self,
        genotype: Sequence[tuple[str, int]],
        c_prev_prev: int,
        c_prev: int,
        channels: int,
        reduction: bool,
        reduction_prev: bool,
    ) -> None:
        super().__init__()
        self.reduction = reduction
        self.preprocess0 = (
            FactorizedReduce(c_prev_prev, channels)
            if reduction_prev
            else ReLUConvBN(c_prev_prev, channels)
        )
        self.preprocess1 = ReLUConvBN(c_prev, channels)
        self.inputs = [index for _, index in genotype]
        self.ops = nn.ModuleList(
            make_op(name, channels, 2 if reduction and index < 2 else 1) for name, index in genotype
        )

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for node in range(len(self.ops) // 2):
            a, b = 2 * node, 2 * node + 1
            states.append(self.ops[a](states[self.inputs[a]]) + self.ops[b](states[self.inputs[b]]))
        return torch.cat([states[i] for i in CONCAT], dim=1)


@dataclass(frozen=True)
class CellPlan:
    """Where one cell sits: its inputs' channels, its own, and whether it reduces."""

    c_prev_prev: int
    c_prev: int
    channels: int
    reduction: bool
    reduction_prev: bool


def cell_plan(depth: int, width: int) -> list[CellPlan]:
    """The cells of the DARTS CIFAR network, walked both to build it and to count its
    parameters: reductions at depth // 3 and 2 depth // 3, channels doubled there."""
    stem = STEM_MULTIPLIER * width
    c_prev_prev, c_prev, channels = stem, stem, width
    plan, reduction_prev = [], False
    for i in range(depth):
        reduction = i in (depth // 3, 2 * depth // 3)
        if reduction:
            channels *= 2
        plan.append(CellPlan(c_prev_prev, c_prev, channels, reduction, reduction_prev))
        c_prev_prev, c_prev, reduction_prev = c_prev, len(CONCAT) * channels, reduction
    return plan


class DartsNet(nn.Module):
    """The DARTS CIFAR network; ``depth`` and ``width`` stay readable on it."""

    def __init__(
        self, depth: int, width: int, num_classes: int, in_channels: int = 3, stem: str = "cifar"
    ) -> None:
        super().__init__()
        self.pattern, self.depth, self.width = "darts", depth, width
        c_stem = STEM_MULTIPLIER * width
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, c_stem, 3, 1 if stem == "cifar" else 2, 1, bias=False),
            nn.BatchNorm2d(c_stem),
        ]
        if stem == "imagenet":
            layers.append(nn.MaxPool2d(3, 2, 1))
        self.stem = nn.Sequential(*layers)
        plan = cell_plan(depth, width)
        self.cells = nn.ModuleList(
            Cell(NORMAL if not p.reduction else REDUCE, *_cell_args(p)) for p in plan
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(len(CONCAT) * plan[-1].channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return self.classifier(torch.flatten(self.pool(s1), 1))


def _cell_args(p: CellPlan) -> tuple[int, int, int, bool, bool]:
    return p.c_prev_prev, p.c_prev, p.channels, p.reduction, p.reduction_prev


def build_darts_model(
    *,
    num_classes: int,
    in_channels: int = 3,
    input_size: int = 32,
    depth: int = 20,
    width: int = 36,
    stem: str = "auto",
    pretrained: bool = False,
) -> DartsNet:
    """``model=darts``: ``depth`` cells from ``width`` initial channels."""
    check_sizes(depth=depth, width=width)
    if width % 2:
        raise ValueError(
            f"model.width={width}: DARTS halves channels in its reductions, so width must be even"
        )
    if pretrained:
        raise ValueError("model=darts has no pretrained weights here; set model.pretrained=false")
    return DartsNet(depth, width, num_classes, in_channels, resolve_stem(stem, input_size))


# ------------------------------------------------------------------ closed-form size


def _sep(c: int) -> int:  # two (depthwise 3x3, pointwise, BN)
    return 2 * (9 * c + c * c + 2 * c)


def _dil(c: int) -> int:  # depthwise 3x3, pointwise, BN
    return 9 * c + c * c + 2 * c


def _conv1x1_bn(c_in: int, c_out: int) -> int:  # ReLUConvBN and FactorizedReduce alike
    return c_in * c_out + 2 * c_out


def _op_params(name: str, c: int, stride: int) -> int:
    if name == "sep_conv_3x3":
        return _sep(c)
    if name == "dil_conv_3x3":
        return _dil(c)
    if name == "skip_connect" and stride == 2:
        return _conv1x1_bn(c, c)
    return 0  # pooling, identity


def param_count(depth: int, width: int, *, num_classes: int, in_channels: int = 3) -> int:
    """The number of parameters of :func:`build_darts_model` from the op formulas alone."""
    c_stem = STEM_MULTIPLIER * width
    total = 9 * in_channels * c_stem + 2 * c_stem
    plan = cell_plan(depth, width)
    for p in plan:
        total += _conv1x1_bn(p.c_prev_prev, p.channels) + _conv1x1_bn(p.c_prev, p.channels)
        genotype = REDUCE if p.reduction else NORMAL
        for name, index in genotype:
            total += _op_params(name, p.channels, 2 if p.reduction and index < 2 else 1)
    features = len(CONCAT) * plan[-1].channels
    return total + features * num_classes + num_classes
