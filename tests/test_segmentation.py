"""The segmentation problem space through the whole stack: train, compress, deploy."""

from __future__ import annotations

import pytest
from conftest import overrides, run_entry, runs

from dlas.tracking import schema

#: 32 x 32 canvases and a one-level U-Net four channels wide: seconds per stage
SEGMENT = [
    "deploy=true",
    "measure.verify_samples=8",
    "measure.repeat=3",
    "measure.number=1",
    "measure.retries=0",
    "dataset=digit_canvases",
    "dataset.image_size=32",
    "dataset.batch_size=16",
    "model=unet",
    "model.depth=1",
    "model.width=4",
]


def _scored_as_segmentation(m: dict[str, float]) -> None:
    assert {"miou", "pixel_accuracy", schema.QUALITY, schema.BASELINE_QUALITY} <= set(m)
    assert schema.TOP1 not in m and schema.COMPILED_TOP1 not in m  # no classes per image
    assert m[schema.QUALITY] == m["miou"] and 0 <= m["miou"] <= m["pixel_accuracy"] <= 100
    # the compiled network labels the verification canvases as PyTorch does
    assert m[schema.MAX_ABS_ERR] <= m[schema.VERIFY_TOLERANCE]
    assert m[schema.COMPILED_QUALITY] == pytest.approx(m[schema.REFERENCE_QUALITY], abs=1e-6)
    assert m[schema.LATENCY_MS] > 0


@pytest.mark.e2e
@pytest.mark.tvm
@pytest.mark.slow
def test_an_int8_segmentation_point_trains_deploys_and_scores_by_miou(workdir):
    """The whole stack on the segmentation task, int8 (the path with most to go wrong:
    PT2E on a U-Net, TVM's int8 import, onnxruntime's QDQ export), scored by mIoU.
    Uncompressed and pruned points deploy the way classifiers do (checked by hand on
    2026-12-03: unet with none, prune 0.5 and channel_prune 0.5 all FINISHED within
    tolerance); pruning itself is checked below and in test_compression."""
    m = _finished(workdir, "compression=quant", "measure.compare=[onnxruntime]")
    _scored_as_segmentation(m)
    assert m[schema.of_compiler("onnxruntime", schema.LATENCY_MS)] > 0


def _finished(workdir, *extra: str) -> dict[str, float]:
    result = run_entry("train.py", *overrides(workdir, *SEGMENT, *extra))
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = runs(workdir["uri"])
    assert run.info.status == "FINISHED"
    assert run.data.params[schema.COMPUTE_DTYPE] == "int8"
    # what the report and the search read to put the point on its task's axis
    assert run.data.params[schema.TASK] == "segmentation"
    assert run.data.params[schema.QUALITY_METRIC] == "miou"
    return run.data.metrics


def test_weight_pruning_reaches_a_segmentation_network() -> None:
    import torch

    from dlas.compression import get_compression
    from dlas.compression.base import prunable_layers
    from dlas.models.segmentation import build_unet

    torch.manual_seed(0)
    model = build_unet(num_classes=11, in_channels=1, input_size=32, depth=1, width=8)
    pruned = get_compression("prune", amount=0.5).apply(model, None, None)
    weights = [m.weight for _, m in prunable_layers(pruned)]  # every conv, the head's too
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert zeros == pytest.approx(0.5, abs=1e-3) and any(w is pruned.head.weight for w in weights)


@pytest.fixture
def canvas_data():
    """What a compression reads of a dataset, without building the canvases."""
    from types import SimpleNamespace

    return SimpleNamespace(task="segmentation", num_classes=11, input_shape=(1, 32, 32))


def test_channel_pruning_keeps_the_class_convolutions_whole(canvas_data) -> None:
    """A U-Net loses half its inner channels, never the 11 of its 1x1 conv to the classes."""
    import torch

    from dlas.compression import get_compression
    from dlas.models.segmentation import build_unet

    torch.manual_seed(0)
    model = build_unet(num_classes=11, in_channels=1, input_size=32, depth=1, width=8)
    before = sum(p.numel() for p in model.parameters())
    pruned = get_compression("channel_prune", amount=0.5).apply(model, canvas_data, None)
    assert pruned.head.out_channels == 11 and pruned.head.in_channels == 4
    assert sum(p.numel() for p in pruned.parameters()) < 0.5 * before
    with torch.no_grad():
        assert pruned.eval()(torch.randn(1, 1, 32, 32)).shape == (1, 11, 32, 32)
