"""Turn a points frame into the report folder: every table and figure, nothing else.

Separate from MLflow so tests and notebooks can build a report from any frame, and so the
report folder is complete before anything is uploaded.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from dlas.report import figures, form_figures
from dlas.report.analysis import (
    best_algorithms,
    pareto_front_per_dataset,
    rank_correlations,
    with_quality,
)
from dlas.report.form_function import (
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
from dlas.report.tables import points_table, write_correlations, write_table

# Every file a report can write: cleared first, so that a re-run into the same folder never
# leaves a stale figure (e.g. a latency plot from before the sweep lost its deployments).
OUTPUTS = (
    "points.csv",
    "points.md",
    "pareto.csv",
    "pareto.md",
    "correlations.json",
    "correlations.md",
    "best_algorithm.csv",
    "best_algorithm.md",
    "accuracy_vs_latency.png",
    "size_vs_latency.png",
    "size_vs_accuracy.png",
    "speedup_heatmap.png",
)
# What a form-function sweep (points with a depth and a width) writes besides: kept apart
# from OUTPUTS, which every report writes in full, but cleared the same way.
FORM_FUNCTION_OUTPUTS = (
    "compiled_paths.csv",
    "compiled_paths.md",
    "speedup_by_pattern.csv",
    "speedup_by_pattern.md",
    "macs_vs_latency.csv",
    "macs_vs_latency.md",
    "speedup_by_pattern.png",
    "latency_vs_depth.png",
    "speedup_vs_depth.png",
    "latency_vs_width.png",
    "speedup_vs_width.png",
    "macs_vs_latency.png",
    "working_set_vs_speedup.png",
    "working_set_vs_latency.png",
    "networks.csv",
    "networks.md",
    "speedup_by_kind.csv",
    "speedup_by_kind.md",
    "fastest_network.csv",
    "fastest_network.md",
    "paper_comparison.csv",
    "paper_comparison.md",
    "networks.png",
)


def write_report(points: pd.DataFrame, out_dir: Path | str) -> list[Path]:
    """Write the report of ``points`` (as returned by ``load_points``) into ``out_dir``.

    Figures that need latencies are skipped when no point was deployed; the tables are
    always written (best_algorithm and pareto then have no rows). A form-function sweep
    (some point has a ``depth`` and a ``width``) adds :data:`FORM_FUNCTION_OUTPUTS` on its
    points with both. Returns the files written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in OUTPUTS + FORM_FUNCTION_OUTPUTS:
        (out_dir / name).unlink(missing_ok=True)

    points = with_quality(points)
    written = write_table(points_table(points), out_dir, "points")
    pareto = pareto_front_per_dataset(points)
    front = points[pareto].sort_values(["latency_ms", "quality"], ascending=[True, False])
    written += write_table(points_table(front), out_dir, "pareto")
    correlations = rank_correlations(points)
    written += write_correlations(correlations, out_dir)
    written += write_table(best_algorithms(points), out_dir, "best_algorithm")

    if correlations.get("size_vs_quality", {}).get("n"):  # one task: one quality scale
        written.append(
            figures.size_vs_accuracy(
                points, correlations["size_vs_quality"], out_dir / "size_vs_accuracy.png"
            )
        )
    if points["latency_ms"].notna().any():
        written.append(
            figures.accuracy_vs_latency(points, pareto, out_dir / "accuracy_vs_latency.png")
        )
        written.append(
            figures.size_vs_latency(
                points, correlations["size_vs_latency"], out_dir / "size_vs_latency.png"
            )
        )
        heatmap = figures.speedup_heatmap(points, out_dir / "speedup_heatmap.png")
        if heatmap is not None:
            written.append(heatmap)
    if is_form_function(points):
        long = compiled_paths(form_function_points(points))
        written += write_form_function(long, compiled_paths(network_points(points)), out_dir)
    return written


def write_form_function(long: pd.DataFrame, nets_long: pd.DataFrame, out_dir: Path) -> list[Path]:
    """The form-function study from the long frames of its sized points (``long``) and of
    its whole networks (``nets_long``: zoo and NAS-found): the tables always (with no rows
    when nothing was timed), each figure when it has something to draw."""
    by_pattern = speedup_by_pattern(long)
    correlations = macs_latency_correlations(long)
    nets = networks(nets_long)
    written = write_table(long, out_dir, "compiled_paths")
    written += write_table(by_pattern, out_dir, "speedup_by_pattern")
    written += write_table(correlations, out_dir, "macs_vs_latency")
    written += write_table(nets, out_dir, "networks")
    written += write_table(speedup_by_kind(nets), out_dir, "speedup_by_kind")
    written += write_table(fastest_networks(nets), out_dir, "fastest_network")
    written += write_table(paper_comparison(by_pattern, nets), out_dir, "paper_comparison")
    if nets["latency_ms"].notna().any():
        written.append(form_figures.networks_latency(nets, out_dir / "networks.png"))
    if long["latency_ms"].notna().any():
        written.append(form_figures.latency_vs_depth(long, out_dir / "latency_vs_depth.png"))
        written.append(form_figures.latency_vs_width(long, out_dir / "latency_vs_width.png"))
    if not correlations.empty:
        written.append(
            form_figures.macs_vs_latency(long, correlations, out_dir / "macs_vs_latency.png")
        )
    if not by_pattern.empty:
        written.append(
            form_figures.speedup_by_pattern(by_pattern, out_dir / "speedup_by_pattern.png")
        )
        written.append(form_figures.speedup_vs_depth(long, out_dir / "speedup_vs_depth.png"))
        written.append(form_figures.speedup_vs_width(long, out_dir / "speedup_vs_width.png"))
        if (long["working_set_bytes"] > 0).any():
            written.append(
                form_figures.working_set_vs_speedup(long, out_dir / "working_set_vs_speedup.png")
            )
            written.append(
                form_figures.working_set_vs_latency(long, out_dir / "working_set_vs_latency.png")
            )
    return written
