"""Figures of the form-function study, drawn like :mod:`dlas.report.figures` (object API,
Agg, no pyplot) from the long frame of :func:`dlas.report.form_function.compiled_paths`.

A compiler has the same colour and a pattern the same marker in every figure, whichever
subset a figure shows, so the figures of one report can be read side by side.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

from dlas.report.analysis import COMPILER_ORDER, order_key
from dlas.report.figures import DPI, MARKERS, legend_outside, plain_log_ticks, save
from dlas.report.form_function import PATTERN_ORDER, compiled_only, knob_lines

LINESTYLES = ("-", "--", ":", "-.")
MIB = 2**20
KNOB_LABELS = {"depth": "depth (blocks per stage)", "width": "width (channels of stage 1)"}
SPEEDUP_TICKS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1, 1.5, 2, 3, 5, 7, 10, 20, 50, 100)
QUANTITY_LABELS = {
    "latency_ms": "latency, median (ms, log scale)",
    "speedup": "speedup over PyTorch eager (×, log scale)",
}


def ordered(values: Iterable[Any], order: tuple[str, ...]) -> list[Any]:
    """The distinct ``values`` (missing ones dropped) in ``order``, unknown ones after."""
    distinct = {v for v in values if isinstance(v, str) and v}
    return sorted(distinct, key=lambda v: order_key(v, order))


def compiler_colors(compilers: Iterable[str]) -> dict[str, Any]:
    """A colour per compiler fixed by its place in COMPILER_ORDER, so that leaving eager out
    of a speedup figure does not recolour the compilers."""
    palette = matplotlib.colormaps["tab10"].colors
    names = ordered(compilers, COMPILER_ORDER)
    unknown = [c for c in names if c not in COMPILER_ORDER]
    index = {c: i for i, c in enumerate(COMPILER_ORDER)}
    index |= {c: len(COMPILER_ORDER) + i for i, c in enumerate(unknown)}
    return {c: palette[index[c] % len(palette)] for c in names}


def pattern_markers(patterns: Iterable[str]) -> dict[str, str]:
    """A marker per pattern fixed by its place in PATTERN_ORDER (unknown ones after)."""
    names = ordered(patterns, PATTERN_ORDER)
    unknown = [p for p in names if p not in PATTERN_ORDER]
    index = {p: i for i, p in enumerate(PATTERN_ORDER)}
    index |= {p: len(PATTERN_ORDER) + i for i, p in enumerate(unknown)}
    return {p: MARKERS[index[p] % len(MARKERS)] for p in names}


def compiler_handles(colors: dict[str, Any], labels: dict[str, str] | None = None) -> list:
    return [
        Line2D([], [], color=c, marker="o", ls="-", label=(labels or {}).get(name, name))
        for name, c in colors.items()
    ]


def pattern_handles(markers: dict[str, str]) -> list[Line2D]:
    return [
        Line2D([], [], ls="", marker=m, color="dimgray", label=p, markersize=7)
        for p, m in markers.items()
    ]


def int_label(value: float) -> str:
    return f"{value:g}"


def speedup_axis(ax: Axes) -> None:
    """Log y with ``0.7×``, ``1×``, ``1.5×`` ticks (speedups cluster around 1, where a plain
    log axis has a single label), and the eager baseline dotted: above it the compiler
    wins."""
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(FixedLocator(SPEEDUP_TICKS))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}×"))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.axhline(1.0, color="black", lw=0.9, ls=":", zorder=1)


def speedup_by_pattern(table: pd.DataFrame, path: Path) -> Path:
    """Grouped bars of :func:`dlas.report.form_function.speedup_by_pattern`: one group per
    pattern, one bar per compiler (geometric mean), whiskers from min to max.

    Bars grow from the 1× line, up when the compiler beats eager and down when it loses,
    so a slowdown reads as one instead of as a short bar.
    """
    patterns = ordered(table["pattern"], PATTERN_ORDER)
    colors = compiler_colors(table["compiler"])
    bar = 0.8 / max(len(colors), 1)
    fig = Figure(figsize=(max(6.0, 0.45 * len(patterns) * len(colors) + 3.0), 5))
    ax = fig.subplots()
    for i, compiler in enumerate(colors):
        rows = table[table["compiler"] == compiler].set_index("pattern")
        rows = rows.reindex([p for p in patterns if p in rows.index])
        x = np.array([patterns.index(p) for p in rows.index]) + (i - (len(colors) - 1) / 2) * bar
        mean = rows["geomean_speedup"].to_numpy(float)
        low, high = rows["min_speedup"].to_numpy(float), rows["max_speedup"].to_numpy(float)
        ax.bar(x, mean - 1.0, bottom=1.0, width=bar * 0.92, color=colors[compiler], zorder=2)
        ax.errorbar(
            x,
            mean,
            # clipped: a geometric mean of one point is that point only up to rounding
            yerr=[np.clip(mean - low, 0, None), np.clip(high - mean, 0, None)],
            fmt="none",
            ecolor="black",
            elinewidth=0.8,
            capsize=2,
            zorder=3,
        )
        for xi, value, end in zip(x, mean, np.where(mean >= 1, high, low), strict=True):
            ax.annotate(  # past the whisker, where nothing else is drawn
                f"{value:.2g}×",
                (xi, end),
                xytext=(0, 3 if value >= 1 else -9),
                textcoords="offset points",
                ha="center",
                fontsize=6,
            )
    speedup_axis(ax)
    ax.set_xticks(range(len(patterns)), patterns, rotation=20, ha="right")
    ax.set_xlabel("macro-architecture pattern")
    ax.set_ylabel(QUANTITY_LABELS["speedup"])
    n = table.groupby("pattern")["n"].max()
    points = f"n = {n.min()}" if n.min() == n.max() else f"n = {n.min()}–{n.max()}"
    ax.set_title(
        "Speedup over PyTorch eager per pattern: geometric mean over depths × widths\n"
        f"(whiskers: min–max; {points} points per bar; dotted: eager, 1×)"
    )
    ax.grid(True, axis="y", which="both", alpha=0.3)
    legend_outside(ax, compiler_handles(colors), "compiler", top=True)
    return save(fig, path)


def knob_styles(values: Iterable[float]) -> dict[float, tuple[str, str]]:
    """(line style, marker) per value of the knob that a knob figure does not put on x."""
    distinct = sorted({float(v) for v in values if not math.isnan(float(v))})
    return {
        v: (LINESTYLES[i % len(LINESTYLES)], MARKERS[i % len(MARKERS)])
        for i, v in enumerate(distinct)
    }


def pattern_grid(fig: Figure, count: int) -> list[Axes]:
    """Up to three panels a row, y shared: the patterns are compared on one scale."""
    ncols = min(max(count, 1), 3)
    nrows = math.ceil(max(count, 1) / ncols)
    axes = list(fig.subplots(nrows, ncols, squeeze=False, sharey=True).ravel())
    for ax in axes[count:]:
        ax.set_visible(False)
    return axes[:count]


def knob_axis(ax: Axes, knob: str, values: Iterable[float]) -> None:
    """Ticks at the measured values only; widths (which double) on a log2 axis."""
    ticks = sorted({float(v) for v in values})
    if knob == "width" and ticks and min(ticks) > 0:
        ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([int_label(t) for t in ticks])
    ax.set_xlabel(KNOB_LABELS.get(knob, knob))


def knob_figure(long: pd.DataFrame, x: str, style: str, y: str, path: Path) -> Path:
    """``y`` against knob ``x``: a panel per pattern, a colour per compiler, a line style
    and marker per value of the other knob ``style``. Eager is drawn for latency only (its
    speedup is 1 by definition: the dotted line)."""
    colors = compiler_colors(long["compiler"])
    rows = long if y == "latency_ms" else compiled_only(long)
    lines = knob_lines(rows, x, y, style)
    styles = knob_styles(lines[style])
    patterns = ordered(lines["pattern"], PATTERN_ORDER)
    ncols = min(max(len(patterns), 1), 3)
    nrows = math.ceil(max(len(patterns), 1) / ncols)
    fig = Figure(figsize=(4.0 * ncols + 0.5, 3.3 * nrows + 0.6))
    axes = pattern_grid(fig, len(patterns))
    for i, (ax, pattern) in enumerate(zip(axes, patterns, strict=True)):
        panel = lines[lines["pattern"] == pattern]
        for (compiler, value), line in panel.groupby(["compiler", style], sort=False):
            ls, marker = styles[float(value)]
            ax.plot(line[x], line[y], color=colors[compiler], ls=ls, marker=marker, ms=5, lw=1.3)
        if y == "speedup":
            speedup_axis(ax)
        else:
            ax.set_yscale("log")
            plain_log_ticks(ax.yaxis)
        knob_axis(ax, x, lines[x])
        ax.set_title(pattern, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        if i % ncols == 0:
            ax.set_ylabel(QUANTITY_LABELS.get(y, y))
    shown = {c: colors[c] for c in ordered(lines["compiler"], COMPILER_ORDER)}
    style_handles = [
        Line2D([], [], color="dimgray", ls=ls, marker=m, label=int_label(v))
        for v, (ls, m) in styles.items()
    ]
    what = "Latency" if y == "latency_ms" else "Speedup over PyTorch eager"
    fig.suptitle(f"{what} vs {x}, one panel per pattern (median per point)", fontsize=11)
    fig.tight_layout()
    legend = {"loc": "upper left", "fontsize": 8, "title_fontsize": 8, "frameon": False}
    fig.legend(
        handles=compiler_handles(shown), title="compiler", bbox_to_anchor=(1.0, 0.92), **legend
    )
    fig.legend(handles=style_handles, title=style, bbox_to_anchor=(1.0, 0.45), **legend)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


def latency_vs_depth(long: pd.DataFrame, path: Path) -> Path:
    return knob_figure(long, "depth", "width", "latency_ms", path)


def speedup_vs_depth(long: pd.DataFrame, path: Path) -> Path:
    return knob_figure(long, "depth", "width", "speedup", path)


def latency_vs_width(long: pd.DataFrame, path: Path) -> Path:
    return knob_figure(long, "width", "depth", "latency_ms", path)


def speedup_vs_width(long: pd.DataFrame, path: Path) -> Path:
    return knob_figure(long, "width", "depth", "speedup", path)


def describe_fit(row: pd.Series) -> str:
    """``r = 0.98, ρ = 0.95, k = 0.91, n = 8`` (undefined values spelled out)."""

    def number(value: float) -> str:
        return "undef." if math.isnan(value) else f"{value:.2f}"

    return (
        f"r = {number(row['pearson_r_log'])}, ρ = {number(row['spearman_rho'])}, "
        f"k = {number(row['slope_log'])}, n = {int(row['n'])}"
    )


def macs_vs_latency(long: pd.DataFrame, correlations: pd.DataFrame, path: Path) -> Path:
    """MACs against latency, log-log, every path of every point: a colour per compiler
    (eager included), a marker per pattern, the fitted power law dashed.

    If latency followed the work, each compiler's points would sit on one line whatever
    their pattern; the legend gives how closely (Pearson r on log-log, Spearman ρ) and
    the exponent k of latency ∝ MACs^k.
    """
    rows = long[(long["macs"] > 0) & (long["latency_ms"] > 0)]
    colors = compiler_colors(rows["compiler"])
    markers = pattern_markers(rows["pattern"])
    fits = correlations.set_index("compiler")
    fig = Figure(figsize=(8.5, 5.5))
    ax = fig.subplots()
    for (compiler, pattern), group in rows.groupby(["compiler", "pattern"], sort=False):
        ax.scatter(
            group["macs"],
            group["latency_ms"],
            color=colors[compiler],
            marker=markers[pattern],
            s=36,
            alpha=0.85,
            zorder=2,
        )
    for compiler, group in rows.groupby("compiler", sort=False):
        if compiler not in fits.index or math.isnan(fits.loc[compiler, "slope_log"]):
            continue
        fit = fits.loc[compiler]
        x = np.geomspace(group["macs"].min(), group["macs"].max(), 20)
        y = 10 ** fit["intercept_log"] * x ** fit["slope_log"]
        ax.plot(x, y, color=colors[compiler], ls="--", lw=1, zorder=1)
    labels = {c: f"{c} ({describe_fit(fits.loc[c])})" for c in colors if c in fits.index}
    ax.set_xscale("log")
    if rows["macs"].max() >= 10 * rows["macs"].min():  # decades labelled: minors would collide
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_yscale("log")
    plain_log_ticks(ax.yaxis)
    ax.set_xlabel("MACs per image (log scale)")
    ax.set_ylabel(QUANTITY_LABELS["latency_ms"])
    ax.set_title(
        "MACs vs latency per compiler, all patterns, depths and widths\n"
        "r: Pearson on log-log, ρ: Spearman, k: fitted exponent of latency ∝ MACs^k (dashed)"
    )
    ax.grid(True, which="both", alpha=0.3)
    legend_outside(ax, compiler_handles(colors, labels), "compiler (colour)", top=True)
    legend_outside(ax, pattern_handles(markers), "pattern (marker)", top=False)
    return save(fig, path)


def llc_label(llc_bytes: float) -> str:
    return f"LLC {llc_bytes / MIB:.3g} MiB"


def working_set_vs_speedup(long: pd.DataFrame, path: Path) -> Path:
    """Speedup against the working set (parameters + the largest layer's activations,
    batch 1), with the host's last-level cache marked: does a compiler's gain fall off
    once the model no longer fits in cache? Points over the LLC are drawn hollow."""
    return working_set_figure(long, "speedup", path)


def working_set_vs_latency(long: pd.DataFrame, path: Path) -> Path:
    """Latency (eager included) against the working set, the LLC marked: does latency
    jump where the model stops fitting in cache?"""
    return working_set_figure(long, "latency_ms", path)


def working_set_figure(long: pd.DataFrame, y: str, path: Path) -> Path:
    """``y`` (``speedup`` or ``latency_ms``) against the working set, per compiler
    (colour) and pattern (marker), points over the LLC hollow, the LLC a dashed line."""
    rows = compiled_only(long) if y == "speedup" else long[long["latency_ms"] > 0]
    rows = rows[rows["working_set_bytes"] > 0]
    colors = compiler_colors(rows["compiler"])
    markers = pattern_markers(rows["pattern"])
    fig = Figure(figsize=(8.5, 5.5))
    ax = fig.subplots()
    for (compiler, pattern, exceeds), group in rows.groupby(
        ["compiler", "pattern", "exceeds_llc"], sort=False
    ):
        color = colors[compiler]
        ax.scatter(
            group["working_set_bytes"] / MIB,
            group[y],
            marker=markers[pattern],
            s=44 if exceeds else 36,
            facecolors="none" if exceeds else color,
            edgecolors=color,
            linewidths=1.4 if exceeds else 0.5,
            alpha=0.9,
            zorder=2,
        )
    llcs = sorted({float(v) for v in rows["llc_bytes"].dropna() if v > 0})
    llc_handles = []
    for llc in llcs:
        ax.axvline(llc / MIB, color="firebrick", ls="--", lw=1.2, zorder=1)
        ax.annotate(
            llc_label(llc),
            (llc / MIB, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(4, -4),
            textcoords="offset points",
            rotation=90,
            va="top",
            fontsize=8,
            color="firebrick",
        )
        llc_handles.append(Line2D([], [], color="firebrick", ls="--", label=llc_label(llc)))
    ax.set_xscale("log")
    plain_log_ticks(ax.xaxis)
    if y == "speedup":
        speedup_axis(ax)
    else:
        ax.set_yscale("log")
        plain_log_ticks(ax.yaxis)
    ax.set_xlabel("working set: parameters + largest layer in+out, batch 1 (MiB, log scale)")
    ax.set_ylabel(QUANTITY_LABELS[y])
    over = int(rows["exceeds_llc"].sum())
    what = "Speedup" if y == "speedup" else "Latency"
    ax.set_title(f"{what} vs working set ({over} of {len(rows)} paths over the LLC, hollow)")
    ax.grid(True, which="both", alpha=0.3)
    fill_handles = [
        Line2D([], [], ls="", marker="o", color="dimgray", label="fits in LLC"),
        Line2D([], [], ls="", marker="o", mfc="none", mec="dimgray", mew=1.4, label="exceeds LLC"),
    ]
    legend_outside(ax, compiler_handles(colors), "compiler (colour)", top=True)
    legend_outside(
        ax,
        [*pattern_handles(markers), *fill_handles, *llc_handles],
        "pattern (marker), cache",
        top=False,
    )
    return save(fig, path)


def networks_latency(table: pd.DataFrame, path: Path) -> Path:
    """Latency of every whole network (rows, fastest eager first) under every compiled
    path (bars, eager included), log scale; NAS-found networks' labels in bold. The
    question of the paper's last section: which network is fastest once compiled, and is
    it the one that was fastest natively?"""
    from dlas.report.form_function import NAS_FOUND

    nets = list(dict.fromkeys(table["network"]))
    kinds = dict(zip(table["network"], table["kind"], strict=False))
    colors = compiler_colors(table["compiler"])
    bar = 0.8 / max(len(colors), 1)
    fig = Figure(figsize=(8.5, max(3.0, 0.22 * len(nets) * len(colors) + 1.5)))
    ax = fig.subplots()
    for i, compiler in enumerate(colors):
        rows = table[table["compiler"] == compiler].groupby("network")["latency_ms"].median()
        rows = rows.reindex([n for n in nets if n in rows.index])
        y = np.array([nets.index(n) for n in rows.index]) + (i - (len(colors) - 1) / 2) * bar
        ax.barh(y, rows.to_numpy(float), height=bar * 0.92, color=colors[compiler], zorder=2)
    ax.set_yticks(range(len(nets)), nets)
    for label in ax.get_yticklabels():
        if kinds.get(label.get_text()) == NAS_FOUND:
            label.set_fontweight("bold")
    ax.invert_yaxis()
    ax.set_xscale("log")
    plain_log_ticks(ax.xaxis)
    ax.set_xlabel(QUANTITY_LABELS["latency_ms"])
    ax.set_title("Whole networks: latency per compiled path (bold: NAS-found)")
    ax.grid(True, axis="x", which="both", alpha=0.3)
    legend_outside(ax, compiler_handles(colors), "compiler", top=True)
    return save(fig, path)
