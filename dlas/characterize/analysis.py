"""Per-layer and network-level sources of ineffectual computation.

Two passes over the same samples, because a float layer's fixed-point format depends on
the largest magnitude it ever sees: pass 1 (:class:`RangeProfile`) records it, pass 2
(:class:`Characterizer`) turns every operand into integers and accumulates additive
counts per layer, so any number of batches merge exactly.

Per layer, two kinds of number:

* value statistics of each operand tensor (activations over all samples, weights once):
  zero fraction, precision of the layer (:func:`bits.precision`), mean group precision,
  mean effectual bits and Booth terms per value;
* MAC-level work sums (:class:`engines.Work`), exact rather than estimated: the sum over
  every MAC of f(activation) * g(weight) is ``conv(f(a), g(w))`` summed over its output,
  with the layer's stride, dilation and groups. So "MACs with a zero operand" is
  ``M - sum(conv(a != 0, w != 0))``. The activations are padded first with the stored
  value of zero, so MACs against padding count as MACs with a zero activation, as in
  the MAC count of the layer.

The network sums the work, so network speedups are exact too, and averages activation
statistics MAC-weighted (a layer counts as much as the MACs it does) and weight
statistics over all weights (see :meth:`Characterizer.network`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from dlas.characterize import bits as B
from dlas.characterize.capture import Geometry, Operands, run_capturing
from dlas.characterize.engines import ENGINES, Work, speedups
from dlas.characterize.formats import IntFormat, to_fixed_point

OPERAND_METRICS = ("sparsity", "bits_layer", "bits_group", "effectual_bits", "booth_terms")


class RangeProfile:
    """Pass 1: the largest magnitude of each float operand per layer, over all samples."""

    def __init__(self) -> None:
        self.max_abs: dict[tuple[str, str], float] = {}

    def _update(self, key: tuple[str, str], values: Tensor) -> None:
        seen = float(values.detach().abs().max()) if values.numel() else 0.0
        self.max_abs[key] = max(self.max_abs.get(key, 0.0), seen)

    def __call__(self, ops: Operands) -> None:
        if ops.act_format is None:
            self._update((ops.layer, "act"), ops.act)
        if ops.weight_format is None:
            self._update((ops.layer, "weight"), ops.weight)


def integers(
    values: Tensor, fmt: IntFormat | None, max_abs: float, bits: int
) -> tuple[Tensor, IntFormat]:
    """An operand as int64 integers in its format (fixed point if it is float)."""
    if fmt is None:
        return to_fixed_point(values, bits, max_abs)
    return values.to(torch.int64), fmt


@dataclass
class ValueMaps:
    """Per-value properties of an integer tensor (same shape as it)."""

    nonzero: Tensor
    group_bits: Tensor
    effectual_bits: Tensor
    terms: Tensor

    @staticmethod
    def of(q: Tensor, group_size: int, encoding: str) -> ValueMaps:
        """Groups run along dim 1: channels of activations, input channels of weights,
        the values a lane-parallel engine reads together at one position."""
        small = torch.int8  # every map is at most 64: a quarter of int64's memory
        return ValueMaps(
            (q != 0).to(small),
            B.group_precision(q, group_size, dim=1).to(small),
            B.effectual_bits(q).to(small),
            B.signed_digit_terms(q, encoding).to(small),
        )


@dataclass
class OperandTotals:
    """Additive value statistics of one operand of one layer."""

    values: int = 0
    zeros: int = 0
    max_magnitude: int = 0
    lowest_bit: int = B.NO_BIT
    negative: bool = False
    group_bits: int = 0
    effectual_bits: int = 0
    terms: int = 0

    def add(self, q: Tensor, maps: ValueMaps) -> None:
        m = B.magnitude(q)
        self.values += q.numel()
        self.zeros += int(q.numel() - maps.nonzero.sum())
        if q.numel():
            self.max_magnitude = max(self.max_magnitude, int(m.max()))
            self.lowest_bit = min(self.lowest_bit, int(B.trailing_zeros(m).min()))
            self.negative |= bool((q < 0).any())
        self.group_bits += int(maps.group_bits.sum())
        self.effectual_bits += int(maps.effectual_bits.sum())
        self.terms += int(maps.terms.sum())

    @property
    def precision(self) -> int:
        return int(
            B.span_width(
                torch.tensor(self.max_magnitude),
                torch.tensor(self.lowest_bit),
                torch.tensor(self.negative),
            )
        )

    def metrics(self) -> dict[str, float]:
        n = max(self.values, 1)
        return {
            "sparsity": self.zeros / n,
            "bits_layer": float(self.precision),
            "bits_group": self.group_bits / n,
            "effectual_bits": self.effectual_bits / n,
            "booth_terms": self.terms / n,
        }


def act_mac_sums(maps: list[Tensor], weight_shape: torch.Size, geometry: Geometry) -> list[float]:
    """For each per-activation map f (padded NCHW), the sum over every MAC of f(a).

    Each output channel reads the same activations, so a ones kernel with one output
    per group gives the sum for one output channel; times output channels per group.
    """
    out_channels, in_per_group, kh, kw = weight_shape
    groups = geometry.groups
    ones = torch.ones(groups, in_per_group, kh, kw)
    stacked = torch.cat([m.to(torch.float32) for m in maps])
    out = F.conv2d(stacked, ones, None, geometry.stride, 0, geometry.dilation, groups)
    per_map = out.round().to(torch.float64).reshape(len(maps), -1).sum(1)
    return [float(s) * (out_channels // groups) for s in per_map]


def pair_mac_sum(act_map: Tensor, weight_map: Tensor, geometry: Geometry) -> float:
    """The sum over every MAC of f(a) * g(w): the layer's convolution on the maps.

    Maps are small integers, so float32 partial sums are exact (< 2**24); ``round``
    guards against a convolution algorithm that is not exact on integers."""
    out = F.conv2d(
        act_map.to(torch.float32),
        weight_map.to(torch.float32),
        None,
        geometry.stride,
        0,
        geometry.dilation,
        geometry.groups,
    )
    return float(out.round().to(torch.float64).sum())


def pad_activations(q: Tensor, geometry: Geometry, zero_point: int) -> Tensor:
    """Spatial padding as the engine sees it: the stored integer of a real zero."""
    ph, pw = geometry.padding
    if ph == 0 and pw == 0:
        return q
    return F.pad(q, (pw, pw, ph, ph), value=zero_point)


@dataclass
class LayerTotals:
    """Everything accumulated for one layer (all of its calls, all batches)."""

    layer: str
    kind: str
    act_format: IntFormat
    weight_format: IntFormat
    act: OperandTotals = field(default_factory=OperandTotals)
    weight: OperandTotals = field(default_factory=OperandTotals)
    work: Work = field(default_factory=Work)  # all but the layer-precision term, known last

    @property
    def data_bits(self) -> int:
        return max(self.act_format.bits, self.weight_format.bits)

    def final_work(self, baseline_bits: int | None) -> Work:
        """The layer's work with its baseline width and activation layer precision."""
        b = baseline_bits or self.data_bits
        w = self.work
        return Work(
            macs=w.macs,
            bit_macs=w.macs * b,
            bit2_macs=w.macs * b * b,
            effectual_macs=w.effectual_macs,
            act_nonzero_macs=w.act_nonzero_macs,
            weight_nonzero_macs=w.weight_nonzero_macs,
            layer_precision_macs=w.macs * self.act.precision,
            act_group_bits_macs=w.act_group_bits_macs,
            act_bits_macs=w.act_bits_macs,
            act_terms_macs=w.act_terms_macs,
            term_pairs_macs=w.term_pairs_macs,
        )


