"""The ``characterize`` config group's schema, registered beside the stack's schemas.

It lives here rather than in ``dlas.config`` so the analysis owns its knobs; importing
``dlas.characterize`` registers it, which ``characterize.py`` does before Hydra composes.
A misspelt key (``characterize.sampels=8``) is then an error, not a silent default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class CharacterizeConf:
    samples: int = 256  # first N test images
    batch_size: int = 64
    bits: int = 16  # fixed-point width that float operands are characterized in
    group_size: int = 16  # values per group for per-group (dynamic) precision
    booth: str = "radix4"  # signed-digit encoding of *_booth_terms: radix4 | csd
    baseline_bits: int | None = 16  # B x B bit-parallel baseline (paper: 16); null: data width
    out: str | None = None  # report folder; null: reports/characterize/<run name>


def register() -> None:
    ConfigStore.instance().store(group="schema/characterize", name="default", node=CharacterizeConf)


def validate(cfg: Any) -> CharacterizeConf:
    """Range checks Hydra's types cannot express, before any MLflow run exists."""
    from dlas.characterize.bits import ENCODINGS  # torch: only once the app runs

    c = CharacterizeConf(**dict(cfg))
    checks = [
        (c.samples >= 1, f"characterize.samples={c.samples} must be >= 1"),
        (c.batch_size >= 1, f"characterize.batch_size={c.batch_size} must be >= 1"),
        (2 <= c.bits <= 32, f"characterize.bits={c.bits} must be in [2, 32]"),
        (c.group_size >= 1, f"characterize.group_size={c.group_size} must be >= 1"),
        (c.booth in ENCODINGS, f"characterize.booth={c.booth!r}: choose one of {ENCODINGS}"),
        (
            c.baseline_bits is None or c.baseline_bits >= 1,
            f"characterize.baseline_bits={c.baseline_bits} must be >= 1 or null",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    return c
