"""Co-design search: an Optuna study whose trials are stack points (``search.py``)."""

from dlas.search.pareto import log_pareto, pareto_table, write_pareto
from dlas.search.space import check_space, suggest_point
from dlas.search.study import answered, check_search, open_study, run_search

__all__ = [
    "answered",
    "check_search",
    "check_space",
    "log_pareto",
    "open_study",
    "pareto_table",
    "run_search",
    "suggest_point",
    "write_pareto",
]
