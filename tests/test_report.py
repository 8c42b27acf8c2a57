"""dlas.report: the analyses on hand-made numbers, then the whole CLI on a small MLflow store
whose runs are logged directly (no training), so the test takes seconds."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread
from scipy import stats

from dlas.report import best_algorithms, load_points, pareto_front, rank_correlations
from dlas.report import speedup_matrix as speedup_matrix_of
from dlas.report.__main__ import main
from dlas.report.analysis import algorithm_label, top1_as_percent
from dlas.report.write import OUTPUTS

# ---------------------------------------------------------------- pure analyses


def test_pareto_front_keeps_ties_and_one_axis_winners() -> None:
    rows = [  # name, top1 %, latency ms
        ("a", 90.0, 10.0),
        ("dominated", 80.0, 12.0),  # worse than a on both
        ("tie_of_a", 90.0, 10.0),  # identical points keep each other
        ("more_accurate", 95.0, 30.0),  # better on top1 only
        ("faster", 70.0, 5.0),  # better on latency only
        ("slower_a", 90.0, 11.0),  # equal top1, strictly slower
        ("undeployed", 99.0, math.nan),
    ]
    points = pd.DataFrame(rows, columns=["name", "quality", "latency_ms"], index=range(10, 17))
    mask = pareto_front(points)
    assert mask.index.tolist() == points.index.tolist()
    assert mask.tolist() == [True, False, True, True, True, False, False]
    assert points["name"][mask].tolist() == ["a", "tie_of_a", "more_accurate", "faster"]


def test_pareto_front_on_other_columns() -> None:
    points = pd.DataFrame({"acc": [1.0, 2.0, 3.0], "cost": [1.0, 1.0, 0.5]})
    assert pareto_front(points, maximize="acc", minimize="cost").tolist() == [False, False, True]


def test_rank_correlations_are_scipy_spearman() -> None:
    size = [3.0, 1.0, 4.0, 1.5, 5.0, 9.0, 2.6]
    latency = [2.0, 7.0, 1.0, 8.0, 2.5, 8.5, 3.0]
    top1 = [70.0, 71.0, 69.0, 90.0, 91.0, 75.0, 60.0]
    points = pd.DataFrame({"size_bytes": size, "latency_ms": latency, "top1": top1})
    result = rank_correlations(points)
    for name, y in (("size_vs_latency", latency), ("size_vs_quality", top1)):
        expected = stats.spearmanr(size, y)
        assert result[name]["rho"] == pytest.approx(expected.statistic)
        assert result[name]["p_value"] == pytest.approx(expected.pvalue)
        assert result[name]["n"] == 7


def test_rank_correlations_known_values_and_undefined() -> None:
    monotone = pd.DataFrame(
        {"size_bytes": [1.0, 2.0, 3.0, 4.0], "latency_ms": [1.0, 5.0, 6.0, 90.0]}
        | {"top1": [90.0, 80.0, 70.0, 60.0]}
    )
    result = rank_correlations(monotone)
    assert result["size_vs_latency"]["rho"] == pytest.approx(1.0)
    assert result["size_vs_quality"]["rho"] == pytest.approx(-1.0)

    undeployed = monotone.assign(latency_ms=math.nan, top1=[80.0] * 4)
    result = rank_correlations(undeployed)
    assert result["size_vs_latency"]["n"] == 0 and math.isnan(result["size_vs_latency"]["rho"])
    assert math.isnan(result["size_vs_quality"]["rho"])  # constant top1: undefined, not an error


def test_size_vs_quality_counts_each_compressed_model_once() -> None:
    # one model measured by three compilers: one (size, top1) observation, not three
    points = pd.DataFrame(
        {
            "model": ["a", "a", "a", "b", "c"],
            "compression": ["none"] * 5,
            "amount": [0.0] * 5,
            "size_bytes": [1.0, 1.0, 1.0, 2.0, 3.0],
            "top1": [50.0, 50.0, 50.0, 60.0, 55.0],
            "latency_ms": [1.0, 2.0, 3.0, 4.0, 5.0],
        }
    )
    result = rank_correlations(points)
    expected = stats.spearmanr([1.0, 2.0, 3.0], [50.0, 60.0, 55.0])
    assert result["size_vs_quality"]["n"] == 3
    assert result["size_vs_quality"]["rho"] == pytest.approx(expected.statistic)
    assert result["size_vs_latency"]["n"] == 5


def test_algorithm_label_and_top1_scale() -> None:
    assert algorithm_label("gemm", "dense", "tvm_untuned") == "gemm"
    assert algorithm_label("gemm", "csr", "tvm_autoschedule") == "gemm+csr"
    assert algorithm_label("winograd", "bsr", "onnxruntime") == "n/a"
    assert top1_as_percent(pd.Series([0.5, 0.91])).tolist() == [50.0, 91.0]
    assert top1_as_percent(pd.Series([50.0, 0.5])).tolist() == [50.0, 0.5]


def tvm_point(model: str, label: str, compiler: str, latency: float, **extra) -> dict:
    return {
        "dataset": "d",
        "model": model,
        "compression": "none",
        "amount": 0.0,
        "hardware": "cpu",
        "label": label,
        "compiler": compiler,
        "latency_ms": latency,
    } | extra


def test_best_algorithms_flags_when_tuning_changes_the_winner() -> None:
    points = pd.DataFrame(
        [
            tvm_point("a", "direct", "tvm_untuned", 4.0),
            tvm_point("a", "gemm", "tvm_untuned", 3.0),
            tvm_point("a", "direct", "tvm_autoschedule", 1.0),
            tvm_point("a", "gemm", "tvm_autoschedule", 2.0),
            tvm_point("a", "n/a", "pytorch", 0.1),  # not TVM: never a candidate
            tvm_point("b", "direct", "tvm_untuned", 10.0),
            tvm_point("b", "gemm+csr", "tvm_untuned", 11.0),
            tvm_point("b", "direct", "tvm_autoschedule", 5.0),
            tvm_point("b", "gemm+csr", "tvm_autoschedule", math.nan),  # not deployed
            tvm_point("c", "winograd", "tvm_untuned", 7.0),  # never tuned
        ]
    )
    best = best_algorithms(points).set_index("model")
    assert best.loc["a", "untuned_algorithm"] == "gemm"
    assert best.loc["a", "untuned_latency_ms"] == 3.0
    assert best.loc["a", "autoschedule_algorithm"] == "direct"
    assert best.loc["a", "autoschedule_latency_ms"] == 1.0
    assert best.loc["a", "tuning_changes_winner"] is True
    assert best.loc["b", "tuning_changes_winner"] is False
    assert best.loc["b", "autoschedule_latency_ms"] == 5.0
    assert best.loc["c", "untuned_algorithm"] == "winograd"
    assert pd.isna(best.loc["c", "autoschedule_algorithm"])
    assert pd.isna(best.loc["c", "autoschedule_latency_ms"])
    assert pd.isna(best.loc["c", "tuning_changes_winner"])
    assert best.index.tolist() == ["a", "b", "c"]


def test_speedup_matrix_cells() -> None:
    rows = [
        ("m", "none", "gemm", "tvm_untuned", 0.5),
        ("m", "none", "direct", "tvm_untuned", 0.25),
        ("m", "none", "direct", "tvm_autoschedule", 2.0),
        ("m", "none", "n/a", "pytorch", 1.0),
        ("m", "none", "n/a", "onnxruntime", 1.2),
        ("m", "none", "n/a", "onnxruntime", 1.6),  # two runs in a cell: their median
        ("m", "prune", "direct", "tvm_untuned", 9.0),  # another compression
        ("other", "none", "gemm", "tvm_untuned", 7.0),  # another model
        ("m", "none", "winograd", "tvm_untuned", math.nan),  # not deployed
    ]
    points = pd.DataFrame(rows, columns=["model", "compression", "label", "compiler", "speedup"])
    matrix = speedup_matrix_of(points, "m", compression="none")
    assert matrix.index.tolist() == ["direct", "gemm", "n/a"]
    assert matrix.columns.tolist() == ["pytorch", "onnxruntime", "tvm_untuned", "tvm_autoschedule"]
    assert matrix.loc["direct", "tvm_untuned"] == 0.25
    assert matrix.loc["gemm", "tvm_untuned"] == 0.5
    assert matrix.loc["direct", "tvm_autoschedule"] == 2.0
    assert matrix.loc["n/a", "pytorch"] == 1.0
    assert matrix.loc["n/a", "onnxruntime"] == pytest.approx(1.4)
    assert np.isnan(matrix.loc["gemm", "tvm_autoschedule"])
    assert np.isnan(matrix.loc["direct", "pytorch"])
    # compression left open: aggregated (median) over compressions
    assert speedup_matrix_of(points, "m").loc["direct", "tvm_untuned"] == pytest.approx(4.625)


# ---------------------------------------------------------------- end to end

EXPERIMENT, SWEEP, OTHER_SWEEP = "exp", "s1", "s2"
T0 = 1_700_000_000_000  # ms
MODELS = {"small": (10e6, 80.0, 2.5), "big": (40e6, 90.0, 8.0)}  # size, top1 %, eager ms
GRID = {  # (model, algorithm, compiler) -> median latency ms
    ("small", "direct", "tvm_untuned"): 4.0,
    ("small", "gemm", "tvm_untuned"): 3.0,
    ("small", "direct", "tvm_autoschedule"): 1.5,
    ("small", "gemm", "tvm_autoschedule"): 2.0,
    ("big", "direct", "tvm_untuned"): 10.0,
    ("big", "gemm", "tvm_untuned"): 12.0,
    ("big", "direct", "tvm_autoschedule"): 5.0,
    ("big", "gemm", "tvm_autoschedule"): 6.0,
}


def log_point(
    client,
    experiment_id: str,
    start: int,
    model: str,
    algorithm: str,
    compiler: str,
    latency: float | None,
    *,
    compression: str = "none",
    amount: float = 0.0,
    sweeps: tuple[str, ...] = (SWEEP,),
    status: str = "FINISHED",
    config_hash: str | None = None,
) -> str:
    """One run with the schema dlas.stack logs (latency metrics only when deployed)."""
    from mlflow.entities import Metric, Param

    size, top1, eager = MODELS[model]
    if compression != "none":
        size, top1 = size / 2, top1 - 2
    params = {
        "dataset": "digits",
        "model": model,
        "compression": compression,
        "compression.amount": amount,
        "algorithm": algorithm,
        "data_format": "dense",
        "compiler": compiler,
        "hardware": "cpu",
        "threads": 2,
    }
    metrics = {"top1": top1, "size_bytes": size, "params": size / 4, "macs": 1e6, "sparsity": 0}
    if latency is not None:
        metrics |= {
            "latency_ms_median": latency,
            "latency_ms_mean": latency * 1.1,
            "latency_ms_p90": latency * 1.2,
            "torch_latency_ms": eager,
            "speedup_vs_torch": eager / latency,
            "compile_s": 3.0,
            "tune_s": 100.0 if compiler == "tvm_autoschedule" else 0.0,
            "max_abs_err_vs_torch": 1e-5,
            "compiled_top1": top1,
        }
    tags = {
        "dlas.config_hash": config_hash
        or f"{model}-{compression}-{amount}-{algorithm}-{compiler}-{latency is None}",
        "dlas.sweep_id": sweeps[0],
    } | {f"dlas.sweep.{s}": "true" for s in sweeps}
    run = client.create_run(
        experiment_id, start_time=start, tags=tags, run_name=f"{model}-{algorithm}-{compiler}"
    )
    run_id = run.info.run_id
    client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), start, 0) for k, v in metrics.items()],
        params=[Param(k, str(v)) for k, v in params.items()],
    )
    client.set_terminated(run_id, status=status, end_time=start + 500)
    return run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A store with one sweep's points plus every kind of run the report must leave out,
    and the report of that sweep, built once for the end-to-end tests."""
    from mlflow import MlflowClient

    tmp = tmp_path_factory.mktemp("report")
    uri = f"sqlite:///{tmp}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment(EXPERIMENT, artifact_location=str(tmp / "artifacts"))
    ids: dict[str, str] = {}
    start = T0
    # an earlier run of the same point as ("big", "direct", "tvm_autoschedule"): superseded
    ids["stale"] = log_point(
        client,
        experiment_id,
        start,
        "big",
        "direct",
        "tvm_autoschedule",
        50.0,
        config_hash="big-none-0.0-direct-tvm_autoschedule-False",
    )
    for (model, algorithm, compiler), latency in GRID.items():
        start += 1000
        ids[f"{model}-{algorithm}-{compiler}"] = log_point(
            client, experiment_id, start, model, algorithm, compiler, latency
        )
    # eager baseline: its algorithm param is meaningless; measured by an earlier sweep too
    ids["small-pytorch"] = log_point(
        client,
        experiment_id,
        start + 1000,
        "small",
        "winograd",
        "pytorch",
        2.5,
        sweeps=("s0", SWEEP),
    )
    # deploy=false: in the table, out of every latency analysis
    ids["small-prune"] = log_point(
        client,
        experiment_id,
        start + 2000,
        "small",
        "direct",
        "tvm_untuned",
        None,
        compression="prune",
        amount=0.5,
    )
    # would dominate everything if it counted
    ids["failed"] = log_point(
        client, experiment_id, start + 3000, "big", "winograd", "tvm_untuned", 0.1, status="FAILED"
    )
    ids["other-sweep"] = log_point(
        client,
        experiment_id,
        start + 4000,
        "small",
        "winograd",
        "tvm_autoschedule",
        0.5,
        sweeps=(OTHER_SWEEP,),
    )
    out = tmp / "out"
    main(["--uri", uri, "--experiment", EXPERIMENT, "--sweep", SWEEP, "--out", str(out)])
    return {"uri": uri, "ids": ids, "out": out, "client": client}


