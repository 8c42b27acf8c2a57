"""Turn a points frame into the report folder: every table and figure, nothing else.

Separate from MLflow so tests and notebooks can build a report from any frame, and so the
report folder is complete before anything is uploaded.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from dlas.report import figures
from dlas.report.analysis import best_algorithms, pareto_front_per_dataset, rank_correlations
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


def write_report(points: pd.DataFrame, out_dir: Path | str) -> list[Path]:
    """Write the report of ``points`` (as returned by ``load_points``) into ``out_dir``.

    Figures that need latencies are skipped when no point was deployed; the tables are
    always written (best_algorithm and pareto then have no rows). Returns the files written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in OUTPUTS:
        (out_dir / name).unlink(missing_ok=True)

    written = write_table(points_table(points), out_dir, "points")
    pareto = pareto_front_per_dataset(points)
    front = points[pareto].sort_values(["latency_ms", "top1"], ascending=[True, False])
    written += write_table(points_table(front), out_dir, "pareto")
    correlations = rank_correlations(points)
    written += write_correlations(correlations, out_dir)
    written += write_table(best_algorithms(points), out_dir, "best_algorithm")

    if correlations["size_vs_top1"]["n"]:
        written.append(
            figures.size_vs_accuracy(
                points, correlations["size_vs_top1"], out_dir / "size_vs_accuracy.png"
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
    return written
