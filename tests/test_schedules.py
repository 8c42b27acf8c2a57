"""Layers 4-5: every default schedule, and random draws of its knobs, computes what the
unscheduled loop nest computes; the defaults follow the target's vector width; tuning
keeps the default schedule as a measured candidate."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

tvm = pytest.importorskip("tvm")
from tvm import relax  # noqa: E402

from dlas.algorithms import ALGORITHMS, Algorithm  # noqa: E402
from dlas.algorithms.schedule import ANCHORS, ScheduleError, vector_bits  # noqa: E402
from dlas.compiler import check_schedule, tvm_relax  # noqa: E402
from dlas.compiler.default_schedule import (  # noqa: E402
    default_schedules,
    narrow_indices,
    schedule_kernel,
)
from dlas.compiler.pipeline import PipelineLog  # noqa: E402
from dlas.compiler.tuning import KEEP_TUNED_WITHIN, TUNED_OPS, Tuning, tune, tuning_tasks  # noqa: E402

AVX512 = {"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": 2}
AVX2 = {"kind": "llvm", "mcpu": "x86-64-v3", "num-cores": 2}


def host_has(flag: str) -> bool:
    try:
        return flag in Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False


class Convs(nn.Module):
    """The conv kinds a schedule must handle: 3x3 stride 1 with a residual add, stride 2,
    dilation 2, 1x1, depthwise, grouped, odd map sizes, and channel counts (5, 12, 20)
    that no vector width divides."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 12, 3, padding=1)
        self.same = nn.Conv2d(12, 12, 3, padding=1)
        self.bn = nn.BatchNorm2d(12)
        self.down = nn.Conv2d(12, 20, 3, stride=2, padding=1)
        self.dilated = nn.Conv2d(20, 20, 3, padding=2, dilation=2)
        self.point = nn.Conv2d(20, 32, 1)
        self.depthwise = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.grouped = nn.Conv2d(32, 16, 3, padding=1, groups=4)
        self.wide = nn.Conv2d(16, 5, 3, padding=1)
        self.fc = nn.Linear(5 * 6 * 5, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(self.bn(self.same(x)) + x)
        x = torch.relu(self.down(x))
        x = self.dilated(x)
        x = torch.relu(self.point(x))
        x = torch.relu(self.depthwise(x))
        x = self.grouped(x)
        x = self.wide(x)
        return self.fc(torch.flatten(x, 1))


COMBINATIONS = [(a, "dense") for a in ALGORITHMS] + [("gemm", "csr"), ("gemm", "bsr")]


def algorithm_cfg(name: str, data_format: str = "dense") -> Algorithm:
    return Algorithm(name, data_format)


def lowered(
    name: str, x: torch.Tensor, target: tvm.target.Target, data_format: str = "dense"
) -> tuple[tvm.IRModule, nn.Module]:
    torch.manual_seed(0)
    model = Convs().eval()
    with torch.no_grad():
        for p in model.bn.parameters():
            p.uniform_(0.5, 1.5)
        if data_format != "dense":  # pruned: most weights zero, as the sparse formats expect
            for m in model.modules():
                if isinstance(m, nn.Conv2d | nn.Linear):
                    m.weight.mul_(torch.rand_like(m.weight) > 0.8)
    mod, dtype = tvm_relax.to_relax(torch.export.export(model, (x,)), x)
    with target:
        mod = PipelineLog(quiet=True).run(
            tvm_relax.passes(tvm_relax._Algorithms(algorithm_cfg(name, data_format)), dtype), mod
        )
    return mod, model


def run(mod: tvm.IRModule, x: np.ndarray, target: tvm.target.Target) -> np.ndarray:
    vm = relax.VirtualMachine(tvm.compile(mod, target=target), tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x))[0].numpy()


def with_knob_draw(mod: tvm.IRModule, target: tvm.target.Target, seed: int) -> tvm.IRModule:
    """Every kernel scheduled by its template with sampled knobs (what MetaSchedule tries)."""
    mod = tvm.IRModule(dict(mod.functions_items()))
    for gvar, func in list(mod.functions_items()):
        if isinstance(func, tvm.tirx.PrimFunc):
            sch = schedule_kernel(func, target, tunable=True, seed=seed)
            mod[gvar] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
    return mod