class Characterizer:
    """Pass 2: a sink for captured operands that accumulates :class:`LayerTotals`."""

    def __init__(
        self,
        profile: RangeProfile,
        *,
        bits: int = 16,
        group_size: int = 16,
        booth: str = "radix4",
        baseline_bits: int | None = None,
    ) -> None:
        if booth not in B.ENCODINGS:
            raise ValueError(f"characterize.booth={booth!r}: choose one of {B.ENCODINGS}")
        self.profile = profile
        self.bits, self.group_size, self.booth = bits, group_size, booth
        self.baseline_bits = baseline_bits
        self.layers: dict[str, LayerTotals] = {}
        # layer -> (weight != 0, terms(weight)) as int8: the weights are the same at every
        # call and batch, and their maps cost as much as a batch of activations' to build
        self.weight_maps: dict[str, tuple[Tensor, Tensor]] = {}

    @torch.no_grad()
    def __call__(self, ops: Operands) -> None:
        g = ops.geometry
        qa, act_format = integers(
            ops.act, ops.act_format, self.profile.max_abs.get((ops.layer, "act"), 0.0), self.bits
        )
        qw, weight_format = integers(
            ops.weight,
            ops.weight_format,
            self.profile.max_abs.get((ops.layer, "weight"), 0.0),
            self.bits,
        )
        totals = self.layers.get(ops.layer)
        if totals is None:
            totals = self.layers[ops.layer] = LayerTotals(
                ops.layer, ops.kind, act_format, weight_format
            )
        if ops.layer not in self.weight_maps:
            maps = ValueMaps.of(qw, self.group_size, self.booth)
            totals.weight.add(qw, maps)
            self.weight_maps[ops.layer] = (maps.nonzero, maps.terms)
        weight_nonzero, weight_terms = self.weight_maps[ops.layer]
        padded = pad_activations(qa, g, act_format.zero_point)
        act_maps = ValueMaps.of(padded, self.group_size, self.booth)
        ph, pw = g.padding
        height, width = qa.shape[-2:]

        def interior(t: Tensor) -> Tensor:
            return t[..., ph : ph + height, pw : pw + width]

        totals.act.add(qa, ValueMaps(*(interior(m) for m in vars(act_maps).values())))

        nonzero_macs, group_bits, act_bits, act_terms = act_mac_sums(
            [act_maps.nonzero, act_maps.group_bits, act_maps.effectual_bits, act_maps.terms],
            qw.shape,
            g,
        )
        effectual = pair_mac_sum(act_maps.nonzero, weight_nonzero, g)
        term_pairs = pair_mac_sum(act_maps.terms, weight_terms, g)
        out_h = (padded.shape[-2] - g.dilation[0] * (qw.shape[-2] - 1) - 1) // g.stride[0] + 1
        out_w = (padded.shape[-1] - g.dilation[1] * (qw.shape[-1] - 1) - 1) // g.stride[1] + 1
        positions = qa.shape[0] * out_h * out_w  # every weight is used once per output position
        totals.work = totals.work + Work(
            macs=float(positions * qw.numel()),
            effectual_macs=effectual,
            act_nonzero_macs=nonzero_macs,
            weight_nonzero_macs=float(positions * int(weight_nonzero.sum())),
            act_group_bits_macs=group_bits,
            act_bits_macs=act_bits,
            act_terms_macs=act_terms,
            term_pairs_macs=term_pairs,
        )

    # ------------------------------------------------------------------ results

    def layer_row(self, t: LayerTotals, samples: int) -> dict[str, Any]:
        work = t.final_work(self.baseline_bits)
        row: dict[str, Any] = {
            "layer": t.layer,
            "kind": t.kind,
            "act_format": t.act_format.label,
            "weight_format": t.weight_format.label,
            "baseline_bits": self.baseline_bits or t.data_bits,
            "macs": work.macs / max(samples, 1),
        }
        row |= {f"act_{k}": v for k, v in t.act.metrics().items()}
        row |= {f"weight_{k}": v for k, v in t.weight.metrics().items()}
        row |= mac_sparsities(work)
        row |= {f"speedup_{k}": v for k, v in speedups(work).items()}
        return row

    def rows(self, samples: int) -> list[dict[str, Any]]:
        """One row per layer, in the order the layers first ran."""
        return [self.layer_row(t, samples) for t in self.layers.values()]

    def network(self, samples: int) -> dict[str, float]:
        """Network-level metrics, exact summed work, and value statistics weighted so
        that they answer the usual question about each operand: activations by the
        MACs of each layer (the work they feed), weights by their count (every weight
        once, as stored; so ``weight_sparsity`` is the pruned fraction of all weights).
        The MAC-weighted view of weights is ``mac_weight_sparsity``."""
        rows = self.rows(samples)
        total = Work()
        for t in self.layers.values():
            total = total + t.final_work(self.baseline_bits)
        macs = max(total.macs, 1.0)
        share = {
            "act": [t.work.macs / macs for t in self.layers.values()],
            "weight": [
                t.weight.values / max(sum(u.weight.values for u in self.layers.values()), 1)
                for t in self.layers.values()
            ],
        }
        metrics: dict[str, float] = {}
        for operand, weights in share.items():
            for name in OPERAND_METRICS:
                key = f"{operand}_{name}"
                metrics[key] = sum(w * r[key] for w, r in zip(weights, rows, strict=True))
        metrics |= mac_sparsities(total)
        metrics |= {f"speedup_{k}": v for k, v in speedups(total).items()}
        metrics["macs"] = total.macs / max(samples, 1)
        metrics["baseline_bits"] = total.bit_macs / macs  # MAC-weighted when layers differ
        metrics["layers"] = float(len(self.layers))
        return metrics


