"""Paper-ready report of a sweep: ``python -m dlas.report --experiment dlas --sweep <id>``.

Reads the FINISHED points of an MLflow experiment (:func:`load_points`), computes the
analyses as pure functions (:mod:`dlas.report.analysis`), writes CSV/Markdown tables and
PNG figures (:func:`write_report`) and logs them as artifacts of a report run. A sweep of
the form-function study (pattern x depth x width) adds its own analyses
(:mod:`dlas.report.form_function`) and figures (:mod:`dlas.report.form_figures`).
"""

from dlas.report.analysis import best_algorithms, pareto_front, rank_correlations, speedup_matrix
from dlas.report.cli import main
from dlas.report.form_function import (
    compiled_paths,
    macs_latency_correlations,
    speedup_by_pattern,
)
from dlas.report.load import load_points
from dlas.report.write import write_report

__all__ = [
    "best_algorithms",
    "compiled_paths",
    "load_points",
    "macs_latency_correlations",
    "main",
    "pareto_front",
    "rank_correlations",
    "speedup_by_pattern",
    "speedup_matrix",
    "write_report",
]
