"""dlas.report on a form-function sweep (pattern x depth x width, several compiled paths per
run): the long frame and its analyses on hand-made numbers, then the report of a small
MLflow store whose runs are logged directly, as tests/test_report.py does."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread
from scipy import stats

from dlas.report import load_points
from dlas.report.form_function import (
    LONG_COLUMNS,
    compiled_paths,
    fastest_networks,
    form_function_points,
    is_form_function,
    macs_latency_correlations,
    network_points,
    networks,
    paper_comparison,
    speedup_by_kind,
    speedup_by_pattern,
)
from dlas.report.write import FORM_FUNCTION_OUTPUTS, OUTPUTS, write_report

MAIN = "tvm_autoschedule"
COMPARED = ("tvm_untuned", "torch_compile")
COMPILERS = (MAIN, *COMPARED)
LLC = 1 * 2**20  # bytes
# (pattern, depth, width) -> speedup over eager of (tvm_autoschedule, tvm_untuned, torch_compile)
SPEEDUPS = {
    ("plain", 1, 8): (2.0, 0.5, 1.0),
    ("plain", 1, 16): (8.0, 1.0, 2.0),
    ("plain", 2, 8): (2.0, 0.5, 2.0),
    ("plain", 2, 16): (8.0, 1.0, 2.0),
    ("residual", 1, 8): (1.0, 0.25, 1.0),
    ("residual", 1, 16): (1.0, 0.25, 1.0),
    ("residual", 2, 8): (4.0, 1.0, 1.0),
    ("residual", 2, 16): (4.0, 1.0, 1.0),
}
# geometric means of the columns above, by hand: (2*8*2*8)^(1/4) = 4, ...
GEOMEANS = {
    ("plain", MAIN): 4.0,
    ("plain", "tvm_untuned"): math.sqrt(0.5),
    ("plain", "torch_compile"): 8**0.25,
    ("residual", MAIN): 2.0,
    ("residual", "tvm_untuned"): 0.5,
    ("residual", "torch_compile"): 1.0,
}
OVER_LLC = ("plain", 2, 16)  # the only point whose working set does not fit
# fallback: this run logs its main compiler only unprefixed (as runs did before compare=)
UNPREFIXED_MAIN = ("residual", 2, 16)


def macs_of(pattern: str, depth: int, width: int) -> float:
    return depth * width**2 * 1000.0 * (1.5 if pattern == "residual" else 1.0)


def eager_ms(pattern: str, depth: int, width: int) -> float:
    """Not proportional to MACs, so that the correlations are not all exactly 1."""
    macs = macs_of(pattern, depth, width)
    return macs / 1e5 + (0.7 if pattern == "residual" else 0.1 * depth)


def latency_ms(point: tuple[str, int, int], compiler: str) -> float:
    return eager_ms(*point) / SPEEDUPS[point][COMPILERS.index(compiler)]


def working_set(point: tuple[str, int, int]) -> float:
    return 2.0 * LLC if point == OVER_LLC else macs_of(*point) / 2


# ---------------------------------------------------------------- pure analyses


def hand_made_points() -> pd.DataFrame:
    """The points frame load_points gives for SPEEDUPS (every path prefixed)."""
    rows = []
    for point, speedups in SPEEDUPS.items():
        pattern, depth, width = point
        row = {
            "model": pattern,
            "depth": float(depth),
            "width": float(width),
            "compiler": MAIN,
            "hardware": "cpu",
            "macs": macs_of(*point),
            "working_set_bytes": working_set(point),
            "llc_bytes": float(LLC),
            "torch_latency_ms": eager_ms(*point),
            "latency_ms": latency_ms(point, MAIN),
            "speedup": speedups[0],
            "run_id": "-".join(map(str, point)),
        }
        for compiler in COMPILERS:
            row[f"{compiler}/latency_ms"] = latency_ms(point, compiler)
            row[f"{compiler}/speedup"] = speedups[COMPILERS.index(compiler)]
        rows.append(row)
    return pd.DataFrame(rows)


def test_speedup_by_pattern_is_the_geometric_mean_per_pattern_and_compiler() -> None:
    table = speedup_by_pattern(compiled_paths(hand_made_points()))
    assert table.columns.tolist() == [
        "pattern",
        "compiler",
        "geomean_speedup",
        "min_speedup",
        "max_speedup",
        "n",
    ]
    # patterns in study order, compilers untuned before tuned; eager (always 1x) left out
    assert list(zip(table["pattern"], table["compiler"], strict=True)) == [
        ("plain", "torch_compile"),
        ("plain", "tvm_untuned"),
        ("plain", MAIN),
        ("residual", "torch_compile"),
        ("residual", "tvm_untuned"),
        ("residual", MAIN),
    ]
    cells = table.set_index(["pattern", "compiler"])
    for key, expected in GEOMEANS.items():
        assert cells.loc[key, "geomean_speedup"] == pytest.approx(expected), key
    assert (
        cells.loc[("plain", MAIN), "min_speedup"],
        cells.loc[("plain", MAIN), "max_speedup"],
    ) == (
        2.0,
        8.0,
    )
    assert cells.loc[("residual", "tvm_untuned"), "min_speedup"] == 0.25
    assert cells["n"].tolist() == [4] * 6


# (model, depth, width) -> eager ms, then (openvino, onnxruntime) ms; depth None: a zoo model
NETWORKS = {
    ("resnet18", None, None): (4.0, 1.0, 0.8),
    ("mobilenet_v2", None, None): (3.0, 0.5, 0.4),
    ("darts", 20, 36): (12.0, 1.0, 2.0),
    ("inverted_residual", 2, 16): (5.0, 1.0, 1.0),  # a pattern point, not a network
    ("plain", 2, 16): (2.0, 1.0, 1.0),
}


def network_frame() -> pd.DataFrame:
    rows = []
    for (model, depth, width), (eager, *paths) in NETWORKS.items():
        row = {
            "model": model,
            "depth": math.nan if depth is None else float(depth),
            "width": math.nan if width is None else float(width),
            "compiler": "openvino",
            "torch_latency_ms": eager,
            "latency_ms": paths[0],
            "speedup": eager / paths[0],
        }
        for compiler, ms in zip(("openvino", "onnxruntime"), paths, strict=True):
            row |= {f"{compiler}/latency_ms": ms, f"{compiler}/speedup": eager / ms}
        rows.append(row)
    return pd.DataFrame(rows)


def test_networks_set_nas_found_against_hand_crafted_and_the_papers_findings() -> None:
    points = network_frame()
    nets = networks(compiled_paths(network_points(points)))
    # whole networks only (zoo and NAS-found), fastest eager first, eager path included
    assert list(dict.fromkeys(nets["network"])) == ["mobilenet_v2", "resnet18", "darts d20 w36"]
    assert len(nets) == 3 * 3
    assert set(nets[nets["network"] == "darts d20 w36"]["kind"]) == {"NAS-found"}
    kinds = speedup_by_kind(nets).set_index(["kind", "compiler"])
    assert kinds.loc[("hand-crafted", "openvino"), "geomean_speedup"] == pytest.approx(
        math.sqrt(4.0 * 6.0)
    )
    assert kinds.loc[("NAS-found", "openvino"), "geomean_speedup"] == pytest.approx(12.0)
    assert kinds.loc[("NAS-found", "onnxruntime"), "n"] == 1
    fastest = fastest_networks(nets).set_index("compiler")
    assert fastest.loc["openvino", "network"] == "mobilenet_v2"
    assert fastest.loc["openvino", "latency_ms"] == 0.5
    assert fastest.loc["openvino", "runner_up"] == "resnet18"  # the tie with darts: eager order
    assert fastest.loc["pytorch", "network"] == "mobilenet_v2"

    by_pattern = speedup_by_pattern(compiled_paths(form_function_points(points)))
    paper = paper_comparison(by_pattern, nets).set_index("finding")
    assert paper.loc["mean speedup over the patterns", "here"] == f"{math.sqrt(5.0 * 2.0):.2f}x"
    assert paper.loc["pattern that gains most", "here"] == "inverted_residual, 5.00x"
    assert paper.loc["NAS-found network gains most", "agrees"]
    assert paper.loc["fastest network", "here"] == "mobilenet_v2, 0.5 ms"
    assert paper["agrees"].tolist() == [True, True, True, True]
    # another accelerator: onnxruntime's largest gain is a hand-crafted network's
    other = paper_comparison(by_pattern, nets, "onnxruntime").set_index("finding")
    assert other.loc["NAS-found network gains most", "agrees"] == False  # noqa: E712
    assert other.loc["NAS-found network gains most", "here"] == (
        "darts d20 w36, 6.00x (most: mobilenet_v2, 7.50x)"
    )


def test_a_pattern_measured_once_still_gets_its_bar(tmp_path: Path) -> None:
    """One point per pattern: the geometric mean is that speedup only up to rounding
    (exp(log(s)) != s), which must not make a negative whisker (a first quick sweep's
    report failed on it)."""
    from dlas.report import form_figures

    points = network_frame()
    table = speedup_by_pattern(compiled_paths(form_function_points(points)))
    assert set(table["n"]) == {1}
    path = form_figures.speedup_by_pattern(table, tmp_path / "one.png")
    assert imread(path)[..., :3].std() > 0.05


def test_paper_comparison_without_points_says_nothing() -> None:
    empty = networks(compiled_paths(network_points(hand_made_points())))
    assert empty.empty
    paper = paper_comparison(speedup_by_pattern(compiled_paths(hand_made_points())), empty)
    assert paper["here"].tolist() == ["", "", "", ""]  # no openvino path was timed
    assert paper["agrees"].isna().all()


def test_compiled_paths_discovers_compilers_falls_back_and_adds_eager() -> None:
    points = pd.DataFrame(
        {
            "model": ["plain", "dense"],
            "depth": [1.0, 3.0],
            "width": [8.0, 32.0],
            "compiler": ["tvm_untuned", "tvm_untuned"],
            "macs": [1e6, 9e6],
            "working_set_bytes": [10.0, 50.0],
            "llc_bytes": [20.0, math.nan],  # unknown cache: never "exceeds"
            "torch_latency_ms": [4.0, 9.0],
            # main compiler unprefixed only on the first point (an older run)
            "latency_ms": [8.0, 3.0],
            "speedup": [0.5, 3.0],
            "tvm_untuned/latency_ms": [math.nan, 4.5],  # prefixed wins where present
            "tvm_untuned/speedup": [math.nan, 2.0],
            "my_compiler/latency_ms": [1.0, math.nan],  # a name nobody listed; not timed on dense
            "my_compiler/speedup": [4.0, math.nan],
        },
        index=[7, 3],
    )
    long = compiled_paths(points)
    assert long.columns.tolist() == list(LONG_COLUMNS)
    got = {(r.pattern, r.compiler): (r.latency_ms, r.speedup) for r in long.itertuples()}
    assert got == {
        ("plain", "pytorch"): (4.0, 1.0),
        ("plain", "tvm_untuned"): (8.0, 0.5),
        ("plain", "my_compiler"): (1.0, 4.0),
        ("dense", "pytorch"): (9.0, 1.0),
        ("dense", "tvm_untuned"): (4.5, 2.0),
    }
    assert long["pattern"].tolist()[:3] == ["plain"] * 3  # plain before dense
    assert long["compiler"].tolist()[:2] == ["pytorch", "tvm_untuned"]  # eager first
    assert long["exceeds_llc"].tolist() == [False] * 5


def test_is_form_function_needs_a_depth_and_a_width() -> None:
    assert is_form_function(hand_made_points())
    assert not is_form_function(hand_made_points().drop(columns="width"))
    assert not is_form_function(hand_made_points().assign(depth=math.nan))


def expected_fit(compiler: str) -> dict[str, float]:
    """The correlations and the power law, computed here straight from the definitions."""
    macs = [macs_of(*p) for p in SPEEDUPS]
    if compiler == "pytorch":
        latencies = [eager_ms(*p) for p in SPEEDUPS]
    else:
        latencies = [latency_ms(p, compiler) for p in SPEEDUPS]
    pearson = stats.pearsonr(np.log10(macs), np.log10(latencies))
    spearman = stats.spearmanr(macs, latencies)
    slope, intercept = np.polyfit(np.log10(macs), np.log10(latencies), 1)
    return {
        "n": len(macs),
        "pearson_r_log": pearson.statistic,
        "pearson_p_log": pearson.pvalue,
        "spearman_rho": spearman.statistic,
        "spearman_p": spearman.pvalue,
        "slope_log": slope,
        "intercept_log": intercept,
    }


def assert_correlations(table: pd.DataFrame) -> None:
    assert table["compiler"].tolist() == ["pytorch", "torch_compile", "tvm_untuned", MAIN]
    rows = table.set_index("compiler")
    for compiler in rows.index:
        for column, value in expected_fit(compiler).items():
            assert rows.loc[compiler, column] == pytest.approx(value), (compiler, column)
    # the numbers are not trivially 1: plain and residual differ in latency per MAC
    assert rows.loc[MAIN, "spearman_rho"] < 1.0


def test_macs_latency_correlations_match_scipy() -> None:
    assert_correlations(macs_latency_correlations(compiled_paths(hand_made_points())))


def test_correlations_undefined_on_one_point() -> None:
    one = hand_made_points().iloc[:1]
    table = macs_latency_correlations(compiled_paths(one)).set_index("compiler")
    assert table.loc[MAIN, "n"] == 1
    for column in ("pearson_r_log", "spearman_rho", "slope_log"):
        assert math.isnan(table.loc[MAIN, column])


# ---------------------------------------------------------------- end to end

EXPERIMENT, SWEEP, ZOO_SWEEP = "ff", "form", "zoo"
T0 = 1_700_000_000_000  # ms


def log_run(client, experiment_id: str, start: int, params: dict, metrics: dict, sweep: str):
    from mlflow.entities import Metric, Param

    tags = {"dlas.config_hash": f"{sweep}-{start}", "dlas.sweep_id": sweep}
    tags[f"dlas.sweep.{sweep}"] = "true"
    run = client.create_run(experiment_id, start_time=start, tags=tags)
    client.log_batch(
        run.info.run_id,
        metrics=[Metric(k, float(v), start, 0) for k, v in metrics.items()],
        params=[Param(k, str(v)) for k, v in params.items()],
    )
    client.set_terminated(run.info.run_id, status="FINISHED", end_time=start + 500)
    return run.info.run_id


def base_params(model: str) -> dict:
    return {
        "dataset": "synthetic",
        "model": model,
        "compression": "none",
        "compression.amount": 0.0,
        "algorithm": "direct",
        "data_format": "dense",
        "compiler": MAIN,
        "hardware": "cpu",
        "threads": 2,
    }


def log_pattern_point(client, experiment_id: str, start: int, point: tuple) -> str:
    """One run of the study: eager, the main compiler and the compared ones."""
    pattern, depth, width = point
    params = base_params(pattern) | {"model.depth": depth, "model.width": width}
    eager = eager_ms(*point)
    metrics = {
        "macs": macs_of(*point),
        "params": 1000.0 * width,
        "param_bytes": 4000.0 * width,
        "working_set_bytes": working_set(point),
        "llc_bytes": LLC,
        "torch_latency_ms": eager,
        "latency_ms_median": latency_ms(point, MAIN),
        "speedup_vs_torch": eager / latency_ms(point, MAIN),
    }
    for compiler in COMPILERS:
        if compiler == MAIN and point == UNPREFIXED_MAIN:
            continue
        metrics[f"{compiler}/latency_ms_median"] = latency_ms(point, compiler)
        metrics[f"{compiler}/latency_ms_mean"] = 99.0  # not a path quantity: ignored
        metrics[f"{compiler}/speedup_vs_torch"] = eager / latency_ms(point, compiler)
    return log_run(client, experiment_id, start, params, metrics, SWEEP)


def log_zoo_point(client, experiment_id: str, start: int, sweep: str) -> str:
    """A zoo model (no depth, no width), deployed with the main compiler only."""
    metrics = {"macs": 5e6, "torch_latency_ms": 3.0, "latency_ms_median": 0.1}
    metrics |= {"speedup_vs_torch": 30.0, "top1": 90.0, "size_bytes": 1e6}
    return log_run(client, experiment_id, start, base_params("resnet_tiny"), metrics, sweep)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The study's 8 points plus a zoo model in the same sweep (which must not become a
    pattern) and a zoo-only sweep; the report of the study written once."""
    from mlflow import MlflowClient

    tmp = tmp_path_factory.mktemp("form_function")
    uri = f"sqlite:///{tmp}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment(EXPERIMENT, artifact_location=str(tmp / "artifacts"))
    ids = {
        point: log_pattern_point(client, experiment_id, T0 + 1000 * i, point)
        for i, point in enumerate(SPEEDUPS)
    }
    ids["zoo-in-study"] = log_zoo_point(client, experiment_id, T0 + 20_000, SWEEP)
    ids["zoo"] = log_zoo_point(client, experiment_id, T0 + 21_000, ZOO_SWEEP)
    points = load_points(uri, EXPERIMENT, SWEEP)
    out = tmp / "out"
    written = write_report(points, out)
    return {"uri": uri, "ids": ids, "points": points, "out": out, "written": written}