@pytest.mark.tvm
@pytest.mark.slow
@pytest.mark.parametrize(
    ("algorithm", "data_format", "batch"),
    [(a, f, 1) for a, f in COMBINATIONS] + [("spatial_pack", "dense", 2), ("gemm", "csr", 2)],
)
def test_default_and_sampled_schedules_compute_the_loop_nest(
    algorithm: str, data_format: str, batch: int
) -> None:
    target = tvm.target.Target(AVX512 if host_has("avx512f") else AVX2)
    x = torch.randn(batch, 3, 11, 10)
    mod, model = lowered(algorithm, x, target, data_format)
    plain = run(mod, x.numpy(), target)
    expected = model(x).detach().numpy()
    np.testing.assert_allclose(plain, expected, rtol=1e-4, atol=1e-4)
    before = mod.script()
    drawn = [with_knob_draw(mod, target, seed) for seed in (1, 2)]
    with target:
        scheduled = default_schedules(target)(mod)
    kernels = [f for f in scheduled.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    assert all(f.attrs["tirx.is_scheduled"] for f in kernels)
    assert scheduled.script() != before  # something was scheduled
    np.testing.assert_allclose(run(scheduled, x.numpy(), target), plain, rtol=1e-5, atol=1e-5)
    for draw in drawn:
        np.testing.assert_allclose(run(draw, x.numpy(), target), plain, rtol=1e-5, atol=1e-5)


class Epilogues(nn.Module):
    """What the zoo's non-ResNet blocks put around their convs: SiLU (efficientnet's
    ``x * sigmoid(x)``, an epilogue that reads the conv's value twice), and a concat
    followed by a BatchNorm that no conv precedes (densenet's pre-activation), so it
    cannot fold into any weights and stays a chain of elementwise ops."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 24, 3, padding=1)
        self.depthwise = nn.Conv2d(24, 24, 3, stride=2, padding=1, groups=24)
        self.dilated = nn.Conv2d(24, 24, 3, padding=2, dilation=2, groups=24)
        self.a = nn.Conv2d(24, 8, 1)
        self.b = nn.Conv2d(24, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.out = nn.Conv2d(16, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.silu(self.conv(x))
        x = torch.relu(self.dilated(torch.relu(self.depthwise(x))))
        y = torch.relu(self.bn(torch.cat([self.a(x), self.b(x)], 1)))
        return self.out(y)


def epilogue_module(algorithm: str, x: torch.Tensor, target: tvm.target.Target):
    torch.manual_seed(0)
    model = Epilogues().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
        model.bn.weight.uniform_(0.5, 1.5)
    mod, dtype = tvm_relax.to_relax(torch.export.export(model, (x,)), x)
    with target:
        mod = PipelineLog(quiet=True).run(
            tvm_relax.passes(tvm_relax._Algorithms(algorithm_cfg(algorithm)), dtype), mod
        )
        scheduled = default_schedules(target)(mod)
    return scheduled, model


@pytest.mark.tvm
@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_dag_epilogues_and_elementwise_chains_are_one_pass(algorithm: str) -> None:
    """SiLU is computed inside the conv's tile with the polynomial sigmoid (no scalar
    ``expf``), a depthwise conv (24 channels: blocks of 8 on AVX-512 too) runs
    channel-blocked, and a concat-BatchNorm-ReLU chain is one parallel loop nest that
    writes no intermediate buffer; all still compute what PyTorch does."""
    from tvm import s_tir

    from dlas.algorithms.schedule import root_blocks

    target = tvm.target.Target(AVX512 if host_has("avx512f") else AVX2)
    x = torch.randn(1, 3, 9, 10)
    scheduled, model = epilogue_module(algorithm, x, target)
    kernels = {
        g.name_hint: f for g, f in scheduled.functions_items() if isinstance(f, tvm.tirx.PrimFunc)
    }
    silu = [n for n in kernels if "fast_sigmoid" in n and "conv2d" in n]
    concat = [n for n in kernels if "concatenate" in n]
    assert silu and concat, sorted(kernels)
    depthwise = [n for n in kernels if "depthwise_packed" in n]
    assert len(depthwise) == 2, sorted(kernels)  # strided, and dilated
    for name in depthwise:
        assert "(3, 3, 3, 8)" in kernels[name].script(), f"{name}: kernel in blocks of 8"
    for name in silu:
        text = kernels[name].script()
        assert "T.sigmoid" not in text and "T.exp(" not in text, name
        sch = s_tir.Schedule(kernels[name])
        last = root_blocks(sch)[-1]
        outer = sch.get_loops(last)[0]
        assert sch.get(outer).kind == tvm.tirx.ForKind.PARALLEL, name
        assert len(sch.get_child_blocks(outer)) > 1, f"{name}: the epilogue is a pass of its own"
    for name in concat:
        sch = s_tir.Schedule(kernels[name])
        (only,) = root_blocks(sch)
        assert sch.get(sch.get_loops(only)[0]).kind == tvm.tirx.ForKind.PARALLEL
    expected = model(x).detach().numpy()
    np.testing.assert_allclose(run(scheduled, x.numpy(), target), expected, rtol=1e-4, atol=1e-4)


def test_fast_math_stays_within_its_documented_error() -> None:
    """TOPI's polynomial exp and our sigmoid on it, against float64, over float32's range
    (the bound ``dlas.compiler.fast_math`` states)."""
    from tvm import te, topi

    from dlas.compiler.fast_math import sigmoid_te

    x = te.placeholder((1 << 14,), "float32", name="x")
    xs = np.linspace(-87, 88, 1 << 14).astype("float32")
    got = {}
    for name, out in (("exp", topi.fast_exp(x)), ("sigmoid", sigmoid_te(x))):
        fn = tvm.compile(te.create_prim_func([x, out]), target="llvm")
        result = tvm.runtime.tensor(np.zeros_like(xs))
        fn(tvm.runtime.tensor(xs), result)
        got[name] = result.numpy().astype("float64")
    exp = np.exp(xs.astype("float64"))
    sigmoid = 1 / (1 + np.exp(-xs.astype("float64")))
    assert np.max(np.abs(got["exp"] - exp) / exp) < 5e-6
    assert np.max(np.abs(got["sigmoid"] - sigmoid) / sigmoid) < 5e-6
    assert np.max(np.abs(got["sigmoid"] - sigmoid)) < 1e-6
    # below exp's input clamp (-88.38) the error is absolute and tiny: no inf, no NaN
    fn = tvm.compile(te.create_prim_func([x, topi.fast_exp(x)]), target="llvm")
    low = np.linspace(-120, -88.5, 1 << 14).astype("float32")
    result = tvm.runtime.tensor(np.zeros_like(low))
    fn(tvm.runtime.tensor(low), result)
    assert np.all(np.isfinite(result.numpy()))
    assert np.max(np.abs(result.numpy().astype("float64") - np.exp(low.astype("float64")))) < 1e-37


def test_every_algorithm_has_a_registered_schedule() -> None:
    assert {
        "conv2d_direct",
        "gemm",
        "conv_packed",
        "winograd_batched_gemm",
        "conv2d_csr",
        "conv2d_bsr",
        "conv_dw_packed",
        "matmul",
    } <= set(ANCHORS)


def kernel_asm(mod: tvm.IRModule, target: tvm.target.Target) -> str:
    executable = tvm.compile(mod, target=target)
    return "".join(m.inspect_source("s") for m in executable.mod.imports)


@pytest.mark.tvm
@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_defaults_follow_the_targets_vector_width(algorithm: str) -> None:
    """An AVX2 target gets 8-lane tiles and 256-bit code; AVX-512 16 lanes and zmm
    registers (compile-only: no AVX-512 needed on the host)."""
    x = torch.randn(1, 3, 11, 10)
    widths = {}
    for spec in (AVX2, AVX512):
        target = tvm.target.Target(spec)
        mod, _ = lowered(algorithm, x, target)
        with target:
            mod = default_schedules(target)(mod)
        asm = kernel_asm(mod, target)
        widths[spec["mcpu"]] = ("zmm" in asm, "ymm" in asm)
    assert vector_bits(tvm.target.Target(AVX2)) == 256
    assert vector_bits(tvm.target.Target(AVX512)) == 512
    assert widths["x86-64-v3"] == (False, True)
    assert widths["skylake-avx512"][0]


@pytest.mark.tvm
@pytest.mark.slow
@pytest.mark.parametrize(
    ("spec", "size", "tile", "blocks"),
    [(AVX512, 2, [2, 2], 4), (AVX2, 2, [2, 2], 2), (AVX512, 16, [1, 8], 2), (AVX2, 16, [1, 8], 1)],
)
def test_spatial_pack_fills_the_register_file(
    spec: dict, size: int, tile: list[int], blocks: int
) -> None:
    """On a 2x2 map one tile has 4 output pixels: the default tile takes several
    output-channel blocks (4 of 16 lanes on AVX-512, 2 of 8 on AVX2), so it keeps half
    the register file in accumulators, while the parallel loop keeps work for both
    cores. On a 16x16 map the tile is one 8-pixel row (not 2 rows) of 2 blocks on
    AVX-512, 1 on AVX2. Either way it still computes what PyTorch does."""
    from tvm import s_tir

    class Late(nn.Module):  # a late ResNet layer: 128 channels on a 2x2 map
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(128, 128, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.conv(x))

    torch.manual_seed(0)
    model = Late().eval()
    x = torch.randn(1, 128, size, size)
    target = tvm.target.Target(spec)
    mod, dtype = tvm_relax.to_relax(torch.export.export(model, (x,)), x)
    with target:
        mod = PipelineLog(quiet=True).run(
            tvm_relax.passes(tvm_relax._Algorithms(algorithm_cfg("spatial_pack")), dtype), mod
        )
        scheduled = default_schedules(target)(mod)
    (func,) = [
        f
        for g, f in scheduled.functions_items()
        if isinstance(f, tvm.tirx.PrimFunc) and "spatial_pack" in g.name_hint
    ]
    sch = s_tir.Schedule(func)
    update = sch.get_sblock("conv_packed_update")
    unrolled = [
        int(sch.get(loop).extent)
        for loop in sch.get_loops(update)
        if sch.get(loop).kind == tvm.tirx.ForKind.UNROLLED
    ]
    assert unrolled[-2:] == tile, unrolled  # vh x vw pixels
    assert np.prod(unrolled) == blocks * np.prod(tile), unrolled  # x blocks: accumulators
    (parallel,) = [
        loop for loop in sch.get_loops(update) if sch.get(loop).kind == tvm.tirx.ForKind.PARALLEL
    ]
    assert int(sch.get(parallel).extent) >= 2  # 128 / 16 / 4 = 2 tiles on AVX-512
    names = {sch.get(b).name_hint for b in sch.get_child_blocks(parallel)}
    assert len(names - {"conv_packed_init", "conv_packed_update"}) >= 1, names  # epilogue
    if spec is AVX512 and not host_has("avx512f"):
        return
    expected = model(x).detach().numpy()
    np.testing.assert_allclose(run(scheduled, x.numpy(), target), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.tvm
@pytest.mark.slow
def test_layouts_follow_the_targets_lanes() -> None:
    """Spatial pack's channel block and the GEMM's weight panel are one vector wide."""
    x = torch.randn(1, 3, 11, 10)
    for spec, lanes in ((AVX2, 8), (AVX512, 16)):
        target = tvm.target.Target(spec)
        for algorithm, block in (("spatial_pack", "conv_packed"), ("gemm", "gemm")):
            mod, _ = lowered(algorithm, x, target)
            text = mod.script(show_meta=False)
            # the 32-channel pointwise conv: 32 / lanes packed blocks of `lanes` channels
            dims = (32 // lanes, 20, lanes) if block == "gemm" else (32 // lanes, 20, 1, 1, lanes)
            assert shape_in(text, dims), (algorithm, lanes)


def shape_in(text: str, dims: tuple[int, ...]) -> bool:
    """Whether TVMScript ``text`` has a buffer of shape ``dims`` (int32 or int64 dims)."""
    pattern = r",\s*".join(rf"(?:T\.int64\()?{d}\)?" for d in dims)
    return re.search(rf"\(\s*{pattern}\s*\)", text) is not None


@pytest.mark.tvm
@pytest.mark.slow
def test_schedule_none_keeps_the_plain_loop_nests(tmp_path: Path) -> None:
    from dlas.hardware import get_device

    x = torch.randn(1, 3, 11, 10)
    model = Convs().eval()
    program = torch.export.export(model, (x,))
    device = get_device("cpu", threads=2)
    plain = tvm_relax.build(
        program, x, device, algorithm_cfg("direct"), tmp_path / "a", None, "none"
    )
    default = tvm_relax.build(program, x, device, algorithm_cfg("direct"), tmp_path / "b")
    assert "default_schedules" not in plain.pipeline
    assert default.pipeline[-2:] == ["default_schedules", "build_library_llvm"]
    with pytest.raises(ValueError, match="compiler.schedule 'tuned'.*default, none"):
        check_schedule("tuned")


@pytest.mark.tvm
@pytest.mark.slow
def test_a_schedule_that_cannot_apply_names_the_kernel(monkeypatch) -> None:
    def broken(sch, block, knobs) -> None:
        sch.compute_inline(sch.get_sblock("conv2d_direct"))  # a reduction cannot be inlined

    monkeypatch.setitem(ANCHORS, "conv2d_direct", broken)
    target = tvm.target.Target(AVX2)
    mod, _ = lowered("direct", torch.randn(1, 3, 11, 10), target)
    with (
        target,
        pytest.raises(
            (ScheduleError, RuntimeError),  # through TVM's pass machinery: RuntimeError
            match=r"kernel fused_conv2d_direct\w*: .*conv2d_direct",
        ),
    ):
        default_schedules(target)(mod)


@pytest.mark.tuning
@pytest.mark.tvm
@pytest.mark.slow
def test_tuning_measures_the_default_first_and_never_loses_to_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """2 trials per task: each task's default schedule is in the database with its time,
    the best record is at least as fast, and re-applying the database gives the outputs
    of the fresh tuning."""
    from dlas.hardware import get_device

    class Small(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(4, 16, 3, padding=1)
            self.fc = nn.Linear(16 * 6 * 6, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))

    torch.manual_seed(0)
    model = Small().eval()
    x = torch.randn(1, 4, 6, 6)
    program = torch.export.export(model, (x,))
    device = get_device("cpu", threads=2)
    tuning = Tuning(0, 2, tmp_path / "tuning")
    fresh = tvm_relax.build(program, x, device, algorithm_cfg("direct"), tmp_path / "a", tuning)
    costs = json.loads(next((tmp_path / "tuning").glob("*/tasks.json")).read_text())
    assert {c["task"] for c in costs} == {
        "fused_conv2d_direct_add_relu",
        "fused_matmul_add",
    } or len(costs) == 2
    for cost in costs:
        assert cost["default_ms"] is not None and cost["default_ms"] > 0
        assert cost["best_ms"] <= cost["default_ms"]
        assert cost["trials"] >= 2  # the default record plus the searched ones
        assert cost["best_from"] in ("default", "template", "generic")
    # the whole model, tuned vs untuned, timed end to end: the faster program is kept
    decided = fresh.info["end_to_end"]
    assert decided["kept"] in ("tuned", "untuned") and decided["untuned_ms"] > 0
    # (untuned only when faster by more than the timing noise, KEEP_TUNED_WITHIN)
    faster = decided["untuned_ms"] * (1 + KEEP_TUNED_WITHIN) < decided["tuned_ms"]
    assert (decided["kept"] == "untuned") == faster, decided
    assert "keep_faster_of_tuned_and_untuned" in fresh.pipeline
    again = tvm_relax.build(program, x, device, algorithm_cfg("direct"), tmp_path / "b", tuning)
    assert again.tune_s == 0.0  # re-applied, not re-tuned, and the decision not re-timed
    assert again.info["end_to_end"] == decided
    outputs = []
    for built in (fresh, again):
        vm = relax.VirtualMachine(tvm.runtime.load_module(str(built.library)), tvm.cpu())
        outputs.append(vm["main"](tvm.runtime.tensor(x.numpy()))[0].numpy())
    np.testing.assert_array_equal(outputs[0], outputs[1])
    np.testing.assert_allclose(outputs[0], model(x).detach().numpy(), rtol=1e-4, atol=1e-5)

    # where the untuned program times faster end to end, it is the one built
    from dlas.compiler import measure

    state = next((tmp_path / "tuning").glob("*/dlas_tuning.json"))
    state.write_text(
        json.dumps({k: v for k, v in json.loads(state.read_text()).items() if k != "end_to_end"})
    )
    monkeypatch.setattr(measure, "measure_in_subprocess", lambda *a, **k: ([1.0, 1.1], [2.0, 2.1]))
    slower = tvm_relax.build(program, x, device, algorithm_cfg("direct"), tmp_path / "c", tuning)
    assert slower.info["end_to_end"]["kept"] == "untuned" and slower.tune_s > 0
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(slower.library)), tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(x.numpy()))[0].numpy()
    np.testing.assert_allclose(out, model(x).detach().numpy(), rtol=1e-4, atol=1e-5)
    assert json.loads(state.read_text())["end_to_end"]["kept"] == "untuned"


@pytest.mark.tvm
@pytest.mark.tuning
@pytest.mark.slow
def test_tuning_times_candidates_with_the_models_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MetaSchedule's runner workers inherit TVM_NUM_THREADS: without it they ran every
    candidate on half the cores while the model runs on all of them. Each thread count
    gets a database of its own."""
    import os

    seen: dict[int, str | None] = {}

    def fake_tune(tasks, work_dir, trials, tuning):
        seen[len(seen) + 1] = os.environ.get("TVM_NUM_THREADS")
        return 0.0

    from dlas.compiler import tuning as metaschedule

    monkeypatch.setattr(metaschedule, "_tune_tasks", fake_tune)
    monkeypatch.delenv("TVM_NUM_THREADS", raising=False)
    target = tvm.target.Target(AVX512)
    mod, _ = lowered("spatial_pack", torch.randn(1, 3, 11, 10), target)
    tuning = Tuning(0, 1, tmp_path)
    one = tune([mod], target, tuning, 1)
    two = tune([mod], target, tuning, 2)
    assert seen == {1: "1", 2: "2"}
    assert one.work_dir != two.work_dir
    assert "TVM_NUM_THREADS" not in os.environ


