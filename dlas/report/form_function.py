"""The "Does Form Follow Function?" study (Abbasi et al. 2021), as pure functions.

Networks are built from one macro-architecture *pattern* (plain, residual, bottleneck...)
at several ``depth`` (blocks per stage) and ``width`` (channels of the first stage)
values; each run is one (pattern, depth, width) point that timed PyTorch eager and several
compiled paths side by side. The question is whether a compiler's gain depends on the
pattern (form) rather than on the amount of work (MACs), so everything here is per
(point, compiler): :func:`compiled_paths` unfolds the points frame into that long form and
the other functions summarise it. No MLflow, no files, no plotting, as in
:mod:`dlas.report.analysis`.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
from scipy import stats

from dlas.report.analysis import COMPILER_ORDER, correlation, order_key, spearman
from dlas.tracking import schema

EAGER = "pytorch"
# Display order: from the plainest stack to the most connected. The names of
# dlas.models.patterns.PATTERNS and NAS_CELLS, spelt out so that a report never imports torch (7 s);
# tests/test_form_function_report.py holds the two to the same names and order.
PATTERN_ORDER = (
    "plain",
    "residual",
    "bottleneck",
    "depthwise_separable",
    "inverted_residual",
    "dense",
    "darts",  # NAS-found (dlas.models.NAS_CELLS)
)
# per-path quantity of the points frame -> suffix of its MLflow metric ``<compiler>/<suffix>``
PATH_METRICS = {"latency_ms": schema.LATENCY_MS, "speedup": schema.SPEEDUP}
PATH_METRIC = re.compile(
    r"^metrics\.(?P<compiler>[^/]+)/(?P<metric>" + "|".join(PATH_METRICS.values()) + r")$"
)
# per-point columns carried over to every path of the point
POINT_COLUMNS = (
    "run_id",
    "hardware",
    "pattern",
    "depth",
    "width",
    "macs",
    "params",
    "param_bytes",
    "working_set_bytes",
    "llc_bytes",
)
LONG_COLUMNS = (*POINT_COLUMNS, "compiler", "latency_ms", "speedup", "exceeds_llc")
SPEEDUP_COLUMNS = ("pattern", "compiler", "geomean_speedup", "min_speedup", "max_speedup", "n")
CORRELATION_COLUMNS = (
    "compiler",
    "n",
    "pearson_r_log",
    "pearson_p_log",
    "spearman_rho",
    "spearman_p",
    "slope_log",
    "intercept_log",
)


def path_column(compiler: str, quantity: str) -> str:
    """Points-frame column of one compiled path's ``latency_ms`` or ``speedup``."""
    return f"{compiler}/{quantity}"


def path_metric_columns(columns: pd.Index) -> dict[str, str]:
    """``mlflow.search_runs`` column -> points-frame column for every per-path metric found.

    Discovered rather than listed: which compilers a sweep compared is its configuration,
    and a report must not silently drop one it was not told about.
    """
    quantity_of = {suffix: quantity for quantity, suffix in PATH_METRICS.items()}
    found = {}
    for column in columns:
        match = PATH_METRIC.match(str(column))
        if match:
            found[column] = path_column(match["compiler"], quantity_of[match["metric"]])
    return found


def path_compilers(points: pd.DataFrame) -> list[str]:
    """Compilers that have a per-path column in ``points``, in display order."""
    suffixes = tuple(f"/{q}" for q in PATH_METRICS)
    names = {str(c).rsplit("/", 1)[0] for c in points.columns if str(c).endswith(suffixes)}
    return sorted(names, key=lambda c: order_key(c, COMPILER_ORDER))


def is_form_function(points: pd.DataFrame) -> bool:
    """Whether ``points`` hold a form-function sweep: some point has both a depth and a width
    (no other model of the stack logs them)."""
    if "depth" not in points.columns or "width" not in points.columns:
        return False
    return bool((points["depth"].notna() & points["width"].notna()).any())


def form_function_points(points: pd.DataFrame) -> pd.DataFrame:
    """The points of the study: those with a depth and a width. A zoo model measured in the
    same sweep has neither and would otherwise show up as a pattern of its own."""
    if not is_form_function(points):
        return points.iloc[0:0]
    return points[points["depth"].notna() & points["width"].notna()]


