"""One point of the Deep Learning Acceleration Stack, run end to end and logged.

``run_point(cfg)``: check every config value and build every layer from its config
(``validated``: all validation happens here, before an MLflow run exists, and a bad
value is a one-line :class:`dlas.errors.ConfigError`), then inside one MLflow run: train
the baseline (or load it from the stage cache), compress and fine-tune it (or load
that), evaluate, measure its structure, and log all of it under one schema shared by
every point.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from dlas.algorithms import algorithm_label
from dlas.cache import Entry, StageCache
from dlas.compression import Compression
from dlas.config import check_config
from dlas.data import ImageClassificationData
from dlas.errors import ConfigError, as_config_errors
from dlas.hardware.cores import computing
from dlas.hardware.threads import resolve_threads  # the affinity mask, not os.cpu_count()
from dlas.identity import point_key, stage_key
from dlas.metrics import count_macs, memory_footprint, structure
from dlas.models.export import export_model, load_program
from dlas.tracking import (
    RunLogger,
    TrackedRun,
    flatten,
    provenance,
    schema,
    setup_experiment,
    tracked_run,
)
from dlas.tracking.sweep import (
    current_sweep,
    finished_run,
    process_tags,
    reap_orphaned_runs,
    reuse_finished,
)
from dlas.training import Trainer
from dlas.training.tasks import Task, get_task

log = logging.getLogger("dlas.stack")

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


#: each problem space's preset (dataset and model together), named when a model is misfit
TASK_PRESETS = {
    "classification": "the default config",
    "segmentation": "experiment=segmentation",
    "restoration": "experiment=denoising or experiment=super_resolution",
}


def check_model_fits_task(model: str, dataset: str, task: str) -> None:
    """A classifier cannot label pixels, nor a segmentation network name a class: say so
    before anything trains, with the models that do fit and the task's preset."""
    from dlas.models import TASK_OF, models_for

    if TASK_OF.get(model, task) != task:
        raise ConfigError(
            f"model={model} is a {TASK_OF[model]} network and dataset={dataset} is a {task} "
            f"task; valid models for it: {', '.join(models_for(task))} "
            f"(or {TASK_PRESETS[task]}: dataset and model together)"
        )


def build_point(cfg: DictConfig) -> Point:
    """Instantiate layers 1-3; any bad value raises here, naming it and its valid choices.

    Every RNG is seeded first: the model's initial weights are drawn here, and the stage
    cache keys them by ``seed``, so the same seed must give the same weights in any process
    (data splits take ``dataset.seed`` explicitly)."""
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    data: ImageClassificationData = instantiate(cfg.dataset)
    check_model_fits_task(cfg.model.name, cfg.dataset.name, data.task)
    compression: Compression = instantiate(cfg.compression)
    model: nn.Module = instantiate(
        cfg.model,
        num_classes=data.num_classes,
        in_channels=data.in_channels,
        input_size=data.image_size,
    )
    return Point(cfg, data, model, compression)


def _key_payload(node: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in node.items() if k not in NOT_IN_CACHE_KEY}


def stage_keys(point: Point) -> dict[str, str]:
    train = stage_key(
        {
            "dataset": _key_payload(point.container("dataset")),
            "model": point.container("model"),
            "trainer": _key_payload(point.container("trainer")),
            "seed": point.cfg.seed,
        }
    )
    compress = stage_key({"train": train, "compression": point.container("compression")})
    return {"train": train, "compress": compress}


def run_params(point: Point, threads: int) -> dict[str, Any]:
    """The parameter schema every run shares: short names per layer, then every key."""
    cfg = point.cfg
    params: dict[str, Any] = {}
    for group in schema.LAYER_GROUPS:
        params.update(flatten(group, point.container(group)))
    params.update(
        {
            schema.DATASET: cfg.dataset.name,
            schema.MODEL: cfg.model.name,
            schema.COMPRESSION: cfg.compression.name,
            schema.AMOUNT: point.compression.amount,
            schema.ALGORITHM: cfg.algorithm.name,
            schema.DATA_FORMAT: cfg.algorithm.data_format,
            schema.ALGORITHM_LABEL: algorithm_label(cfg.algorithm.name, cfg.algorithm.data_format),
            schema.COMPILER: cfg.compiler.name,
            schema.HARDWARE: cfg.hardware.name,
            schema.THREADS: threads,
            schema.SEED: cfg.seed,
            schema.TASK: point.data.task,
            schema.QUALITY_METRIC: get_task(point.data.task).quality,
        }
    )
    return params