def read_table(path: Path) -> pd.DataFrame:
    """A report CSV as written: pandas would read the label "n/a" as missing."""
    return pd.read_csv(path, keep_default_na=False, na_values=[""])


def sweep_ids(store: dict) -> set[str]:
    ids = store["ids"]
    return {ids[f"{m}-{a}-{c}"] for m, a, c in GRID} | {ids["small-pytorch"], ids["small-prune"]}


def test_load_points_selects_finished_newest_runs_of_the_sweep(store: dict) -> None:
    points = load_points(store["uri"], EXPERIMENT, SWEEP)
    assert set(points["run_id"]) == sweep_ids(store)
    assert len(points) == 10
    row = points.set_index("run_id").loc[store["ids"]["big-direct-tvm_autoschedule"]]
    assert row["latency_ms"] == 5.0 and row["label"] == "direct" and row["amount"] == 0.0
    eager = points.set_index("run_id").loc[store["ids"]["small-pytorch"]]
    assert (eager["algorithm"], eager["data_format"], eager["label"]) == ("n/a", "n/a", "n/a")
    # without a sweep: every FINISHED, newest point, including the other sweep's
    everything = load_points(store["uri"], EXPERIMENT)
    assert set(everything["run_id"]) == sweep_ids(store) | {store["ids"]["other-sweep"]}


