"""Layer 3: each compression does what it says, measured on the model it returns."""

from __future__ import annotations

import copy

import pytest
import torch

from dlas.compression import COMPRESSIONS, get_compression
from dlas.data import get_datamodule
from dlas.metrics import count_macs, structure
from dlas.models import get_model
from dlas.models.export import export_model, serialized_size


@pytest.fixture(scope="module")
def data():
    return get_datamodule("synthetic", num_samples=64, image_size=32, in_channels=3, batch_size=8)


def no_finetune(model, epochs, lr):
    raise AssertionError("finetune_epochs=0 must not fine-tune")


def counting_finetune(calls):
    def finetune(model, epochs, lr):
        calls.append((epochs, lr))
        return model

    return finetune


def resnet():
    torch.manual_seed(0)
    return get_model("resnet18", num_classes=10, in_channels=3, input_size=32, stem="compact")


def test_global_prune_hits_the_target_sparsity(data):
    model = resnet()
    comp = get_compression("prune", amount=0.9)
    out = comp.apply(model, data, no_finetune)
    s = structure(out)
    assert s["sparsity"] == pytest.approx(0.9, abs=1e-4)
    report = comp.report
    assert report["prunable_nonzero"] == pytest.approx(0.1 * report["prunable_params"], rel=1e-3)
    # masks are permanent: plain parameters, no re-parametrization hooks left behind
    assert not any("weight_orig" in n for n, _ in out.named_parameters())
    # global ranking: layers do not all get the same sparsity
    per_layer = list(report["sparsity_per_layer"].values())
    assert max(per_layer) - min(per_layer) > 0.1
    # effectual MACs, computed independently: each layer's MACs x its weight density
    expected = []

    def hook(m, inputs, output):
        per_output = m.weight[0].numel()  # in_channels/groups * kh * kw, or in_features
        density = float((m.weight != 0).float().mean())
        expected.append((output.numel() * per_output, density))

    layers = [m for m in out.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    handles = [m.register_forward_hook(hook) for m in layers]
    macs = count_macs(out, torch.zeros(1, 3, 32, 32))
    for h in handles:
        h.remove()
    assert macs["macs"] == sum(n for n, _ in expected)
    assert macs["nonzero_macs"] == pytest.approx(sum(n * d for n, d in expected), rel=1e-6)
    # global pruning spares the early, MAC-heavy layers: effectual MACs stay above 10%
    assert 0.1 * macs["macs"] < macs["nonzero_macs"] < 0.5 * macs["macs"]


def test_iterative_prune_finetunes_after_each_step(data):
    calls = []
    comp = get_compression("prune", amount=0.75, steps=3, finetune_epochs=1, finetune_lr=0.02)
    out = comp.apply(resnet(), data, counting_finetune(calls))
    assert calls == [(1, 0.02)] * 3
    assert structure(out)["sparsity"] == pytest.approx(0.75, abs=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "densenet121", "mobilenet_v2"])
def test_channel_prune_removes_channels_through_the_graph(data, name):
    torch.manual_seed(0)
    model = get_model(name, num_classes=10, in_channels=3, input_size=32, stem="compact")
    before_s, before_m = structure(model), count_macs(model, torch.zeros(1, 3, 32, 32))
    comp = get_compression("channel_prune", amount=0.5)
    out = comp.apply(model, data, no_finetune)
    after_s, after_m = structure(out), count_macs(out, torch.zeros(1, 3, 32, 32))
    assert after_s["params"] < 0.4 * before_s["params"]
    assert after_m["macs"] < 0.4 * before_m["macs"]
    assert comp.report["channels_kept"] == pytest.approx(0.5, abs=0.05)
    assert out(torch.randn(2, 3, 32, 32)).shape == (2, 10)  # residual adds / concats still agree


@pytest.mark.slow
def test_int8_quantization_is_int8_small_and_faithful(data):
    model = resnet().eval()
    comp = get_compression("quant", calibration_batches=4)
    q = comp.apply(copy.deepcopy(model), data, no_finetune)
    x = torch.cat(data.calibration_batches(1))
    with torch.no_grad():
        ref, out = model(x), q(x)
    assert (out - ref).abs().max() < 0.1 * ref.abs().max()
    assert comp.report["dtype"] == "int8" and comp.report["int8_tensors"] >= 20
    fp32 = serialized_size(export_model(model, x))
    int8 = serialized_size(export_model(q, x))
    assert int8 < 0.3 * fp32


@pytest.mark.slow
def test_int8_qat_finetunes_before_convert(data):
    calls = []
    comp = get_compression("quant", calibration_batches=1, qat=True, finetune_epochs=1)
    q = comp.apply(resnet(), data, counting_finetune(calls))
    assert calls == [(1, 0.01)] and comp.report["qat"] is True
    assert q(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_fp16_casts_and_aware_finetune(data):
    calls = []
    comp = get_compression("fp16", finetune_epochs=1)
    out = comp.apply(resnet(), data, counting_finetune(calls))
    assert calls and all(p.dtype == torch.float16 for p in out.parameters())
    assert comp.input_dtype == torch.float16
    assert out(torch.randn(2, 3, 32, 32, dtype=torch.float16)).dtype == torch.float16


@pytest.mark.parametrize("name", ["prune", "channel_prune"])
@pytest.mark.parametrize("amount", [-0.1, 1.0, 1.5])
def test_amount_outside_unit_interval_is_rejected(name, amount):
    with pytest.raises(ValueError, match=rf"compression.amount={amount} is outside \[0, 1\)"):
        get_compression(name, amount=amount)


def test_unknown_compression_names_choices():
    with pytest.raises(ValueError, match="unknown compression 'int4'.*channel_prune.*quant"):
        get_compression("int4")


def test_export_is_in_eval_mode_even_after_training():
    model = resnet().train()
    program = export_model(model, torch.randn(2, 3, 32, 32))
    x = torch.randn(3, 3, 32, 32)  # train-mode BatchNorm would use this batch's statistics
    with torch.no_grad():
        assert torch.allclose(program.module()(x), model.eval()(x), atol=1e-5)


@pytest.mark.parametrize("name", COMPRESSIONS.names())
def test_each_compression_says_what_its_program_computes_in(data, name):
    """Layers 4-5 take the compute dtype from the compression (``compute_dtype``), not
    from the graph: check the declaration against the exported program it produced."""
    from dlas.compiler.int8 import is_quantized

    kwargs = {"calibration_batches": 1} if name == "quant" else {}
    comp = get_compression(name, **kwargs)
    torch.manual_seed(0)
    model = get_model("plain", num_classes=10, in_channels=3, input_size=32, depth=1, width=8)
    out = comp.apply(model.eval(), data, no_finetune)
    x = data.example_batch(2)[0].to(comp.input_dtype)
    program = export_model(out, x)
    assert is_quantized(program) == (comp.compute_dtype == "int8")
    if comp.compute_dtype != "int8":
        weights = {str(p.dtype).removeprefix("torch.") for p in program.parameters()}
        assert weights == {comp.compute_dtype}
