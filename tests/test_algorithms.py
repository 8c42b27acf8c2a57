"""Layer 4: every conv algorithm and weight data format gives PyTorch's numbers, and the
per-layer records say what each layer got and why."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dlas.algorithms import ALGORITHMS, DATA_FORMATS, check_combination, legalize_convs

tvm = pytest.importorskip("tvm")
from tvm import relax  # noqa: E402
from tvm.relax.frontend.torch import from_exported_program  # noqa: E402

TARGET = {"kind": "llvm"}
COMBINATIONS = [(a, "dense") for a in ALGORITHMS] + [("gemm", "csr"), ("gemm", "bsr")]


def prune_(weight: torch.Tensor, amount: float = 0.9) -> None:
    """Zero the smallest-magnitude ``amount`` of a weight, in place (like l1_unstructured)."""
    k = int(amount * weight.numel())
    threshold = weight.abs().flatten().kthvalue(k).values
    with torch.no_grad():
        weight[weight.abs() <= threshold] = 0


class Zoo(nn.Module):
    """One of each layer kind the dispatcher treats differently."""

    def __init__(self) -> None:
        super().__init__()
        self.conv3 = nn.Conv2d(4, 8, 3, padding=1)  # 3x3 s1: Winograd F(4x4) (8x8 output)
        self.down = nn.Conv2d(8, 8, 3, stride=2, padding=1)  # stride 2: no Winograd
        self.point = nn.Conv2d(8, 8, 1)  # 1x1: no Winograd
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.pruned = nn.Conv2d(8, 8, 3, padding=1, bias=False)  # 90% zeros, 8x72: 4x4 blocks
        self.fc = nn.Linear(8 * 4 * 4, 10)  # 90% zeros, 10 rows: no 4x4 blocks
        prune_(self.pruned.weight)
        prune_(self.fc.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv3(x))
        x = torch.relu(self.down(x))
        x = self.point(x)
        x = torch.relu(self.depthwise(x))
        x = self.grouped(x)
        x = torch.relu(self.pruned(x))
        return self.fc(torch.flatten(x, 1))


LAYERS = ["conv3", "down", "point", "depthwise", "grouped", "pruned", "fc"]


@pytest.fixture(scope="module")
def zoo() -> tuple[nn.Module, torch.Tensor, tvm.IRModule]:
    torch.manual_seed(0)
    model = Zoo().eval()
    x = torch.randn(1, 4, 8, 8)
    program = torch.export.export(model, (x,))
    return model, x, from_exported_program(program, keep_params_as_input=False)


def run(mod: tvm.IRModule, x: torch.Tensor, *params: np.ndarray) -> np.ndarray:
    ex = tvm.compile(mod, target=tvm.target.Target(TARGET))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    args = [tvm.runtime.tensor(a) for a in (x.numpy(), *params)]
    return vm["main"](*args)[0].numpy()


def by_layer(records: list[dict]) -> dict[str, dict]:
    """Records keyed by this test model's attribute names (records come in graph order)."""
    assert [r["layer"] for r in records] == [f"conv2d_{i}" for i in range(6)] + ["dense_0"]
    return dict(zip(LAYERS, records, strict=True))


def remaining_ops(mod: tvm.IRModule) -> set[str]:
    return {
        str(op.name)
        for func in mod.functions.values()
        if isinstance(func, relax.Function)
        for op in _ops(func)
    }


def _ops(func: relax.Function) -> list[tvm.ir.Op]:
    found: list[tvm.ir.Op] = []
    relax.analysis.post_order_visit(
        func, lambda e: found.append(e.op) if isinstance(e, relax.Call) else None
    )
    return [op for op in found if isinstance(op, tvm.ir.Op)]


# -- check_combination ---------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_algorithm_takes_dense(algorithm: str) -> None:
    check_combination(algorithm, "dense")


@pytest.mark.parametrize("data_format", ["csr", "bsr"])
def test_sparse_formats_go_with_gemm(data_format: str) -> None:
    check_combination("gemm", data_format, fallback="spatial_pack")


def test_winograd_csr_is_rejected_with_the_valid_choices() -> None:
    with pytest.raises(ValueError) as err:
        check_combination("winograd", "csr")
    message = str(err.value)
    assert "'winograd'" in message and "'csr'" in message
    assert "only by algorithm 'gemm'" in message
    assert all(name in message for name in ALGORITHMS + DATA_FORMATS)