def test_points_table_has_one_row_per_point(store: dict) -> None:
    table = read_table(store["out"] / "points.csv")
    assert set(table["run_id"]) == sweep_ids(store) and len(table) == 10
    assert table.columns.tolist() == [
        "dataset",
        "model",
        "compression",
        "amount",
        "algorithm",
        "compiler",
        "hardware",
        "task",
        "quality_metric",
        "quality",
        "size_MB",
        "latency_ms",
        "speedup_vs_eager",
        "tune_s",
        "run_id",
    ]
    by_id = table.set_index("run_id")
    ids = store["ids"]
    assert by_id.loc[ids["small-gemm-tvm_autoschedule"], "speedup_vs_eager"] == pytest.approx(1.25)
    assert by_id.loc[ids["small-gemm-tvm_autoschedule"], "tune_s"] == 100.0
    assert by_id.loc[ids["big-gemm-tvm_untuned"], "size_MB"] == pytest.approx(40.0)
    assert by_id.loc[ids["small-pytorch"], "algorithm"] == "n/a"
    prune = by_id.loc[ids["small-prune"]]
    assert (prune["compression"], prune["amount"], prune["quality"]) == ("prune", 0.5, 78.0)
    assert (prune["task"], prune["quality_metric"]) == ("classification", "top1")
    assert math.isnan(prune["latency_ms"])
    # sorted: model, then compression, compiler (eager first), algorithm
    small_none = table[(table["model"] == "small") & (table["compression"] == "none")]
    assert list(zip(small_none["compiler"], small_none["algorithm"], strict=True)) == [
        ("pytorch", "n/a"),
        ("tvm_untuned", "direct"),
        ("tvm_untuned", "gemm"),
        ("tvm_autoschedule", "direct"),
        ("tvm_autoschedule", "gemm"),
    ]
    markdown = (store["out"] / "points.md").read_text()
    assert markdown.count("\n") == 12  # header, rule, 10 rows
    assert "| n/a " in markdown


