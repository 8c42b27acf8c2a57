"""Our graph folds (dlas.compiler.folds): they fire where they are exact, stay away where
they are not, and the compiled model still computes what PyTorch computes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
from omegaconf import OmegaConf
from torch import nn
from tvm import relax

from dlas.compiler import tvm_relax
from dlas.compiler.measure import Protocol, verify_and_time_tvm
from dlas.hardware import get_device


class VggLikeHead(nn.Module):
    """Conv with bias -> BatchNorm -> ReLU, pooled to ``grid`` and classified: VGG-BN in
    miniature, for 8 px inputs. With ``pool_input`` 1 the grid replicates one pixel, as
    in VGG at 32 px."""

    def __init__(self, pool_input: int, grid: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=True),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(8 // pool_input),  # 8 px in
        )
        self.pool = nn.AdaptiveAvgPool2d(grid)
        self.classifier = nn.Linear(8 * grid * grid, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def _model(pool_input: int) -> nn.Module:
    torch.manual_seed(0)
    model = VggLikeHead(pool_input).eval()
    bn = model.features[1]
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.uniform_(-0.5, 0.5)
    return model


def _folded(model: nn.Module, x: torch.Tensor) -> tvm.IRModule:
    """The model in Relax after the graph folds (the pipeline up to layer 4)."""
    mod, dtype = tvm_relax.to_relax(torch.export.export(model, (x,)), x)
    for name, step in tvm_relax.passes(tvm_relax._Algorithms(None), dtype):
        if name == "layer4_algorithms":
            break
        mod = step(mod)
    return mod


def _pipeline_ops(model: nn.Module, x: torch.Tensor) -> tuple[set[str], list[list[int]]]:
    """Relax op names left after the folds, and the matmul weights' shapes."""
    mod = _folded(model, x)
    ops: set[str] = set()
    weights: list[list[int]] = []

    def visit(expr: relax.Expr) -> None:
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
            ops.add(expr.op.name)
            if expr.op.name == "relax.matmul":
                weights.append([int(v) for v in expr.args[1].ty.shape.values])

    relax.analysis.post_order_visit(mod["main"].body, visit)
    return ops, weights


@pytest.mark.tvm
@pytest.mark.slow
def test_conv_bias_and_batchnorm_fold_into_the_conv() -> None:
    ops, _ = _pipeline_ops(_model(1), torch.randn(1, 3, 8, 8))
    assert "relax.nn.conv2d" in ops
    # nothing of the BatchNorm is left: no batch_norm, and none of the subtract / divide /
    # multiply its decomposition would leave behind the conv
    assert not ops & {"relax.nn.batch_norm", "relax.subtract", "relax.divide", "relax.multiply"}


@pytest.mark.tvm
@pytest.mark.slow
@pytest.mark.parametrize("pool_input, weight", [(1, [8, 5]), (2, [72, 5])])
def test_linear_after_a_replicating_pool_is_summed_down(pool_input: int, weight: list) -> None:
    # 1x1 -> 3x3 only replicates: the 72-row weight folds to 8 rows and the pool is gone.
    # 2x2 -> 3x3 averages overlapping windows: nothing to fold.
    ops, weights = _pipeline_ops(_model(pool_input), torch.randn(1, 3, 8, 8))
    assert weights[0] == weight
    assert ("relax.nn.adaptive_avg_pool2d" in ops) == (pool_input != 1)