@pytest.mark.parametrize(
    ("args", "bad"),
    [
        (("im2col", "dense"), "'im2col'"),
        (("gemm", "coo"), "'coo'"),
        (("direct", "dense", "winograd"), "fallback 'winograd'"),
        (("spatial_pack", "bsr"), "'spatial_pack'"),
    ],
)
def test_bad_values_are_named(args: tuple[str, ...], bad: str) -> None:
    with pytest.raises(ValueError, match="valid") as err:
        check_combination(*args)
    assert bad in str(err.value)


@pytest.mark.tvm
@pytest.mark.slow
def test_legalize_validates_before_any_work(zoo) -> None:
    _, _, mod = zoo
    with pytest.raises(ValueError, match="valid data formats"):
        legalize_convs(mod, "gemm", "ell")
    with pytest.raises(ValueError, match="sparsity_threshold"):
        legalize_convs(mod, "gemm", "csr", sparsity_threshold=1.5)


# -- numerics ------------------------------------------------------------------------


@pytest.mark.tvm
@pytest.mark.slow
@pytest.mark.parametrize(("algorithm", "data_format"), COMBINATIONS)
def test_matches_pytorch(zoo, algorithm: str, data_format: str) -> None:
    model, x, mod = zoo
    legal, records = legalize_convs(mod, algorithm, data_format, sparsity_threshold=0.5)
    assert "relax.nn.conv2d" not in remaining_ops(legal)
    assert len(records) == len(LAYERS)
    expected = model(x).detach().numpy()
    assert np.abs(run(legal, x) - expected).max() < 1e-4


@pytest.mark.tvm
@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_odd_shapes_dilation_and_rectangular_input(algorithm: str) -> None:
    """Channel counts and widths no tile divides evenly, dilation, 5x5 and 1x3 kernels."""
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, dilation=2, padding=2),
        nn.Conv2d(6, 5, 5, stride=2, padding=1),
        nn.Conv2d(5, 7, (1, 3), padding=(0, 1)),
        nn.Conv2d(7, 7, 3, padding=1),
    ).eval()
    x = torch.randn(1, 3, 9, 13)
    mod = from_exported_program(torch.export.export(model, (x,)), keep_params_as_input=False)
    legal, records = legalize_convs(mod, algorithm)
    assert [r["algorithm"] for r in records][3] == algorithm
    assert np.abs(run(legal, x) - model(x).detach().numpy()).max() < 1e-4


@pytest.mark.tvm
@pytest.mark.slow
def test_dynamic_batch() -> None:
    """torch.export with a symbolic batch (as dlas.models.export does) still legalizes."""
    torch.manual_seed(1)
    model = Zoo().eval()
    batch = torch.export.Dim("batch", min=1, max=16)
    x = torch.randn(2, 4, 8, 8)
    program = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    mod = from_exported_program(program, keep_params_as_input=False)
    for algorithm, data_format in [("spatial_pack", "dense"), ("gemm", "csr")]:
        legal, records = legalize_convs(mod, algorithm, data_format, sparsity_threshold=0.5)
        assert records[0]["shape"].startswith("s")  # the batch is a symbol, named as such
        ex = tvm.compile(legal, target=tvm.target.Target(TARGET))
        vm = relax.VirtualMachine(ex, tvm.cpu())
        for n in (1, 3):
            xn = torch.randn(n, 4, 8, 8)
            out = vm["main"](tvm.runtime.tensor(xn.numpy()))[0].numpy()
            assert np.abs(out - model(xn).detach().numpy()).max() < 1e-4


@pytest.mark.tvm
@pytest.mark.slow
def test_fp16_after_mixed_precision(zoo) -> None:
    """ToMixedPrecision casts the constant weights; the layout changes look through it."""
    model, x, mod = zoo
    half = relax.transform.ToMixedPrecision(out_dtype="float16")(mod)
    legal, records = legalize_convs(half, "winograd")
    assert by_layer(records)["conv3"]["algorithm"] == "winograd"
    assert np.abs(run(legal, x) - model(x).detach().numpy()).max() < 2e-2


# -- per-layer records ---------------------------------------------------------------


