"""Idealised accelerators, each reduced to the work it does per multiply-accumulate, and
their speedup over a bit-parallel B x B MAC array (B = the data width: ``bits`` for
fixed point made from floats, 8 for int8, or ``characterize.baseline_bits``).

All engines are ideal in the paper's sense: perfect load balance, no memory stalls,
every skippable unit of work skipped. They bound what each source of ineffectual
computation is worth, not what a chip achieves. Work is summed over every MAC of the
characterized samples (M MACs; a MAC multiplies activation a by weight w):

================== ============================================= =====================
engine             speedup                                       in the spirit of
================== ============================================= =====================
zero_skip          M / #MACs with a != 0 and w != 0              SCNN (both operands)
zero_skip_act      M / #MACs with a != 0                         Cnvlutin
zero_skip_weight   M / #MACs with w != 0                         Cambricon-X
layer_precision    M*B / (M * P_layer(a))                        Stripes
dynamic_precision  M*B / sum over MACs of P_group(a)             Dynamic Stripes
bit_serial_act     M*B / sum over MACs of bits(a)                Pragmatic
bit_serial_act_booth M*B / sum over MACs of terms(a)             Pragmatic (Booth)
bit_serial_both    M*B^2 / sum over MACs of terms(a) * terms(w)  Laconic
================== ============================================= =====================

``P_layer`` is the precision of the layer's activations over all samples, ``P_group``
that of the activation's group of ``group_size`` channels, ``bits`` its non-zero bits and
``terms`` its non-zero signed-digit (Booth) terms (see ``dlas.characterize.bits``). The
bit-parallel baseline does B bit-products per activation per MAC (B^2 single-bit
products per MAC); a bit-serial engine does one per effectual bit or term. A zero
activation costs nothing in the precision and bit-serial engines (0 bits, an all-zero
group has precision 0). A denominator of 0 (all work skippable) counts as 1 unit.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

ENGINES = (
    "zero_skip",
    "zero_skip_act",
    "zero_skip_weight",
    "layer_precision",
    "dynamic_precision",
    "bit_serial_act",
    "bit_serial_act_booth",
    "bit_serial_both",
)


@dataclass
class Work:
    """Additive work counts of one layer (or, summed, of a network)."""

    macs: float = 0.0
    bit_macs: float = 0.0  # sum over MACs of B
    bit2_macs: float = 0.0  # sum over MACs of B^2
    effectual_macs: float = 0.0  # a != 0 and w != 0
    act_nonzero_macs: float = 0.0
    weight_nonzero_macs: float = 0.0
    layer_precision_macs: float = 0.0  # sum over MACs of P_layer(a)
    act_group_bits_macs: float = 0.0  # sum over MACs of P_group(a)
    act_bits_macs: float = 0.0  # sum over MACs of bits(a)
    act_terms_macs: float = 0.0  # sum over MACs of terms(a)
    term_pairs_macs: float = 0.0  # sum over MACs of terms(a) * terms(w)

    def __add__(self, other: Work) -> Work:
        return Work(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))


def _ratio(baseline: float, work: float) -> float:
    return baseline / max(work, 1.0)


def speedups(work: Work) -> dict[str, float]:
    """Speedup of each engine over the bit-parallel baseline (formulas: module docstring)."""
    return {
        "zero_skip": _ratio(work.macs, work.effectual_macs),
        "zero_skip_act": _ratio(work.macs, work.act_nonzero_macs),
        "zero_skip_weight": _ratio(work.macs, work.weight_nonzero_macs),
        "layer_precision": _ratio(work.bit_macs, work.layer_precision_macs),
        "dynamic_precision": _ratio(work.bit_macs, work.act_group_bits_macs),
        "bit_serial_act": _ratio(work.bit_macs, work.act_bits_macs),
        "bit_serial_act_booth": _ratio(work.bit_macs, work.act_terms_macs),
        "bit_serial_both": _ratio(work.bit2_macs, work.term_pairs_macs),
    }
