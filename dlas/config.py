"""Structured schemas for every config group, registered in Hydra's ConfigStore.

Each YAML option pulls its schema in with ``/schema/<group>/<option>@_here_``, so a
misspelt key or a wrong type in a YAML file or on the command line is an error at
compose time instead of a silently ignored value. Value ranges (``amount`` in [0, 1),
existing dataset roots...) are checked by the component constructors, which run
before any MLflow run is opened.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from dlas.algorithms import ALGORITHMS

# ---------------------------------------------------------------- layer 1: dataset


@dataclass
class DatasetConf:
    _target_: str = "dlas.data.get_datamodule"
    name: str = MISSING
    batch_size: int = 128
    eval_batch_size: int = 256
    num_workers: int = 0
    seed: int = "${seed}"  # type: ignore[assignment]


@dataclass
class PackagedDigitsConf(DatasetConf):
    """Datasets that ship inside a Python package, split stratified by class."""

    val_fraction: float = 0.1
    test_fraction: float = 0.2
    image_size: int = 32


@dataclass
class Cifar10Conf(DatasetConf):
    root: str | None = None
    download: bool = False
    val_fraction: float = 0.1
    augment: bool = True


@dataclass
class ImageNetConf(DatasetConf):
    root: str | None = None
    image_size: int = 224
    classes: Any = None  # null (all), an int N (first N sorted wnids) or a list of wnids
    val_fraction: float = 0.02
    augment: bool = True


@dataclass
class SyntheticConf(DatasetConf):
    num_samples: int = 512
    image_size: int = 32
    in_channels: int = 3
    num_classes: int = 10
    val_fraction: float = 0.125
    test_fraction: float = 0.125


# ---------------------------------------------------------------- layer 2: model


@dataclass
class ModelConf:
    _target_: str = "dlas.models.get_model"
    name: str = MISSING
    pretrained: bool = False
    stem: str = "auto"  # auto | imagenet | cifar | compact, see dlas.models.zoo


@dataclass
class PatternConf(ModelConf):
    depth: int = 2  # blocks per stage
    width: int = 16  # channels of the first stage (doubling per stage)
    stages: int = 3


# ---------------------------------------------------------------- layer 3: compression


@dataclass
class CompressionConf:
    _target_: str = "dlas.compression.get_compression"
    name: str = MISSING
    finetune_epochs: int = 0
    finetune_lr: float = 0.01


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
    name: str = MISSING
    data_format: str = "dense"
    sparsity_threshold: float = 0.0
    block_size: int = 4
    fallback: str = "direct"
    # name=best: the algorithms each layer chooses among by tuned time (first wins ties)
    candidates: list[str] = field(default_factory=lambda: list(ALGORITHMS))


@dataclass
class CompilerConf:
    name: str = MISSING
    # TVM only: default = each kernel's default schedule (dlas.algorithms; DLAS's "untuned"),
    # none = TVM's plain loop nests (what dlas measured as untuned before schedules existed)
    schedule: str = "default"
    trials: int = 0  # MetaSchedule trials in total (tvm_autoschedule); 0: tasks x per task
    trials_per_task: int = 0  # 0: no per-task cap
    tune_ops: list[str] = field(default_factory=lambda: ["conv2d", "matmul", "dense"])
    work_dir: str = "${cache_dir}/tuning"  # tuning databases, keyed by workload and target


@dataclass
class MeasureConf:
    """The verification and latency protocol every compiler goes through."""

    batch_size: int = 1
    warmup: int = 1
    repeat: int = 10
    number: int = 3
    verify_samples: int = 256
    tolerance: float | None = None  # null: by compute dtype (see dlas.deployment.tolerance)
    timeout_s: float = 900
    # The repeats are split over this many rounds alternating between the compiled path(s)
    # and eager PyTorch (each in its own process), so a speedup compares one machine state.
    rounds: int = 5
    # A timing attempt is noisy when a runtime's samples vary more than max_cv (std/mean)
    # or other processes use more than max_cpu_load of the timed cores before or during it;
    # a noisy attempt is retried `retries` times, then tagged dlas.noisy (strict: fails).
    max_cv: float = 0.1
    max_cpu_load: float = 0.25
    retries: int = 2
    strict: bool = False
    load_probe_s: float = 0.5  # seconds of reading the cores' load before each attempt
    retry_wait_s: float = 2.0  # pause before the first retry, doubled before each next one
    # More compilers verified and timed in the same run as compiler=, next to the same eager
    # reference: logged as <compiler>/latency_ms_median, <compiler>/speedup_vs_torch, ...
    compare: list[str] = field(default_factory=list)


@dataclass
class HardwareConf:
    name: str = MISSING
    threads: int = 0  # 0: every core of the host
    target: Any = None
    # ISA presets (hardware=cpu_avx2, ...): what narrower CPU this target emulates, logged
    emulates: str | None = None
    target_host: Any = None
    host: str | None = None
    port: int | None = None
    key: str | None = None


# ---------------------------------------------------------------- training and tracking


@dataclass
class TrainerConf:
    max_epochs: int = 3
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    scheduler: str = "onecycle"  # onecycle | cosine | none
    label_smoothing: float = 0.0
    # Passed to Lightning's Trainer: true makes CPU training bit-reproducible for a seed
    # (torch's deterministic algorithms; an op without one raises), "warn" only warns.
    deterministic: Any = True
    progress_bar: Any = "auto"  # auto: rich bar on a terminal, quiet in CI / pipes
    limit_train_batches: Any = None
    limit_eval_batches: Any = None


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
    },
    "model": {"zoo": ModelConf, "pattern": PatternConf},
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


def register_configs() -> None:
    """Register the schemas; idempotent, called on ``import dlas``."""
    cs = ConfigStore.instance()
    cs.store(name="dlas_schema", node=Config)
    for group, options in SCHEMAS.items():
        for option, node in options.items():
            cs.store(group=f"schema/{group}", name=option, node=node)