def test_pareto_holds_the_non_dominated_points(store: dict) -> None:
    pareto = read_table(store["out"] / "pareto.csv")
    ids = store["ids"]
    assert pareto["run_id"].tolist() == [
        ids["small-direct-tvm_autoschedule"],  # 1.5 ms, 80 %
        ids["big-direct-tvm_autoschedule"],  # 5 ms, 90 % (its stale 50 ms run is gone)
    ]


def test_correlations_match_scipy(store: dict) -> None:
    result = json.loads((store["out"] / "correlations.json").read_text())
    sizes = [MODELS[m][0] for m, _, _ in GRID] + [MODELS["small"][0]]
    latencies = list(GRID.values()) + [2.5]
    expected = stats.spearmanr(sizes, latencies)
    assert result["size_vs_latency"]["n"] == 9
    assert result["size_vs_latency"]["rho"] == pytest.approx(expected.statistic)
    assert result["size_vs_latency"]["p_value"] == pytest.approx(expected.pvalue)
    # three compressed models: small, big, small pruned (5 MB, 78 %)
    expected = stats.spearmanr([10e6, 40e6, 5e6], [80.0, 90.0, 78.0])
    assert result["size_vs_quality"]["n"] == 3
    assert result["size_vs_quality"]["rho"] == pytest.approx(1.0)
    assert result["size_vs_quality"]["p_value"] == pytest.approx(expected.pvalue)
    assert "size_bytes vs latency_ms" in (store["out"] / "correlations.md").read_text()


