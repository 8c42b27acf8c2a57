"""compiler=openvino through the real entry point and the stack: verified against
PyTorch and timed like every compiler, and each compute dtype on the kernels it asks
for (read from OpenVINO's compiled runtime model, not from our config)."""

from __future__ import annotations

import pytest
from conftest import TINY_DEPLOY, compose, overrides, run_entry, runs
from test_deploy import LATENCY, layers_of

from dlas.compiler.openvino_runtime import precision_hint
from dlas.stack import run_point


@pytest.mark.e2e
@pytest.mark.slow
def test_openvino_points_verify_time_and_run_each_dtype_on_its_kernels(workdir):
    result = run_entry("train.py", *overrides(workdir, *TINY_DEPLOY, "compiler=openvino"))
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = runs(workdir["uri"])
    assert run.info.status == "FINISHED" and run.data.params["compiler"] == "openvino"
    assert set(run.data.metrics) >= LATENCY
    assert run.data.metrics["max_abs_err_vs_torch"] <= run.data.metrics["verify_tolerance"]
    (record,) = layers_of(run)
    assert record["algorithm"] == "openvino kernels" and record["threads"] >= 1
    assert set(record["precision"]) == {"f32"}  # fp32 timed in fp32, never bf16

    import torch

    expected = {"quant": {"u8"}, "fp16": {precision_hint(torch.float16)}}
    for compression, kernels in expected.items():  # the trained baseline is reused
        extra = ["compression.calibration_batches=2"] if compression == "quant" else []
        args = overrides(workdir, *TINY_DEPLOY, "compiler=openvino", f"compression={compression}")
        metrics = run_point(compose(*args, *extra))
        assert metrics["max_abs_err_vs_torch"] <= metrics["verify_tolerance"], compression
        (run,) = [r for r in runs(workdir["uri"]) if r.data.params["compression"] == compression]
        (record,) = layers_of(run)
        assert set(record["precision"]) == kernels, (compression, record)
