"""Layer 1's problem spaces as the trainer scores them: each task's loss and metrics."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from dlas.config import TrainerConf
from dlas.data.segmentation import DigitCanvases
from dlas.training import TASKS, Trainer, get_task


def trainer_cfg(**changes):
    cfg = OmegaConf.structured(TrainerConf)
    cfg.merge_with({"progress_bar": False, "limit_train_batches": 4, **changes})
    return cfg


class Constant(nn.Module):
    """Predicts class 0 (background) everywhere, whatever the image."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(x.shape[0], self.num_classes, *x.shape[2:]) + self.bias
        logits[:, 0] += 1.0
        return logits


@pytest.fixture(scope="module")
def canvases() -> DigitCanvases:
    return DigitCanvases(image_size=32, max_digits=1, seed=0, eval_batch_size=500)


def test_segmentation_metrics_are_mean_iou_and_pixel_accuracy(canvases) -> None:
    """A predictor of background everywhere: its pixel accuracy is the share of background
    pixels, its IoU for background the same share and 0 for each digit class, so mIoU is
    that share over the 11 classes (torchmetrics' macro mean, every class present)."""
    scores = Trainer(trainer_cfg(), canvases).evaluate(Constant(11))
    masks = torch.stack([canvases.test_set[i][1] for i in range(len(canvases.test_set))])
    background = float((masks == 0).float().mean())
    assert scores["pixel_accuracy"] == pytest.approx(100 * background, rel=1e-5)
    assert scores["miou"] == pytest.approx(100 * background / 11, rel=1e-5)
    assert scores["quality"] == scores["miou"] and set(scores) == {
        "miou",
        "pixel_accuracy",
        "quality",
    }


def test_training_a_segmentation_network_lowers_its_per_pixel_loss(canvases) -> None:
    """Ten batches through the real trainer lower the per-pixel loss on held-out canvases
    (learning the digit classes takes epochs: 3 epochs of this net reach mIoU 13.9 against
    the constant predictor's 8.2, too slow for a test)."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Upsample(scale_factor=2, mode="bilinear"), nn.Conv2d(32, 11, 3, padding=1),
    )  # fmt: skip
    task = get_task("segmentation")
    x, y = canvases.example_batch(64)

    def loss() -> float:
        with torch.no_grad():
            return float(task.loss(net(x), y, ignore_index=canvases.ignore_index))

    before = loss()
    cfg = trainer_cfg(optimizer="adamw", lr=1e-2, scheduler="none", limit_train_batches=10)
    net = Trainer(cfg, canvases).fit(net, epochs=1, stage=None)
    assert loss() < 0.5 * before


def test_ignored_pixels_count_in_no_loss_and_no_metric() -> None:
    task = get_task("segmentation")
    logits = torch.zeros(1, 3, 1, 2)
    logits[0, 1, 0, 0] = 10.0  # pixel 0: confidently class 1 (right)
    logits[0, 2, 0, 1] = 10.0  # pixel 1: confidently class 2 (its label is ignored)
    target = torch.tensor([[[1, 255]]])
    loss = task.loss(logits, target, ignore_index=255)
    assert float(loss) == pytest.approx(
        float(nn.functional.cross_entropy(logits[..., :1], target[..., :1]))
    )
    metrics = task.build_metrics(3, 255)
    assert float(metrics["pixel_accuracy"](logits, target)) == 1.0


def test_classification_keeps_top1_and_top5_as_quality_top1() -> None:
    task = get_task("classification")
    assert task.quality == "top1" and set(task.metrics) == {"top1", "top5"}
    with pytest.raises(
        ValueError, match="unknown task 'speech'; valid choices: " + ", ".join(TASKS)
    ):
        get_task("speech")