def test_best_algorithm_flags_tuning_changes(store: dict) -> None:
    best = read_table(store["out"] / "best_algorithm.csv")
    assert len(best) == 2  # the pruned point was never deployed: no row
    rows = best.set_index("model")
    assert (rows.loc["small", "untuned_algorithm"], rows.loc["small", "untuned_latency_ms"]) == (
        "gemm",
        3.0,
    )
    assert rows.loc["small", "autoschedule_algorithm"] == "direct"
    assert rows.loc["small", "autoschedule_latency_ms"] == 1.5
    assert bool(rows.loc["small", "tuning_changes_winner"]) is True
    assert rows.loc["big", "untuned_algorithm"] == rows.loc["big", "autoschedule_algorithm"]
    assert bool(rows.loc["big", "tuning_changes_winner"]) is False


def test_figures_are_images(store: dict) -> None:
    for name in (
        "accuracy_vs_latency.png",
        "size_vs_latency.png",
        "size_vs_accuracy.png",
        "speedup_heatmap.png",
    ):
        image = imread(store["out"] / name)
        height, width, channels = image.shape
        assert height > 300 and width > 400 and channels in (3, 4), name
        assert image[..., :3].std() > 0.05, f"{name} is blank"


def test_report_run_holds_every_file(store: dict) -> None:
    client = store["client"]
    reports = client.get_experiment_by_name(f"{EXPERIMENT}-reports")
    assert reports is not None
    (run,) = client.search_runs([reports.experiment_id])
    assert run.info.run_name == f"report-{EXPERIMENT}-{SWEEP}"
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["dlas.entry"] == "report"
    assert tags["dlas.report_of"] == EXPERIMENT
    assert tags["dlas.sweep_id"] == SWEEP
    assert run.data.metrics["points"] == 10
    logged = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert logged == set(OUTPUTS)
    assert logged == {p.name for p in Path(store["out"]).iterdir()}
    # and the points experiment holds no report run
    points = client.get_experiment_by_name(EXPERIMENT)
    assert all(
        r.data.tags.get("dlas.entry") != "report"
        for r in client.search_runs([points.experiment_id])
    )


