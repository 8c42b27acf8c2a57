"""``python -m dlas.report``: the paper's tables and figures from an MLflow experiment."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from dlas.report.analysis import rank_correlations
from dlas.report.artifacts import log_report, report_name
from dlas.report.load import default_uri, load_points
from dlas.report.tables import describe_correlation
from dlas.report.write import write_report


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m dlas.report",
        description="Tables and figures (CSV, Markdown, PNG) of the stack points of an MLflow "
        "experiment, written to a folder and logged as artifacts of a report run.",
    )
    parser.add_argument(
        "--uri",
        default=default_uri(),
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlruns/mlflow.db)",
    )
    parser.add_argument("--experiment", default="dlas", help="experiment of the points")
    parser.add_argument("--sweep", default=None, help="only the points of this sweep id")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default: reports/<experiment>[-<sweep>])",
    )
    parser.add_argument(
        "--no-mlflow", action="store_true", help="write the folder only, log no report run"
    )
    return parser.parse_args(argv)


def summary_metrics(points_count: int, correlations: dict) -> dict[str, float]:
    """What makes report runs comparable in the MLflow UI (undefined correlations left out)."""
    metrics = {"points": float(points_count)}
    for name, c in correlations.items():
        for key in ("rho", "p_value", "n"):
            value = float(c[key])
            if not math.isnan(value):
                metrics[f"{name}.{key}"] = value
    return metrics


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    points = load_points(args.uri, args.experiment, args.sweep)
    out_dir = args.out or Path("reports") / report_name(args.experiment, args.sweep)
    files = write_report(points, out_dir)
    correlations = rank_correlations(points)
    deployed = int(points["latency_ms"].notna().sum())
    print(f"{len(points)} points ({deployed} deployed) -> {out_dir}")
    for c in correlations.values():
        print(describe_correlation(c))
    for path in files:
        print(f"  {path}")
    if not args.no_mlflow:
        run_id = log_report(
            files,
            args.uri,
            args.experiment,
            args.sweep,
            summary_metrics(len(points), correlations),
        )
        print(f"logged as run {run_id} in experiment {args.experiment}-reports")
    return 0
