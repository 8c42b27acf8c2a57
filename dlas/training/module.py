"""The LightningModule that trains, fine-tunes and evaluates any layer-2/3 model."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import nn

from dlas.config import OPTIMIZERS, SCHEDULERS  # the trainer schema's choices
from dlas.training.tasks import CLASSIFICATION, Task


class TaskModule(pl.LightningModule):
    """Trains and scores a model for its dataset's problem space (:mod:`dlas.training.tasks`):
    the task gives the loss and the metrics, accumulated per split over each epoch and
    logged as ``<split>/<metric>`` (fractions; :meth:`Trainer.evaluate` reports percent)."""

    def __init__(
        self,
        model: nn.Module,
        *,
        num_classes: int,
        task: Task = CLASSIFICATION,
        ignore_index: int | None = None,
        lr: float = 0.1,
        optimizer: str = "sgd",
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        scheduler: str = "onecycle",
        label_smoothing: float = 0.0,
        input_dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise ValueError(
                f"trainer.optimizer={optimizer!r}; valid choices: {', '.join(OPTIMIZERS)}"
            )
        if scheduler not in SCHEDULERS:
            raise ValueError(
                f"trainer.scheduler={scheduler!r}; valid choices: {', '.join(SCHEDULERS)}"
            )
        self.model, self.task, self.ignore_index = model, task, ignore_index
        self.lr, self.optimizer_name, self.momentum = lr, optimizer, momentum
        self.weight_decay, self.scheduler_name = weight_decay, scheduler
        self.label_smoothing = label_smoothing
        self.input_dtype = input_dtype
        for split in ("train", "val", "test"):  # attributes, so Lightning moves them along
            metrics = nn.ModuleDict(task.build_metrics(num_classes, ignore_index))
            setattr(self, f"{split}_scores", metrics)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.input_dtype)).float()

    def _step(self, batch, split: str) -> torch.Tensor:
        x, y = batch
        out = self(x)
        loss = self.task.loss(
            out, y, label_smoothing=self.label_smoothing, ignore_index=self.ignore_index
        )
        on_step = split == "train"
        self.log(f"{split}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=True)
        for name, metric in getattr(self, f"{split}_scores").items():
            metric(out, y)
            shown = split != "train" and name == self.task.progress
            self.log(f"{split}/{name}", metric, on_step=False, on_epoch=True, prog_bar=shown)
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        if self.optimizer_name == "sgd":
            opt = torch.optim.SGD(
                params,
                lr=self.lr,
                momentum=self.momentum,
                weight_decay=self.weight_decay,
                nesterov=self.momentum > 0,
            )
        else:
            opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        if self.scheduler_name == "none":
            return opt
        steps = int(self.trainer.estimated_stepping_batches)
        if self.scheduler_name == "onecycle":
            sched = torch.optim.lr_scheduler.OneCycleLR(
                opt, max_lr=self.lr, total_steps=max(steps, 1)
            )
        else:
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
