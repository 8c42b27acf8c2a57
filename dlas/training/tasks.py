"""What "good" means in each problem space: its loss, its metrics, and which one is quality.

Why one table: training, fine-tuning after compression, evaluation, the report's
accuracy axis, the Pareto front and the search all need to know how a model is scored,
and that depends only on the problem space (layer 1), never on the model, compression
or compiler. Each task names its own metrics (logged under those names, in the units
people quote: percent for accuracies and IoU, dB for PSNR, SSIM in [0, 1]) and one of them as
``quality``, higher is better, so that a front or a search compares across tasks.

The metrics are torchmetrics' (the same formulas everyone else's numbers come from),
accumulated over the whole split, not averaged per batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

#: Builds one metric for a dataset: ``(num_classes, ignore_index) -> Metric``.
MetricFactory = Callable[[int, int | None], Metric]


@dataclass(frozen=True)
class Task:
    """A problem space's scoring. ``metrics`` maps each logged name to its factory and to
    the factor it is logged with (100: a fraction shown in percent); ``quality`` is the
    name of the one that stands for the task (higher is better)."""

    name: str
    loss: Callable[..., torch.Tensor]
    metrics: dict[str, tuple[MetricFactory, float]]
    quality: str
    #: the metric shown on the progress bar during validation
    progress: str = ""

    def __post_init__(self) -> None:
        if self.quality not in self.metrics:
            raise ValueError(
                f"task {self.name}: quality {self.quality!r} is not one of its metrics"
            )

    def build_metrics(self, num_classes: int, ignore_index: int | None) -> dict[str, Metric]:
        return {name: make(num_classes, ignore_index) for name, (make, _) in self.metrics.items()}

    def scale(self, name: str) -> float:
        return self.metrics[name][1]

    def quality_of(
        self, outputs: np.ndarray, target: np.ndarray, num_classes: int, ignore_index: int | None
    ) -> float:
        """The quality metric of outputs computed elsewhere (a compiled model's, on the
        verification images), in its logged unit."""
        make, scale = self.metrics[self.quality]
        metric = make(num_classes, ignore_index)
        return scale * float(metric(torch.as_tensor(outputs), torch.as_tensor(target)))


def _classification_loss(
    logits: torch.Tensor, target: torch.Tensor, *, label_smoothing: float = 0.0, **_: object
) -> torch.Tensor:
    return F.cross_entropy(logits, target, label_smoothing=label_smoothing)


def _segmentation_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    label_smoothing: float = 0.0,
    ignore_index: int | None = None,
    **_: object,
) -> torch.Tensor:
    """Per-pixel cross-entropy over ``N x C x H x W`` logits; ignored pixels count nowhere."""
    return F.cross_entropy(
        logits,
        target,
        label_smoothing=label_smoothing,
        ignore_index=-100 if ignore_index is None else ignore_index,
    )


def _restoration_loss(output: torch.Tensor, target: torch.Tensor, **_: object) -> torch.Tensor:
    """Mean squared error on the [0, 1] intensity scale: what PSNR is a log of."""
    return F.mse_loss(output, target)


def _top(k: int) -> MetricFactory:
    def make(num_classes: int, _ignore: int | None) -> Metric:
        return MulticlassAccuracy(num_classes, top_k=min(k, num_classes), average="micro")

    return make


def _miou(num_classes: int, ignore_index: int | None) -> Metric:
    return MulticlassJaccardIndex(num_classes, average="macro", ignore_index=ignore_index)


def _pixel_accuracy(num_classes: int, ignore_index: int | None) -> Metric:
    return MulticlassAccuracy(
        num_classes, average="micro", multidim_average="global", ignore_index=ignore_index
    )


def _psnr(_classes: int, _ignore: int | None) -> Metric:
    """PSNR of the whole split (its pooled mean squared error), in dB, intensities in [0, 1]."""
    return PeakSignalNoiseRatio(data_range=1.0)


def _ssim(_classes: int, _ignore: int | None) -> Metric:
    """Mean SSIM over the images (Gaussian window 11, sigma 1.5: Wang et al.'s settings)."""
    return StructuralSimilarityIndexMeasure(data_range=1.0)


CLASSIFICATION = Task(
    "classification",
    _classification_loss,
    {"top1": (_top(1), 100.0), "top5": (_top(5), 100.0)},
    quality="top1",
    progress="top1",
)
SEGMENTATION = Task(
    "segmentation",
    _segmentation_loss,
    {"miou": (_miou, 100.0), "pixel_accuracy": (_pixel_accuracy, 100.0)},
    quality="miou",
    progress="miou",
)

RESTORATION = Task(
    "restoration",
    _restoration_loss,
    {"psnr": (_psnr, 1.0), "ssim": (_ssim, 1.0)},
    quality="psnr",
    progress="psnr",
)

TASKS: dict[str, Task] = {t.name: t for t in (CLASSIFICATION, SEGMENTATION, RESTORATION)}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid choices: {', '.join(TASKS)}")
    return TASKS[name]