@pytest.mark.tvm
@pytest.mark.slow
@pytest.mark.parametrize("pool_input", [1, 2])
def test_folded_model_computes_what_pytorch_computes(tmp_path, pool_input: int) -> None:
    model, x = _model(pool_input), torch.randn(1, 3, 8, 8)
    algorithm = OmegaConf.create(
        {"name": "direct", "data_format": "dense", "sparsity_threshold": 0.0}
        | {"block_size": 4, "fallback": "direct"}
    )
    device = get_device("cpu", threads=1)
    built = tvm_relax.build(torch.export.export(model, (x,)), x, device, algorithm, tmp_path)
    assert {"fold_conv_bias_into_batchnorm", "fold_replicated_linear"} <= set(built.pipeline)
    # the record is what ran (pipeline.json): each step timed, with the TVM passes the
    # instrumentation saw inside it
    assert [s["step"] for s in built.steps] == built.pipeline
    assert built.pipeline[0] == "import_exported_program"
    assert built.pipeline[-1] == "build_library_llvm"
    passes = {s["step"]: [p["pass"] for p in s["tvm_passes"]] for s in built.steps}
    assert passes["legalize"] == ["LegalizeOps"] and passes["fuse_ops"] == ["FuseOps"]
    assert passes["build_library_llvm"]  # tvm.compile's own lowering, pass by pass
    assert all(s["s"] >= sum(p["s"] for p in s["tvm_passes"]) for s in built.steps)
    outputs, _ = verify_and_time_tvm(
        str(built.library), [x.numpy()], x.numpy(), device, Protocol(0, 1, 1)
    )
    with torch.no_grad():
        expected = model(x).numpy()
    assert np.abs(outputs[0] - expected).max() < 1e-4


# --------------------------------------------------------- taps that read padding only


@pytest.mark.parametrize(
    "axis, expected",
    [
        ((1, 1, 1, 3, 1, 1), (1, 1, 0, 0)),  # 1x1 map, 3x3 pad 1: the centre tap alone
        ((2, 1, 1, 3, 2, 1), (1, 2, 0, 0)),  # 2x2 map, stride 2: the first tap reads pad
        ((1, 2, 2, 3, 1, 2), (1, 1, 0, 0)),  # dilation 2 on a 1x1 map: the centre again
        ((2, 1, 1, 3, 1, 1), None),  # every tap reads the map for some output
        ((8, 1, 1, 3, 1, 1), None),
        ((1, 0, 0, 1, 1, 1), None),  # a 1x1 kernel has nothing to crop
        ((2, 2, 2, 5, 1, 1), (1, 3, 1, 1)),  # 5x5 pad 2 on 2 px: the outer taps go, pad 1 stays
        ((3, 1, 1, 3, 3, 1), (1, 2, 0, 0)),  # stride 3: the last row is never read, pad 0 will do
    ],
)
def test_live_taps(axis: tuple, expected: tuple | None) -> None:
    from dlas.compiler.folds import live_taps

    assert live_taps(*axis) == expected


class SmallMaps(nn.Module):
    """What a ResNet's last stage sees at 32 px: a 2x2 map into a stride-2 3x3 conv, then
    3x3 convs (plain with a residual add, grouped, dilated) on the 1x1 map it leaves."""

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Conv2d(4, 8, 3, stride=2, padding=1)
        self.same = nn.Conv2d(8, 8, 3, padding=1)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.dilated = nn.Conv2d(8, 8, 3, padding=2, dilation=2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.down(x))
        return self.dilated(self.grouped(torch.relu(self.same(x)) + x))


def _graph_convs(model: nn.Module, x: torch.Tensor) -> list[relax.Call]:
    """The conv2d calls left after the graph folds, in dataflow order."""
    mod = _folded(model, x)
    convs: list[relax.Call] = []

    def visit(expr: relax.Expr) -> None:
        if isinstance(expr, relax.Call) and getattr(expr.op, "name", "") == "relax.nn.conv2d":
            convs.append(expr)

    relax.analysis.post_order_visit(mod["main"].body, visit)
    return convs


