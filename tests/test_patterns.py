"""Layer 2 pattern families and the NAS-found DARTS network: each builds at any depth and
width with the parameter count its closed form predicts, trains, compresses, and compiles
through TVM to PyTorch's numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dlas.compression import get_compression
from dlas.data import get_datamodule
from dlas.metrics import memory_footprint, structure
from dlas.models import NAS_CELLS, PATTERNS, get_model
from dlas.models import darts as darts_family
from dlas.models.export import export_model
from dlas.models.patterns import param_count

FAMILIES = (*PATTERNS, *NAS_CELLS)

SIZES = [(1, 4), (2, 8), (3, 12)]  # (depth, width): one block per stage up to repeated blocks


def count(family: str, depth: int, width: int, classes: int = 10) -> int:
    """The family's closed-form parameter count."""
    if family == "darts":
        return darts_family.param_count(depth, width, num_classes=classes)
    return param_count(family, depth, width, num_classes=classes)


def build(pattern: str, depth: int, width: int, classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return get_model(
        pattern, num_classes=classes, in_channels=3, input_size=32, depth=depth, width=width
    )


@pytest.mark.tvm
@pytest.mark.slow
@pytest.mark.parametrize("pattern", FAMILIES)
@pytest.mark.parametrize(("depth", "width"), SIZES)
def test_parameter_count_follows_the_formula(pattern: str, depth: int, width: int) -> None:
    model = build(pattern, depth, width, classes=7)
    counted = sum(p.numel() for p in model.parameters())
    assert counted == count(pattern, depth, width, classes=7)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)


@pytest.mark.tvm
@pytest.mark.slow
def test_formula_by_hand() -> None:
    """plain, depth 1, width 4, 3 -> 10 classes, worked out on paper: stem 3x3x3x4 + BN 8
    = 116; blocks 4->4 (144+8), 4->8 (288+16), 8->16 (1152+32); head 16x10+10 = 170."""
    assert param_count("plain", 1, 4, num_classes=10) == 116 + 152 + 304 + 1184 + 170 == 1926
    assert sum(p.numel() for p in build("plain", 1, 4).parameters()) == 1926