def _accuracy_and_macs(
    model: nn.Module, trainer: Trainer, data: ImageClassificationData, input_dtype: torch.dtype
) -> dict[str, float]:
    example = data.example_batch(1)[0].to(input_dtype)
    return {**trainer.evaluate(model, input_dtype), **count_macs(model, example)}


def quality_of(meta: dict[str, Any], task: Task) -> float:
    """A stage's quality; entries stored before there were tasks have only top-1."""
    return meta.get("quality", meta[task.quality])


def _run_id(trainer: Trainer) -> str | None:
    """The run that trains this entry (its provenance in the cache)."""
    logger = trainer.logger
    return logger.run.run_id if logger is not None else None


def train_stage(point: Point, trainer: Trainer, cache: StageCache, key: str) -> tuple[Entry, bool]:
    """The trained baseline: from the cache, or trained and stored. The entry's lock is
    held from lookup to store, so of several runs of one point at once only one trains;
    the others wait and read its entry."""
    with cache.hold("train", key):
        hit = cache.load("train", key)
        if hit is not None:
            return hit, True
        return _train(point, trainer, cache, key), False


def _train(point: Point, trainer: Trainer, cache: StageCache, key: str) -> Entry:
    pl.seed_everything(point.cfg.seed, workers=True, verbose=False)
    start = time.perf_counter()
    model = trainer.fit(point.model, point.cfg.trainer.max_epochs, stage="train")
    train_s = time.perf_counter() - start
    meta = {
        "train_s": train_s,
        **_accuracy_and_macs(model, trainer, point.data, torch.float32),
        **structure(model),
    }
    return cache.save("train", key, meta=meta, model=model, run_id=_run_id(trainer))


def compress_stage(
    point: Point, trainer: Trainer, cache: StageCache, key: str, baseline: Entry
) -> tuple[Entry, bool]:
    """The compressed, fine-tuned model: from the cache, or computed and stored, under the
    entry's lock like :func:`train_stage`."""
    with cache.hold("compress", key):
        hit = cache.load("compress", key)
        if hit is not None:
            return hit, True
        return _compress(point, trainer, cache, key, baseline), False


def _compress(
    point: Point, trainer: Trainer, cache: StageCache, key: str, baseline: Entry
) -> Entry:
    pl.seed_everything(point.cfg.seed, workers=True, verbose=False)
    parent = baseline.model()
    start = time.perf_counter()
    model = point.compression.apply(copy.deepcopy(parent), point.data, trainer.finetuner())
    compress_s = time.perf_counter() - start
    dtype = point.compression.input_dtype
    graph_only = isinstance(model, torch.fx.GraphModule)  # int8: the float parent's structure
    program = export_model(model, point.data.example_batch(2)[0].to(dtype))
    meta = {
        "compress_s": compress_s,
        **_accuracy_and_macs(model, trainer, point.data, dtype),
        **structure(parent if graph_only else model),
        "report": point.compression.report,
        # beside the model, so that deploying it elsewhere (model_uri) knows them too
        "input_dtype": str(dtype).removeprefix("torch."),
        "compute_dtype": point.compression.compute_dtype,
    }
    eager = None if graph_only else model
    return cache.save(
        "compress", key, meta=meta, program=program, model=eager, run_id=_run_id(trainer)
    )


def entry_tags(cache: StageCache, **entries: Entry) -> dict[str, str]:
    """Which cache entries a run's numbers are: how the report and resume pick, of several
    runs of one point, the one that matches the model later runs reuse. None when the
    shared cache is off (``use_cache=false``: the numbers are this run's alone)."""
    if not cache.enabled:
        return {}
    tags: dict[str, str] = {}
    for stage, entry in entries.items():
        tags |= provenance.entry_tags(stage, entry.run_id, entry.written)
    return tags


def model_dtypes(meta: dict[str, Any], compression: Compression) -> tuple[torch.dtype, str]:
    """(input dtype, compute dtype) of a compressed model, as layer 3 stored them in its
    metadata: a ``model_uri`` model may come from another compression than this config
    names. A model stored before they were recorded is a cache entry of this config's own
    compression (entries are keyed by it), which then tells."""
    if "compute_dtype" in meta:
        return getattr(torch, meta["input_dtype"]), meta["compute_dtype"]
    return compression.input_dtype, compression.compute_dtype