@pytest.mark.tvm
@pytest.mark.slow
def test_winograd_records(zoo) -> None:
    _, _, mod = zoo
    _, records = legalize_convs(mod, "winograd")
    layers = by_layer(records)
    assert layers["conv3"]["algorithm"] == "winograd"
    assert layers["conv3"]["fallback_reason"] is None
    assert layers["conv3"]["shape"] == "1,4,8,8->8,4,3,3 s1 p1 g1"
    down = layers["down"]
    assert (down["algorithm"], down["requested"]) == ("direct", "winograd")
    assert "stride" in down["fallback_reason"]
    assert "3x3" in layers["point"]["fallback_reason"]
    for name in ("depthwise", "grouped"):
        assert layers[name]["algorithm"] == "direct"
        assert name in layers[name]["fallback_reason"]
    assert all(r["format"] == "dense" for r in records)


@pytest.mark.tvm
@pytest.mark.slow
def test_best_applies_the_per_layer_choice_in_layer_order(zoo) -> None:
    model, x, mod = zoo
    per_layer = ["winograd", "gemm", "spatial_pack", "gemm", "gemm", "direct"]
    legal, records = legalize_convs(mod, "best", per_layer=per_layer)
    layers = by_layer(records)
    got = [layers[name]["algorithm"] for name in LAYERS[:6]]
    # depthwise and grouped convs always take the direct compute
    assert got == ["winograd", "gemm", "spatial_pack", "direct", "direct", "direct"]
    assert {r["requested"] for r in records} == {"best"}
    kernels = [layers[name]["kernel"] for name in LAYERS[:6]]
    assert kernels[0].startswith("conv2d_winograd") and kernels[1].startswith("conv2d_im2col")
    assert np.abs(run(legal, x) - model(x).detach().numpy()).max() < 1e-4
    with pytest.raises(ValueError, match="per-layer choice"):
        legalize_convs(mod, "best")


def test_best_takes_dense_formats_and_known_candidates_only() -> None:
    check_combination("best", "dense", candidates=["direct", "winograd"])
    with pytest.raises(ValueError, match="algorithm=gemm algorithm.data_format=csr"):
        check_combination("best", "csr")
    with pytest.raises(ValueError, match=r"\['direct', 'fft'\]"):
        check_combination("best", "dense", candidates=["direct", "fft"])


def test_integer_weights_never_get_winograd() -> None:
    from dlas.algorithms.common import Conv2dSpec
    from dlas.algorithms.legalize import Options, choose_conv

    spec = Conv2dSpec(4, 8, 8, 8, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1)
    opts = Options("winograd", "dense", 0.0, 4, "gemm")
    assert choose_conv(spec, np.ones((8, 4, 3, 3), np.float32), opts).algorithm == "winograd"
    choice = choose_conv(spec, np.ones((8, 4, 3, 3), np.int8), opts)
    assert choice.algorithm == "gemm" and "int8" in choice.reason


@pytest.mark.tvm
@pytest.mark.slow
def test_fallback_choice_is_used(zoo) -> None:
    _, _, mod = zoo
    _, records = legalize_convs(mod, "winograd", fallback="gemm")
    layers = by_layer(records)
    assert layers["down"]["algorithm"] == "gemm"
    assert layers["grouped"]["algorithm"] == "direct"  # groups win over the fallback


@pytest.mark.tvm
@pytest.mark.slow
def test_sparse_only_above_threshold(zoo) -> None:
    _, _, mod = zoo
    _, records = legalize_convs(mod, "gemm", "csr", sparsity_threshold=0.5)
    layers = by_layer(records)
    for name in ("pruned", "fc"):
        assert layers[name]["format"] == "csr"
        assert layers[name]["weight_sparsity"] == pytest.approx(0.9, abs=0.01)
        assert layers[name]["fallback_reason"] is None
    assert layers["fc"]["op"] == "dense"
    for name in ("conv3", "down", "point"):
        assert (layers[name]["format"], layers[name]["algorithm"]) == ("dense", "gemm")
        assert "sparsity_threshold" in layers[name]["fallback_reason"]
        assert layers[name]["weight_sparsity"] < 0.5

    _, strict = legalize_convs(mod, "gemm", "csr", sparsity_threshold=0.95)
    assert all(r["format"] == "dense" for r in strict)


@pytest.mark.tvm
@pytest.mark.slow
def test_bsr_needs_whole_blocks(zoo) -> None:
    _, _, mod = zoo
    legal, records = legalize_convs(mod, "gemm", "bsr", sparsity_threshold=0.5, block_size=4)
    layers = by_layer(records)
    assert layers["pruned"]["format"] == "bsr"  # 8 x 72 weight matrix
    assert layers["fc"]["format"] == "csr"  # 10 output features
    assert "4x4 blocks" in layers["fc"]["fallback_reason"]
    names = {gv.name_hint for gv in legal.functions}
    assert {"conv2d_im2col_bsr", "dense_csr"} <= names


