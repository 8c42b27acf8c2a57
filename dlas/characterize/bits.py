"""Bit-level properties of fixed-point values: what zero-skipping, dynamic-precision and
bit-serial accelerators can exploit (Nikolic et al., ISPASS 2019).

Every function takes an integer tensor and reads it in **sign-magnitude**: a value costs
what its magnitude costs, and the sign is one separate bit. That is how bit-serial
engines such as Stripes and Pragmatic treat values, and it keeps -1 at one effectual
bit instead of the sixteen ones of its two's complement.

Everything is vectorized torch over whole tensors (no loop over values or bits), on
int64 so that 32-bit fixed point and its 3x (in ``csd_terms``) never overflow.
"""

from __future__ import annotations

import torch
from torch import Tensor

# trailing_zeros() of a zero: larger than any bit position, so a min over values ignores it
NO_BIT = 64
ENCODINGS = ("radix4", "csd")


def magnitude(q: Tensor) -> Tensor:
    """|q| as int64: wide enough that 3|q| (csd_terms) cannot overflow for 32-bit values."""
    return q.to(torch.int64).abs()


def bit_length(m: Tensor) -> Tensor:
    """Python's ``int.bit_length`` per non-negative value (0 for 0): the msb position + 1.

    ``frexp`` writes m = f * 2**e with f in [0.5, 1), so e is the bit length; it is exact
    because magnitudes below 2**53 are exact in float64.
    """
    _, exponent = torch.frexp(m.to(torch.float64))
    return exponent.to(torch.int64)


def trailing_zeros(m: Tensor) -> Tensor:
    """Position of the lowest set bit of each non-negative value; NO_BIT for 0.

    ``m & -m`` keeps only the lowest set bit (two's complement identity)."""
    return torch.where(m == 0, NO_BIT, bit_length(m & -m) - 1)


def popcount(m: Tensor) -> Tensor:
    """Set bits of each non-negative int64, by the classic SWAR reduction: bit counts of
    2-, 4-, then 8-bit fields, then the bytes summed by shifts (no multiply, which could
    overflow int64). A dozen tensor ops whatever the width, instead of one per bit."""
    m = m.to(torch.int64)
    m = m - ((m >> 1) & 0x5555555555555555)
    m = (m & 0x3333333333333333) + ((m >> 2) & 0x3333333333333333)
    m = (m + (m >> 4)) & 0x0F0F0F0F0F0F0F0F
    m = m + (m >> 8)
    m = m + (m >> 16)
    m = m + (m >> 32)
    return m & 0x7F


def effectual_bits(q: Tensor) -> Tensor:
    """Non-zero bits of each |q|: the work of a bit-serial engine that skips zero bits
    (Pragmatic) on this value. 0b0111 -> 3, 0b0110 -> 2, -5 -> 2."""
    return popcount(magnitude(q))


def booth_terms(q: Tensor) -> Tensor:
    """Non-zero digits of the radix-4 modified Booth recoding of each |q|.

    Digit i is ``-2*b[2i+1] + b[2i] + b[2i-1]`` (b[-1] = 0), a value in {-2..2}, so each
    non-zero digit is one signed power of two: one term for a term-serial engine. A digit
    is zero exactly when its three bits are equal (000 or 111), i.e. when both
    ``b[2i] ^ b[2i-1]`` and ``b[2i+1] ^ b[2i]`` are 0. ``y = m ^ (m << 1)`` holds those
    XORs at bits 2i and 2i+1, so the count is the number of bit pairs (2i, 2i+1) of y
    that are not 00. y also sees the 0 above the msb, so a leading 1 gets its digit.
    Radix-4 Booth bounds the terms (<= width // 2 + 1) rather than minimizing them:
    0b1010 = 16 - 4 - 2 has 3 terms though it has 2 bits (see :func:`csd_terms`).
    """
    m = magnitude(q)
    y = m ^ (m << 1)
    return popcount((y | (y >> 1)) & 0x5555555555555555)


def csd_terms(q: Tensor) -> Tensor:
    """Non-zero digits of the canonical signed-digit (non-adjacent) form of each |q|: the
    fewest signed powers of two that sum to it.

    The NAF of m has a non-zero digit at position k exactly where bit k+1 of ``3m ^ m``
    is set (3m = m + 2m: the carries of that add mark the runs of ones), so the count is
    ``popcount((3m ^ m) >> 1)``. 0b0111 = 8 - 1 -> 2, 0b1010 = 8 + 2 -> 2.
    """
    m = magnitude(q)
    return effectual_bits(((3 * m) ^ m) >> 1)


def signed_digit_terms(q: Tensor, encoding: str = "radix4") -> Tensor:
    """Terms per value in the signed-digit ``encoding`` a term-serial engine uses."""
    if encoding == "radix4":
        return booth_terms(q)
    if encoding == "csd":
        return csd_terms(q)
    raise ValueError(f"characterize.booth={encoding!r}: choose one of {', '.join(ENCODINGS)}")


def span_width(max_magnitude: Tensor, lowest_bit: Tensor, negative: Tensor) -> Tensor:
    """Bits to hold a set of values exactly, given the largest magnitude, the lowest set
    bit over all of them and whether any is negative: ``msb - lsb + 1`` magnitude bits
    (leading and trailing zeros common to the set are dropped, the engine shifts the
    result back) plus one sign bit only if a value is negative; 0 if all are zero."""
    msb = bit_length(max_magnitude)
    width = msb - lowest_bit + negative.to(torch.int64)
    return torch.where(msb > 0, width, 0)


def precision(q: Tensor) -> int:
    """Bits needed by all values of ``q`` together (a per-layer precision profile)."""
    m = magnitude(q)
    if m.numel() == 0:
        return 0
    return int(
        span_width(m.max(), trailing_zeros(m).min(), (q < 0).any()).item()  # type: ignore[arg-type]
    )


def group_precision(q: Tensor, group_size: int, dim: int) -> Tensor:
    """Bits needed by each group of ``group_size`` consecutive values along ``dim``,
    broadcast back to every value of the group (same shape as ``q``).

    This is what a dynamic-precision engine detects at run time for the values it
    processes together; the tail group is padded with zeros, which change neither the
    msb, the lsb nor the sign of a group.
    """
    if group_size < 1:
        raise ValueError(f"characterize.group_size={group_size} must be >= 1")
    moved = q.to(torch.int64).movedim(dim, -1)
    size = moved.shape[-1]
    pad = -size % group_size
    padded = torch.nn.functional.pad(moved, (0, pad))
    grouped = padded.reshape(*padded.shape[:-1], -1, group_size)
    m = grouped.abs()
    widths = span_width(
        m.amax(-1), trailing_zeros(m).amin(-1), (grouped < 0).any(-1)
    )  # (..., groups)
    per_value = widths.repeat_interleave(group_size, dim=-1)[..., :size]
    return per_value.movedim(-1, dim)
