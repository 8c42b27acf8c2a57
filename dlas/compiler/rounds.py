"""Time a point's runtimes in alternating rounds, each in its own worker, and judge the noise.

Why rounds: a speedup divides two latencies, and on a shared machine the state can
change between timing one runtime and the other (a neighbour starts a build). Timed in
alternating rounds (A, B, B, A, A, B, ...: the order flips every round, so neither
runtime always runs first after the other), each round's ratio is taken under one machine
state, and the spread of the per-round ratios says how much the ratio can be trusted.
Each runtime stays in its own :class:`~dlas.compiler.measure.Worker` process: two
runtimes in one process bias the second.

Why attempts: before and during each attempt we read how much of the timed cores other
processes used, and the samples' CV; a noisy attempt is retried (``measure.retries``),
then the quietest attempt is kept and its noise reported (:mod:`dlas.compiler.noise`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from time import sleep

import numpy as np

from dlas.compiler.measure import Latency, Protocol, Worker
from dlas.compiler.noise import (
    NoisePolicy,
    NoisyMeasurementError,
    Speedup,
    coefficient_of_variation,
    noise_reasons,
    paired_speedup,
    quietest,
)
from dlas.hardware.load import CpuLoad, LoadMonitor, probe

log = logging.getLogger("dlas.measure")


def round_sizes(repeat: int, rounds: int) -> list[int]:
    """Split ``repeat`` samples over ``min(rounds, repeat)`` rounds, sizes within one."""
    if repeat < 1 or rounds < 1:
        raise ValueError(f"need repeat >= 1 and rounds >= 1; got repeat={repeat}, rounds={rounds}")
    return [len(part) for part in np.array_split(np.arange(repeat), min(rounds, repeat))]


@dataclass
class Attempt:
    """One pass of all rounds: samples per runtime and round, and the load around it."""

    samples: dict[str, list[list[float]]]
    before: CpuLoad | None
    during: CpuLoad
    reasons: list[str] = field(default_factory=list)

    @property
    def cvs(self) -> dict[str, float]:
        return {
            name: coefficient_of_variation([s for r in rounds for s in r])
            for name, rounds in self.samples.items()
        }


@dataclass
class Timing:
    """The kept attempt of a point's timing: a :class:`Latency` and CV per runtime, each
    compiled path's paired :class:`Speedup` over the reference, the load, and why it is
    noisy (empty: it is not)."""

    latencies: dict[str, Latency]
    speedups: dict[str, Speedup]
    cvs: dict[str, float]
    load_before: float
    load_during: float
    attempts: int
    reasons: list[str]
    #: the kept attempt's samples (ms per call), per runtime and round, in timing order
    samples: dict[str, list[list[float]]] = field(default_factory=dict)
    #: why each attempt was judged noisy (empty list: it was quiet), in order
    attempt_reasons: list[list[str]] = field(default_factory=list)
    kept_attempt: int = 0  #: which of them ``samples`` are from (the quietest)
    #: per runtime, the longest its worker waited for its threads to go idle after a
    #: round (ms): a spin-waiting pool shows here, not in another runtime's samples
    settle_ms: dict[str, float] = field(default_factory=dict)

    def record(self, number: int, cores: Sequence[int]) -> dict:
        """Everything behind the logged latencies, for ``latencies.json``: the raw samples
        let a reader check a median, a CV or a speedup interval, or plot the spread."""
        return {
            "unit": "ms per call",
            "calls_per_sample": number,
            "cores": list(cores),
            "samples": self.samples,
            "cv": self.cvs,
            "cpu_load_before": self.load_before,
            "cpu_load_during": self.load_during,
            "attempts": [{"noisy": reasons} for reasons in self.attempt_reasons],
            "kept_attempt": self.kept_attempt,
            "settle_ms_max": self.settle_ms,
        }

    @property
    def noisy(self) -> str | None:
        """The ``dlas.noisy`` tag's value, or None for a quiet measurement."""
        return "; ".join(self.reasons) if self.reasons else None