def layers_4_to_6(
    cfg: DictConfig,
    device: Any,
    point: Point,
    program_path: Path,
    meta: dict[str, Any],
    reference: nn.Module,
    run: TrackedRun,
) -> dict[str, float]:
    """Layers 4-6 on a compressed model (``meta``: what layer 3 stored beside it), logged
    into ``run``."""
    from dlas.deployment import compile_verify_and_time
    from dlas.hardware import last_level_cache_bytes

    program = load_program(program_path)
    input_dtype, dtype = model_dtypes(meta, point.compression)
    footprint = memory_footprint(program, point.data.example_batch(1)[0].to(input_dtype))
    footprint[schema.LLC_BYTES] = last_level_cache_bytes()
    with tempfile.TemporaryDirectory(prefix="dlas-deploy-") as tmp:
        result = compile_verify_and_time(
            cfg,
            device,
            program,
            program_path,
            reference,
            point.data,
            input_dtype,
            dtype,
            Path(tmp),
            Path(cfg.compiler.work_dir),
        )
        run.log_params(result.params)
        run.set_tags(result.tags)
        run.log_metrics(result.metrics | footprint)
        run.log_dict({"layers": result.layers}, "layers.json")
        run.log_dict(result.timing, "latencies.json")
        if result.pipelines:
            run.log_dict(result.pipelines, "pipeline.json")
        run.log_artifact(result.artifact, "compiled")
    return result.metrics | footprint