def mac_sparsities(work: Work) -> dict[str, float]:
    """Fractions of MACs with a zero operand: either, the activation, the weight."""
    macs = max(work.macs, 1.0)
    return {
        "mac_sparsity": 1.0 - work.effectual_macs / macs,
        "mac_act_sparsity": 1.0 - work.act_nonzero_macs / macs,
        "mac_weight_sparsity": 1.0 - work.weight_nonzero_macs / macs,
    }


NETWORK_METRICS = (
    *(f"{o}_{n}" for o in ("act", "weight") for n in OPERAND_METRICS),
    "mac_sparsity",
    "mac_act_sparsity",
    "mac_weight_sparsity",
    *(f"speedup_{e}" for e in ENGINES),
)


@dataclass
class Characterization:
    """The result for one model: a row per layer and the network-level metrics."""

    layers: list[dict[str, Any]]
    network: dict[str, float]
    samples: int


def characterize_model(
    model: torch.nn.Module,
    batches: Callable[[], Iterable[Tensor]],
    *,
    bits: int = 16,
    group_size: int = 16,
    booth: str = "radix4",
    baseline_bits: int | None = None,
) -> Characterization:
    """Both passes over the samples ``batches()`` yields (called once per pass, so it
    must yield the same samples each time)."""
    profile = RangeProfile()
    run_capturing(model, batches(), profile)
    characterizer = Characterizer(
        profile, bits=bits, group_size=group_size, booth=booth, baseline_bits=baseline_bits
    )
    samples = run_capturing(model, batches(), characterizer)
    if not characterizer.layers:
        raise ValueError(f"{type(model).__name__} ran no Conv2d or Linear layer to characterize")
    return Characterization(
        characterizer.rows(samples), characterizer.network(samples) | {"samples": samples}, samples
    )