def _column(points: pd.DataFrame, name: str) -> pd.Series:
    """``points[name]`` as numbers, NaN when the column is absent (a path timed but whose
    speedup was not logged, a run from before a metric existed)."""
    if name not in points.columns:
        return pd.Series(math.nan, index=points.index)
    return pd.to_numeric(points[name], errors="coerce")


def _path_rows(
    points: pd.DataFrame, compiler: pd.Series | str, latency: pd.Series, speedup: pd.Series
) -> pd.DataFrame:
    """One path per point, tagged with the point's position so that duplicates of a
    (point, compiler) can be found whatever the index of ``points``."""
    rows = points.reindex(columns=list(POINT_COLUMNS))
    return rows.assign(
        compiler=compiler, latency_ms=latency, speedup=speedup, _point=np.arange(len(points))
    )


def compiled_paths(points: pd.DataFrame) -> pd.DataFrame:
    """The long form of ``points``: one row per (point, compiled path) that was timed.

    Columns :data:`LONG_COLUMNS`: the point (``pattern`` is its ``model``), the ``compiler``,
    its ``latency_ms`` (median) and ``speedup`` over eager, and ``exceeds_llc`` (working set
    larger than the last-level cache; False when either is unknown). A path's own
    ``<compiler>/...`` metrics come first; a run without them (logged before they existed)
    still gives its main compiler from the unprefixed ``latency_ms``/``speedup``. Eager is
    the path ``pytorch`` from ``torch_latency_ms``, speedup 1 by definition, so latency
    plots show the baseline next to the compilers.
    """
    points = points.rename(columns={"model": "pattern"})
    parts = [
        _path_rows(
            points,
            compiler,
            _column(points, path_column(compiler, "latency_ms")),
            _column(points, path_column(compiler, "speedup")),
        )
        for compiler in path_compilers(points)
    ]
    if "compiler" in points.columns:
        main = _column(points, "latency_ms"), _column(points, "speedup")
        parts.append(_path_rows(points, points["compiler"], *main))
    if "torch_latency_ms" in points.columns:
        eager = _column(points, "torch_latency_ms")
        one = pd.Series(1.0, index=points.index).where(eager.notna())  # only where timed
        parts.append(_path_rows(points, EAGER, eager, one))
    if not parts:
        return pd.DataFrame(columns=list(LONG_COLUMNS))
    long = pd.concat(parts, ignore_index=True)
    long = long[long["compiler"].notna() & (long["compiler"] != "")]
    long = long.dropna(subset=["latency_ms", "speedup"], how="all")
    long = long.drop_duplicates(subset=["_point", "compiler"], keep="first")
    exceeds = long["working_set_bytes"] > long["llc_bytes"]  # NaN on either side: False
    long = long.assign(exceeds_llc=exceeds.astype(bool))
    return sort_paths(long)[list(LONG_COLUMNS)].reset_index(drop=True)


def sort_paths(
    long: pd.DataFrame, by: tuple[str, ...] = ("pattern", "depth", "width", "compiler")
) -> pd.DataFrame:
    """Sorted by the columns ``by`` that ``long`` has: by default pattern (simplest first),
    depth, width, then compiler (eager first); patterns and compilers in display order."""

    def key(column: pd.Series) -> pd.Series:
        if column.name == "pattern":
            return column.map(lambda v: order_key(v, PATTERN_ORDER))
        if column.name == "compiler":
            return column.map(lambda v: order_key(v, COMPILER_ORDER))
        return column

    keys = [c for c in by if c in long.columns]
    return long.sort_values(keys, key=key, kind="stable", na_position="last")


def compiled_only(long: pd.DataFrame) -> pd.DataFrame:
    """The compiled paths with a speedup: eager's is 1 by definition and says nothing."""
    return long[(long["compiler"] != EAGER) & (long["speedup"] > 0)]


def geometric_mean(values: pd.Series) -> float:
    """The mean of ratios: 2x faster and 2x slower average to 1x, as they should."""
    return float(np.exp(np.mean(np.log(values.to_numpy(float)))))