def run_rounds(
    workers: Mapping[str, Worker], protocol: Protocol, rounds: int
) -> dict[str, list[list[float]]]:
    """Every worker times one round in turn, the order flipping each round; the
    protocol's ``repeat`` samples are split over the rounds."""
    names = list(workers)
    samples: dict[str, list[list[float]]] = {name: [] for name in names}
    for i, size in enumerate(round_sizes(protocol.repeat, rounds)):
        for name in names if i % 2 == 0 else reversed(names):
            samples[name].append(workers[name].time(protocol.but(repeat=size)))
    return samples


def _attempt(
    workers: Mapping[str, Worker],
    cores: Sequence[int],
    protocol: Protocol,
    rounds: int,
    probe_s: float,
    policy: NoisePolicy,
) -> Attempt:
    pids = [w.pid for w in workers.values()]
    before = probe(cores, probe_s, pids) if probe_s > 0 else None
    with LoadMonitor(cores, pids) as monitor:
        samples = run_rounds(workers, protocol, rounds)
    assert monitor.result is not None
    attempt = Attempt(samples, before, monitor.result)
    attempt.reasons = noise_reasons(
        attempt.cvs,
        0.0 if before is None else before.others,
        attempt.during.others if attempt.during.judgeable else None,
        policy,
    )
    return attempt


def time_paired(
    workers: Mapping[str, Worker],
    reference: str,
    *,
    cores: Sequence[int],
    protocol: Protocol,
    rounds: int,
    policy: NoisePolicy,
    probe_s: float = 0.5,
    retry_wait_s: float = 0.0,
) -> Timing:
    """Time every worker in alternating rounds, ``1 + policy.retries`` attempts at most
    (stopping at the first quiet one), and keep the quietest attempt. Before retry ``i``
    it waits ``retry_wait_s * 2**(i-1)`` seconds, so a neighbour's burst (a compile, a
    test) has a chance to pass instead of spoiling every attempt in a row.

    ``reference`` names the worker every speedup is over (eager PyTorch). A kept attempt
    that is still noisy raises :class:`NoisyMeasurementError` under ``policy.strict``,
    naming each symptom and its threshold; otherwise it is returned with its reasons and
    a warning is logged.
    """
    log.info(
        "timing %s in %d alternating rounds on cores %s",
        ", ".join(workers),
        len(round_sizes(protocol.repeat, rounds)),
        list(cores),
    )
    attempts: list[Attempt] = []
    for i in range(1 + policy.retries):
        if i > 0 and retry_wait_s > 0:
            sleep(retry_wait_s * 2 ** (i - 1))
        attempt = _attempt(workers, cores, protocol, rounds, probe_s, policy)
        attempts.append(attempt)
        if not attempt.reasons:
            break
        log.info("timing attempt %d/%d noisy: %s", i + 1, 1 + policy.retries, attempt.reasons)
    kept_index = quietest([(a.reasons, a.cvs) for a in attempts])
    kept = attempts[kept_index]
    if kept.reasons and policy.strict:
        raise NoisyMeasurementError(
            f"measure.strict=true: the timing stayed noisy after {len(attempts)} attempt(s) "
            f"on cores {list(cores)}: {'; '.join(kept.reasons)}. The point fails instead of "
            "logging latencies of a busy machine (free the cores, or raise the thresholds)"
        )
    if kept.reasons:
        log.warning(
            "noisy latency (tagged dlas.noisy) after %d attempt(s): %s",
            len(attempts),
            "; ".join(kept.reasons),
        )
    latencies = {
        name: Latency.from_samples(
            [s for r in rounds_ for s in r],
            number=protocol.number,
            threads=workers[name].threads,
            setup_s=workers[name].setup_s,
        )
        for name, rounds_ in kept.samples.items()
    }
    ref = kept.samples[reference]
    speedups = {name: paired_speedup(ref, r) for name, r in kept.samples.items()}
    return Timing(
        latencies,
        speedups,
        kept.cvs,
        0.0 if kept.before is None else kept.before.others,
        kept.during.others,
        len(attempts),
        kept.reasons,
        kept.samples,
        [a.reasons for a in attempts],
        kept_index,
        {name: round(max(w.settle_ms, default=0.0), 1) for name, w in workers.items()},
    )
