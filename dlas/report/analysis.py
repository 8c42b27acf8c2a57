"""The numbers behind the report, as pure functions of a tidy points frame.

No MLflow, no files, no plotting here: every figure and table of the paper is computed by
one of these functions, so each can be checked on a hand-made frame
(``tests/test_report.py``) and reused in a notebook on the frame that
:func:`dlas.report.load.load_points` returns.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from dlas.compiler import uses_algorithms

NOT_APPLICABLE = "n/a"
TVM_UNTUNED = "tvm_untuned"
TVM_AUTOSCHEDULE = "tvm_autoschedule"

# Display order: eager baseline first, then the other frameworks, then TVM untuned -> tuned;
# algorithms from the naive to the clever. Names not listed sort after these, alphabetically.
COMPILER_ORDER = (
    "pytorch",
    "torch_compile",
    "onnxruntime",
    "openvino",
    TVM_UNTUNED,
    TVM_AUTOSCHEDULE,
)
ALGORITHM_ORDER = ("direct", "gemm", "spatial_pack", "winograd", "best")
FORMAT_ORDER = ("dense", "csr", "bsr")

# One compressed model measured on one machine: the unit inside which algorithms and
# compilers are compared (best algorithm, speedup heatmap panels).
GROUP = ("dataset", "model", "compression", "amount", "hardware")
# What fixes a model's weights, hence its size and top-1: the layers above the compiler.
UPSTREAM = ("dataset", "model", "compression", "amount")

# name -> (x column, y column, count each compressed model once)
CORRELATIONS: dict[str, tuple[str, str, bool]] = {
    "size_vs_latency": ("size_bytes", "latency_ms", False),
    "size_vs_quality": ("size_bytes", "quality", True),
}

#: how each task's quality metric (``dlas.training.tasks``) is written on an axis
QUALITY_LABELS = {
    "top1": "top-1 accuracy (%)",
    "miou": "mIoU (%)",
    "psnr": "PSNR (dB)",
}


def with_quality(points: pd.DataFrame) -> pd.DataFrame:
    """``points`` with its task columns; a frame made by hand (a notebook, a test) that
    has only ``top1`` is read as classification, its quality the top-1."""
    if {"quality", "task", "quality_metric"} <= set(points.columns):
        return points
    points = points.copy()
    if "quality" not in points.columns:
        points["quality"] = points["top1"] if "top1" in points.columns else np.nan
    for column, default in (("task", "classification"), ("quality_metric", "top1")):
        if column not in points.columns:
            points[column] = default
    return points


def quality_label(points: pd.DataFrame) -> str:
    """The quality axis' label: the task's own metric, or each one's when tasks are mixed
    (one point per dataset keeps its own; fronts are per dataset anyway)."""
    metrics = (
        sorted(points["quality_metric"].dropna().unique())
        if "quality_metric" in points.columns
        else []
    )
    labels = [QUALITY_LABELS.get(m, m) for m in metrics] or [QUALITY_LABELS["top1"]]
    return labels[0] if len(labels) == 1 else "quality: " + " / ".join(labels)


def algorithm_label(algorithm: Any, data_format: Any, compiler: Any) -> str:
    """``gemm``, ``gemm+csr``... for TVM points; ``n/a`` where the algorithm is meaningless."""
    if not uses_algorithms(compiler):
        return NOT_APPLICABLE
    label = str(algorithm) if isinstance(algorithm, str) and algorithm else "?"
    if isinstance(data_format, str) and data_format not in ("", "dense"):
        label += f"+{data_format}"
    return label


def top1_as_percent(top1: pd.Series) -> pd.Series:
    """Top-1 in percent whichever way a run logged it.

    ``train.py`` logs percent (``100 * accuracy``) but a fraction in 0..1 is the other
    common convention; a whole experiment whose every point is at most 1 is read as
    fractions (no model in a paper has all its points under 1 % accuracy).
    """
    known = top1.dropna()
    if not known.empty and known.between(0.0, 1.0).all():
        return top1 * 100.0
    return top1


def order_key(value: Any, order: tuple[str, ...]) -> str:
    """A string that sorts ``value`` by its place in ``order``, unknown values after, by name."""
    text = "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)
    rank = order.index(text) if text in order else len(order)
    return f"{rank:03d}:{text}"


def label_order_key(label: Any) -> str:
    """Sort labels by algorithm then format; ``n/a`` (non-TVM compilers) last."""
    if label == NOT_APPLICABLE or not isinstance(label, str):
        return "999"
    algorithm, _, data_format = label.partition("+")
    return order_key(algorithm, ALGORITHM_ORDER) + order_key(data_format or "dense", FORMAT_ORDER)


def _sort_column(column: pd.Series) -> pd.Series:
    if column.name == "compiler":
        return column.map(lambda v: order_key(v, COMPILER_ORDER))
    if column.name == "label":
        return column.map(label_order_key)
    return column


def present(df: pd.DataFrame, columns: tuple[str, ...]) -> list[str]:
    """The columns of ``columns`` that ``df`` has, so hand-made frames may leave some out."""
    return [c for c in columns if c in df.columns]


def sort_points(df: pd.DataFrame) -> pd.DataFrame:
    """Rows grouped as a reader scans them: per compressed model and machine, then compiler
    (eager first), then algorithm."""
    keys = present(df, (*GROUP, "compiler", "label", "threads", "run_id"))
    return df.sort_values(keys, key=_sort_column, kind="stable", na_position="last")


def pareto_front(
    df: pd.DataFrame, maximize: str = "quality", minimize: str = "latency_ms"
) -> pd.Series:
    """Boolean mask (indexed like ``df``) of the points no other point beats.

    A point is dominated when another is at least as good on both axes and strictly better
    on one; identical points therefore keep each other on the front. Points missing either
    value (not deployed) are never on it.
    """
    up = df[maximize].to_numpy(dtype=float)
    down = df[minimize].to_numpy(dtype=float)
    valid = ~(np.isnan(up) | np.isnan(down))
    # [i, j]: does point j dominate point i?
    at_least_as_good = (up[None, :] >= up[:, None]) & (down[None, :] <= down[:, None])
    strictly_better = (up[None, :] > up[:, None]) | (down[None, :] < down[:, None])
    dominated = (at_least_as_good & strictly_better & valid[None, :]).any(axis=1)
    return pd.Series(valid & ~dominated, index=df.index, name="pareto")


def pareto_front_per_dataset(
    df: pd.DataFrame, maximize: str = "quality", minimize: str = "latency_ms"
) -> pd.Series:
    """:func:`pareto_front` within each dataset: qualities of different tasks do not compete
    (hardware and compiler do: they are the choices the front is about)."""
    if "dataset" not in df.columns:
        return pareto_front(df, maximize, minimize)
    mask = pd.Series(False, index=df.index, name="pareto")
    for _, rows in df.groupby("dataset", dropna=False):
        mask.loc[rows.index] = pareto_front(rows, maximize, minimize)
    return mask


def correlation_rows(df: pd.DataFrame, x: str, y: str, per_model: bool) -> pd.DataFrame:
    """The rows a rank correlation of ``y`` on ``x`` is computed on.

    With ``per_model`` a compressed model counts once however many compilers and algorithms
    measured it: they all share its size and top-1, and counting the copies would shrink
    the p-value without adding evidence.
    """
    rows = df.dropna(subset=[x, y])
    upstream = present(rows, UPSTREAM)
    if per_model and upstream:
        rows = rows.drop_duplicates(subset=[*upstream, x, y])
    return rows


def correlation(test: Any, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """``test`` (a scipy.stats correlation) as (statistic, p-value); NaN (not an error) when
    undefined, e.g. fewer than two points or a constant column, as in a sweep of one model."""
    if len(x) < 2:
        return math.nan, math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        result = test(x, y)
    return float(result.statistic), float(result.pvalue)


def spearman(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Spearman's rho and its p-value (NaN when undefined)."""
    return correlation(stats.spearmanr, x, y)