def point_hash(cfg: DictConfig, entry: str) -> str:
    """A point's identity: its whole resolved config (not where it is logged) and entry."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved |= {"tracking": None, "search": None, "characterize": None}  # not the point
    return point_key({"entry": entry, "config": resolved})


def previous_result(
    cfg: DictConfig, entry: str, run_hash: str | None = None
) -> dict[str, float] | None:
    """The metrics of this exact point (or of the run ``run_hash`` names, for entries with
    settings beyond the point) if it already FINISHED and resuming is on
    (``tracking.resume``; null = in sweeps); orphaned RUNNING runs are reaped first."""
    t = cfg.tracking
    experiment_id = setup_experiment(t.uri, t.experiment, t.artifact_root)
    reap_orphaned_runs(experiment_id)
    sweep = current_sweep()
    if not (sweep is not None if t.resume is None else t.resume):
        return None
    run = finished_run(experiment_id, run_hash or point_hash(cfg, entry))
    return None if run is None else reuse_finished(run, sweep)


def open_run(cfg: DictConfig, entry: str, tags: dict[str, str]):
    """An MLflow run named after the stack point, tagged with its identity, its sweep,
    and the process that owns it."""
    name = (
        cfg.tracking.run_name
        or f"{cfg.model.name}-{cfg.compression.name}-{cfg.algorithm.name}-{cfg.compiler.name}"
    )
    sweep = current_sweep()
    tags = {
        schema.CONFIG_HASH: point_hash(cfg, entry),
        schema.ENTRY: entry,
        **process_tags(),
        **(sweep.tags() if sweep is not None else {}),
        **tags,
    }
    return tracked_run(
        cfg.tracking.uri,
        cfg.tracking.experiment,
        run_name=name,
        tags=tags,
        artifact_root=cfg.tracking.artifact_root,
    )


@dataclass
class PointRun:
    """One point's open MLflow run and what every entry point sets up for it: the thread
    count (torch's and TVM's pools set to it), the stage keys and the stage cache."""

    point: Point
    run: TrackedRun
    threads: int
    keys: dict[str, str]
    cache: StageCache

    def stages(self) -> tuple[Trainer, Entry, bool, Entry, bool]:
        """Layers 1-3: the trained baseline and the compressed model, each from the cache
        or computed and stored, the run tagged with their provenance; (trainer, baseline,
        its cache hit, compressed, its cache hit)."""
        cfg = self.point.cfg
        trainer = Trainer(cfg.trainer, self.point.data, RunLogger(cfg.tracking.uri, self.run))
        baseline, train_hit = train_stage(self.point, trainer, self.cache, self.keys["train"])
        compressed, compress_hit = compress_stage(
            self.point, trainer, self.cache, self.keys["compress"], baseline
        )
        self.run.set_tags(entry_tags(self.cache, train=baseline, compress=compressed))
        return trainer, baseline, train_hit, compressed, compress_hit


@contextlib.contextmanager
def point_run(
    cfg: DictConfig,
    point: Point,
    entry: str,
    tags: dict[str, str] | None = None,
    params: dict[str, Any] | None = None,
) -> Iterator[PointRun]:
    """The run setup ``train.py``, ``deploy.py`` and ``characterize.py`` share: threads,
    stage keys (tagged), ``open_run``, the run schema's params (plus ``params``) and the
    resolved config as ``config.yaml``."""
    threads = resolve_threads(cfg.hardware.threads)
    torch.set_num_threads(threads)
    keys = stage_keys(point)
    cache = StageCache(cfg.cache_dir, enabled=cfg.use_cache)
    key_tags = {"dlas.train_key": keys["train"], "dlas.compress_key": keys["compress"]}
    with open_run(cfg, entry, key_tags | (tags or {})) as run:
        run.log_params(run_params(point, threads) | (params or {}))
        run.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
        yield PointRun(point, run, threads, keys, cache)


def validated(cfg: DictConfig, systems: bool) -> tuple[Point, Any]:
    """Every value of a point, checked before any run opens: the schemas' ranges and
    choices (``dlas.config.check_config``), layers 1-3 by building them, and with
    ``systems`` layers 4-6 (``check_layers``: algorithm/format pairs, compilers, hardware
    reachable). Returns the point and its device; raises a one-line ConfigError."""
    with as_config_errors():
        check_config(cfg)
        point = build_point(cfg)
        device = None
        if systems:
            from dlas.deployment import check_layers

            device = check_layers(cfg)
    return point, device


Body = Callable[[DictConfig, Point, Any], dict[str, float]]


def resumable(cfg: DictConfig, entry: str, body: Body, systems: bool) -> dict[str, float]:
    """Validate, reuse a finished identical point if resuming, else run ``body`` (given
    the point and its device) while holding the host's core lock shared (measurements
    inside take it exclusively)."""
    point, device = validated(cfg, systems)
    done = previous_result(cfg, entry)
    if done is not None:
        return done
    with computing():
        return body(cfg, point, device)


#: Looks at a point's layer 1-3 metrics; a returned reason stops it before layers 4-6.
Gate = Callable[[dict[str, float]], "str | None"]


def run_point(
    cfg: DictConfig, tags: dict[str, str] | None = None, gate: Gate | None = None
) -> dict[str, float]:
    """Layers 1-3 (and 4-6 unless ``deploy=false``) of one point, in one MLflow run.

    ``gate`` (search constraints) may stop a point after compression: its run then ends
    FINISHED without deployment, tagged ``dlas.pruned`` with the reason, and the metrics
    returned carry ``pruned = 1``.
    """
    body = functools.partial(_run_point, tags=tags or {}, gate=gate)
    return resumable(cfg, "train", body, systems=bool(cfg.deploy))


def _run_point(
    cfg: DictConfig, point: Point, device: Any, tags: dict[str, str], gate: Gate | None
) -> dict[str, float]:
    with point_run(cfg, point, "train", tags) as started:
        run = started.run
        _, baseline, train_hit, compressed, compress_hit = started.stages()
        m = compressed.meta
        task = get_task(point.data.task)
        metrics = {
            **{name: m[name] for name in task.metrics},  # top1, top5; miou, pixel_accuracy
            schema.QUALITY: quality_of(m, task),
            schema.PARAMS: m["params"],
            schema.NONZERO_PARAMS: m["nonzero_params"],
            schema.SIZE_BYTES: compressed.program_path.stat().st_size,
            schema.MACS: m["macs"],
            schema.NONZERO_MACS: m["nonzero_macs"],
            schema.SPARSITY: m["sparsity"],
            schema.CHANNELS_KEPT: m["conv_channels"] / baseline.meta["conv_channels"],
            schema.BASELINE_QUALITY: quality_of(baseline.meta, task),
            schema.BASELINE_PARAMS: baseline.meta["params"],
            schema.BASELINE_MACS: baseline.meta["macs"],
            schema.TRAIN_S: 0.0 if train_hit else baseline.meta["train_s"],
            schema.COMPRESS_S: 0.0 if compress_hit else m["compress_s"],
            schema.CACHE_HIT: float(compress_hit),
            schema.TRAIN_CACHE_HIT: float(train_hit),
        }
        if task.quality == schema.TOP1:  # the name runs had before there were other tasks
            metrics[schema.BASELINE_TOP1] = baseline.meta["top1"]
        run.log_metrics(metrics)
        run.set_tag("cache_hit", str(compress_hit).lower())
        run.log_dict(m["report"], "compression_report.json")
        run.log_artifact(compressed.program_path, "model")
        run.log_dict(compressed.meta | {"baseline": baseline.meta}, "model/meta.json")
        reason = gate(metrics) if gate is not None else None
        if reason is not None:
            run.set_tag(schema.PRUNED_TAG, reason)
            log.info("stopped before deployment: %s", reason)
            return metrics | {schema.PRUNED: 1.0}
        if device is not None:
            metrics |= layers_4_to_6(
                cfg, device, point, compressed.program_path, m, compressed.model(), run
            )
    return metrics


def check_model_uri(uri: str, tracking_uri: str) -> None:
    """A ``runs:/<id>/<path>`` model_uri must name a run of this store that holds a
    model: say which run, its status and its error instead of MLflow's "Failed to
    download artifacts"."""
    if not uri.startswith("runs:/"):
        return
    run_id, _, path = uri[len("runs:/") :].partition("/")
    client = mlflow.MlflowClient(tracking_uri)
    try:
        run = client.get_run(run_id)
    except mlflow.exceptions.MlflowException as err:
        raise ConfigError(
            f"model_uri={uri}: the tracking store {tracking_uri} has no run {run_id!r}"
        ) from err
    target = path if path.endswith("model.pt2") else f"{path}/model.pt2".lstrip("/")
    folder = target.rpartition("/")[0] or None
    if target in {a.path for a in client.list_artifacts(run_id, folder)}:
        return
    status, error = run.info.status, run.data.tags.get("error")
    why = f" (error: {' '.join(error.split())[:200]})" if error else ""
    holds = ", ".join(a.path for a in client.list_artifacts(run_id)) or "nothing"
    raise ConfigError(
        f"model_uri={uri}: run {run_id} is {status}{why} and has no model.pt2 under "
        f"{path or '/'!r} (it holds: {holds}); give the runs:/<id>/model of a train.py run "
        "that got past compression"
    )


