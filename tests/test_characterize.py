"""Ineffectual-computation characterization: bit-level functions against answers worked
out by hand, exact MAC counts on tiny convolutions, engine speedups on a hand-made layer,
float and int8 capture, and the ``characterize.py`` entry point end to end."""

from __future__ import annotations

import copy
import csv

import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT, overrides, run_entry, runs
from torch import nn

from dlas.characterize import bits as B
from dlas.characterize.analysis import (
    NETWORK_METRICS,
    Characterizer,
    RangeProfile,
    act_mac_sums,
    characterize_model,
    pad_activations,
    pair_mac_sum,
)
from dlas.characterize.capture import Geometry, Operands
from dlas.characterize.config import CharacterizeConf, validate
from dlas.characterize.formats import IntFormat, integer_bits, to_fixed_point

UINT8 = IntFormat(bits=8, signed=False)
INT8 = IntFormat(bits=8, signed=True)


def t(*values: int) -> torch.Tensor:
    return torch.tensor(values)


# ------------------------------------------------------------------ bit sparsity


def test_effectual_bits_and_booth_terms_by_hand():
    # Radix-4 Booth digit i = -2*b[2i+1] + b[2i] + b[2i-1], with b[-1] = 0.
    # 7   = 0b0111: digit0 = (b1,b0,b-1) = (1,1,0) -> -1, digit1 = (b3,b2,b1) = (0,1,1) -> +2
    #       7 = 2*4 - 1: 3 bits, 2 terms.
    # 6   = 0b0110: digit0 = (1,0,0) -> -2, digit1 = (0,1,1) -> +2; 6 = 2*4 - 2: 2 bits, 2 terms.
    # 10  = 0b1010: digit0 = (1,0,0) -> -2, digit1 = (1,0,1) -> -1, digit2 = (0,0,1) -> +1
    #       10 = 16 - 4 - 2: 2 bits but 3 radix-4 terms (CSD: 8 + 2, 2 terms).
    # 2   = 0b0010: digit0 = (1,0,0) -> -2, digit1 = (0,0,1) -> +1; 2 = 4 - 2: 1 bit, 2 terms
    #       (an isolated 1 at an odd position costs radix-4 Booth two terms; CSD: 1).
    # 4   = 0b0100: digit0 = (0,0,0) -> 0, digit1 = (0,1,0) -> +1: 1 bit, 1 term.
    # 255 = 0b11111111: digit0 = (1,1,0) -> -1, digits 1-3 = (1,1,1) -> 0,
    #       digit4 = (0,0,1) -> +1; 255 = 256 - 1: 8 bits, 2 terms.
    # 85  = 0b01010101: every digit (0,1,0) -> +1: 4 bits, 4 terms.
    # 170 = 0b10101010: 256 - 64 - 16 - 4 - 2: 4 bits, 5 radix-4 terms; CSD 4 (no adjacent 1s).
    # -5  = sign-magnitude 1|101: the magnitude 5 = 4 + 1: 2 bits, 2 terms. 0: nothing.
    q = t(7, 6, 10, 2, 4, 255, 85, 170, -5, 0, 1)
    assert B.effectual_bits(q).tolist() == [3, 2, 2, 1, 1, 8, 4, 4, 2, 0, 1]
    assert B.booth_terms(q).tolist() == [2, 2, 3, 2, 1, 2, 4, 5, 2, 0, 1]
    assert B.csd_terms(q).tolist() == [2, 2, 2, 1, 1, 2, 4, 4, 2, 0, 1]
    assert B.signed_digit_terms(q, "csd").tolist() == B.csd_terms(q).tolist()
    with pytest.raises(ValueError, match="radix4"):
        B.signed_digit_terms(q, "radix8")


def _booth_reference(n: int) -> int:
    digits = [
        -2 * (n >> (2 * i + 1) & 1) + (n >> (2 * i) & 1) + ((n << 1) >> (2 * i) & 1)
        for i in range(20)
    ]
    assert sum(d * 4**i for i, d in enumerate(digits)) == n  # the recoding is exact
    return sum(d != 0 for d in digits)


def _naf_reference(n: int) -> int:
    terms = 0
    while n:
        if n & 1:
            n -= 2 - n % 4  # digit +1 or -1, leaving a multiple of 4
            terms += 1
        n //= 2
    return terms