def _compiled_error(model: nn.Module, x: torch.Tensor, algorithm: str, tmp_path) -> float:
    """max |TVM - PyTorch| of the whole compiled model; the pipeline must hold the crop."""
    cfg = OmegaConf.create(
        {"name": algorithm, "data_format": "dense", "sparsity_threshold": 0.0}
        | {"block_size": 4, "fallback": "direct"}
    )
    device = get_device("cpu", threads=1)
    built = tvm_relax.build(torch.export.export(model, (x,)), x, device, cfg, tmp_path)
    assert "crop_padding_only_taps" in built.pipeline
    outputs, _ = verify_and_time_tvm(
        str(built.library), [x.numpy()], x.numpy(), device, Protocol(0, 1, 1)
    )
    with torch.no_grad():
        return float(np.abs(outputs[0] - model(x).numpy()).max())


def _kernel(conv: relax.Call) -> list[int]:
    return [int(v) for v in conv.args[1].ty.shape.values]


@pytest.mark.tvm
@pytest.mark.slow
def test_convs_on_small_maps_keep_only_the_taps_that_read_them(tmp_path) -> None:
    torch.manual_seed(0)
    model, x = SmallMaps().eval(), torch.randn(1, 4, 2, 2)
    convs = _graph_convs(model, x)
    assert [_kernel(c)[2:] for c in convs] == [[2, 2], [1, 1], [1, 1], [1, 1]]
    assert all([int(p) for p in c.attrs.padding] == [0, 0, 0, 0] for c in convs)
    assert int(convs[2].attrs.groups) == 2
    assert _compiled_error(model, x, "spatial_pack", tmp_path) < 1e-5


@pytest.mark.tvm
@pytest.mark.slow
def test_a_crop_that_keeps_some_padding_keeps_its_sides_apart(tmp_path) -> None:
    """A 5x5 conv with padding 2 on a 2x3 map: rows keep taps 1..3 with padding 1 on each
    side, columns keep all five taps and padding 2: (top, left, bottom, right) order."""
    torch.manual_seed(0)
    model, x = nn.Conv2d(4, 6, 5, padding=2).eval(), torch.randn(1, 4, 2, 3)
    (conv,) = _graph_convs(model, x)
    assert _kernel(conv) == [6, 4, 3, 5]
    assert [int(p) for p in conv.attrs.padding] == [1, 2, 1, 2]
    assert _compiled_error(model, x, "direct", tmp_path) < 1e-5


@pytest.mark.tvm
def test_numpy_folds_give_what_tvms_constant_folding_gives() -> None:
    """fold_constants_numpy evaluates BatchNorm's scale and shift in numpy instead of
    compiling each call with LLVM: the module after it and FoldConstant must be the
    module FoldConstant alone makes, constants bit for bit."""
    import tvm_ffi

    from dlas.compiler import folds
    from dlas.compiler.pipeline import PipelineLog
    from dlas.models import get_model

    torch.manual_seed(0)
    model = get_model("residual", num_classes=10, in_channels=3, input_size=8, depth=1, width=4)
    for m in model.modules():  # statistics a trained network has, not the init's 0 and 1
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-1, 1)
    x = torch.randn(1, 3, 8, 8)
    mod, dtype = tvm_relax.to_relax(torch.export.export(model.eval(), (x,)), x)
    steps = tvm_relax.graph_passes(dtype)
    before = [name for name, _ in steps].index("fold_constants_numpy")
    with tvm.target.Target("llvm"):
        mod = PipelineLog(quiet=True).run(steps[:before], mod)
        ops = {
            str(b.value.op.name)
            for b in mod["main"].body.blocks[0].bindings
            if isinstance(b.value, relax.Call)
        }
        assert {"relax.sqrt", "relax.divide", "relax.multiply", "relax.reshape"} <= ops
        by_tvm = relax.transform.FoldConstant()(mod)
        by_numpy = folds.fold_constants_numpy()(mod)
        assert tvm_ffi.structural_equal(relax.transform.FoldConstant()(by_numpy), by_tvm)
    left = {
        str(b.value.op.name)
        for b in by_numpy["main"].body.blocks[0].bindings
        if isinstance(b.value, relax.Call)
    }
    assert not left & {"relax.sqrt", "relax.divide"}  # BatchNorm's arithmetic: all folded