def rank_correlations(df: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Spearman rank correlation of model size with latency and with quality.

    Rank (not linear) correlation because the claim under test is monotone ("a smaller model
    is faster / less accurate"), and latencies span orders of magnitude.
    Returns ``{"size_vs_latency": {"x", "y", "rho", "p_value", "n"}, "size_vs_quality":
    {...}}``. Qualities of different tasks (top-1 and mIoU) have no common scale to rank
    on: a report holding several gets ``size_vs_quality_<metric>`` per metric instead.
    """
    df = with_quality(df)
    result: dict[str, dict[str, Any]] = {}
    for name, (x, y, per_model) in CORRELATIONS.items():
        if x not in df.columns or y not in df.columns:
            result[name] = {"x": x, "y": y, "rho": math.nan, "p_value": math.nan, "n": 0}
            continue
        metrics = df["quality_metric"].dropna().unique() if "quality_metric" in df else []
        if y != "quality" or len(metrics) <= 1:
            result[name] = _spearman_entry(df, x, y, per_model)
            continue
        for metric in sorted(metrics):
            rows = df[df["quality_metric"] == metric]
            entry = _spearman_entry(rows, x, y, per_model) | {"quality_metric": metric}
            result[f"{name}_{metric}"] = entry
    return result


def _spearman_entry(df: pd.DataFrame, x: str, y: str, per_model: bool) -> dict[str, Any]:
    rows = correlation_rows(df, x, y, per_model)
    rho, p_value = spearman(rows[x].to_numpy(float), rows[y].to_numpy(float))
    return {"x": x, "y": y, "rho": rho, "p_value": p_value, "n": len(rows)}


def speedup_matrix(
    df: pd.DataFrame,
    model: str,
    compression: str | None = None,
    amount: float | None = None,
    hardware: str | None = None,
    dataset: str | None = None,
) -> pd.DataFrame:
    """Speedup over PyTorch eager of one model: rows algorithm label, columns compiler.

    The filters left as None are aggregated over. Several runs in a cell (the same point at
    different thread counts, non-TVM runs that differ only in their ignored algorithm
    param) give their median. Cells never measured are absent or NaN.
    """
    selected = df[df["model"] == model]
    for column, value in (
        ("compression", compression),
        ("amount", amount),
        ("hardware", hardware),
        ("dataset", dataset),
    ):
        if value is None:
            continue
        if isinstance(value, float) and math.isnan(value):  # a group key of runs without it
            selected = selected[selected[column].isna()]
        else:
            selected = selected[selected[column] == value]
    selected = selected.dropna(subset=["speedup"])
    if selected.empty:
        return pd.DataFrame(dtype=float)
    matrix = selected.pivot_table(
        index="label", columns="compiler", values="speedup", aggfunc="median"
    )
    rows = sorted(matrix.index, key=label_order_key)
    columns = sorted(matrix.columns, key=lambda c: order_key(c, COMPILER_ORDER))
    matrix = matrix.reindex(index=rows, columns=columns)
    matrix.index.name, matrix.columns.name = "algorithm", "compiler"
    return matrix


def speedup_panels(df: pd.DataFrame) -> list[tuple[dict[str, Any], pd.DataFrame]]:
    """One :func:`speedup_matrix` per compressed model and machine that has speedups."""
    measured = df.dropna(subset=["speedup"])
    keys = present(measured, GROUP)
    panels = []
    for key, _ in sort_points(measured).groupby(keys, dropna=False, sort=False):
        where = dict(zip(keys, key, strict=True))
        panels.append((where, speedup_matrix(measured, **where)))
    return panels


def best_algorithms(df: pd.DataFrame) -> pd.DataFrame:
    """Per compressed model and machine, the fastest algorithm label without and with tuning.

    ``tuning_changes_winner`` answers whether auto-scheduling changes which algorithm one
    should pick (None when one side was not measured): if it does, algorithm choice and
    compiler choice cannot be studied one at a time.
    """
    tvm = df[df["compiler"].isin([TVM_UNTUNED, TVM_AUTOSCHEDULE])].dropna(subset=["latency_ms"])
    keys = present(tvm, GROUP)
    rows = []
    for key, group in tvm.groupby(keys, dropna=False, sort=False):
        row: dict[str, Any] = dict(zip(keys, key, strict=True))
        for compiler, side in ((TVM_UNTUNED, "untuned"), (TVM_AUTOSCHEDULE, "autoschedule")):
            runs = group[group["compiler"] == compiler]
            fastest = runs.loc[runs["latency_ms"].idxmin()] if not runs.empty else None
            row[f"{side}_algorithm"] = None if fastest is None else fastest["label"]
            row[f"{side}_latency_ms"] = math.nan if fastest is None else fastest["latency_ms"]
        untuned, tuned = row["untuned_algorithm"], row["autoschedule_algorithm"]
        both = untuned is not None and tuned is not None
        row["tuning_changes_winner"] = untuned != tuned if both else None
        rows.append(row)
    columns = [
        *keys,
        "untuned_algorithm",
        "untuned_latency_ms",
        "autoschedule_algorithm",
        "autoschedule_latency_ms",
        "tuning_changes_winner",
    ]
    result = pd.DataFrame(rows, columns=columns)
    if keys:
        result = result.sort_values(keys, kind="stable")
    return result.reset_index(drop=True)
