"""Which run of a point to believe when there are several: the one whose numbers are the
cached model's.

A point can have several FINISHED runs (rerun with ``tracking.resume=false``, two
processes at once, a corrupt entry rebuilt). ``deploy.py`` and ``characterize.py`` reuse
the cached model, so the run the report shows and resume reuses must be one whose numbers
came from that entry. Each run is tagged with the entries it used: the run that computed
them (``dlas.<stage>_run``) and when they were stored (``dlas.<stage>_written``). Entries
are written once, so the most recently stored entry of a key is the one in the cache
(an older one was set aside as corrupt, or deleted).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

STAGES = ("compress", "train")  # the compressed model's numbers are the reported ones


def entry_tags(stage: str, run_id: str | None, written: float | None) -> dict[str, str]:
    """The tags recording that a run's ``stage`` numbers are those of this cache entry."""
    return {f"dlas.{stage}_run": run_id or "", f"dlas.{stage}_written": repr(written or 0.0)}


def _number(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return -math.inf
    return number if not math.isnan(number) else -math.inf


def preference(tags: Mapping[str, Any], run_id: str, start_time: Any) -> tuple[float, ...]:
    """Sort key of a run among runs of one point; the largest is the one to believe.

    In order: the most recently stored compressed and trained entries (a run that used no
    shared cache entry, ``use_cache=false`` or older dlas, comes last); then a run that
    computed its entries itself over one that read them (it holds the training curves);
    then the newest run."""
    written = tuple(_number(tags.get(f"dlas.{stage}_written")) for stage in STAGES)
    produced = sum(tags.get(f"dlas.{stage}_run") == run_id for stage in STAGES)
    return (*written, float(produced), _number(start_time))
