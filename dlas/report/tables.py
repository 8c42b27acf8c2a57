"""Tables of the report, each written twice: CSV for re-analysis, Markdown for the paper.

CSV keeps full precision; Markdown rounds to what a reader compares (4 significant digits),
so the two never disagree on anything but digits nobody should read.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from dlas.report.analysis import with_quality

# points frame column -> table header (plain names: they are also CSV headers)
POINT_COLUMNS = {
    "dataset": "dataset",
    "model": "model",
    "compression": "compression",
    "amount": "amount",
    "label": "algorithm",
    "compiler": "compiler",
    "hardware": "hardware",
    "task": "task",
    "quality_metric": "quality_metric",
    "quality": "quality",
    "size_mb": "size_MB",
    "latency_ms": "latency_ms",
    "speedup": "speedup_vs_eager",
    "tune_s": "tune_s",
    "run_id": "run_id",
}


def points_table(points: pd.DataFrame) -> pd.DataFrame:
    """The per-point table, in the order of ``points`` (load_points sorts it). ``quality``
    is in the unit of its ``quality_metric`` (top-1 %, mIoU %)."""
    table = with_quality(points).assign(size_mb=points["size_bytes"] / 1e6)
    return table[list(POINT_COLUMNS)].rename(columns=POINT_COLUMNS).reset_index(drop=True)


def correlation_pair(c: dict[str, Any]) -> str:
    """``size_bytes vs quality (miou)``: the task named when a report holds several."""
    return f"{c['x']} vs {c['y']}" + (f" ({c['quality_metric']})" if "quality_metric" in c else "")


def correlations_table(correlations: dict[str, dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "pair": correlation_pair(c),
                "spearman_rho": c["rho"],
                "p_value": c["p_value"],
                "n": c["n"],
            }
            for c in correlations.values()
        ]
    )


def format_cell(value: Any) -> str:
    """Markdown text of one cell: blank for missing, 4 significant digits, no exponent
    below 10^4 (a tuning time of 12345 s stays readable)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if value == 0 or abs(value) >= 1e4:
            return f"{value:.0f}"
        return f"{value:.4g}" if abs(value) >= 1e-3 else f"{value:.2e}"
    return str(value)


def to_markdown(table: pd.DataFrame) -> str:
    text = table.astype(object).map(format_cell)
    # numparse off: tabulate would re-parse "0.05" and re-round it
    return text.to_markdown(index=False, disable_numparse=True) + "\n"


def write_table(table: pd.DataFrame, out_dir: Path, stem: str) -> list[Path]:
    """``<stem>.csv`` and ``<stem>.md`` in ``out_dir``."""
    csv, md = out_dir / f"{stem}.csv", out_dir / f"{stem}.md"
    table.to_csv(csv, index=False)
    md.write_text(to_markdown(table))
    return [csv, md]


def json_safe(value: Any) -> Any:
    """NaN (an undefined correlation) as null: JSON has no NaN."""
    return None if isinstance(value, float) and math.isnan(value) else value


def write_correlations(correlations: dict[str, dict[str, Any]], out_dir: Path) -> list[Path]:
    """``correlations.json`` (machine-readable) and ``correlations.md``."""
    js, md = out_dir / "correlations.json", out_dir / "correlations.md"
    safe = {name: {k: json_safe(v) for k, v in c.items()} for name, c in correlations.items()}
    js.write_text(json.dumps(safe, indent=2) + "\n")
    md.write_text(
        "Spearman rank correlation of model size with latency (every deployed point) and with "
        "quality (each compressed model once; per task when a report has several).\n\n"
        + to_markdown(correlations_table(correlations))
    )
    return [js, md]


def describe_correlation(c: dict[str, Any]) -> str:
    """``size_bytes vs latency_ms: Spearman rho = 0.12 (p = 0.63, n = 9)``."""
    name, n = correlation_pair(c), c["n"]
    if math.isnan(c["rho"]):
        return f"{name}: Spearman rho undefined (n = {n}: fewer than 2 points or a constant side)"
    return f"{name}: Spearman rho = {c['rho']:.3f} (p = {c['p_value']:.3g}, n = {n})"
