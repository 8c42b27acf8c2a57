"""``algorithm=best``: every conv layer gets the candidate algorithm that ran fastest tuned.

Which primitive wins depends on the layer (channels, map size, kernel, stride), on the
target and on what the search found for each, so it is measured, not modelled: the
model is legalized once per candidate (``algorithm.candidates``), the kernels of all
candidates are tuned into one MetaSchedule database, and each layer's best measured
time per candidate is read back from it. The time is that of the fused kernel the
layer became (conv plus its folded BatchNorm, bias and ReLU epilogue), on the hardware
that will run it. A final legalization gives each layer its winner; its kernels are the
ones already tuned, so applying the database finds every schedule without more search.

Costs: tuning time grows with the number of candidates (each one's convs are tasks of
their own; the other kernels are shared), and the winner is only as good as the trials
each candidate got.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import tvm
from tvm import relax


@dataclass
class Candidate:
    """The model legalized and fused with one algorithm everywhere it applies."""

    algorithm: str
    mod: tvm.IRModule
    records: list[dict]


def legalize_candidates(
    lower: Callable[[str], tuple[tvm.IRModule, list[dict]]], candidates: Sequence[str]
) -> list[Candidate]:
    """``lower(algorithm)`` runs the pipeline from layer 4 to fusion with that algorithm."""
    return [Candidate(name, *lower(name)) for name in candidates]


def _conv_callees(mod: tvm.IRModule, records: list[dict]) -> list[str | None]:
    """Per conv record, the (fused) PrimFunc that computes it, by name.

    FuseOps names a group ``fused_<op>_<op>...`` after its kernels, the conv first (an
    epilogue can follow a conv, nothing can precede it in a group), but it may emit the
    groups of parallel branches in another order than the layers were legalized (a
    residual block's 1x1 shortcut). So each layer takes the first call of its kernel
    not yet taken; layers that share a kernel (the same conv shape) share its calls in
    dataflow order. Layers left to TVM (no kernel of ours) get None.
    """
    calls: list[str] = []
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            value = binding.value
            if isinstance(value, relax.Call) and value.args:
                callee = value.args[0]
                if isinstance(callee, tvm.ir.GlobalVar):
                    calls.append(callee.name_hint)
    taken = [False] * len(calls)
    found: list[str | None] = []
    for record in records:
        if record["op"] != "conv2d":
            continue
        kernel = record.get("kernel")
        if kernel is None:
            found.append(None)
            continue
        at = next(
            (
                i
                for i, name in enumerate(calls)
                if not taken[i] and (name == kernel or name.startswith(f"fused_{kernel}_"))
            ),
            None,
        )
        if at is None:
            raise RuntimeError(
                f"algorithm=best: no call of kernel {kernel!r} ({record['layer']}) left in the "
                "fused module: FuseOps named the groups differently than expected"
            )
        taken[at] = True
        found.append(calls[at])
    return found


def conv_costs(candidate: Candidate, work_dir: Path, target: tvm.target.Target) -> list[float]:
    """Seconds per conv layer (in record order): the database's best time of the layer's
    kernel, inf when it has none (not tuned, or every trial failed)."""
    from dlas.compiler.template_tuning import open_database

    database = open_database(work_dir)
    normalize = tvm.get_global_func("tvm.s_tir.meta_schedule.normalize_mod")
    costs: list[float] = []
    for callee in _conv_callees(candidate.mod, candidate.records):
        if callee is None:
            costs.append(math.inf)
            continue
        workload = normalize(candidate.mod[callee])
        record = database.query_tuning_record(workload, target, "main")
        runs = [float(s) for s in (record.run_secs or [])] if record is not None else []
        costs.append(sum(runs) / len(runs) if runs else math.inf)
    return costs


def choose(
    candidates: list[Candidate], work_dir: Path, target: tvm.target.Target
) -> tuple[list[str], list[dict]]:
    """Per conv layer, the algorithm it got under the fastest candidate, and every
    candidate's time (ms) to record beside it.

    A layer a candidate cannot take (Winograd on a strided conv) got that candidate's
    fallback; its time is the fallback's, so it competes under its real name. Ties keep
    the earlier candidate: list the one to prefer first. A layer no candidate has a time
    for keeps what the first candidate gave it.
    """
    costs = [conv_costs(c, work_dir, target) for c in candidates]
    conv_records = [[r for r in c.records if r["op"] == "conv2d"] for c in candidates]
    chosen: list[str] = []
    notes: list[dict] = []
    for layer, times in enumerate(zip(*costs, strict=True)):
        best = min(range(len(candidates)), key=lambda i: times[i])
        got = [recs[layer]["algorithm"] for recs in conv_records]
        chosen.append(got[best] if math.isfinite(times[best]) else got[0])
        notes.append(
            {
                c.algorithm: (round(t * 1e3, 4) if math.isfinite(t) else None)
                for c, t in zip(candidates, times, strict=True)
            }
        )
    return chosen, notes