@pytest.mark.tvm
@pytest.mark.slow
def test_darts_is_the_papers_network() -> None:
    """The evaluated CIFAR network (20 cells, 36 initial channels): the paper reports
    3.3 M parameters (Liu et al., 2019, Table 1; 3,349,342 with the classifier, without
    the auxiliary head), and a 28x28 digit through the compact stem meets an odd 7x7 map
    at the second reduction, which the factorized reduction pads."""
    assert count("darts", 20, 36) == 3_349_342
    model = get_model(
        "darts", num_classes=10, in_channels=1, input_size=28, stem="compact", depth=8, width=16
    )
    assert [c.reduction for c in model.cells] == [
        False,
        False,
        True,
        False,
        False,
        True,
        False,
        False,
    ]
    assert model.eval()(torch.randn(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.tvm
@pytest.mark.slow
@pytest.mark.parametrize("pattern", FAMILIES)
def test_depth_and_width_grow_the_network(pattern: str) -> None:
    def n(d: int, w: int) -> int:
        return count(pattern, d, w)

    assert n(1, 8) < n(2, 8) < n(4, 8)
    assert n(2, 8) < n(2, 16) < n(2, 32)
    convs = [m for m in build(pattern, 3, 8).modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) > len([m for m in build(pattern, 1, 8).modules() if isinstance(m, nn.Conv2d)])


@pytest.mark.tvm
@pytest.mark.slow
@pytest.mark.parametrize("pattern", FAMILIES)
def test_trains_one_step(pattern: str) -> None:
    # DARTS at 2 cells is two reduction cells and no normal cell, whose sums of max pools
    # plain SGD cannot fit; at its search network's 8 cells (1/3 reducing) it trains
    depth = 8 if pattern == "darts" else 2
    model = build(pattern, depth, 8).train()
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    before = [p.detach().clone() for p in model.parameters()]
    losses = []
    for _ in range(3):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None for p in model.parameters())  # every weight is used
        opt.step()
        losses.append(float(loss))
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert losses[-1] < losses[0]


@pytest.fixture(scope="module")
def data():
    return get_datamodule("synthetic", num_samples=32, image_size=32, in_channels=3, batch_size=8)


@pytest.mark.tvm
@pytest.mark.slow
@pytest.mark.parametrize("pattern", FAMILIES)
def test_compressible(data, pattern: str) -> None:
    """Weight pruning and channel pruning go through every pattern's graph (shortcuts,
    depthwise groups, concatenations)."""
    pruned = get_compression("prune", amount=0.5).apply(build(pattern, 2, 8), data, None)
    assert structure(pruned)["sparsity"] == pytest.approx(0.5, abs=0.02)
    slim = get_compression("channel_prune", amount=0.5).apply(build(pattern, 2, 8), data, None)
    assert structure(slim)["params"] < 0.6 * count(pattern, 2, 8)
    assert slim(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.tvm
@pytest.mark.slow
@pytest.mark.parametrize("pattern", FAMILIES)
def test_compiles_through_tvm_to_pytorch_numbers(pattern: str, tmp_path) -> None:
    from omegaconf import OmegaConf

    from dlas.compiler import tvm_relax
    from dlas.compiler.measure import Protocol, verify_and_time_tvm
    from dlas.hardware import get_device

    model = build(pattern, 2, 4).eval()
    for m in model.modules():  # non-trivial BatchNorm statistics, as after training
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(1, 3, 16, 16)
    algorithm = OmegaConf.create(
        {"name": "gemm", "data_format": "dense", "sparsity_threshold": 0.0, "block_size": 4}
        | {"fallback": "direct"}
    )
    device = get_device("cpu", threads=1)
    built = tvm_relax.build(torch.export.export(model, (x,)), x, device, algorithm, tmp_path)
    outputs, _ = verify_and_time_tvm(
        str(built.library), [x.numpy()], x.numpy(), device, Protocol(0, 1, 1)
    )
    with torch.no_grad():
        expected = model(x).numpy()
    assert np.abs(outputs[0] - expected).max() < 1e-4


@pytest.mark.tvm
@pytest.mark.slow
def test_footprint_counts_what_inference_touches() -> None:
    model = build("residual", 1, 8).eval()
    x = torch.randn(1, 3, 32, 32)
    footprint = memory_footprint(export_model(model, x), x)
    stored = sum(
        t.numel() * t.element_size()
        for name, t in model.state_dict().items()
        if not name.endswith("num_batches_tracked")
    )
    assert footprint["param_bytes"] == stored
    # widest operator: the first block's shortcut add at full resolution, two 8x32x32
    # inputs and one 8x32x32 output in fp32 (wider than any conv: 3 or 8 in, 8 out)
    assert footprint["activation_bytes"] == 3 * 8 * 32 * 32 * 4
    assert footprint["working_set_bytes"] == stored + 3 * 8 * 32 * 32 * 4


@pytest.mark.parametrize(
    ("kwargs", "bad"),
    [
        ({"depth": 0}, "model.depth=0"),
        ({"width": -4}, "model.width=-4"),
        ({"pattern": "bottleneck", "width": 6}, "multiple of 4"),
        ({"pattern": "dense", "width": 5}, "must be even"),
        ({"pattern": "darts", "width": 5}, "must be even"),
        ({"pattern": "darts", "depth": 0}, "model.depth=0"),
        ({"stem": "tiny"}, "model.stem='tiny'"),
        ({"pretrained": True}, "no pretrained weights"),
    ],
)
def test_bad_sizes_are_named(kwargs: dict, bad: str) -> None:
    pattern = kwargs.pop("pattern", "residual")
    with pytest.raises(ValueError, match=bad):
        get_model(pattern, num_classes=10, **kwargs)


def test_unknown_pattern_lists_the_families() -> None:
    with pytest.raises(ValueError, match="unknown model 'resnext'.*inverted_residual"):
        get_model("resnext", num_classes=10)
