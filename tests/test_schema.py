"""The run schema is written once (dlas.tracking.schema): every name a reader asks
MLflow for is one a writer declares, and no two names collide."""

from __future__ import annotations

from dlas.report import load
from dlas.search import study
from dlas.tracking import schema

DECLARED = {k: v for k, v in vars(schema).items() if k.isupper() and isinstance(v, str)}


def test_readers_ask_only_for_declared_names():
    names = set(DECLARED.values())
    for table in (load.PARAMS, load.METRICS, load.TAGS):
        assert set(table.values()) <= names, set(table.values()) - names
    assert set(study.POINT_METRICS) <= names
    assert set(schema.TIMING) | set(schema.PER_COMPILER) | set(schema.PER_COMPILER_BUILD) <= names


def test_no_two_names_collide():
    seen: dict[str, str] = {}
    for constant, name in DECLARED.items():
        assert name not in seen, f"{constant} and {seen[name]} are both {name!r}"
        seen[name] = constant
    assert schema.LATENCY_MS.startswith(schema.LATENCY + "_")  # Latency.metrics' prefix
    assert schema.of_compiler("onnxruntime", schema.SPEEDUP) == "onnxruntime/speedup_vs_torch"
