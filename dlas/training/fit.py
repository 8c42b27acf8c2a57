"""Training, fine-tuning and evaluation through one configured Lightning Trainer."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import warnings
from collections.abc import Iterator
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from dlas.data.base import ImageClassificationData
from dlas.errors import TrainingDivergedError
from dlas.training.module import TaskModule
from dlas.training.tasks import get_task

for _noisy in (
    "pytorch_lightning.utilities.rank_zero",
    "pytorch_lightning.accelerators.cuda",
    "lightning.pytorch.utilities.rank_zero",
    "lightning_fabric",
):
    logging.getLogger(_noisy).setLevel(logging.WARNING)
log = logging.getLogger("dlas.training")
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
warnings.filterwarnings("ignore", message=".*LeafSpec.*")
warnings.filterwarnings("ignore", message=".*isinstance.*treespec.*")


def show_progress(setting: Any) -> bool:
    """``auto``: a live bar on an interactive terminal, nothing in CI logs or pipes."""
    if setting == "auto":
        return sys.stderr.isatty() and not os.environ.get("CI")
    return bool(setting)


@contextlib.contextmanager
def torch_determinism_restored() -> Iterator[None]:
    """Lightning's Trainer switches torch's deterministic mode for the whole process
    (``trainer.deterministic``); keep that to training and evaluation, so that export,
    compilation and measurement afterwards run as they would on their own (deterministic
    mode also fills every new tensor with NaN, a cost there is no reason to pay there)."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
        torch.utils.deterministic.fill_uninitialized_memory = fill


class Trainer:
    """Builds Lightning trainers from the ``trainer`` config for each stage of a run."""

    def __init__(self, cfg: Any, data: ImageClassificationData, logger: Any = None) -> None:
        self.cfg, self.data, self.logger = cfg, data, logger

    def _lightning(self, epochs: int, stage: str | None) -> pl.Trainer:
        """``stage`` names the curves in MLflow; None logs nothing (test metrics are logged
        once, by the stack, under their final names)."""
        callbacks = []
        progress = show_progress(self.cfg.progress_bar)
        if progress:
            from pytorch_lightning.callbacks import RichProgressBar

            callbacks.append(RichProgressBar(leave=True))
        limit_train = self.cfg.limit_train_batches
        limit_eval = self.cfg.limit_eval_batches
        return pl.Trainer(
            max_epochs=epochs,
            accelerator="cpu",
            devices=1,
            deterministic=self.cfg.deterministic,
            logger=self.logger.for_stage(stage) if self.logger and stage else False,
            enable_checkpointing=False,
            enable_progress_bar=progress,
            enable_model_summary=False,
            callbacks=callbacks,
            num_sanity_val_steps=0,
            limit_train_batches=limit_train if limit_train is not None else 1.0,
            limit_val_batches=limit_eval if limit_eval is not None else 1.0,
            limit_test_batches=limit_eval if limit_eval is not None else 1.0,
            log_every_n_steps=10,
        )

    def _module(
        self, model: nn.Module, lr: float, input_dtype: torch.dtype = torch.float32
    ) -> TaskModule:
        c = self.cfg
        return TaskModule(
            model,
            num_classes=self.data.num_classes,
            task=get_task(self.data.task),
            ignore_index=self.data.ignore_index,
            lr=lr,
            optimizer=c.optimizer,
            momentum=c.momentum,
            weight_decay=c.weight_decay,
            scheduler=c.scheduler,
            label_smoothing=c.label_smoothing,
            input_dtype=input_dtype,
        )

    def fit(
        self, model: nn.Module, epochs: int, lr: float | None = None, stage: str = "train"
    ) -> nn.Module:
        module = self._module(model, lr if lr is not None else self.cfg.lr)
        with torch_determinism_restored():
            self._lightning(epochs, stage).fit(module, datamodule=self.data)
        return module.model

    def finetuner(self, stage: str = "finetune"):
        """The ``Finetune`` callable handed to a compression. Fine-tuning never runs at a
        higher learning rate than training did: a compression's ``finetune_lr`` is set for
        the classifiers' SGD at 0.1 and would blow up a model trained with AdamW at 1e-3
        (measured: channel pruning's 0.05 left DnCNN outputting its input)."""

        def finetune(model: nn.Module, epochs: int, lr: float) -> nn.Module:
            if lr > self.cfg.lr:
                log.info(
                    "fine-tuning at trainer.lr %g, not compression.finetune_lr %g", self.cfg.lr, lr
                )
            return self.fit(model, epochs, min(lr, self.cfg.lr), stage=stage)

        return finetune

    def evaluate(
        self, model: nn.Module, input_dtype: torch.dtype = torch.float32
    ) -> dict[str, float]:
        """The task's test-set metrics in their logged units (top-1 / top-5 in percent for
        classification), and ``quality``: the task's own measure of it."""
        module = self._module(model, self.cfg.lr, input_dtype)
        with torch_determinism_restored():
            trainer = self._lightning(1, None)
            (result,) = trainer.test(module, datamodule=self.data, verbose=False)
        task = module.task
        scores = {name: task.scale(name) * result[f"test/{name}"] for name in task.metrics}
        diverged = [name for name, value in scores.items() if math.isnan(value)]
        if diverged:
            raise TrainingDivergedError(
                f"the trained model scores NaN ({', '.join(diverged)}): training diverged "
                f"with trainer.optimizer={self.cfg.optimizer} at trainer.lr={self.cfg.lr}; "
                "lower trainer.lr or use trainer=adamw (AdamW at 1e-3)"
            )
        return scores | {"quality": scores[task.quality]}
