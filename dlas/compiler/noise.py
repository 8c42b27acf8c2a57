"""Is a measurement trustworthy? The statistics and the decision, kept free of timing.

A latency is only as good as the machine state it was taken in. Like pyperf (which warns
when std > 10% of the mean) we look at two symptoms: the samples' coefficient of
variation, and how much of the timed cores other processes used before and during timing
(:mod:`dlas.hardware.load`). Either above its threshold makes the attempt noisy; the
protocol retries a bounded number of times, then either keeps the quietest attempt and
says so (tag ``dlas.noisy``, a warning) or, with ``measure.strict``, fails the point.

A speedup is a ratio of two runtimes timed in alternating rounds (A/B/A/B), so each
round compares them under one machine state; its spread is a percentile bootstrap over
rounds (``scipy.stats.bootstrap``), each resampled round keeping both runtimes' samples.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dlas.compiler.measure import MeasurementError

CONFIDENCE = 0.95
_RESAMPLES = 2000


class NoisyMeasurementError(MeasurementError):
    """``measure.strict=true`` and the timing stayed noisy after every retry."""


def coefficient_of_variation(samples: Sequence[float]) -> float:
    """Population std / mean of the samples (0 for fewer than two, inf for a zero mean)."""
    values = np.asarray(list(samples), dtype=np.float64)
    if values.size < 2:
        return 0.0
    mean = float(values.mean())
    return float(values.std() / mean) if mean > 0 else math.inf


@dataclass(frozen=True)
class Speedup:
    """reference / compiled median latency, with a bootstrap interval over rounds."""

    ratio: float
    lo: float
    hi: float
    rounds: int


def _pooled_ratio(
    reference_rounds: Sequence[Sequence[float]],
    compiled_rounds: Sequence[Sequence[float]],
    rounds: Sequence[int],
) -> float:
    ref = np.concatenate([reference_rounds[i] for i in rounds])
    cmp = np.concatenate([compiled_rounds[i] for i in rounds])
    return float(np.median(ref) / np.median(cmp))


def paired_speedup(
    reference_rounds: Sequence[Sequence[float]], compiled_rounds: Sequence[Sequence[float]]
) -> Speedup:
    """Speedup of a compiled path over the reference from samples timed round by round.

    The ratio is the reference's median over the compiled path's median, over all rounds
    (so it is exactly ``torch_latency_ms / latency_ms_median``). Its interval is a 95%
    percentile bootstrap that resamples whole *rounds*, each keeping its two runtimes
    together: round ``i`` of both was timed back to back under one machine state, so a
    slowdown both saw moves neither the ratio nor its interval, while a slowdown only one
    of them saw widens it. One round: nothing to resample, lo = hi = ratio.
    """
    n = len(reference_rounds)
    if n != len(compiled_rounds) or n == 0:
        raise ValueError(f"paired rounds needed: {n} reference vs {len(compiled_rounds)} compiled")
    ratio = _pooled_ratio(reference_rounds, compiled_rounds, range(n))
    if n < 2:
        return Speedup(ratio, ratio, ratio, n)
    from scipy.stats import bootstrap

    interval = bootstrap(
        (np.arange(n),),
        lambda rounds: _pooled_ratio(reference_rounds, compiled_rounds, rounds),
        vectorized=False,
        method="percentile",
        confidence_level=CONFIDENCE,
        n_resamples=_RESAMPLES,
        rng=np.random.default_rng(0),  # the same samples give the same interval
    ).confidence_interval
    return Speedup(ratio, float(interval.low), float(interval.high), n)


@dataclass(frozen=True)
class NoisePolicy:
    """When an attempt counts as noisy, and what to do about it (``measure.*``)."""

    max_cv: float = 0.1
    max_cpu_load: float = 0.25
    retries: int = 2
    strict: bool = False

    @classmethod
    def from_config(cls, m: Any) -> NoisePolicy:
        return cls(float(m.max_cv), float(m.max_cpu_load), int(m.retries), bool(m.strict))

    def check(self) -> NoisePolicy:
        """Fail on nonsense before anything runs, naming the key."""
        if not self.max_cv > 0:
            raise ValueError(f"measure.max_cv={self.max_cv} must be > 0")
        if not 0 <= self.max_cpu_load <= 1:
            raise ValueError(f"measure.max_cpu_load={self.max_cpu_load} must be in [0, 1]")
        if self.retries < 0:
            raise ValueError(f"measure.retries={self.retries} must be >= 0")
        return self


def noise_reasons(
    cvs: Mapping[str, float],
    load_before: float,
    load_during: float | None,
    policy: NoisePolicy,
) -> list[str]:
    """Why an attempt is noisy, one sentence per symptom (empty: it is not).

    ``cvs`` maps each timed runtime to its samples' CV; ``load_*`` are fractions of the
    timed cores other processes used; ``load_during`` is None when the timing window was
    too short to judge (then only the load before timing counts).
    """
    reasons = [
        f"latency CV {cv:.3g} of {name} > measure.max_cv {policy.max_cv:g}"
        for name, cv in cvs.items()
        if not cv <= policy.max_cv  # NaN / inf are noisy too
    ]
    for when, load in (("before", load_before), ("during", load_during)):
        if load is not None and load > policy.max_cpu_load:
            reasons.append(
                f"other processes used {load:.0%} of the timed cores {when} timing "
                f"> measure.max_cpu_load {policy.max_cpu_load:.0%}"
            )
    return reasons


def quietest(attempts: Sequence[tuple[list[str], Mapping[str, float]]]) -> int:
    """Index of the attempt to keep: fewest noise symptoms, then the lowest worst CV."""

    def worst_cv(cvs: Mapping[str, float]) -> float:
        return max((v if math.isfinite(v) else math.inf for v in cvs.values()), default=0.0)

    return min(range(len(attempts)), key=lambda i: (len(attempts[i][0]), worst_cv(attempts[i][1])))