@pytest.mark.tvm
@pytest.mark.tuning
@pytest.mark.slow
def test_the_pooled_builder_keeps_its_workers_and_reports_failures() -> None:
    """One worker pool per tuning (MetaSchedule's LocalBuilder starts one per round), and
    a build that fails is a result with its error, as LocalBuilder reports it."""
    from tvm.s_tir import meta_schedule as ms

    from dlas.compiler.pooled_builder import PooledBuilder

    target = tvm.target.Target(AVX512)
    mod, _ = lowered("direct", torch.randn(1, 3, 11, 10), target)
    kernel = tuning_tasks([mod], target, TUNED_OPS)[0].dispatched[0]
    # the fused kernel as the Relax module holds it (not extracted as a task) fails to build
    broken = tvm.IRModule(
        {"main": next(f for g, f in mod.functions_items() if "conv2d" in g.name_hint)}
    )
    builder = PooledBuilder(max_workers=1)
    try:
        first = builder.build([ms.builder.BuilderInput(kernel, target)])
        workers = list(builder._pool._worker_map.values())  # held: their ids stay theirs
        second = builder.build(
            [
                ms.builder.BuilderInput(kernel, target),
                ms.builder.BuilderInput(broken, target),
            ]
        )
        after = list(builder._pool._worker_map.values())
        assert all(a is w for a, w in zip(after, workers, strict=True))
    finally:
        builder.shutdown()
    assert first[0].error_msg is None and Path(first[0].artifact_path).exists()
    assert second[0].error_msg is None and Path(second[0].artifact_path).exists()
    assert second[1].artifact_path is None and "exception" in second[1].error_msg


