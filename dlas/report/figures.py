"""The report's figures, drawn with matplotlib's object API.

Figures are built as ``matplotlib.figure.Figure`` objects and saved by the Agg renderer,
never through ``pyplot``: no display is needed (headless machines, CI), the process-wide
backend of a notebook that imports this is left alone, and no figure outlives its file.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import LogFormatter

from dlas.report.analysis import (
    COMPILER_ORDER,
    correlation_rows,
    order_key,
    quality_label,
    speedup_panels,
)

DPI = 150
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
NICE_TICKS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100)


def save(fig: Figure, path: Path) -> Path:
    """Lay out, then save with the legends and colorbar labels outside the axes included
    (``tight_layout`` alone leaves a legend placed right of the axes off the canvas)."""
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


class PlainLogFormatter(LogFormatter):
    """LogFormatter's choice of which ticks to label, written ``0.6`` rather than ``6e-01``."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        return f"{x:g}" if super().__call__(x, pos) else ""


def plain_log_ticks(axis: Any) -> None:
    """``2``, ``5``, ``10`` on a log axis rather than ``2×10^0``: latencies are read, not
    compared in orders of magnitude."""
    axis.set_major_formatter(PlainLogFormatter())
    axis.set_minor_formatter(PlainLogFormatter(labelOnlyBase=False))


def model_colors(models: pd.Series) -> dict[str, Any]:
    """A fixed colour per model, the same in every figure of one report."""
    palette = matplotlib.colormaps["tab10"].colors
    return {m: palette[i % len(palette)] for i, m in enumerate(sorted(models.unique()))}


def compiler_markers(compilers: pd.Series) -> dict[str, str]:
    ordered = sorted(compilers.unique(), key=lambda c: order_key(c, COMPILER_ORDER))
    return {c: MARKERS[i % len(MARKERS)] for i, c in enumerate(ordered)}


def legend_outside(ax: Axes, handles: list[Line2D], title: str, top: bool) -> None:
    """A legend right of the axes (points are never hidden); two can share the margin."""
    previous = ax.get_legend()
    if previous is not None:
        # keep it: ax.legend() replaces the axes' legend. Added as a plain artist it would be
        # clipped to the axes, i.e. hidden, since it sits outside them.
        ax.add_artist(previous)
        previous.set_clip_on(False)
    ax.legend(
        handles=handles,
        title=title,
        loc="upper left" if top else "lower left",
        bbox_to_anchor=(1.02, 1.0 if top else 0.0),
        fontsize=8,
        title_fontsize=8,
        frameon=False,
    )


def model_handles(colors: dict[str, Any]) -> list[Line2D]:
    return [
        Line2D([], [], ls="", marker="o", color=c, label=m, markersize=7) for m, c in colors.items()
    ]


def short_point_name(row: pd.Series) -> str:
    """``resnet18 prune0.5 gemm/tvm_untuned``: enough to find a Pareto point in the table."""
    compression = row["compression"]
    if isinstance(row.get("amount"), float) and row["amount"] > 0:
        compression += f"{row['amount']:g}"
    algorithm = "" if row["label"] == "n/a" else f"{row['label']}/"
    return f"{row['model']} {compression} {algorithm}{row['compiler']}"


def accuracy_vs_latency(points: pd.DataFrame, pareto: pd.Series, path: Path) -> Path:
    """Quality (top-1, mIoU: the task's) against latency for every deployed point, the
    Pareto front of each dataset stepped through."""
    deployed = points.dropna(subset=["latency_ms", "quality"])
    colors, markers = model_colors(deployed["model"]), compiler_markers(deployed["compiler"])
    fig = Figure(figsize=(9, 5.5))
    ax = fig.subplots()
    for (model, compiler), rows in deployed.groupby(["model", "compiler"]):
        ax.scatter(
            rows["latency_ms"],
            rows["quality"],
            color=colors[model],
            marker=markers[compiler],
            s=40,
            alpha=0.85,
            zorder=2,
        )
    front = deployed[pareto.reindex(deployed.index, fill_value=False)]
    for _, rows in front.groupby("dataset", dropna=False):
        rows = rows.sort_values(["latency_ms", "quality"])
        ax.step(rows["latency_ms"], rows["quality"], where="post", color="black", ls="--", lw=1)
    ax.scatter(
        front["latency_ms"],
        front["quality"],
        s=160,
        facecolors="none",
        edgecolors="black",
        linewidths=1.2,
        zorder=3,
    )
    for _, row in front.iterrows():
        ax.annotate(
            short_point_name(row),
            (row["latency_ms"], row["quality"]),
            xytext=(5, 5),
            textcoords="offset points",
            fontsize=6,
        )
    ax.set_xscale("log")
    plain_log_ticks(ax.xaxis)
    ax.set_xlabel("latency, median of timed runs (ms, log scale)")
    ax.set_ylabel(quality_label(deployed))
    ax.set_title(
        f"Quality vs latency: {len(deployed)} deployed points, "
        f"{len(front)} Pareto-optimal (circled, dashed front)"
    )
    ax.grid(True, which="both", alpha=0.3)
    compiler_handles = [
        Line2D([], [], ls="", marker=m, color="dimgray", label=c, markersize=7)
        for c, m in markers.items()
    ]
    front_handle = Line2D(
        [], [], ls="--", color="black", marker="o", mfc="none", markersize=10, label="Pareto front"
    )
    legend_outside(ax, model_handles(colors), "model (colour)", top=True)
    legend_outside(ax, [*compiler_handles, front_handle], "compiler (marker)", top=False)
    return save(fig, path)