@pytest.mark.tvm
@pytest.mark.slow
def test_layer_names_do_not_depend_on_the_algorithm(zoo) -> None:
    _, _, mod = zoo
    keys = {
        tuple((r["layer"], r["shape"]) for r in legalize_convs(mod, a, f)[1])
        for a, f in COMBINATIONS
    }
    assert len(keys) == 1


@pytest.mark.tvm
@pytest.mark.slow
def test_parameters_as_inputs_fall_back_to_direct() -> None:
    """Without constant weights no layout can change at compile time: direct, and said so."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()).eval()
    x = torch.randn(1, 3, 6, 6)
    program = torch.export.export(model, (x,))
    mod, params = relax.frontend.detach_params(
        from_exported_program(program, keep_params_as_input=True)
    )
    legal, records = legalize_convs(mod, "winograd")
    assert records[0]["algorithm"] == "direct"
    assert "not a constant" in records[0]["fallback_reason"]
    assert records[0]["weight_sparsity"] is None
    weights = [p.numpy() for p in params["main"]]
    assert np.abs(run(legal, x, *weights) - model(x).detach().numpy()).max() < 1e-4


# -- formats and tunability ----------------------------------------------------------


def test_csr_and_bsr_arrays_rebuild_the_matrix() -> None:
    from dlas.algorithms.sparse import to_bsr, to_csr

    rng = np.random.default_rng(0)
    matrix = rng.standard_normal((8, 12)).astype("float32")
    matrix[rng.random(matrix.shape) < 0.8] = 0
    csr = to_csr(matrix)
    dense = np.zeros_like(matrix)
    for row in range(8):
        for j in range(csr.indptr[row], csr.indptr[row + 1]):
            dense[row, csr.indices[j]] = csr.data[j]
    np.testing.assert_array_equal(dense, matrix)
    assert csr.max_row == np.count_nonzero(matrix, axis=1).max()

    bsr = to_bsr(matrix, 4)
    dense = np.zeros_like(matrix)
    for brow in range(2):
        for j in range(bsr.indptr[brow], bsr.indptr[brow + 1]):
            col = bsr.indices[j] * 4
            dense[brow * 4 : brow * 4 + 4, col : col + 4] = bsr.data[j]
    np.testing.assert_array_equal(dense, matrix)

    # Guarded reads past a row's end stay inside the arrays.
    assert len(csr.data) == csr.indptr[-1] + csr.max_row
    empty = to_csr(np.zeros((3, 5), dtype="float32"))
    assert list(empty.indptr) == [0, 0, 0, 0] and len(empty.data) == empty.max_row == 1


@pytest.mark.tvm
@pytest.mark.slow
@pytest.mark.parametrize(("algorithm", "data_format"), [("winograd", "dense"), ("gemm", "csr")])
def test_metaschedule_can_schedule_every_task(zoo, algorithm: str, data_format: str) -> None:
    """The tuning pipeline's view: after fusion each task has a design space that passes
    MetaSchedule's CPU post-processors (e.g. no data-dependent loops). Nothing is tuned."""
    from tvm.s_tir import meta_schedule as ms

    try:  # layer 5's TVMScript speed-up: TuneContext imports tensor_intrin (~1 min without)
        from dlas.compiler.fast_tvmscript import install
    except ImportError:
        pass
    else:
        install()
    _, _, mod = zoo
    legal, _ = legalize_convs(mod, algorithm, data_format, sparsity_threshold=0.5)
    target = tvm.target.Target({"kind": "llvm", "num-cores": 2})
    with target:
        fused = tvm.transform.Sequential(
            [
                relax.transform.DecomposeOpsForInference(),
                relax.transform.CanonicalizeBindings(),
                relax.get_pipeline("zero"),
            ]
        )(legal)
    tasks = ms.relax_integration.extract_tasks(fused, target)
    ours = [t for t in tasks if any(k in t.task_name for k in ("winograd", "csr"))]
    assert ours, [t.task_name for t in tasks]
    for task in ours:
        context = ms.TuneContext(
            mod=task.dispatched[0],
            target=target,
            space_generator="post-order-apply",
            search_strategy="evolutionary",
            task_name=task.task_name,
        )
        postprocs = context.space_generator.postprocs
        valid = [
            sch for sch in context.generate_design_space() if all(p.apply(sch) for p in postprocs)
        ]
        assert valid, task.task_name