@pytest.mark.tvm
@pytest.mark.slow
def test_a_records_space_is_read_from_its_trace() -> None:
    """tasks.json says which space each task's winner came from: the default schedule,
    our template's sampled knobs or MetaSchedule's generic space."""
    from tvm.s_tir import meta_schedule as ms

    from dlas.compiler.template_tuning import space_of

    target = tvm.target.Target(AVX512)
    mod, _ = lowered("spatial_pack", torch.randn(1, 3, 11, 10), target)
    name, func = next(
        (g.name_hint, f)
        for g, f in mod.functions_items()
        if isinstance(f, tvm.tirx.PrimFunc) and "conv2d" in g.name_hint
    )
    assert space_of(schedule_kernel(func, target, tunable=False).trace) == "default", name
    assert space_of(schedule_kernel(func, target, tunable=True, seed=1).trace) == "template"
    context = ms.TuneContext(
        mod=tvm.IRModule({"main": func}),
        target=target,
        space_generator="post-order-apply",
        num_threads=1,
    )
    generic = context.generate_design_space()
    assert generic and {space_of(s.trace) for s in generic} == {"generic"}


def int8_conv_module(
    weight: np.ndarray,
    stride: int,
    groups: int = 1,
    zero_point_pad: tuple[int, int, int, int] | None = None,
) -> tvm.IRModule:
    """uint8 x int8 -> int32 conv with a float requantize epilogue, as the int8 route
    (dlas.compiler.int8) emits it: padding 1 or, for an input with a non-zero zero point,
    an explicit pad with that zero point (here 100) and a conv without padding."""
    bb = relax.BlockBuilder()
    channels = weight.shape[1] * groups
    x = relax.Var("x", relax.TensorType((1, channels, 9, 9), "uint8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            data, padding = x, 1
            if zero_point_pad is not None:
                top, left, bottom, right = zero_point_pad
                widths = [0, 0, 0, 0, top, bottom, left, right]
                data = bb.emit(relax.op.nn.pad(x, widths, pad_value=100))
                padding = 0
            acc = bb.emit(
                relax.op.nn.conv2d(
                    data,
                    relax.const(weight),
                    strides=stride,
                    padding=padding,
                    groups=groups,
                    out_dtype="int32",
                )
            )
            real = bb.emit(relax.op.multiply(relax.op.astype(acc, "float32"), relax.const(0.01)))
            out = bb.emit_output(bb.emit(relax.op.nn.relu(real)))
        bb.emit_func_output(out)
    return bb.get()


def legalized_build(mod: tvm.IRModule, algorithm: str, schedule: bool, target):
    """A hand-built Relax module through our conv legalization, TVM's lowering and
    fusion, and (``schedule``) the default schedules: the executable and the records."""
    from dlas.algorithms import legalize_convs

    t = relax.transform
    with target:
        mod, records = legalize_convs(mod, algorithm)
        mod = t.FuseTIR()(t.FuseOps()(t.AnnotateTIROpPattern()(t.LegalizeOps()(mod))))
        if schedule:
            mod = default_schedules(target)(narrow_indices()(mod))
    return tvm.compile(mod, target=target), records


def int8_build(
    weight: np.ndarray, stride: int, algorithm: str, schedule: bool, target, **conv: object
):
    return legalized_build(int8_conv_module(weight, stride, **conv), algorithm, schedule, target)


@pytest.mark.tvm
@pytest.mark.slow
@pytest.mark.parametrize("stride", [1, 2])
def test_int8_spatial_pack_uses_vnni_and_is_bit_exact(stride: int) -> None:
    """On an AVX-512 VNNI target the int8 spatial pack is one vpdpbusd per 16 output x 4
    input channels (input channels padded from 20 to 24); its integers are exactly the
    plain loop nest's."""
    rng = np.random.default_rng(0)
    weight = rng.integers(-128, 128, (32, 20, 3, 3), dtype=np.int8)
    x = rng.integers(0, 256, (1, 20, 9, 9), dtype=np.uint8)
    vnni = tvm.target.Target({"kind": "llvm", "mcpu": "cascadelake", "num-cores": 2})
    packed, records = int8_build(weight, stride, "spatial_pack", True, vnni)
    assert records[0]["kernel"] == "conv2d_spatial_pack_vnni"
    assert "vpdpbusd" in "".join(m.inspect_source("s") for m in packed.mod.imports)
    avx2 = tvm.target.Target(AVX2)  # no VNNI: the plain int32 spatial pack
    assert int8_build(weight, stride, "spatial_pack", True, avx2)[1][0]["kernel"] == (
        "conv2d_spatial_pack"
    )
    if not host_has("avx512_vnni"):
        pytest.skip("host has no AVX-512 VNNI: compiled, not run")
    plain, _ = int8_build(weight, stride, "direct", False, vnni)
    outputs = []
    for executable in (plain, packed):
        vm = relax.VirtualMachine(executable, tvm.cpu())
        outputs.append(vm["main"](tvm.runtime.tensor(x)).numpy())
    np.testing.assert_array_equal(outputs[1], outputs[0])


@pytest.mark.tvm
@pytest.mark.slow
@pytest.mark.parametrize("stride", [1, 2])
def test_int8_depthwise_is_channel_blocked_and_bit_exact(stride: int) -> None:
    """The int8 route's depthwise conv on an input with a non-zero zero point: its pad
    (asymmetric, with the zero point) is a stage of the kernel, the conv runs on blocks of
    8 channels (24 channels: 16 does not divide them) and its integers are exactly the
    plain loop nest's."""
    rng = np.random.default_rng(1)
    weight = rng.integers(-128, 128, (24, 1, 3, 3), dtype=np.int8)
    x = rng.integers(0, 256, (1, 24, 9, 9), dtype=np.uint8)
    target = tvm.target.Target(AVX512 if host_has("avx512f") else AVX2)
    conv = {"groups": 24, "zero_point_pad": (0, 1, 2, 1)}
    packed, records = int8_build(weight, stride, "direct", True, target, **conv)
    assert records[0]["kernel"] == "conv2d_depthwise_packed"
    plain, _ = int8_build(weight, stride, "direct", False, target, **conv)
    outputs = []
    for executable in (plain, packed):
        vm = relax.VirtualMachine(executable, tvm.cpu())
        outputs.append(vm["main"](tvm.runtime.tensor(x)).numpy())
    # the integer reference, written out: zero-point pad, then a per-channel 3x3 sum
    padded = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (0, 2), (1, 1)), constant_values=100)
    size = (9 + 2 - 3) // stride + 1
    acc = np.zeros((1, 24, size, size), np.int64)
    for r in range(3):
        for c in range(3):
            window = padded[:, :, r : r + stride * size : stride, c : c + stride * size : stride]
            acc += window * weight[:, 0, r, c].astype(np.int64)[None, :, None, None]
    reference = np.maximum(acc.astype(np.float32) * np.float32(0.01), 0)
    np.testing.assert_array_equal(outputs[0], reference)
    np.testing.assert_array_equal(outputs[1], reference)


