"""The co-design search space: declared in ``conf/search/*.yaml``, sampled define-by-run.

The config lists what each layer may take; this module turns one Optuna trial into the
Hydra overrides of one stack point, asking only the questions that matter for the
answers already given:

* a compression's ``amount`` is asked only for compressions given a range in
  ``space.amount`` (a list of choices and a separate table of ranges, so that overriding
  ``search.space.compression=[...]`` replaces the choices: Hydra merges a dict override
  into the default dict, which would silently keep choices the user meant to drop);
* a data format other than dense, and its ``sparsity_threshold``, only when the model is
  weight-pruned (a dense model has nothing to skip), and then the algorithm is the sparse
  im2col GEMM, the one that takes sparse weights;
* the conv algorithm only for TVM compilers (frameworks pick their own kernels),
  Winograd only for float models (its transformed weights are fractional), and ``best``
  (each layer's fastest tuned candidate) only for ``tvm_autoschedule``;
* MetaSchedule's trials per task only for ``tvm_autoschedule``.

Parameter names are stable per question (``prune.amount`` vs ``channel_prune.amount``) so
Optuna's samplers see one distribution per name across trials.
"""

from __future__ import annotations

from typing import Any

import optuna

from dlas.algorithms import BEST, CHOICES
from dlas.compiler import COMPILERS, best_algorithm_error, compiler_class

SPARSE_FORMATS = ("csr", "bsr")
FLOAT_ONLY_ALGORITHMS = ("winograd",)
INT8_COMPRESSIONS = ("quant",)


def check_space(space: Any) -> None:
    """Reject a space that names things the stack does not have, before any trial runs."""
    from dlas.compression import COMPRESSIONS
    from dlas.models import list_models

    def unknown(kind: str, given: Any, valid: Any) -> None:
        bad = [g for g in given if g not in valid]
        if bad:
            raise ValueError(
                f"search.space.{kind}: unknown {bad}; valid choices: {', '.join(valid)}"
            )

    unknown("model", space.model, list_models())
    unknown("compression", space.compression, COMPRESSIONS.names())
    unknown("amount", list(space.amount), COMPRESSIONS.names())
    unknown("algorithm", space.algorithm, CHOICES)
    unknown("sparse_formats", space.sparse_formats, SPARSE_FORMATS)
    unknown("compiler", space.compiler, COMPILERS.names())
    for kind, bounds in space.amount.items():
        if bounds is not None and not (len(bounds) == 2 and 0 <= bounds[0] <= bounds[1] < 1):
            raise ValueError(
                f"search.space.amount.{kind}: amount range must be [low, high] within "
                f"[0, 1), got {list(bounds)}"
            )


def suggest_point(trial: optuna.Trial, space: Any) -> list[str]:
    """One stack point as Hydra overrides, asked of ``trial`` layer by layer."""
    overrides = [f"model={trial.suggest_categorical('model', list(space.model))}"]
    compression = trial.suggest_categorical("compression", list(space.compression))
    overrides.append(f"compression={compression}")
    bounds = space.amount.get(compression)
    if bounds is not None:
        amount = trial.suggest_float(f"{compression}.amount", bounds[0], bounds[1])
        overrides.append(f"compression.amount={amount:.4f}")

    compiler = trial.suggest_categorical("compiler", list(space.compiler))
    overrides.append(f"compiler={compiler}")
    if compiler_class(compiler).uses_algorithms:
        overrides += _suggest_algorithm(trial, space, compression, compiler)
    if compiler_class(compiler).tunes:
        low, high = space.trials_per_task
        per_task = trial.suggest_int("trials_per_task", low, high)
        overrides += ["compiler.trials=0", f"compiler.trials_per_task={per_task}"]
    threads = trial.suggest_categorical("threads", list(space.threads))
    overrides.append(f"hardware.threads={threads}")
    return overrides


def _suggest_algorithm(
    trial: optuna.Trial, space: Any, compression: str, compiler: str
) -> list[str]:
    if compression == "prune" and space.sparse_formats:
        data_format = trial.suggest_categorical("data_format", ["dense", *space.sparse_formats])
        if data_format != "dense":
            low, high = space.sparsity_threshold
            threshold = trial.suggest_float("sparsity_threshold", low, high)
            return [
                "algorithm=gemm",
                f"algorithm.data_format={data_format}",
                f"algorithm.sparsity_threshold={threshold:.4f}",
            ]
    choices = list(space.algorithm)
    name = "algorithm"  # a different set of choices needs a name (a distribution) of its own
    if compression in INT8_COMPRESSIONS:
        choices = [a for a in choices if a not in FLOAT_ONLY_ALGORITHMS] or ["direct"]
        name += "_int8"
    if best_algorithm_error(compiler, []) is not None and BEST in choices:
        choices = [a for a in choices if a != BEST] or ["direct"]
        name += "_untuned"
    return [f"algorithm={trial.suggest_categorical(name, choices)}"]