def test_bit_functions_match_plain_python_on_every_16_bit_value():
    q = torch.arange(-(2**15) + 1, 2**15)
    magnitudes = [abs(int(v)) for v in q]
    assert B.effectual_bits(q).tolist() == [bin(m).count("1") for m in magnitudes]
    assert B.booth_terms(q).tolist() == [_booth_reference(m) for m in magnitudes]
    assert B.csd_terms(q).tolist() == [_naf_reference(m) for m in magnitudes]
    assert B.bit_length(q.abs()).tolist() == [m.bit_length() for m in magnitudes]
    assert (B.booth_terms(q) <= 16 // 2 + 1).all() and (B.csd_terms(q) <= B.effectual_bits(q)).all()


# ------------------------------------------------------------------ precision


def test_precision_from_msb_lsb_and_sign_by_hand():
    # 64 = 0b1000000, 32 = 0b100000, 96 = 0b1100000: msb at bit 6 (of 96), lowest set bit
    # over all values at bit 5 -> 6 - 5 + 1 = 2 magnitude bits, +1 sign bit (-32) = 3.
    assert B.precision(t(64, -32, 96)) == 3
    assert B.precision(t(64, 32, 96)) == 2  # no negative value: no sign bit
    assert B.precision(t(1, 255)) == 8 and B.precision(t(0, 0)) == 0
    assert B.precision(t(12, 4)) == 2  # 0b1100, 0b0100: bits 2..3


def test_group_precision_along_channels_by_hand():
    # 12 channels at one position, groups of 4 channels:
    # {1, 0, 0, 0} -> 1 bit; {12, 4, 0, 0} -> bits 2..3: 2; {0, 0, 0, 0} -> 0 bits
    x = t(1, 0, 0, 0, 12, 4, 0, 0, 0, 0, 0, 0).reshape(1, 12, 1, 1)
    widths = B.group_precision(x, 4, dim=1).flatten().tolist()
    assert widths == [1] * 4 + [2] * 4 + [0] * 4
    # {-3, 1} -> bits 0..1 + sign = 3; a tail group {8} padded with zeros -> 1
    assert B.group_precision(t(-3, 1, 0, 0, 8).reshape(1, 5), 4, dim=1).tolist() == [
        [3, 3, 3, 3, 1]
    ]


def test_fixed_point_has_just_enough_integer_bits():
    # max 0.75 < 2**0: I = 0, F = 8 - 1 - 0 = 7 -> x * 128 = [64, -32, 96] (the case above)
    q, fmt = to_fixed_point(torch.tensor([0.5, -0.25, 0.75]), bits=8, max_abs=0.75)
    assert q.tolist() == [64, -32, 96] and fmt.int_bits == 0 and fmt.label == "fixed8 Q0.7"
    assert B.precision(q) == 3
    assert integer_bits(1.0) == 1  # 1.0 is not < 2**0
    assert integer_bits(0.3) == -1  # 0.3 < 0.5: a fractional bit gained, F = 8 for 8 bits
    assert to_fixed_point(torch.tensor([0.3]), 8, 0.3)[0].tolist() == [77]  # 0.3 * 256 = 76.8
    # 0.999 * 128 rounds to 128, which 8-bit sign-magnitude cannot hold: clamped to 127
    assert to_fixed_point(torch.tensor([0.999, -0.999]), 8, 0.999)[0].tolist() == [127, -127]


# ------------------------------------------------------------------ MAC-level counts


def hand_layer(weight_format: IntFormat = INT8) -> Operands:
    """a (uint8) = [[1,0,2],[0,3,0],[4,0,5]], w (int8) = [[1,0],[0,-2]], stride 1, no pad."""
    act = t(1, 0, 2, 0, 3, 0, 4, 0, 5).reshape(1, 1, 3, 3)
    weight = t(1, 0, 0, -2).reshape(1, 1, 2, 2)
    return Operands("hand", "conv", act, weight, Geometry(), UINT8, weight_format)


def characterize_ops(*ops: Operands, **knobs) -> Characterizer:
    c = Characterizer(RangeProfile(), **knobs)
    for o in ops:
        c(o)
    return c


def test_mac_sparsity_of_a_tiny_conv_by_hand():
    # 4 output positions x 4 weights = 16 MACs. The weight is non-zero at (0,0) and (1,1),
    # so a MAC is effectual where the window's a[0,0] / a[1,1] is non-zero:
    # window (0,0): a=1, a=3 -> 2; (0,1): 0, 0 -> 0; (1,0): 0, 0 -> 0; (1,1): 3, 5 -> 2.
    # 4 effectual of 16: mac_sparsity = 0.75. Every window holds 2 non-zero activations:
    # 8 MACs with a non-zero activation.
    (row,) = characterize_ops(hand_layer(), group_size=1).rows(samples=1)
    assert row["macs"] == 16
    assert row["act_sparsity"] == pytest.approx(4 / 9)
    assert row["weight_sparsity"] == 0.5
    assert row["mac_sparsity"] == 0.75
    assert row["speedup_zero_skip"] == 16 / 4
    assert row["mac_act_sparsity"] == 0.5 and row["speedup_zero_skip_act"] == 16 / 8
    # every weight meets all 4 windows: 2 zero weights x 4 = 8 of 16 MACs
    assert row["mac_weight_sparsity"] == 0.5 and row["speedup_zero_skip_weight"] == 16 / 8


def test_padding_holds_the_stored_zero():
    # One value 7, a 3x3 weight of ones, padding 1: 1 output, 9 MACs, 8 of them on padding.
    act, weight = t(7).reshape(1, 1, 1, 1), torch.ones(1, 1, 3, 3, dtype=torch.int64)
    padded = Geometry(padding=(1, 1))
    (row,) = characterize_ops(Operands("p", "conv", act, weight, padded, UINT8, INT8)).rows(1)
    assert row["macs"] == 9 and row["mac_sparsity"] == pytest.approx(8 / 9)
    assert row["act_sparsity"] == 0.0  # value statistics see the tensor, not the padding
    # uint8 activations with zero point 3: padding holds 3, a non-zero integer the engine
    # multiplies, so no MAC is skippable.
    with_zp = IntFormat(bits=8, signed=False, zero_point=3)
    (row,) = characterize_ops(Operands("p", "conv", act, weight, padded, with_zp, INT8)).rows(1)
    assert row["mac_sparsity"] == 0.0


def brute_force_sum(f_act: torch.Tensor, g_weight: torch.Tensor, g: Geometry) -> float:
    """Sum over every MAC of f(a) * g(w), by unfolding every receptive field explicitly."""
    n, c, _, _ = f_act.shape
    cout, cin_g, kh, kw = g_weight.shape
    cols = F.unfold(f_act.double(), (kh, kw), dilation=g.dilation, stride=g.stride)
    cols = cols.reshape(n, g.groups, cin_g * kh * kw, -1)
    w = g_weight.double().reshape(g.groups, cout // g.groups, cin_g * kh * kw)
    return float(torch.einsum("ngkl,gok->", cols, w))


@pytest.mark.parametrize(
    "geometry",
    [Geometry(), Geometry((2, 2), (1, 1)), Geometry((1, 2), (2, 1), (2, 1), groups=2)],
)
def test_mac_sums_equal_a_brute_force_count(geometry):
    torch.manual_seed(0)
    act = torch.randint(0, 4, (2, 4, 7, 6)) * (torch.rand(2, 4, 7, 6) < 0.5)
    weight = torch.randint(-2, 3, (6, 4 // geometry.groups, 3, 2))
    padded = pad_activations(act, geometry, zero_point=0)
    pair = pair_mac_sum(padded, weight, geometry)
    assert pair == brute_force_sum(padded, weight, geometry)
    (act_only,) = act_mac_sums([padded], weight.shape, geometry)
    assert act_only == brute_force_sum(padded, torch.ones_like(weight), geometry)


# ------------------------------------------------------------------ engines


def test_engine_speedups_on_a_hand_made_layer():
    # The layer of test_mac_sparsity_of_a_tiny_conv_by_hand; uint8 x int8, so B = 8, M = 16.
    # Per activation value: 1, 2, 3, 4, 5 have
    #   non-zero bits     1, 1, 2, 1, 2
    #   radix-4 terms     1, 2, 2, 1, 2   (2 = 4 - 2, 3 = 4 - 1, 5 = 4 + 1)
    #   precision alone   1, 1, 2, 1, 3   (a group of 1 channel: 2 = 0b10 needs 1 bit)
    # Windows of a: (0,0) = [1,0,0,3], (0,1) = [0,2,3,0], (1,0) = [0,3,4,0], (1,1) = [3,0,0,5].
    # Sum over MACs of bits(a)   = (1+2) + (1+2) + (2+1) + (2+2) = 13
    # Sum over MACs of terms(a)  = (1+2) + (2+2) + (2+1) + (2+2) = 14
    # Sum over MACs of P_group   = (1+2) + (1+2) + (2+1) + (2+3) = 14
    # Layer precision of a: max 5 -> 3 bits, lowest set bit 0, unsigned -> 3 bits.
    # terms(w) = [[1, 0], [0, 2]] (-2: magnitude 2 = 4 - 2): sum over MACs of terms(a)*terms(w)
    #   = window (0,0): 1*1 + 2*2 = 5; (0,1): 0 + 0; (1,0): 0 + 0; (1,1): 2*1 + 2*2 = 6 -> 11
    (row,) = characterize_ops(hand_layer(), group_size=1).rows(samples=1)
    assert row["baseline_bits"] == 8
    assert row["act_bits_layer"] == 3 and row["weight_bits_layer"] == 3  # {1, -2}: 2 + sign
    assert row["act_effectual_bits"] == pytest.approx(7 / 9)
    assert row["act_booth_terms"] == pytest.approx(8 / 9)
    assert row["speedup_layer_precision"] == pytest.approx(8 / 3)
    assert row["speedup_dynamic_precision"] == pytest.approx(16 * 8 / 14)
    assert row["speedup_bit_serial_act"] == pytest.approx(16 * 8 / 13)
    assert row["speedup_bit_serial_act_booth"] == pytest.approx(16 * 8 / 14)
    assert row["speedup_bit_serial_both"] == pytest.approx(16 * 64 / 11)
    # against a 16x16 bit-parallel MAC instead, every precision/bit-serial factor doubles
    (wide,) = characterize_ops(hand_layer(), group_size=1, baseline_bits=16).rows(1)
    assert wide["speedup_bit_serial_act"] == pytest.approx(2 * row["speedup_bit_serial_act"])
    assert wide["speedup_bit_serial_both"] == pytest.approx(4 * row["speedup_bit_serial_both"])
    assert wide["speedup_zero_skip"] == row["speedup_zero_skip"]


def test_network_weighs_activations_by_macs_and_weights_by_count():
    # The hand layer (16 MACs, act sparsity 4/9, 4 weights of which 2 zero) and a dense
    # 1x1 layer (4 MACs, act sparsity 0, 1 non-zero weight): network act sparsity =
    # (16 * 4/9 + 4 * 0) / 20; weight sparsity = 2 zero of 5 weights; MAC sparsity =
    # (12 + 0) ineffectual of 20 MACs; zero-weight MACs = (8 + 0) of 20.
    dense = Operands(
        "dense",
        "linear",
        t(1, 2, 3, 4).reshape(4, 1, 1, 1),
        t(1).reshape(1, 1, 1, 1),
        Geometry(),
        UINT8,
        INT8,
    )
    net = characterize_ops(hand_layer(), dense, group_size=1).network(samples=1)
    assert net["act_sparsity"] == pytest.approx(16 / 20 * 4 / 9)
    assert net["weight_sparsity"] == pytest.approx(2 / 5)
    assert net["mac_sparsity"] == pytest.approx(12 / 20)
    assert net["mac_weight_sparsity"] == pytest.approx(8 / 20)
    assert net["speedup_zero_skip"] == pytest.approx(20 / 8)
    assert net["macs"] == 20 and set(NETWORK_METRICS) <= set(net)


# ------------------------------------------------------------------ capture


class TinyNet(nn.Module):
    """conv (channel 0 = x, channel 1 = -x) -> ReLU -> linear: for positive inputs the
    linear layer sees exactly half of its inputs zero."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1, bias=False)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(2 * 4 * 4, 3)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, -1.0]).reshape(2, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu(self.conv(x)).flatten(1))


def test_float_model_is_characterized_in_per_layer_fixed_point():
    torch.manual_seed(0)
    x = torch.rand(6, 1, 4, 4) + 0.01
    result = characterize_model(TinyNet(), lambda: iter([x[:4], x[4:]]), bits=16, group_size=4)
    conv, fc = result.layers
    assert (conv["layer"], conv["kind"], fc["layer"], fc["kind"]) == (
        "conv",
        "conv",
        "fc",
        "linear",
    )
    assert conv["macs"] == 2 * 16 and fc["macs"] == 32 * 3 and result.samples == 6
    assert conv["act_format"].startswith("fixed16 Q1.") and conv["weight_format"] == "fixed16 Q1.14"
    assert conv["act_sparsity"] == 0 and fc["act_sparsity"] == 0.5
    # conv weights +-1 in Q1.14: +-2**14, one bit each, two with a sign: 1 + 1 = 2 bits
    assert conv["weight_effectual_bits"] == 1 and conv["weight_bits_layer"] == 2
    assert conv["act_bits_layer"] <= 15  # positive inputs: no sign bit
    assert result.network["samples"] == 6


def test_int8_model_reads_the_stored_integers():
    from dlas.compression import get_compression
    from dlas.data import get_datamodule

    data = get_datamodule("synthetic", num_samples=32, image_size=4, in_channels=1, batch_size=8)
    model = TinyNet().eval()
    quantized = get_compression("quant", calibration_batches=2).apply(
        copy.deepcopy(model), data, None
    )
    x = torch.cat(data.calibration_batches(1))
    result = characterize_model(quantized, lambda: iter([x]))
    conv, fc = result.layers
    assert (conv["act_format"], conv["weight_format"]) == ("uint8", "int8")
    assert (fc["act_format"], fc["weight_format"]) == ("uint8", "int8")
    # per-channel symmetric int8: each conv filter is one weight, +1 or -1, stored as
    # +-127 = 0b1111111: 7 non-zero bits, but 2 Booth terms (128 - 1)
    assert conv["weight_effectual_bits"] == 7 and conv["weight_booth_terms"] == 2
    assert fc["act_sparsity"] >= 0.5  # ReLU of -x, quantized: zero (or more) half the time
    assert all(r["act_effectual_bits"] <= 8 and r["act_bits_layer"] <= 8 for r in result.layers)
    assert result.network["baseline_bits"] == 8


# ------------------------------------------------------------------ config and entry point


def test_settings_are_validated_before_anything_runs():
    assert validate({"samples": 4}) == CharacterizeConf(samples=4)
    for bad in ({"samples": 0}, {"bits": 1}, {"group_size": 0}, {"booth": "radix8"}):
        with pytest.raises(ValueError, match="characterize"):
            validate(bad)


def compose_characterize(*args: str):
    from hydra import compose, initialize_config_dir

    import dlas.characterize  # noqa: F401

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="characterize", overrides=list(args))


def test_characterize_config_is_the_stack_config_plus_its_group():
    cfg = compose_characterize("compression=prune", "characterize.group_size=8")
    assert cfg.deploy is False and cfg.characterize.samples == 256 and cfg.characterize.bits == 16
    assert cfg.characterize.group_size == 8 and cfg.compression.name == "prune"
    assert cfg.tracking.experiment == "dlas-characterize"
    with pytest.raises(Exception, match="sampels"):
        compose_characterize("characterize.sampels=8")


ENTRY_METRICS = {
    "act_sparsity",
    "weight_sparsity",
    "mac_sparsity",
    "act_bits_layer",
    "act_bits_group",
    "act_effectual_bits",
    "act_booth_terms",
    "speedup_zero_skip",
    "speedup_dynamic_precision",
    "speedup_bit_serial_act",
    "speedup_bit_serial_both",
    "top1",
    "quality",
}
ARTIFACTS = {
    "config.yaml",
    "layers.csv",
    "layers.md",
    "network.csv",
    "network.md",
    "value_sparsity.png",
    "precision.png",
    "effectual_bits.png",
    "speedups.png",
}


@pytest.mark.e2e
@pytest.mark.slow
def test_entry_point_characterizes_a_float_and_an_int8_model(workdir):
    import mlflow

    out = f"{workdir['tmp']}/reports"
    result = run_entry(
        "characterize.py",
        "-m",
        *overrides(
            workdir,
            "dataset=synthetic",
            "dataset.num_samples=48",
            "dataset.image_size=16",
            "characterize.samples=16",
            "compression=none,quant",
            f"characterize.out={out}/" + "${compression.name}",
        ),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = {r.data.params["compression"]: r for r in runs(workdir["uri"], "dlas-characterize")}
    assert set(found) == {"none", "quant"}
    layers: dict[str, list[dict[str, str]]] = {}
    for name, run in found.items():
        assert run.info.status == "FINISHED"
        assert set(run.data.metrics) >= ENTRY_METRICS, ENTRY_METRICS - set(run.data.metrics)
        artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
        assert artifacts >= ARTIFACTS, ARTIFACTS - artifacts
        with open(f"{out}/{name}/layers.csv") as f:
            layers[name] = list(csv.DictReader(f))
        assert len(layers[name]) == 21  # resnet18: 20 convs and the fc
        m = run.data.metrics
        assert 0 < m["act_sparsity"] < 1 and 0 <= m["mac_sparsity"] < 1
        assert m["speedup_bit_serial_both"] > m["speedup_bit_serial_act"] > 1
    assert {row["act_format"].split()[0] for row in layers["none"]} == {"fixed16"}
    assert {(row["act_format"], row["weight_format"]) for row in layers["quant"]} == {
        ("uint8", "int8")
    }
    int8 = found["quant"].data.metrics
    assert int8["act_effectual_bits"] <= 8 and int8["act_bits_layer"] <= 8
    assert found["none"].data.metrics["train_cache_hit"] == 0.0
    assert int8["train_cache_hit"] == 1.0  # the int8 point reused the float baseline