def describe(correlation: dict[str, Any]) -> str:
    def number(value: float, spec: str) -> str:
        return "undefined" if math.isnan(value) else format(value, spec)

    return (
        f"Spearman ρ = {number(correlation['rho'], '.2f')}, "
        f"p = {number(correlation['p_value'], '.2g')}, n = {correlation['n']}"
    )


def size_scatter(
    points: pd.DataFrame,
    correlation: dict[str, Any],
    per_model: bool,
    ylabel: str,
    title: str,
    path: Path,
    log_y: bool = False,
) -> Path:
    """Size against latency or quality, on exactly the rows the correlation was computed on."""
    x, y = correlation["x"], correlation["y"]
    rows = correlation_rows(points, x, y, per_model)
    colors = model_colors(rows["model"])
    fig = Figure(figsize=(7, 5))
    ax = fig.subplots()
    for model, group in rows.groupby("model"):
        ax.scatter(group[x] / 1e6, group[y], color=colors[model], s=40, alpha=0.85, label=model)
    if log_y:
        ax.set_yscale("log")
        plain_log_ticks(ax.yaxis)
    ax.set_xlabel("model size (MB, serialized program)")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{title}\n{describe(correlation)}")
    ax.grid(True, which="both", alpha=0.3)
    legend_outside(ax, model_handles(colors), "model", top=True)
    return save(fig, path)


def size_vs_latency(points: pd.DataFrame, correlation: dict[str, Any], path: Path) -> Path:
    return size_scatter(
        points,
        correlation,
        per_model=False,
        ylabel="latency, median (ms, log scale)",
        title="Model size vs latency (every deployed point)",
        path=path,
        log_y=True,
    )


def size_vs_accuracy(points: pd.DataFrame, correlation: dict[str, Any], path: Path) -> Path:
    return size_scatter(
        points,
        correlation,
        per_model=True,
        ylabel=quality_label(points),
        title="Model size vs quality (each compressed model once)",
        path=path,
    )


def panel_title(where: dict[str, Any], varying: set[str]) -> str:
    """``resnet18 · prune 0.5`` (+ hardware / dataset only when the report has several)."""
    compression = str(where.get("compression", ""))
    amount = where.get("amount")
    if isinstance(amount, float) and amount > 0:
        compression += f" {amount:g}"
    parts = [str(where.get("model", "")), compression]
    parts += [str(where[k]) for k in ("hardware", "dataset") if k in varying and k in where]
    return " · ".join(p for p in parts if p)


def speedup_ticks(limit: float) -> list[float]:
    ticks = [t for t in NICE_TICKS if 1 / limit <= t <= limit]
    return ticks if len(ticks) >= 3 else [1 / limit, 1.0, limit]


def speedup_heatmap(points: pd.DataFrame, path: Path) -> Path | None:
    """Speedup over PyTorch eager, one panel per (model, compression[, hardware]).

    Colour is on a log scale centred at 1 so that 2x faster and 2x slower are equally
    strong (blue faster, red slower); every panel shares it. Unmeasured cells stay blank.
    """
    panels = speedup_panels(points)
    if not panels:
        return None
    values = np.concatenate([m.to_numpy(float).ravel() for _, m in panels])
    values = values[np.isfinite(values) & (values > 0)]
    if values.size == 0:
        return None
    limit = max(1.25, float(np.max(np.maximum(values, 1 / values))) * 1.05)
    norm = LogNorm(vmin=1 / limit, vmax=limit)
    cmap = matplotlib.colormaps["RdBu"].with_extremes(bad="white")
    varying = {k for k in ("hardware", "dataset") if k in points and points[k].nunique() > 1}

    ncols = min(len(panels), 2)
    nrows = math.ceil(len(panels) / ncols)
    most_rows = max(m.shape[0] for _, m in panels)
    most_cols = max(m.shape[1] for _, m in panels)
    fig = Figure(figsize=(ncols * (1.2 * most_cols + 2.6) + 1.2, nrows * (0.5 * most_rows + 2.2)))
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False).ravel())
    image = None
    for ax, (where, matrix) in zip(axes, panels, strict=False):
        data = matrix.to_numpy(float)
        image = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, norm=norm, aspect="auto")
        for (i, j), value in np.ndenumerate(data):
            if np.isfinite(value):
                strong = abs(math.log(value)) > 0.6 * math.log(limit)
                ax.text(
                    j,
                    i,
                    f"{value:.2f}×",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if strong else "black",
                )
        ax.set_xticks(range(matrix.shape[1]), list(matrix.columns), rotation=30, ha="right")
        ax.set_yticks(range(matrix.shape[0]), list(matrix.index))
        ax.set_xlabel("compiler")
        ax.set_ylabel("algorithm (+sparse format)")
        ax.set_title(panel_title(where, varying), fontsize=10)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    per = " × ".join(["model", "compression", *sorted(varying)])
    fig.suptitle(
        "Speedup over PyTorch eager (eager latency / point latency; median per cell)\n"
        f"one panel per {per}; blank = not measured",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 0.88, 1))
    cax = fig.add_axes((0.90, 0.15, 0.02, 0.65))
    bar = fig.colorbar(image, cax=cax)
    bar.set_label("speedup vs PyTorch eager (×, log scale; >1 = faster)")
    bar.ax.minorticks_off()
    ticks = speedup_ticks(limit)
    bar.set_ticks(ticks, labels=[f"{t:.3g}×" for t in ticks])
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path
