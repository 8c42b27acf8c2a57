"""The integer formats a layer's operands are characterized in.

The paper's question is what an accelerator could skip in the numbers it actually
stores, so every operand becomes integers first:

* float (and fp16) operands: per-layer fixed point of ``bits`` total, one sign bit and
  ``bits - 1`` magnitude bits, with just enough integer bits for the largest magnitude
  seen in that layer (over all characterized samples) and the rest fractional, as in the
  paper's 16-bit baseline;
* int8 operands (a PT2E-quantized model): the integers the model stores, uint8
  activations and int8 weights, unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class IntFormat:
    """How an operand's values are held as integers.

    ``zero_point`` is the stored integer of a real zero: what convolution padding holds.
    ``int_bits`` is set for fixed point made from floats (its Q format), None for
    integers taken as the model stores them.
    """

    bits: int
    signed: bool
    zero_point: int = 0
    int_bits: int | None = None

    @property
    def label(self) -> str:
        if self.int_bits is not None:
            return f"fixed{self.bits} Q{self.int_bits}.{self.bits - 1 - self.int_bits}"
        return f"{'' if self.signed else 'u'}int{self.bits}"


def integer_bits(max_abs: float) -> int:
    """The fewest integer bits I with max_abs < 2**I (may be negative for small weights:
    then the format gains fractional bits instead of wasting leading zeros)."""
    if max_abs <= 0:
        return 0
    _, exponent = torch.frexp(torch.tensor(max_abs, dtype=torch.float64))
    return int(exponent)


def to_fixed_point(x: Tensor, bits: int, max_abs: float) -> tuple[Tensor, IntFormat]:
    """Round ``x`` to signed ``bits``-bit fixed point whose range covers ``max_abs``.

    Values are ``round(x * 2**F)`` with ``F = bits - 1 - I`` fractional bits, clamped
    to the symmetric range +-(2**(bits-1) - 1) (rounding can only reach 2**(bits-1) at
    max_abs itself). Computed in float64 so that 2**F scaling is exact.
    """
    if bits < 2:
        raise ValueError(f"characterize.bits={bits} must be >= 2 (a sign and a magnitude bit)")
    int_bits = integer_bits(max_abs)
    limit = 2 ** (bits - 1) - 1
    scaled = x.to(torch.float64) * 2.0 ** (bits - 1 - int_bits)
    q = scaled.round().clamp(-limit, limit).to(torch.int64)
    return q, IntFormat(bits=bits, signed=True, int_bits=int_bits)
