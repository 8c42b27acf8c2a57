"""compiler=openvino: each compute dtype on the kernels it asks for (read from OpenVINO's
compiled runtime model, not from our config) and within that dtype's tolerance of
PyTorch, then one stack point verified, timed and logged like every compiler. As a
compared path it is in test_form_function."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from conftest import TINY_DEPLOY, compose, overrides, runs
from test_deploy import LATENCY, layers_of

from dlas.compiler.baselines import framework, run_baseline
from dlas.compiler.openvino_runtime import precision_hint
from dlas.compression import get_compression
from dlas.data import get_datamodule
from dlas.deployment import disagreement
from dlas.models import get_model
from dlas.models.export import export_model
from dlas.stack import run_point


@functools.cache
def data():
    return get_datamodule("synthetic", num_samples=64, image_size=16, in_channels=3, batch_size=8)


def saved_program(compression: str, tmp_path) -> tuple[str, np.ndarray, str]:
    """A small residual network compressed as layer 3 does it (no fine-tuning), exported
    and saved as the stack saves it; with a batch of its input dtype and its dtype."""
    torch.manual_seed(0)
    model = get_model("residual", num_classes=10, input_size=16, depth=1, width=8)
    kwargs = {"calibration_batches": 2} if compression == "quant" else {}
    chosen = get_compression(compression, **kwargs)
    model = chosen.apply(model.eval(), data(), lambda m, epochs, lr: m)
    x = data().example_batch(4)[0].to(chosen.input_dtype)
    path = str(tmp_path / f"{compression}.pt2")
    torch.export.save(export_model(model, x), path)
    return path, x.numpy(), chosen.compute_dtype


@pytest.mark.slow
@pytest.mark.parametrize(
    ("compression", "kernels"),
    [
        ("none", {"f32"}),  # timed in fp32, never in the bf16 OpenVINO picks by itself
        ("quant", {"u8"}),  # OpenVINO's int8 kernels, from the QDQ ONNX export
        ("fp16", {precision_hint(torch.float16)}),  # f16 where this CPU has it
    ],
)
def test_each_dtype_runs_on_its_kernels_within_its_tolerance(compression, kernels, tmp_path):
    path, x, dtype = saved_program(compression, tmp_path)
    openvino = framework("openvino")
    timer = openvino.timer(path, x, threads=2, workdir=str(tmp_path))
    assert len(timer(protocol_once())) == 1
    assert set(openvino.notes["precision"]) == kernels, openvino.notes
    assert openvino.notes["threads"] == 2
    reference = run_baseline("pytorch", path, x, threads=2).astype(np.float32)
    err, tolerance = disagreement(run_baseline("openvino", path, x, threads=2), reference, dtype)
    assert err <= tolerance, (compression, err, tolerance)


def protocol_once():
    from dlas.compiler.measure import Protocol

    return Protocol(warmup=0, repeat=1, number=1)


@pytest.mark.e2e
@pytest.mark.slow
def test_an_openvino_point_is_verified_timed_and_logged(workdir):
    small = ["model=residual", "model.depth=1", "model.width=4", "compiler=openvino"]
    metrics = run_point(compose(*overrides(workdir, *TINY_DEPLOY, *small)))
    assert metrics["max_abs_err_vs_torch"] <= metrics["verify_tolerance"]
    (run,) = runs(workdir["uri"])
    assert run.info.status == "FINISHED" and run.data.params["compiler"] == "openvino"
    assert set(run.data.metrics) >= LATENCY
    (record,) = layers_of(run)  # what the worker's OpenVINO reported, in layers.json
    assert record["algorithm"] == "openvino kernels"
    assert record["precision"] == {"f32": 10}  # 9 convs (stem, 2 + 3 + 3) and the linear
    assert record["threads"] >= 1 and record["openvino"].startswith("20")
