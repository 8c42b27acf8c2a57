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
    "dataset=digit_canvases",
    "dataset.image_size=32",
    "dataset.batch_size=16",
    "model=unet",
    "model.depth=1",
    "model.width=4",
]


def _finished(workdir, *extra: str):
    result = run_entry("train.py", *overrides(workdir, *SEGMENT, *extra))
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = runs(workdir["uri"])
    assert run.info.status == "FINISHED"
    return run.data.metrics


def _scored_as_segmentation(m: dict[str, float]) -> None:
    assert {"miou", "pixel_accuracy", schema.QUALITY, schema.BASELINE_QUALITY} <= set(m)
    assert schema.TOP1 not in m and schema.COMPILED_TOP1 not in m  # no classes per image
    assert m[schema.QUALITY] == m["miou"] and 0 <= m["miou"] <= m["pixel_accuracy"] <= 100
    # the compiled network labels the verification canvases as PyTorch does
    assert m[schema.MAX_ABS_ERR] <= m[schema.VERIFY_TOLERANCE]
    assert m[schema.COMPILED_QUALITY] == pytest.approx(m[schema.REFERENCE_QUALITY], abs=1e-6)


@pytest.mark.e2e
@pytest.mark.tvm
def test_a_segmentation_point_trains_deploys_and_scores_by_miou(workdir):
    m = _finished(workdir, "measure.compare=[onnxruntime]")
    _scored_as_segmentation(m)
    assert m[schema.LATENCY_MS] > 0 and m[schema.of_compiler("onnxruntime", schema.LATENCY_MS)] > 0


@pytest.mark.e2e
@pytest.mark.tvm
@pytest.mark.slow
@pytest.mark.parametrize(
    "compression",
    [
        ["compression=quant"],
        ["compression=prune", "compression.amount=0.5"],
        ["compression=channel_prune", "compression.amount=0.5"],
    ],
)
def test_compressed_segmentation_points_deploy_and_agree(workdir, compression):
    m = _finished(workdir, *compression)
    _scored_as_segmentation(m)
    if "compression=quant" in compression:
        assert m[schema.SIZE_BYTES] > 0
    else:
        assert m["params"] < m["baseline_params"] or m[schema.SPARSITY] >= 0.49
