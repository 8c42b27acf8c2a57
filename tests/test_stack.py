"""The whole layer 1-3 stack through its real entry point: MLflow schema, stage cache,
and bad input that must fail early, clearly, and without a RUNNING run left behind."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import compose, overrides, run_entry, runs
from omegaconf import OmegaConf

from dlas.stack import build_point, run_point, stage_keys

PARAMS = {
    "dataset",
    "model",
    "compression",
    "compression.amount",
    "algorithm",
    "data_format",
    "compiler",
    "hardware",
    "threads",
    "seed",
    "trainer.max_epochs",
    "model.stem",
}
METRICS = {
    "top1",
    "top5",
    "params",
    "nonzero_params",
    "size_bytes",
    "macs",
    "nonzero_macs",
    "baseline_top1",
    "sparsity",
    "channels_kept",
    "cache_hit",
    "train_s",
}


@pytest.mark.e2e
def test_train_entry_logs_one_finished_run_with_the_schema(workdir):
    result = run_entry(
        "train.py",
        *overrides(workdir, "dataset=digits", "compression=prune", "compression.amount=0.8"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = runs(workdir["uri"])
    assert run.info.status == "FINISHED"
    assert set(run.data.params) >= PARAMS, PARAMS - set(run.data.params)
    assert set(run.data.metrics) >= METRICS, METRICS - set(run.data.metrics)
    p, m = run.data.params, run.data.metrics
    assert (p["dataset"], p["model"], p["compression"], p["compression.amount"]) == (
        "digits",
        "resnet18",
        "prune",
        "0.8",
    )
    assert m["sparsity"] == pytest.approx(0.8, abs=1e-3)
    assert 0 <= m["top1"] <= 100 and m["size_bytes"] > 1e6 and m["macs"] > m["nonzero_macs"]
    # training curves land in the same run (Lightning logger bound to it)
    assert any(k.startswith("train-train/loss") for k in run.data.metrics)
    import mlflow

    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"config.yaml", "compression_report.json"} <= artifacts
    # the model's dtypes beside it, for a deploy.py model_uri= of another compression
    path = mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="model/meta.json"
    )
    with open(path) as f:
        meta = json.load(f)
    assert (meta["input_dtype"], meta["compute_dtype"]) == ("float32", "float32")


@pytest.mark.e2e
@pytest.mark.slow
def test_second_run_is_a_cache_hit_and_shares_the_baseline(workdir):
    args = overrides(workdir, "dataset=synthetic", "dataset.num_samples=64")
    first = run_point(compose(*args))
    second = run_point(compose(*args))
    assert (first["cache_hit"], second["cache_hit"], second["train_s"]) == (0.0, 1.0, 0.0)
    assert second["top1"] == first["top1"] and second["size_bytes"] == first["size_bytes"]
    other = run_point(compose(*args, "compression=fp16"))
    assert other["train_cache_hit"] == 1.0 and other["cache_hit"] == 0.0
    assert {r.data.metrics["cache_hit"] for r in runs(workdir["uri"])} == {0.0, 1.0}


def test_stage_keys_follow_the_upstream_layers_only(workdir):
    base = build_point(compose(*overrides(workdir)))
    keys = stage_keys(base)
    other_compiler = stage_keys(build_point(compose(*overrides(workdir, "compiler=pytorch"))))
    other_compression = stage_keys(build_point(compose(*overrides(workdir, "compression=prune"))))
    other_model = stage_keys(build_point(compose(*overrides(workdir, "model=vgg16"))))
    workers = stage_keys(build_point(compose(*overrides(workdir, "dataset.num_workers=2"))))
    assert other_compiler == keys == workers
    assert other_compression["train"] == keys["train"] != other_model["train"]
    assert other_compression["compress"] != keys["compress"]


# Through the real entry point (exit code, stderr, nothing written)...
@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize(
    "bad, message",
    [
        ("model=resnet19", "Could not find 'model/resnet19'"),
        ("compression=prune compression.amount=1.2", "compression.amount=1.2 is outside [0, 1)"),
        ("dataset=cifar10", "dataset=cifar10 needs dataset.root"),
        ("compression=prune compression.amonut=0.5", "amonut"),
    ],
)
def test_bad_input_fails_early_and_clearly(workdir, bad, message):
    result = run_entry("train.py", *overrides(workdir, *bad.split()), timeout=120)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr[-2000:]
    # rejected before any MLflow run was opened: the store was never even created
    assert not (Path(workdir["tmp"]) / "mlruns" / "mlflow.db").exists()


# ... and the same checks in-process for the other values (same code path, no start-up cost).
@pytest.mark.parametrize(
    "bad, message",
    [
        ("dataset=cifar100", "Could not find 'dataset/cifar100'"),
        ("compression=int4", "Could not find 'compression/int4'"),
        ("dataset=imagenet", "dataset=imagenet needs dataset.root"),
        ("trainer.max_epoch=3", "max_epoch"),
        (
            "model.name=resnet19",
            "unknown model 'resnet19'; valid choices: bottleneck, darts, "
            "deeplabv3_mobilenet_v3_large, dense, densenet121",
        ),
        (
            "dataset=digit_canvases model=resnet18",
            "model=resnet18 is a classification network and dataset=digit_canvases is a "
            "segmentation task; valid models for it: deeplabv3_mobilenet_v3_large, "
            "fcn_resnet50, lraspp_mobilenet_v3_large, unet",
        ),
        (
            "model=unet",
            "model=unet is a segmentation network and dataset=mnist5k is a classification "
            "task; valid models for it: bottleneck, darts, dense, densenet121",
        ),
        ("trainer.lr=fast", "trainer.lr"),
    ],
)
def test_bad_config_values_are_rejected_before_a_run(workdir, bad, message):
    with pytest.raises(Exception, match=re.escape(message)):
        run_point(compose(*overrides(workdir, *bad.split())))
    assert not (Path(workdir["tmp"]) / "mlruns" / "mlflow.db").exists()


@pytest.mark.parametrize(
    "dataset, model",
    [
        ("mnist5k", "resnet18"),
        ("cifar10", "resnet18"),
        ("digit_canvases", "unet"),
        ("voc", "unet"),
        ("digit_denoising", "dncnn"),
        ("digit_superres", "dncnn"),
        ("image_folder", "dncnn"),
    ],
)
def test_a_dataset_brings_its_tasks_default_model(dataset, model):
    """``python train.py dataset=<x>`` trains the task's default model; a model given
    on the command line still wins (and is checked against the task)."""
    assert compose(f"dataset={dataset}").model.name == model
    assert compose(f"dataset={dataset}", "model=vgg16").model.name == "vgg16"


def test_group_choice_errors_list_valid_options(workdir):
    result = run_entry("train.py", *overrides(workdir, "model=resnet19"), timeout=120)
    for name in ("resnet18", "vgg16", "mobilenet_v2", "densenet121"):
        assert name in result.stderr


@pytest.mark.e2e
@pytest.mark.slow
def test_failure_inside_a_run_marks_it_failed(workdir, monkeypatch):
    import dlas.stack

    def explode(*args, **kwargs):
        raise RuntimeError("compiler exploded")

    monkeypatch.setattr(dlas.stack, "compress_stage", explode)
    with pytest.raises(RuntimeError):
        run_point(compose(*overrides(workdir, "dataset=synthetic", "dataset.num_samples=32")))
    (run,) = runs(workdir["uri"])
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == "RuntimeError: compiler exploded"


def test_tracking_uri_from_environment(workdir, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", workdir["uri"])
    cfg = compose(f"cache_dir={workdir['cache']}")
    assert cfg.tracking.uri == workdir["uri"]
    assert compose("tracking.uri=sqlite:///x.db").tracking.uri == "sqlite:///x.db"


@pytest.mark.e2e
@pytest.mark.slow
def test_multirun_sweep_gives_one_run_per_point_and_caches(workdir):
    sweep = [
        "-m",
        *overrides(
            workdir,
            "dataset=synthetic",
            "dataset.num_samples=48",
            "model=resnet18,mobilenet_v2",
            "compression=none,prune",
        ),
        f"hydra.sweep.dir={workdir['tmp']}/multirun",
    ]
    first = run_entry("train.py", *sweep)
    assert first.returncode == 0, first.stderr[-3000:]
    done = runs(workdir["uri"])
    assert len(done) == 4 and {r.info.status for r in done} == {"FINISHED"}
    points = {(r.data.params["model"], r.data.params["compression"]) for r in done}
    assert points == {(m, c) for m in ("resnet18", "mobilenet_v2") for c in ("none", "prune")}
    assert all(set(r.data.metrics) >= METRICS for r in done)  # one schema, column by column
    second = run_entry("train.py", *sweep, "tracking.resume=false")  # measure them again
    assert second.returncode == 0
    again = [r for r in runs(workdir["uri"]) if r.info.run_id not in {d.info.run_id for d in done}]
    assert len(again) == 4 and all(r.data.metrics["cache_hit"] == 1.0 for r in again)
    assert all(r.data.metrics["train_s"] == 0.0 for r in again)


def test_config_tree_has_one_group_per_layer():
    cfg = compose()
    for group in (
        "dataset",
        "model",
        "compression",
        "algorithm",
        "compiler",
        "hardware",
        "trainer",
        "tracking",
    ):
        assert group in cfg
    assert OmegaConf.select(cfg, "dataset.name") == "mnist5k"


def test_a_preset_logs_its_algorithm_and_format_pair(workdir):
    """algorithm=csr is gemm on CSR weights: its runs say so in one param, so the MLflow
    UI does not show it as plain gemm."""
    from dlas.stack import build_point, run_params

    cfg = compose(*overrides(workdir, "algorithm=csr", "dataset=synthetic"))
    params = run_params(build_point(cfg), 2)
    assert (params["algorithm"], params["data_format"]) == ("gemm", "csr")
    assert params["algorithm_label"] == "gemm+csr"
    assert run_params(build_point(compose(*overrides(workdir))), 2)["algorithm_label"] == "direct"


def test_a_deployed_model_takes_its_dtypes_from_its_own_metadata():
    """deploy.py model_uri= of an int8 or fp16 run under a config of compression=none
    must verify and time it as int8 / fp16, not as this config's float32."""
    import torch

    from dlas.compression import get_compression
    from dlas.stack import model_dtypes

    none = get_compression("none")
    assert model_dtypes({"input_dtype": "float16", "compute_dtype": "float16"}, none) == (
        torch.float16,
        "float16",
    )
    assert model_dtypes({"input_dtype": "float32", "compute_dtype": "int8"}, none) == (
        torch.float32,
        "int8",
    )
    # metadata from before the dtypes were recorded: the cache entry's own compression
    assert model_dtypes({}, get_compression("fp16")) == (torch.float16, "float16")
