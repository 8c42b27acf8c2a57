"""Structured schemas for every config group, registered in Hydra's ConfigStore.

Each YAML option pulls its schema in with ``/schema/<group>/<option>@_here_``, so a
misspelt key or a wrong type in a YAML file or on the command line is an error at
compose time instead of a silently ignored value. A field's valid values (a range, a
list of choices) sit beside it in its schema (:func:`ranged`, :func:`one_of`) and
:func:`check_config` checks them; what needs more than the field itself (``amount``
per compression, existing dataset roots, algorithm/format pairs) is checked by the
component constructors and ``dlas.deployment.check_layers``. All of it runs before any
MLflow run is opened (``dlas.stack.validated``).
"""

from __future__ import annotations

import dataclasses
import math
import operator
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from dlas.algorithms import ALGORITHMS
from dlas.compiler.tuning import TUNED_OPS
from dlas.compiler.tvm_compilers import SCHEDULES
from dlas.errors import ConfigError

OPTIMIZERS = ("sgd", "adamw")
SCHEDULERS = ("onecycle", "cosine", "none")


def ranged(
    default: Any,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> Any:
    """A schema field whose value must lie in a range (None, for optional fields, passes)."""
    rule = {k: v for k, v in {"ge": ge, "gt": gt, "le": le, "lt": lt}.items() if v is not None}
    return field(default=default, metadata={"range": rule})


def one_of(default: Any, choices: tuple[Any, ...]) -> Any:
    """A schema field whose value must be one of ``choices``."""
    return field(default=default, metadata={"choices": choices})


def _batches(default: Any = None) -> Any:
    """Lightning's ``limit_*_batches``: null (all), a count >= 0, or a fraction in [0, 1]."""
    return field(default=default, metadata={"batches": True})


# ---------------------------------------------------------------- layer 1: dataset


@dataclass
class DatasetConf:
    _target_: str = "dlas.data.get_datamodule"
    name: str = MISSING
    batch_size: int = ranged(128, ge=1)
    eval_batch_size: int = ranged(256, ge=1)
    num_workers: int = ranged(0, ge=0)
    seed: int = "${seed}"  # type: ignore[assignment]


@dataclass
class PackagedDigitsConf(DatasetConf):
    """Datasets that ship inside a Python package, split stratified by class."""

    val_fraction: float = 0.1
    test_fraction: float = 0.2
    image_size: int = ranged(32, ge=1)


@dataclass
class Cifar10Conf(DatasetConf):
    root: str | None = None
    download: bool = False
    val_fraction: float = 0.1
    augment: bool = True


@dataclass
class ImageNetConf(DatasetConf):
    root: str | None = None
    image_size: int = ranged(224, ge=1)
    classes: Any = None  # null (all), an int N (first N sorted wnids) or a list of wnids
    val_fraction: float = 0.02
    augment: bool = True


@dataclass
class SyntheticConf(DatasetConf):
    num_samples: int = ranged(512, ge=1)
    image_size: int = ranged(32, ge=1)
    in_channels: int = ranged(3, ge=1)
    num_classes: int = ranged(10, ge=2)
    val_fraction: float = 0.125
    test_fraction: float = 0.125


@dataclass
class DigitCanvasesConf(DatasetConf):
    """Segmentation canvases of packaged MNIST digits (dlas.data.segmentation)."""

    image_size: int = ranged(64, ge=28)
    max_digits: int = ranged(3, ge=1)
    threshold: float = ranged(0.5, ge=0, lt=1)
    val_fraction: float = 0.1
    test_fraction: float = 0.2


@dataclass
class VocConf(DatasetConf):
    root: str | None = None
    year: str = "2012"
    download: bool = False
    image_size: int = ranged(128, ge=1)
    val_fraction: float = 0.1


@dataclass
class RestorationConf(DatasetConf):
    """Degraded / clean image pairs (dlas.data.restoration)."""

    image_size: int = ranged(32, ge=28)
    val_fraction: float = 0.1
    test_fraction: float = 0.2


@dataclass
class DigitDenoisingConf(RestorationConf):
    noise_sigma: float = ranged(0.1, gt=0)  # Gaussian std on the [0, 1] intensity scale


@dataclass
class DigitSuperresConf(RestorationConf):
    scale: int = ranged(2, ge=2)  # bicubic down and back up by this factor


@dataclass
class ImageFolderConf(RestorationConf):
    root: str | None = None
    in_channels: int = one_of(1, (1, 3))
    image_size: int = ranged(64, ge=1)
    degradation: str = one_of("denoise", ("denoise", "super_resolution"))
    noise_sigma: float = ranged(0.1, gt=0)
    scale: int = ranged(2, ge=2)


# ---------------------------------------------------------------- layer 2: model


@dataclass
class ModelConf:
    _target_: str = "dlas.models.get_model"
    name: str = MISSING
    pretrained: bool = False
    stem: str = "auto"  # auto | imagenet | cifar | compact, see dlas.models.zoo


@dataclass
class PatternConf(ModelConf):
    depth: int = ranged(2, ge=1)  # blocks per stage
    width: int = ranged(16, ge=1)  # channels of the first stage (doubling per stage)
    stages: int = ranged(3, ge=1)


@dataclass
class UNetConf(ModelConf):
    depth: int = ranged(3, ge=1)  # levels below full resolution
    width: int = ranged(16, ge=1)  # channels at full resolution (doubling per level)


@dataclass
class DnCNNConf(ModelConf):
    depth: int = ranged(8, ge=2)  # convolutions (the paper: 17)
    width: int = ranged(32, ge=1)  # channels of every inner conv (the paper: 64)


@dataclass
class DartsConf(ModelConf):
    depth: int = ranged(20, ge=1)  # cells (reduction cells at 1/3 and 2/3 of them)
    width: int = ranged(36, ge=2)  # initial channels (the stem has 3 x width)


# ---------------------------------------------------------------- layer 3: compression


@dataclass
class CompressionConf:
    _target_: str = "dlas.compression.get_compression"
    name: str = MISSING
    finetune_epochs: int = ranged(0, ge=0)
    finetune_lr: float = ranged(0.01, gt=0)


@dataclass
class PruneConf(CompressionConf):
    amount: float = 0.5
    steps: int = 1  # >1: iterative schedule, fine-tuning after each step


@dataclass
class ChannelPruneConf(CompressionConf):
    amount: float = 0.5
    steps: int = 1
    norm: int = 2  # Lp norm of the filter-group magnitude importance


@dataclass
class QuantConf(CompressionConf):
    calibration_batches: int = 8
    qat: bool = False  # fine-tune with quantization-aware training when finetune_epochs > 0


# ---------------------------------------------------------------- layers 4-6 (consumed by deploy)


@dataclass
class AlgorithmConf:
    _target_: str = "dlas.algorithms.get_algorithm"
    name: str = MISSING
    data_format: str = "dense"
    sparsity_threshold: float = ranged(0.0, ge=0, le=1)
    block_size: int = ranged(4, ge=1)
    fallback: str = "direct"
    # name=best: the algorithms each layer chooses among by tuned time (first wins ties)
    candidates: list[str] = field(default_factory=lambda: list(ALGORITHMS))


@dataclass
class CompilerConf:
    _target_: str = "dlas.compiler.get_compiler"
    name: str = MISSING
    # TVM only: default = each kernel's default schedule (dlas.algorithms; DLAS's "untuned"),
    # none = TVM's plain loop nests (what dlas measured as untuned before schedules existed)
    schedule: str = one_of("default", SCHEDULES)
    trials: int = ranged(0, ge=0)  # MetaSchedule trials in total; 0: tasks x per task
    trials_per_task: int = ranged(0, ge=0)  # 0: no per-task cap
    # candidates the evolutionary search keeps per round; 0: from the per-task budget
    # (4 x the trials of a round, 64..512; MetaSchedule's own default is 512). Only with
    # schedule=default: schedule=none tunes with MetaSchedule's own settings throughout
    population: int = ranged(0, ge=0)
    tune_ops: list[str] = field(default_factory=lambda: list(TUNED_OPS))
    work_dir: str = "${cache_dir}/tuning"  # databases by workload, target, schedule, threads


@dataclass
class MeasureConf:
    """The verification and latency protocol every compiler goes through."""

    batch_size: int = ranged(1, ge=1)
    warmup: int = ranged(1, ge=0)
    # ...and untimed runs on until this long has passed in each round (caches refilled
    # after another runtime's round; see dlas.compiler.measure.Protocol)
    warmup_ms: float = ranged(25.0, ge=0)
    repeat: int = ranged(10, ge=1)
    number: int = ranged(3, ge=1)
    verify_samples: int = ranged(256, ge=1)
    # null: by compute dtype (see dlas.deployment.tolerance)
    tolerance: float | None = ranged(None, gt=0)
    timeout_s: float = ranged(900, gt=0)
    # The repeats are split over this many rounds alternating between the compiled path(s)
    # and eager PyTorch (each in its own process), so a speedup compares one machine state.
    rounds: int = ranged(5, ge=1)
    # A timing attempt is noisy when a runtime's samples vary more than max_cv (std/mean)
    # or other processes use more than max_cpu_load of the timed cores before or during it;
    # a noisy attempt is retried `retries` times, then tagged dlas.noisy (strict: fails).
    max_cv: float = ranged(0.1, gt=0)
    max_cpu_load: float = ranged(0.25, ge=0, le=1)
    retries: int = ranged(2, ge=0)
    strict: bool = False
    # seconds of reading the cores' load before each attempt
    load_probe_s: float = ranged(0.5, ge=0)
    # pause before the first retry, doubled before each next one
    retry_wait_s: float = ranged(2.0, ge=0)
    # More compilers verified and timed in the same run as compiler=, next to the same eager
    # reference: logged as <compiler>/latency_ms_median, <compiler>/speedup_vs_torch, ...
    compare: list[str] = field(default_factory=list)


@dataclass
class HardwareConf:
    _target_: str = "dlas.hardware.get_device"
    name: str = MISSING
    threads: int = ranged(0, ge=0)  # 0: every core of the host
    target: Any = None
    # ISA presets (hardware=cpu_avx2, ...): what narrower CPU this target emulates, logged
    emulates: str | None = None
    target_host: Any = None
    host: str | None = None
    port: int | None = ranged(None, ge=1, le=65535)
    key: str | None = None


# ---------------------------------------------------------------- training and tracking


@dataclass
class TrainerConf:
    max_epochs: int = ranged(3, ge=0)
    optimizer: str = one_of("sgd", OPTIMIZERS)
    lr: float = ranged(0.1, gt=0)
    momentum: float = ranged(0.9, ge=0, lt=1)
    weight_decay: float = ranged(5e-4, ge=0)
    scheduler: str = one_of("onecycle", SCHEDULERS)
    label_smoothing: float = ranged(0.0, ge=0, lt=1)
    # Passed to Lightning's Trainer: true makes CPU training bit-reproducible for a seed
    # (torch's deterministic algorithms; an op without one raises), "warn" only warns.
    deterministic: Any = one_of(True, ("warn", True, False))
    # auto: rich bar on a terminal, quiet in CI / pipes
    progress_bar: Any = one_of("auto", ("auto", True, False))
    limit_train_batches: Any = _batches()
    limit_eval_batches: Any = _batches()


@dataclass
class TrackingConf:
    uri: str = "sqlite:///mlruns/mlflow.db"
    experiment: str = "dlas"
    artifact_root: str | None = None  # default: <dir of the sqlite db>/artifacts
    run_name: str | None = None
    resume: bool | None = None  # reuse a FINISHED run of the same config; null: in sweeps


@dataclass
class Config:
    dataset: Any = MISSING
    model: Any = MISSING
    compression: Any = MISSING
    algorithm: Any = MISSING
    compiler: Any = MISSING
    hardware: Any = MISSING
    trainer: TrainerConf = field(default_factory=TrainerConf)
    tracking: TrackingConf = field(default_factory=TrackingConf)
    measure: MeasureConf = field(default_factory=MeasureConf)
    deploy: bool = True  # run layers 4-6 after training; false: layers 1-3 only
    model_uri: str | None = None  # deploy.py: an MLflow run's model, e.g. runs:/<id>/model
    seed: int = 0
    cache_dir: str = ".cache/dlas"
    use_cache: bool = True
    search: Any = None  # search.py: the Optuna study (conf/search/)
    characterize: Any = None  # characterize.py: ineffectual-computation analysis


SCHEMAS: dict[str, dict[str, type]] = {
    "dataset": {
        "mnist5k": PackagedDigitsConf,
        "digits": PackagedDigitsConf,
        "cifar10": Cifar10Conf,
        "imagenet": ImageNetConf,
        "synthetic": SyntheticConf,
        "digit_canvases": DigitCanvasesConf,
        "voc": VocConf,
        "digit_denoising": DigitDenoisingConf,
        "digit_superres": DigitSuperresConf,
        "image_folder": ImageFolderConf,
    },
    "model": {
        "zoo": ModelConf,
        "pattern": PatternConf,
        "darts": DartsConf,
        "unet": UNetConf,
        "dncnn": DnCNNConf,
    },
    "compression": {
        "none": CompressionConf,
        "prune": PruneConf,
        "channel_prune": ChannelPruneConf,
        "quant": QuantConf,
        "fp16": CompressionConf,
    },
    "algorithm": {"base": AlgorithmConf},
    "compiler": {"base": CompilerConf},
    "hardware": {"base": HardwareConf},
    "trainer": {"base": TrainerConf},
    "tracking": {"base": TrackingConf},
    "measure": {"base": MeasureConf},
}


_COMPARE = {
    "ge": (operator.ge, ">="),
    "gt": (operator.gt, ">"),
    "le": (operator.le, "<="),
    "lt": (operator.lt, "<"),
}


def _interval(rule: dict[str, float]) -> str:
    lo = f"[{rule['ge']:g}" if "ge" in rule else f"({rule['gt']:g}" if "gt" in rule else "(-inf"
    hi = f"{rule['le']:g}]" if "le" in rule else f"{rule['lt']:g})" if "lt" in rule else "inf)"
    return f"{lo}, {hi}"


def check_value(name: str, value: Any, meta: Any) -> None:
    """Raise :class:`ConfigError` naming ``name=value`` and what is valid, if it is not."""
    if value is None:
        return
    if "choices" in meta:
        choices = meta["choices"]
        if not any(value == c and type(value) is type(c) for c in choices):
            valid = ", ".join(str(c).lower() if isinstance(c, bool) else str(c) for c in choices)
            raise ConfigError(f"{name}={value!r}; valid choices: {valid}")
    if "batches" in meta:
        count = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        fraction = isinstance(value, float) and 0 <= value <= 1
        if not (count or fraction):
            raise ConfigError(
                f"{name}={value!r}; valid values: null (all), a batch count >= 0, "
                "or a fraction in [0, 1]"
            )
    rule = meta.get("range")
    if rule:
        number = isinstance(value, int | float) and not isinstance(value, bool)
        ok = number and math.isfinite(value)
        if not (ok and all(_COMPARE[op][0](value, limit) for op, limit in rule.items())):
            if len(rule) == 1:
                ((op, limit),) = rule.items()
                raise ConfigError(f"{name}={value!r} must be {_COMPARE[op][1]} {limit:g}")
            raise ConfigError(f"{name}={value!r} is outside {_interval(rule)}")


def check_config(cfg: DictConfig) -> None:
    """Check every schema field that declares its valid values (see :func:`ranged`)."""
    for group in SCHEMAS:
        node = cfg.get(group)
        if not isinstance(node, DictConfig):
            continue
        schema = OmegaConf.get_type(node)
        if schema is None or not dataclasses.is_dataclass(schema):
            continue
        for f in dataclasses.fields(schema):
            if f.metadata and f.name in node:
                check_value(f"{group}.{f.name}", node[f.name], f.metadata)


def register_configs() -> None:
    """Register the schemas; idempotent, called on ``import dlas``."""
    cs = ConfigStore.instance()
    cs.store(name="dlas_schema", node=Config)
    for group, options in SCHEMAS.items():
        for option, node in options.items():
            cs.store(group=f"schema/{group}", name=option, node=node)