def speedup_by_pattern(long: pd.DataFrame) -> pd.DataFrame:
    """The main finding: per pattern and compiler, the speedup over eager across the depths
    and widths measured (geometric mean, min, max, number of points).

    If form followed function, a compiler's geometric mean would be about the same for
    every pattern; the spread between patterns is how much the form matters.
    Columns :data:`SPEEDUP_COLUMNS`, rows in pattern then compiler order.
    """
    table = speedup_summary(compiled_only(long), "pattern")
    return sort_paths(table).reset_index(drop=True)


def speedup_summary(timed: pd.DataFrame, by: str) -> pd.DataFrame:
    """Per ``by`` value and compiler: the geometric mean, min and max speedup of the
    ``timed`` paths, and their number, in first-seen order."""
    rows = [
        {
            by: value,
            "compiler": compiler,
            "geomean_speedup": geometric_mean(group["speedup"]),
            "min_speedup": float(group["speedup"].min()),
            "max_speedup": float(group["speedup"].max()),
            "n": len(group),
        }
        for (value, compiler), group in timed.groupby([by, "compiler"], sort=False)
    ]
    columns = [by, *SPEEDUP_COLUMNS[1:]]
    return pd.DataFrame(rows, columns=columns)


def pearson(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Pearson's r and its p-value (NaN when undefined)."""
    return correlation(stats.pearsonr, x, y)


def power_law(log_x: np.ndarray, log_y: np.ndarray) -> tuple[float, float]:
    """Least-squares ``log_y = slope * log_x + intercept``; NaN when ``log_x`` does not vary
    (one point, one size): no exponent can be read off then."""
    if len(log_x) < 2 or np.ptp(log_x) == 0:
        return math.nan, math.nan
    slope, intercept = np.polyfit(log_x, log_y, 1)
    return float(slope), float(intercept)


def macs_latency_correlations(long: pd.DataFrame) -> pd.DataFrame:
    """Per compiler (eager included), how well MACs predict latency across all patterns.

    Pearson on log10 MACs vs log10 latency tests a power law (latency ∝ MACs^k), the usual
    "latency follows FLOPs" assumption; Spearman only asks for a monotone relation. A high
    value for eager but a low one for a compiler means the compiler's gain depends on
    something other than the amount of work, i.e. on the form. ``slope_log`` and
    ``intercept_log`` are the fitted power law in log10 units (latency ms = 10^intercept *
    MACs^slope); a slope below 1 means bigger networks use the machine better.
    Columns :data:`CORRELATION_COLUMNS`, one row per compiler in display order.
    """
    usable = long[(long["macs"] > 0) & (long["latency_ms"] > 0)]
    rows = []
    for compiler, group in usable.groupby("compiler", sort=False):
        x, y = group["macs"].to_numpy(float), group["latency_ms"].to_numpy(float)
        r, p = pearson(np.log10(x), np.log10(y))
        rho, rho_p = spearman(x, y)
        slope, intercept = power_law(np.log10(x), np.log10(y))
        rows.append(
            {
                "compiler": compiler,
                "n": len(group),
                "pearson_r_log": r,
                "pearson_p_log": p,
                "spearman_rho": rho,
                "spearman_p": rho_p,
                "slope_log": slope,
                "intercept_log": intercept,
            }
        )
    table = pd.DataFrame(rows, columns=list(CORRELATION_COLUMNS))
    return sort_paths(table).reset_index(drop=True)


def knob_lines(long: pd.DataFrame, x: str, y: str, style: str) -> pd.DataFrame:
    """What one depth or width plot draws: per pattern, compiler and ``style`` value (the
    other knob), the median ``y`` at each ``x``, sorted along ``x``. Median because a point
    measured twice (another thread count, another sweep) must still draw one line."""
    keys = ["pattern", "compiler", style, x]
    rows = long.dropna(subset=[x, y, style])
    if rows.empty:
        return pd.DataFrame(columns=keys + [y])
    lines = rows.groupby(keys, sort=False)[y].median().reset_index()
    return sort_paths(lines).reset_index(drop=True)


# ------------------------------------------------------------------ whole networks
#: NAS-found families (dlas.models.NAS_CELLS, spelt out for the same reason as above)
NAS_FAMILIES = ("darts",)
HAND_CRAFTED, NAS_FOUND = "hand-crafted", "NAS-found"
NETWORK_COLUMNS = ("network", "kind", "compiler", "latency_ms", "speedup", "macs")
KIND_COLUMNS = ("kind", *SPEEDUP_COLUMNS[1:])  # speedup_summary by kind
FASTEST_COLUMNS = ("compiler", "network", "kind", "latency_ms", "speedup", "runner_up")
#: the paper's findings (Abbasi et al. 2021, abstract): OpenVINO against the native
#: framework on their Intel CPU; what :func:`paper_comparison` sets ours beside
PAPER_ACCELERATOR = "openvino"
PAPER_MEAN_SPEEDUP = 3.8  # "an average inference speed-up of 380%", all patterns
PAPER_BEST_PATTERN = ("inverted_residual", 5.5)  # "depthwise bottleneck ... at 550%"
PAPER_NAS_SPEEDUP = ("darts", 12.0)  # "DARTS-derived architecture ... (1200%)"
PAPER_FASTEST = ("mobilenet_v2", 2.4)  # "MobileNet-V2 ... lowest ... around 2.4 ms"
PAPER_COLUMNS = ("finding", "paper", "here", "agrees")


def network_kind(model: str) -> str:
    """NAS-found or hand-crafted, for a whole network (a zoo model or a NAS family)."""
    return NAS_FOUND if model in NAS_FAMILIES else HAND_CRAFTED


def network_points(points: pd.DataFrame) -> pd.DataFrame:
    """The whole networks among ``points``: zoo models (they log no depth and width) and
    NAS-found families, as opposed to the pattern families' synthetic stacks."""
    model = points["model"] if "model" in points.columns else pd.Series("", index=points.index)
    depth = _column(points, "depth")
    return points[model.isin(NAS_FAMILIES) | (depth.isna() & model.notna() & (model != ""))]


def _network_label(row: pd.Series) -> str:
    """``resnet18``; a sized family with its size: ``darts d20 w36``."""
    if pd.notna(row["depth"]) and pd.notna(row["width"]):
        return f"{row['pattern']} d{int(row['depth'])} w{int(row['width'])}"
    return str(row["pattern"])


def networks(long: pd.DataFrame) -> pd.DataFrame:
    """One row per (network, compiled path, eager included) of the long frame of
    :func:`network_points`. Columns :data:`NETWORK_COLUMNS`, fastest eager first."""
    if long.empty:
        return pd.DataFrame(columns=list(NETWORK_COLUMNS))
    table = long.assign(
        network=long.apply(_network_label, axis=1), kind=long["pattern"].map(network_kind)
    )
    eager = table[table["compiler"] == EAGER].groupby("network")["latency_ms"].median()
    table = table.assign(_eager=table["network"].map(eager))
    table = sort_paths(table, ("_eager", "compiler"))
    return table[list(NETWORK_COLUMNS)].reset_index(drop=True)


def speedup_by_kind(table: pd.DataFrame) -> pd.DataFrame:
    """Per kind (hand-crafted, NAS-found) and compiler: the speedup over eager across the
    networks of that kind (geometric mean, min, max, n). Columns :data:`KIND_COLUMNS`."""
    out = speedup_summary(compiled_only(table), "kind")
    return sort_paths(out, ("kind", "compiler")).reset_index(drop=True)


def fastest_networks(table: pd.DataFrame) -> pd.DataFrame:
    """Per compiled path (eager included), the network with the lowest latency, and the
    one after it. Columns :data:`FASTEST_COLUMNS`."""
    rows = []
    timed = table[table["latency_ms"] > 0]
    for compiler, group in timed.groupby("compiler", sort=False):
        ranked = group.sort_values("latency_ms", kind="stable")
        best = ranked.iloc[0]
        rows.append(
            {
                "compiler": compiler,
                "network": best["network"],
                "kind": best["kind"],
                "latency_ms": float(best["latency_ms"]),
                "speedup": float(best["speedup"]),
                "runner_up": ranked.iloc[1]["network"] if len(ranked) > 1 else "",
            }
        )
    out = pd.DataFrame(rows, columns=list(FASTEST_COLUMNS))
    return sort_paths(out).reset_index(drop=True)


def paper_comparison(
    by_pattern: pd.DataFrame, table: pd.DataFrame, accelerator: str = PAPER_ACCELERATOR
) -> pd.DataFrame:
    """The paper's four headline findings beside what this sweep measured for the same
    accelerator (by default OpenVINO, the paper's), one row each; ``here`` is empty and
    ``agrees`` None where the sweep has no point to say it with.

    * mean speedup over the patterns (ours: geometric mean over every pattern point);
    * the pattern that gains most (the paper: depthwise bottleneck, our inverted residual);
    * the NAS-found network's speedup, and whether it is the largest of the networks;
    * the fastest network.
    ``agrees``: for the mean, whether the accelerator is faster than eager at all; for
    the others, whether the same pattern / kind / network comes out on top.
    Columns :data:`PAPER_COLUMNS`."""
    ours = by_pattern[by_pattern["compiler"] == accelerator]
    patterns = ours[~ours["pattern"].isin(NAS_FAMILIES)]
    nets = table[(table["compiler"] == accelerator) & (table["speedup"] > 0)]
    rows: list[dict] = []

    def add(finding: str, paper: str, here: str, agrees: bool | None) -> None:
        rows.append({"finding": finding, "paper": paper, "here": here, "agrees": agrees})

    if patterns.empty:
        add("mean speedup over the patterns", f"{PAPER_MEAN_SPEEDUP:g}x", "", None)
        add(
            "pattern that gains most",
            f"{PAPER_BEST_PATTERN[0]}, {PAPER_BEST_PATTERN[1]:g}x",
            "",
            None,
        )
    else:
        mean = geometric_mean(patterns["geomean_speedup"].repeat(patterns["n"]))
        add("mean speedup over the patterns", f"{PAPER_MEAN_SPEEDUP:g}x", f"{mean:.2f}x", mean > 1)
        top = patterns.sort_values("geomean_speedup", ascending=False).iloc[0]
        add(
            "pattern that gains most",
            f"{PAPER_BEST_PATTERN[0]}, {PAPER_BEST_PATTERN[1]:g}x",
            f"{top['pattern']}, {top['geomean_speedup']:.2f}x",
            top["pattern"] == PAPER_BEST_PATTERN[0],
        )
    nas = nets[nets["kind"] == NAS_FOUND]
    if nas.empty:
        add(
            "NAS-found network gains most",
            f"{PAPER_NAS_SPEEDUP[0]}, {PAPER_NAS_SPEEDUP[1]:g}x",
            "",
            None,
        )
    else:
        best = nets.sort_values("speedup", ascending=False).iloc[0]
        nas_best = nas.sort_values("speedup", ascending=False).iloc[0]
        add(
            "NAS-found network gains most",
            f"{PAPER_NAS_SPEEDUP[0]}, {PAPER_NAS_SPEEDUP[1]:g}x",
            f"{nas_best['network']}, {nas_best['speedup']:.2f}x"
            + (
                ""
                if best["kind"] == NAS_FOUND
                else f" (most: {best['network']}, {best['speedup']:.2f}x)"
            ),
            best["kind"] == NAS_FOUND,
        )
    if nets.empty:
        add("fastest network", f"{PAPER_FASTEST[0]}, ~{PAPER_FASTEST[1]:g} ms", "", None)
    else:
        fastest = nets.sort_values("latency_ms").iloc[0]
        add(
            "fastest network",
            f"{PAPER_FASTEST[0]}, ~{PAPER_FASTEST[1]:g} ms",
            f"{fastest['network']}, {fastest['latency_ms']:.3g} ms",
            fastest["network"] == PAPER_FASTEST[0],
        )
    return pd.DataFrame(rows, columns=list(PAPER_COLUMNS))
