"""One point of the Deep Learning Acceleration Stack, run end to end and logged.

``run_point(cfg)``: build every layer from its config (all validation happens here,
before an MLflow run exists), then inside one MLflow run: train the baseline (or load
it from the stage cache), compress and fine-tune it (or load that), evaluate, measure
its structure, and log all of it under one schema shared by every point.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass
from typing import Any

import mlflow
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from dlas.cache import Entry, StageCache, config_hash
from dlas.compression import Compression
from dlas.data import ImageClassificationData
from dlas.metrics import count_macs, structure
from dlas.models.export import export_model
from dlas.tracking import RunLogger, flatten, tracked_run
from dlas.training import Trainer

# Keys that change how a stage runs but not what it produces.
NOT_IN_CACHE_KEY = {"num_workers", "eval_batch_size", "progress_bar", "limit_eval_batches"}


@dataclass
class Point:
    """The validated components of one stack point."""

    cfg: DictConfig
    data: ImageClassificationData
    model: nn.Module
    compression: Compression

    def container(self, group: str) -> dict[str, Any]:
        return OmegaConf.to_container(self.cfg[group], resolve=True)  # type: ignore[return-value]


def build_point(cfg: DictConfig) -> Point:
    """Instantiate layers 1-3; any bad value raises here, naming it and its valid choices."""
    data: ImageClassificationData = instantiate(cfg.dataset)
    compression: Compression = instantiate(cfg.compression)
    model: nn.Module = instantiate(
        cfg.model,
        num_classes=data.num_classes,
        in_channels=data.in_channels,
        input_size=data.image_size,
    )
    return Point(cfg, data, model, compression)


def resolve_threads(threads: int) -> int:
    return threads if threads > 0 else os.cpu_count() or 1


def _key_payload(node: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in node.items() if k not in NOT_IN_CACHE_KEY}


def stage_keys(point: Point) -> dict[str, str]:
    train = config_hash(
        {
            "dataset": _key_payload(point.container("dataset")),
            "model": point.container("model"),
            "trainer": _key_payload(point.container("trainer")),
            "seed": point.cfg.seed,
        }
    )
    compress = config_hash({"train": train, "compression": point.container("compression")})
    return {"train": train, "compress": compress}


def run_params(point: Point, threads: int) -> dict[str, Any]:
    """The parameter schema every run shares: short names per layer, then every key."""
    cfg = point.cfg
    params: dict[str, Any] = {}
    for group in (
        "dataset",
        "model",
        "compression",
        "algorithm",
        "compiler",
        "hardware",
        "trainer",
    ):
        params.update(flatten(group, point.container(group)))
    params.update(
        {
            "dataset": cfg.dataset.name,
            "model": cfg.model.name,
            "compression": cfg.compression.name,
            "compression.amount": point.compression.amount,
            "algorithm": cfg.algorithm.name,
            "data_format": cfg.algorithm.data_format,
            "compiler": cfg.compiler.name,
            "hardware": cfg.hardware.name,
            "threads": threads,
            "seed": cfg.seed,
        }
    )
    return params


def _measure(
    model: nn.Module, trainer: Trainer, data: ImageClassificationData, input_dtype: torch.dtype
) -> dict[str, float]:
    example = data.example_batch(1)[0].to(input_dtype)
    return {**trainer.evaluate(model, input_dtype), **count_macs(model, example)}


def train_stage(point: Point, trainer: Trainer, cache: StageCache, key: str) -> tuple[Entry, bool]:
    hit = cache.load("train", key)
    if hit is not None:
        return hit, True
    pl.seed_everything(point.cfg.seed, workers=True)
    start = time.perf_counter()
    model = trainer.fit(point.model, point.cfg.trainer.max_epochs, stage="train")
    train_s = time.perf_counter() - start
    meta = {
        "train_s": train_s,
        **_measure(model, trainer, point.data, torch.float32),
        **structure(model),
    }
    return cache.save("train", key, meta=meta, model=model), False


def compress_stage(
    point: Point, trainer: Trainer, cache: StageCache, key: str, baseline: Entry
) -> tuple[Entry, bool]:
    hit = cache.load("compress", key)
    if hit is not None:
        return hit, True
    pl.seed_everything(point.cfg.seed, workers=True)
    parent = baseline.model()
    start = time.perf_counter()
    model = point.compression.apply(copy.deepcopy(parent), point.data, trainer.finetuner())
    compress_s = time.perf_counter() - start
    dtype = point.compression.input_dtype
    graph_only = isinstance(model, torch.fx.GraphModule)  # int8: the float parent's structure
    program = export_model(model, point.data.example_batch(2)[0].to(dtype))
    meta = {
        "compress_s": compress_s,
        **_measure(model, trainer, point.data, dtype),
        **structure(parent if graph_only else model),
        "report": point.compression.report,
    }
    eager = None if graph_only else model
    return cache.save("compress", key, meta=meta, program=program, model=eager), False


def run_point(cfg: DictConfig) -> dict[str, float]:
    point = build_point(cfg)
    threads = resolve_threads(cfg.hardware.threads)
    torch.set_num_threads(threads)
    keys = stage_keys(point)
    cache = StageCache(cfg.cache_dir, enabled=cfg.use_cache)
    tags = {
        "dlas.config_hash": config_hash(
            OmegaConf.to_container(cfg, resolve=True) | {"tracking": None}
        ),
        "dlas.train_key": keys["train"],
        "dlas.compress_key": keys["compress"],
    }
    name = (
        cfg.tracking.run_name
        or f"{cfg.model.name}-{cfg.compression.name}-{cfg.algorithm.name}-{cfg.compiler.name}"
    )
    with tracked_run(
        cfg.tracking.uri,
        cfg.tracking.experiment,
        run_name=name,
        tags=tags,
        artifact_root=cfg.tracking.artifact_root,
    ) as run:
        mlflow.log_params(run_params(point, threads))
        mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
        trainer = Trainer(cfg.trainer, point.data, RunLogger(cfg.tracking.uri, run))
        baseline, train_hit = train_stage(point, trainer, cache, keys["train"])
        compressed, compress_hit = compress_stage(point, trainer, cache, keys["compress"], baseline)
        m = compressed.meta
        metrics = {
            "top1": m["top1"],
            "top5": m["top5"],
            "params": m["params"],
            "nonzero_params": m["nonzero_params"],
            "size_bytes": compressed.program_path.stat().st_size,
            "macs": m["macs"],
            "nonzero_macs": m["nonzero_macs"],
            "baseline_top1": baseline.meta["top1"],
            "baseline_params": baseline.meta["params"],
            "baseline_macs": baseline.meta["macs"],
            "train_s": 0.0 if train_hit else baseline.meta["train_s"],
            "compress_s": 0.0 if compress_hit else m["compress_s"],
            "cache_hit": float(compress_hit),
            "train_cache_hit": float(train_hit),
        }
        metrics["sparsity"] = m["sparsity"]
        metrics["channels_kept"] = m["conv_channels"] / baseline.meta["conv_channels"]
        mlflow.log_metrics(metrics)
        mlflow.set_tag("cache_hit", str(compress_hit).lower())
        mlflow.log_dict(m["report"], "compression_report.json")
    return metrics
