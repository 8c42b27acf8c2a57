"""Per-layer bar charts of a characterization, one property per figure.

Built as ``matplotlib.figure.Figure`` objects and saved by the Agg renderer, never through
``pyplot`` (as ``dlas.report.figures``): headless machines work, and a notebook's backend
is left alone. Each title carries the network-level (MAC-weighted) value, so a figure
read alone still says what the whole model does.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from dlas.characterize.engines import ENGINES

DPI = 150


def _figure(layers: int) -> tuple[Figure, Axes]:
    """Wide enough that every layer name stays legible under its bars."""
    fig = Figure(figsize=(max(7.0, 0.42 * layers + 2.5), 4.6))
    return fig, fig.add_subplot()


def grouped_bars(
    ax: Axes, labels: Sequence[str], series: dict[str, Sequence[float]], **bar: Any
) -> None:
    """One group of bars per layer, one bar per series, with the layer names below."""
    x = np.arange(len(labels))
    width = 0.8 / max(len(series), 1)
    for i, (name, values) in enumerate(series.items()):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=name, **bar)
    ax.set_xticks(x, labels, rotation=90, fontsize=7)
    ax.set_xlim(-0.6, len(labels) - 0.4)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))


def _column(rows: list[dict[str, Any]], key: str) -> list[float]:
    return [float(r[key]) for r in rows]


def value_sparsity(rows: list[dict[str, Any]], net: dict[str, float], title: str) -> Figure:
    fig, ax = _figure(len(rows))
    grouped_bars(
        ax,
        [r["layer"] for r in rows],
        {
            "activations (zero values)": _column(rows, "act_sparsity"),
            "weights (zero values)": _column(rows, "weight_sparsity"),
            "MACs with a zero operand": _column(rows, "mac_sparsity"),
        },
    )
    ax.set_ylim(0, 1)
    ax.set_ylabel("fraction (0-1)")
    ax.set_title(
        f"{title}: value sparsity per layer\nnetwork: activations {net['act_sparsity']:.2f} "
        f"(MAC-weighted), weights {net['weight_sparsity']:.2f} (of all), "
        f"MACs {net['mac_sparsity']:.2f}"
    )
    return fig


def precision(rows: list[dict[str, Any]], net: dict[str, float], title: str) -> Figure:
    fig, ax = _figure(len(rows))
    grouped_bars(
        ax,
        [r["layer"] for r in rows],
        {
            "activations, per layer": _column(rows, "act_bits_layer"),
            "activations, per group (mean)": _column(rows, "act_bits_group"),
            "weights, per layer": _column(rows, "weight_bits_layer"),
            "weights, per group (mean)": _column(rows, "weight_bits_group"),
        },
    )
    edges = np.arange(len(rows) + 1) - 0.5
    ax.stairs(_column(rows, "baseline_bits"), edges, color="k", ls="--", lw=1)
    ax.plot([], [], color="k", ls="--", lw=1, label="data width (bit-parallel baseline)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_ylabel("bits needed (sign-magnitude, sign bit if negative)")
    ax.set_title(
        f"{title}: precision needed per layer\nnetwork: activations {net['act_bits_layer']:.1f} "
        f"bits per layer, {net['act_bits_group']:.1f} per group (MAC-weighted)"
    )
    return fig


def effectual_bits(rows: list[dict[str, Any]], net: dict[str, float], title: str) -> Figure:
    fig, ax = _figure(len(rows))
    grouped_bars(
        ax,
        [r["layer"] for r in rows],
        {
            "activations, non-zero bits": _column(rows, "act_effectual_bits"),
            "activations, Booth terms": _column(rows, "act_booth_terms"),
            "weights, non-zero bits": _column(rows, "weight_effectual_bits"),
            "weights, Booth terms": _column(rows, "weight_booth_terms"),
        },
    )
    ax.set_ylabel("mean per value (bits or terms)")
    ax.set_title(
        f"{title}: bit sparsity per layer\nnetwork: activations "
        f"{net['act_effectual_bits']:.2f} bits, {net['act_booth_terms']:.2f} Booth terms "
        "per value (MAC-weighted)"
    )
    return fig


def speedups(rows: list[dict[str, Any]], net: dict[str, float], title: str) -> Figure:
    fig, ax = _figure(len(rows))
    grouped_bars(
        ax,
        [r["layer"] for r in rows],
        {
            f"{e} (network {net[f'speedup_{e}']:.2f}x)": _column(rows, f"speedup_{e}")
            for e in ENGINES
        },
    )
    ax.set_yscale("log")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_ylabel("speedup over bit-parallel MAC (x, log)")
    ax.set_title(f"{title}: ideal speedup per layer and engine")
    return fig


FIGURES = {
    "value_sparsity": value_sparsity,
    "precision": precision,
    "effectual_bits": effectual_bits,
    "speedups": speedups,
}


def write_figures(
    rows: list[dict[str, Any]], net: dict[str, float], title: str, out_dir: Path
) -> list[Path]:
    """``<name>.png`` for each figure; returns the paths."""
    paths = []
    for name, draw in FIGURES.items():
        fig = draw(rows, net, title)
        fig.tight_layout()
        path = out_dir / f"{name}.png"
        fig.savefig(path, dpi=DPI, bbox_inches="tight")
        paths.append(path)
    return paths