def model_from_uri(uri: str, tracking_uri: str) -> tuple[Path, dict[str, Any]]:
    """The compressed program and metadata that an earlier train.py run logged."""
    check_model_uri(uri, tracking_uri)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, tracking_uri=tracking_uri))
    folder = local if local.is_dir() else local.parent
    program, meta = folder / "model.pt2", folder / "meta.json"
    if not program.exists():
        raise ConfigError(f"model_uri={uri!r} holds no model.pt2 (expected runs:/<id>/model)")
    return program, json.loads(meta.read_text()) if meta.exists() else {}


def deploy_source(
    cfg: DictConfig, compress_key: str
) -> tuple[Path, dict[str, Any], nn.Module, dict[str, str]]:
    """The compressed model deploy.py works on: (program, metadata, eager reference, the
    run tags saying where it came from), from ``model_uri`` or the stage cache; found
    before the run opens."""
    with as_config_errors():
        if cfg.model_uri:
            program_path, meta = model_from_uri(cfg.model_uri, cfg.tracking.uri)
            tags = {"dlas.model_uri": cfg.model_uri}
            return program_path, meta, load_program(program_path).module(), tags
        entry = StageCache(cfg.cache_dir).load("compress", compress_key)
        if entry is None:
            raise ConfigError(
                f"no trained+compressed model in {cfg.cache_dir} for dataset="
                f"{cfg.dataset.name} model={cfg.model.name} compression={cfg.compression.name} "
                "with these settings: run train.py with the same overrides first, or pass "
                "model_uri=runs:/<run_id>/model"
            )
        tags = provenance.entry_tags("compress", entry.run_id, entry.written)
        return entry.program_path, entry.meta, entry.model(), tags


def deploy_point(cfg: DictConfig) -> dict[str, float]:
    """Layers 4-6 alone, on the compressed model of the same upstream layers (stage
    cache) or of ``model_uri``; never trains. Logs a run with the train.py schema."""
    return resumable(cfg, "deploy", _deploy_compressed_model, systems=True)


def _deploy_compressed_model(cfg: DictConfig, point: Point, device: Any) -> dict[str, float]:
    program_path, meta, reference, source_tags = deploy_source(cfg, stage_keys(point)["compress"])
    with point_run(cfg, point, "deploy", source_tags) as started:
        run = started.run
        if meta:
            run.log_metrics(
                {
                    k: meta[k]
                    for k in (
                        schema.TOP1,
                        schema.TOP5,
                        schema.PARAMS,
                        schema.NONZERO_PARAMS,
                        schema.MACS,
                        schema.NONZERO_MACS,
                        schema.SPARSITY,
                    )
                    if k in meta
                }
                | {schema.SIZE_BYTES: program_path.stat().st_size}
            )
        return layers_4_to_6(cfg, device, point, program_path, meta, reference, run)