def test_load_points_reads_the_study_schema(store: dict) -> None:
    points = store["points"].set_index("run_id")
    assert len(points) == 9
    row = points.loc[store["ids"][OVER_LLC]]
    assert (row["depth"], row["width"]) == (2.0, 16.0)
    assert row["param_bytes"] == 64000.0
    assert row["working_set_bytes"] == 2.0 * LLC and row["llc_bytes"] == LLC
    assert row["torch_compile/latency_ms"] == pytest.approx(latency_ms(OVER_LLC, "torch_compile"))
    assert row["tvm_untuned/speedup"] == pytest.approx(1.0)
    assert "torch_compile/latency_ms_mean" not in points.columns
    zoo = points.loc[store["ids"]["zoo-in-study"]]
    assert math.isnan(zoo["depth"]) and math.isnan(zoo["width"])
    assert math.isnan(zoo["tvm_untuned/latency_ms"])


def test_long_frame_has_every_path_of_every_study_point(store: dict) -> None:
    long = pd.read_csv(store["out"] / "compiled_paths.csv")
    assert long.columns.tolist() == list(LONG_COLUMNS)
    assert len(long) == 8 * 4  # eager + 3 compilers, the zoo model left out
    assert set(long["pattern"]) == {"plain", "residual"}
    fallback = long[(long["run_id"] == store["ids"][UNPREFIXED_MAIN]) & (long["compiler"] == MAIN)]
    assert fallback["latency_ms"].tolist() == pytest.approx([latency_ms(UNPREFIXED_MAIN, MAIN)])
    over = long[long["exceeds_llc"]]
    assert set(over["run_id"]) == {store["ids"][OVER_LLC]} and len(over) == 4