def test_main_prints_the_correlations(store: dict, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    main(["--uri", store["uri"], "--experiment", EXPERIMENT, "--sweep", SWEEP, "--no-mlflow"])
    out = capsys.readouterr().out
    assert "10 points (9 deployed)" in out
    assert "size_bytes vs latency_ms: Spearman rho = " in out
    assert "size_bytes vs quality: Spearman rho = 1.000 (p = 0, n = 3)" in out
    default_out = tmp_path / "reports" / f"{EXPERIMENT}-{SWEEP}"
    assert len(read_table(default_out / "points.csv")) == 10

    main(["--uri", store["uri"], "--experiment", EXPERIMENT, "--no-mlflow"])
    assert "11 points (10 deployed)" in capsys.readouterr().out  # no sweep filter
    assert (tmp_path / "reports" / EXPERIMENT / "points.csv").exists()


# ---------------------------------------------------------------- bad input


def test_unknown_experiment_is_named(store: dict) -> None:
    with pytest.raises(ValueError, match="no MLflow experiment 'nope'") as error:
        load_points(store["uri"], "nope")
    assert f"{EXPERIMENT}," in str(error.value).split("existing experiments: ")[1]


def test_unknown_sweep_lists_the_sweeps(store: dict) -> None:
    with pytest.raises(ValueError, match="sweep 'zz' has no runs; sweeps in this experiment"):
        load_points(store["uri"], EXPERIMENT, "zz")


def test_missing_store_is_not_created(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no MLflow store"):
        main(["--uri", f"sqlite:///{tmp_path}/absent.db", "--no-mlflow"])
    assert not (tmp_path / "absent.db").exists()


def test_speedup_matrix_of_runs_without_an_amount() -> None:
    points = pd.DataFrame(
        {
            "model": ["m", "m"],
            "compression": ["none", "none"],
            "amount": [math.nan, math.nan],
            "label": ["gemm", "n/a"],
            "compiler": ["tvm_untuned", "pytorch"],
            "speedup": [0.5, 1.0],
        }
    )
    matrix = speedup_matrix_of(points, "m", compression="none", amount=math.nan)
    assert matrix.loc["gemm", "tvm_untuned"] == 0.5 and matrix.loc["n/a", "pytorch"] == 1.0


# ---------------------------------------------------------------- problem spaces


def test_a_segmentation_sweep_is_reported_on_its_own_metric(tmp_path: Path) -> None:
    """Runs that log ``quality`` with ``quality_metric=miou`` (dlas.stack) are read as
    segmentation: fronts and correlations per task, the axis named by the metric, and a
    classification run of the same report keeps its top-1."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    from dlas.report.analysis import quality_label

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment("tasks", artifact_location=str(tmp_path / "art"))
    rows = [  # dataset, task, metric, model, size, quality, latency
        ("digit_canvases", "segmentation", "miou", "unet", 1e6, 40.0, 2.0),
        ("digit_canvases", "segmentation", "miou", "lraspp", 4e6, 60.0, 3.0),
        ("digit_canvases", "segmentation", "miou", "fcn", 9e6, 55.0, 9.0),  # dominated
        ("digits", "classification", "top1", "resnet18", 2e6, 95.0, 1.0),
    ]
    for i, (dataset, task, metric, model, size, quality, latency) in enumerate(rows):
        run = client.create_run(experiment_id, start_time=T0 + i, tags={"dlas.config_hash": model})
        params = {"dataset": dataset, "model": model, "compression": "none"}
        params |= {"compiler": "pytorch", "task": task, "quality_metric": metric}
        metrics = {"quality": quality, metric: quality, "size_bytes": size}
        metrics |= {"latency_ms_median": latency, "speedup_vs_torch": 1.0}
        client.log_batch(
            run.info.run_id,
            metrics=[Metric(k, v, T0, 0) for k, v in metrics.items()],
            params=[Param(k, str(v)) for k, v in params.items()],
        )
        client.set_terminated(run.info.run_id, end_time=T0 + 100)

    points = load_points(uri, "tasks")
    by_model = points.set_index("model")
    assert by_model.loc["unet", "quality"] == 40.0 and math.isnan(by_model.loc["unet", "top1"])
    assert by_model.loc["unet", "quality_metric"] == "miou"
    assert by_model.loc["resnet18", "quality"] == 95.0
    assert quality_label(points[points["task"] == "segmentation"]) == "mIoU (%)"
    assert quality_label(points) == "quality: mIoU (%) / top-1 accuracy (%)"

    out = tmp_path / "out"
    main(["--uri", uri, "--experiment", "tasks", "--out", str(out)])
    pareto = read_table(out / "pareto.csv")
    assert sorted(pareto["model"]) == ["lraspp", "resnet18", "unet"]  # fcn dominated
    correlations = json.loads((out / "correlations.json").read_text())
    assert "size_vs_quality" not in correlations  # no common scale for miou and top1
    assert correlations["size_vs_quality_miou"]["n"] == 3
    assert correlations["size_vs_quality_top1"]["n"] == 1
    assert "size_bytes vs quality (miou)" in (out / "correlations.md").read_text()
    assert (out / "accuracy_vs_latency.png").exists()
    assert not (out / "size_vs_accuracy.png").exists()