@pytest.mark.tvm
@pytest.mark.slow
@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_with_asymmetric_padding_computes_what_pytorch_does(stride: int) -> None:
    """Paddings (top, left, bottom, right) = (0, 1, 2, 1), as a Relax conv holds them
    after a TensorFlow-style "same" pad is folded in: the packing folds each side's own
    width, and the blocked kernel matches PyTorch's conv of the explicitly padded map."""
    rng = np.random.default_rng(2)
    weight = rng.standard_normal((16, 1, 3, 3)).astype("float32")
    x = rng.standard_normal((1, 16, 10, 9)).astype("float32")
    bb = relax.BlockBuilder()
    var = relax.Var("x", relax.TensorType(x.shape, "float32"))
    with bb.function("main", [var]):
        with bb.dataflow():
            conv = relax.op.nn.conv2d(
                var, relax.const(weight), strides=stride, padding=(0, 1, 2, 1), groups=16
            )
            out = bb.emit_output(bb.emit(relax.op.nn.relu(conv)))
        bb.emit_func_output(out)
    target = tvm.target.Target(AVX512 if host_has("avx512f") else AVX2)
    executable, records = legalized_build(bb.get(), "direct", True, target)
    assert records[0]["kernel"] == "conv2d_depthwise_packed"
    padded = nn.functional.pad(torch.tensor(x), (1, 1, 0, 2))  # left, right, top, bottom
    expected = torch.relu(
        nn.functional.conv2d(padded, torch.tensor(weight), stride=stride, groups=16)
    ).numpy()
    vm = relax.VirtualMachine(executable, tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_a_stage_the_anchor_cannot_fuse_is_still_scheduled() -> None:
    """A reduction after a conv and its ReLU (a channel sum: not elementwise, so neither
    inlined nor computed in the conv's tile) gets the generic schedule instead of running
    as a serial loop nest after the conv; the kernel still computes what numpy does."""
    from tvm import s_tir, te

    from dlas.algorithms.common import Conv2dSpec
    from dlas.algorithms.direct import conv2d_direct
    from dlas.algorithms.schedule import root_blocks

    spec = Conv2dSpec(8, 9, 10, 16, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1)
    data = te.placeholder((1, 8, 9, 10), name="data")
    weight = te.placeholder((16, 8, 3, 3), name="weight")
    conv = conv2d_direct(data, weight, spec, "float32")
    relu = te.compute(conv.shape, lambda *i: te.max(conv(*i), 0.0), name="relu")
    k = te.reduce_axis((0, 16), name="k")
    total = te.compute(
        (1, 9, 10), lambda n, y, x: te.sum(relu[n, k, y, x], axis=k), name="channel_sum"
    )
    target = tvm.target.Target(AVX512 if host_has("avx512f") else AVX2)
    sch = schedule_kernel(te.create_prim_func([data, weight, total]), target)
    last = s_tir.Schedule(sch.mod["main"])
    (block,) = [b for b in root_blocks(last) if last.get(b).name_hint == "channel_sum"]
    assert last.get(last.get_loops(block)[0]).kind == tvm.tirx.ForKind.PARALLEL
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 8, 9, 10)).astype("float32")
    w = rng.standard_normal((16, 8, 3, 3)).astype("float32")
    out = tvm.runtime.tensor(np.zeros((1, 9, 10), "float32"))
    tvm.compile(sch.mod, target=target)(tvm.runtime.tensor(x), tvm.runtime.tensor(w), out)
    ref = torch.relu(torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(w), padding=1))
    np.testing.assert_allclose(out.numpy(), ref.sum(1).numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.tvm
@pytest.mark.slow
def test_a_fresh_process_registers_every_intrinsic_a_database_may_name() -> None:
    """Re-applying a database is often the first thing a process does with TVM; its
    records may name TVM's VNNI intrinsic (MetaSchedule's generic space) and ours. (The
    int8 database that failed to open this way is re-applied by benchmarks/tuned.py.)"""
    import subprocess
    import sys

    child = (
        "from dlas.compiler.template_tuning import register_intrinsics\n"
        "from dlas.algorithms import vnni\n"
        "from tvm.s_tir import TensorIntrin\n"
        "register_intrinsics()\n"
        "TensorIntrin.get('dot_16x4_vnni'); TensorIntrin.get(vnni.NAME)\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr[-2000:]