def test_report_tables_hold_the_findings(store: dict) -> None:
    table = pd.read_csv(store["out"] / "speedup_by_pattern.csv")
    cells = table.set_index(["pattern", "compiler"])["geomean_speedup"]
    assert cells.to_dict() == pytest.approx(GEOMEANS)
    assert "| plain " in (store["out"] / "speedup_by_pattern.md").read_text()
    assert_correlations(pd.read_csv(store["out"] / "macs_vs_latency.csv"))


def test_every_form_function_file_is_written(store: dict) -> None:
    out = store["out"]
    # the zoo model's top1 and size give the usual report everything it draws, too
    assert {p.name for p in store["written"]} == set(OUTPUTS + FORM_FUNCTION_OUTPUTS)
    for name in FORM_FUNCTION_OUTPUTS:
        path = out / name
        assert path.stat().st_size > 0, name
        if name.endswith(".png"):
            image = imread(path)
            height, width, _ = image.shape
            assert height > 300 and width > 400, name
            assert image[..., :3].std() > 0.05, f"{name} is blank"


def test_other_sweeps_get_no_form_function_files(store: dict, tmp_path: Path) -> None:
    for name in FORM_FUNCTION_OUTPUTS:  # a study's report was written here before
        (tmp_path / name).write_text("stale")
    zoo = load_points(store["uri"], EXPERIMENT, ZOO_SWEEP)
    assert not is_form_function(zoo)
    names = {p.name for p in write_report(zoo, tmp_path)}
    assert "points.csv" in names and not names & set(FORM_FUNCTION_OUTPUTS)
    assert not any((tmp_path / name).exists() for name in FORM_FUNCTION_OUTPUTS)


def test_display_order_names_every_pattern_family():
    from dlas.models import NAS_CELLS, PATTERNS
    from dlas.report.form_function import PATTERN_ORDER

    assert (*PATTERNS, *NAS_CELLS) == PATTERN_ORDER
