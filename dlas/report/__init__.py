"""Paper-ready report of a sweep: ``python -m dlas.report --experiment dlas --sweep <id>``.

Reads the FINISHED points of an MLflow experiment (:func:`load_points`), computes the
analyses as pure functions (:mod:`dlas.report.analysis`), writes CSV/Markdown tables and
PNG figures (:func:`write_report`) and logs them as artifacts of a report run.
"""

from dlas.report.analysis import best_algorithms, pareto_front, rank_correlations, speedup_matrix
from dlas.report.cli import main
from dlas.report.load import load_points
from dlas.report.write import write_report

__all__ = [
    "best_algorithms",
    "load_points",
    "main",
    "pareto_front",
    "rank_correlations",
    "speedup_matrix",
    "write_report",
]
